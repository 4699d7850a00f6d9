package registry

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func ports(d Device) []int {
	var p []int
	for _, f := range d.Forwards {
		p = append(p, f.RemotePort)
	}
	return p
}

func countRows(t *testing.T, s *Store, table string) int {
	t.Helper()
	var n int
	if err := s.db.QueryRow(`SELECT count(*) FROM ` + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAddDeviceLeasesLowestFreePorts(t *testing.T) {
	ctx := context.Background()
	s, path := openTemp(t)
	pr := PortRange{20000, 20009}

	a, err := s.AddDevice(ctx, "alpha", newEd25519(t), nil, pr)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Forwards) != 1 || a.Forwards[0].Name != "ssh" || a.Forwards[0].Target != "localhost:22" || a.Forwards[0].RemotePort != 20000 {
		t.Errorf("default forward = %+v, want ssh localhost:22 on 20000", a.Forwards)
	}
	if a.Status != StatusActive || a.KeyType != "ssh-ed25519" || !strings.HasPrefix(a.Fingerprint, "SHA256:") || !strings.HasPrefix(a.PublicKey, "ssh-ed25519 ") {
		t.Errorf("device = %+v", a)
	}
	if a.CreatedAt.IsZero() || a.CreatedAt.Location() != time.UTC {
		t.Errorf("CreatedAt = %v, want a UTC time", a.CreatedAt)
	}

	b, err := s.AddDevice(ctx, "bravo", newEd25519(t), []ForwardSpec{
		{Name: "ssh", Target: "localhost:22"},
		{Name: "web", Target: "192.168.1.1:80", Probe: "http"},
		{Name: "nas", Target: "[::1]:5000", Probe: "banner:^OK"},
	}, pr)
	if err != nil {
		t.Fatal(err)
	}
	if got := ports(b); !slices.Equal(got, []int{20001, 20002, 20003}) {
		t.Errorf("bravo ports = %v, want 20001-20003", got)
	}
	if b.Forwards[1].Probe != "http" || b.Forwards[2].Target != "[::1]:5000" {
		t.Errorf("bravo forwards = %+v", b.Forwards)
	}

	// Removing alpha frees 20000; the next device takes it, then continues
	// after bravo's ports.
	if err := s.Remove(ctx, "alpha"); err != nil {
		t.Fatal(err)
	}
	c, err := s.AddDevice(ctx, "charlie", newEd25519(t), []ForwardSpec{{Name: "a", Target: "h:1"}, {Name: "b", Target: "h:2"}}, pr)
	if err != nil {
		t.Fatal(err)
	}
	if got := ports(c); !slices.Equal(got, []int{20000, 20004}) {
		t.Errorf("charlie ports = %v, want [20000 20004]", got)
	}

	// Leases survive a reopen unchanged.
	s.Close()
	s2, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for _, want := range []Device{b, c} {
		got, err := s2.Device(ctx, want.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(ports(got), ports(want)) {
			t.Errorf("%s ports after reopen = %v, want %v", want.Name, ports(got), ports(want))
		}
		if !got.CreatedAt.Equal(want.CreatedAt) {
			t.Errorf("%s CreatedAt after reopen = %v, want %v", want.Name, got.CreatedAt, want.CreatedAt)
		}
	}
	if _, err := s2.Device(ctx, "alpha"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Device(alpha) after rm = %v, want ErrNotFound", err)
	}
	byFP, err := s2.DeviceByFingerprint(ctx, b.Fingerprint)
	if err != nil || byFP.Name != "bravo" {
		t.Errorf("DeviceByFingerprint = %v, %v; want bravo", byFP.Name, err)
	}
	if _, err := s2.DeviceByFingerprint(ctx, "SHA256:nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("DeviceByFingerprint(unknown) = %v, want ErrNotFound", err)
	}
}

func TestAddDeviceRefusals(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	pr := PortRange{30000, 30001}
	taken := newEd25519(t)
	if _, err := s.AddDevice(ctx, "holder", taken, nil, pr); err != nil {
		t.Fatal(err)
	}
	devicesBefore, eventsBefore, forwardsBefore := countRows(t, s, "devices"), countRows(t, s, "events"), countRows(t, s, "forwards")

	tests := []struct {
		name     string
		device   string
		key      ssh.PublicKey // nil: a fresh key
		noKey    bool
		forwards []ForwardSpec
		wantErr  error
		wantText []string
	}{
		{"name taken", "holder", nil, false, nil, ErrExists, []string{"holder"}},
		{"key taken", "other", taken, false, nil, ErrDuplicateKey, []string{`"holder"`}},
		{"range full", "big", nil, false, []ForwardSpec{{Name: "a", Target: "h:1"}, {Name: "b", Target: "h:2"}}, ErrRangeFull, []string{"30000-30001", "--port-range", "remove devices"}},
		{"bad name", "Bad Name", nil, false, nil, ErrInvalid, []string{`"Bad Name"`}},
		{"duplicate forward name", "dup", nil, false, []ForwardSpec{{Name: "a", Target: "h:1"}, {Name: "a", Target: "h:2"}}, ErrInvalid, []string{`"a"`}},
		{"bad target", "badt", nil, false, []ForwardSpec{{Name: "a", Target: "h;rm -rf /:1"}}, ErrInvalid, []string{"host:port"}},
		{"bad probe", "badp", nil, false, []ForwardSpec{{Name: "a", Target: "h:1", Probe: "ping"}}, ErrInvalid, []string{"ssh-banner"}},
		{"no key", "nokey", nil, true, nil, ErrInvalid, []string{"no public key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := tt.key
			if key == nil && !tt.noKey {
				key = newEd25519(t)
			}
			_, err := s.AddDevice(ctx, tt.device, key, tt.forwards, pr)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("AddDevice = %v, want %v", err, tt.wantErr)
			}
			for _, w := range tt.wantText {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %s", err, w)
				}
			}
			prefix := "enrolling device " + tt.device + ": "
			if tt.device == "Bad Name" {
				prefix = `enrolling device "Bad Name": `
			}
			if !strings.HasPrefix(err.Error(), prefix) {
				t.Errorf("error %q does not start %q", err, prefix)
			}
		})
	}
	if d, e, f := countRows(t, s, "devices"), countRows(t, s, "events"), countRows(t, s, "forwards"); d != devicesBefore || e != eventsBefore || f != forwardsBefore {
		t.Errorf("refused AddDevice calls wrote rows: devices %d→%d, events %d→%d, forwards %d→%d",
			devicesBefore, d, eventsBefore, e, forwardsBefore, f)
	}
}

// A range with room for the forwards in size but not in free ports must
// fail inside the transaction and leave nothing behind.
func TestAddDeviceRangeFullWritesNothing(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	pr := PortRange{40000, 40001}
	for _, n := range []string{"a", "b"} {
		if _, err := s.AddDevice(ctx, n, newEd25519(t), nil, pr); err != nil {
			t.Fatal(err)
		}
	}
	_, err := s.AddDevice(ctx, "c", newEd25519(t), nil, pr)
	if !errors.Is(err, ErrRangeFull) {
		t.Fatalf("AddDevice in full range = %v, want ErrRangeFull", err)
	}
	if _, err := s.Device(ctx, "c"); !errors.Is(err, ErrNotFound) {
		t.Errorf("device c exists after ErrRangeFull: %v", err)
	}
	ev, err := s.Events(ctx, EventFilter{Device: "c"})
	if err != nil || len(ev) != 0 {
		t.Errorf("events for c = %v, %v; want none", ev, err)
	}
	// Another range still has room: ranges are per call, leases global.
	d, err := s.AddDevice(ctx, "c", newEd25519(t), nil, PortRange{40000, 40002})
	if err != nil || !slices.Equal(ports(d), []int{40002}) {
		t.Errorf("AddDevice with wider range = %v, %v; want port 40002", ports(d), err)
	}
}

func TestRevokeRemoveAndEvents(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	d, err := s.AddDevice(ctx, "pi-01", newEd25519(t), nil, DefaultPortRange)
	if err != nil {
		t.Fatal(err)
	}

	r, err := s.Revoke(ctx, "pi-01")
	if err != nil {
		t.Fatal(err)
	}
	if r.Status != StatusRevoked || r.UpdatedAt.Before(d.UpdatedAt) {
		t.Errorf("Revoke = %+v", r)
	}
	again, err := s.Revoke(ctx, "pi-01")
	if err != nil || again.Status != StatusRevoked || !again.UpdatedAt.Equal(r.UpdatedAt) {
		t.Errorf("second Revoke = %+v, %v; want unchanged", again, err)
	}
	stored, _ := s.Device(ctx, "pi-01")
	if stored.Status != StatusRevoked || !slices.Equal(ports(stored), ports(d)) {
		t.Errorf("stored after revoke = %+v; want revoked with its port kept", stored)
	}
	if total, active, revoked, err := s.DeviceCounts(ctx); err != nil || total != 1 || active != 0 || revoked != 1 {
		t.Errorf("DeviceCounts = %d %d %d %v; want 1 0 1", total, active, revoked, err)
	}
	if _, err := s.Revoke(ctx, "ghost"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Revoke(ghost) = %v, want ErrNotFound", err)
	}

	if err := s.Remove(ctx, "pi-01"); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, "pi-01"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Remove = %v, want ErrNotFound", err)
	}
	if n := countRows(t, s, "forwards"); n != 0 {
		t.Errorf("%d forwards left after Remove, want 0", n)
	}
	if err := s.AddEvent(ctx, EventAuthDeny, "", "unknown key SHA256:x"); err != nil {
		t.Fatal(err)
	}

	all, err := s.Events(ctx, EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for i, e := range all {
		kinds = append(kinds, e.Kind)
		if i > 0 && e.ID <= all[i-1].ID {
			t.Errorf("events not in ascending id order: %v", all)
		}
		if e.At.Location() != time.UTC || e.At.IsZero() {
			t.Errorf("event At = %v, want UTC", e.At)
		}
	}
	if want := []string{EventEnrol, EventRevoke, EventRemove, EventAuthDeny}; !slices.Equal(kinds, want) {
		t.Errorf("event kinds = %v, want %v", kinds, want)
	}
	if !strings.Contains(all[0].Detail, "ssh localhost:22 on port 20000") || !strings.Contains(all[2].Detail, "20000") {
		t.Errorf("enrol detail %q / rm detail %q should list forwards and ports", all[0].Detail, all[2].Detail)
	}
	last, err := s.LastEventID(ctx)
	if err != nil || last != all[len(all)-1].ID {
		t.Errorf("LastEventID = %d, %v; want %d", last, err, all[len(all)-1].ID)
	}

	filters := []struct {
		name string
		f    EventFilter
		want []string
	}{
		{"device", EventFilter{Device: "pi-01"}, []string{EventEnrol, EventRevoke, EventRemove}},
		{"kinds", EventFilter{Kinds: []string{EventRevoke, EventAuthDeny}}, []string{EventRevoke, EventAuthDeny}},
		{"after id", EventFilter{AfterID: all[1].ID}, []string{EventRemove, EventAuthDeny}},
		{"limit", EventFilter{Limit: 2}, []string{EventEnrol, EventRevoke}},
		{"since future", EventFilter{Since: time.Now().Add(time.Hour)}, nil},
		{"since past", EventFilter{Since: time.Now().Add(-time.Hour), Device: "pi-01", Kinds: []string{EventRemove}}, []string{EventRemove}},
	}
	for _, tt := range filters {
		got, err := s.Events(ctx, tt.f)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		var k []string
		for _, e := range got {
			k = append(k, e.Kind)
		}
		if !slices.Equal(k, tt.want) {
			t.Errorf("Events(%s) = %v, want %v", tt.name, k, tt.want)
		}
	}
	if _, err := s.Events(ctx, EventFilter{Limit: -1}); !errors.Is(err, ErrInvalid) {
		t.Errorf("negative limit = %v, want ErrInvalid", err)
	}
	if err := s.AddEvent(ctx, "", "x", "y"); !errors.Is(err, ErrInvalid) {
		t.Errorf("AddEvent with empty kind = %v, want ErrInvalid", err)
	}
}

func TestDevicesOrderAndJSON(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	if got, err := s.Devices(ctx); err != nil || got == nil || len(got) != 0 {
		t.Errorf("Devices on empty registry = %#v, %v; want empty non-nil", got, err)
	}
	for _, n := range []string{"zeta", "alpha", "mid.01"} {
		fw := []ForwardSpec{{Name: "ssh", Target: "localhost:22"}, {Name: "web", Target: "localhost:80"}}
		if _, err := s.AddDevice(ctx, n, newEd25519(t), fw, DefaultPortRange); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Revoke(ctx, "zeta"); err != nil {
		t.Fatal(err)
	}
	got, err := s.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, d := range got {
		names = append(names, d.Name)
		if len(d.Forwards) != 2 || d.Forwards[0].Name != "ssh" || d.Forwards[1].Name != "web" {
			t.Errorf("%s forwards = %+v, want ssh, web", d.Name, d.Forwards)
		}
		one, err := s.Device(ctx, d.Name)
		if err != nil {
			t.Fatal(err)
		}
		a, _ := json.Marshal(one)
		b, _ := json.Marshal(d)
		if string(a) != string(b) {
			t.Errorf("Devices() and Device() disagree:\n%s\n%s", b, a)
		}
	}
	if want := []string{"alpha", "mid.01", "zeta"}; !slices.Equal(names, want) {
		t.Errorf("Devices order = %v, want %v", names, want)
	}
	if got[2].Status != StatusRevoked {
		t.Errorf("zeta status = %s", got[2].Status)
	}

	// The JSON shape DESIGN.md promises, with forwards [] never null.
	var m map[string]any
	b, _ := json.Marshal(Device{Name: "x"})
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"name", "fingerprint", "status", "forwards"} {
		if _, ok := m[k]; !ok {
			t.Errorf("device JSON lacks %q: %s", k, b)
		}
	}
	if !strings.Contains(string(b), `"forwards":[]`) {
		t.Errorf("device without forwards marshals as %s, want \"forwards\":[]", b)
	}
	b, _ = json.Marshal(got[0])
	if !strings.Contains(string(b), `"forwards":[{"name":"ssh","target":"localhost:22","remote_port":`) {
		t.Errorf("device JSON = %s", b)
	}
}

func TestConcurrentAddDevicesGetDistinctPorts(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	const n = 20
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := s.AddDevice(ctx, "dev-"+string(rune('a'+i)), newEd25519(t), nil, DefaultPortRange)
			errs <- err
		}()
	}
	for range n {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	all, err := s.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[int]bool{}
	for _, d := range all {
		p := d.Forwards[0].RemotePort
		if seen[p] {
			t.Errorf("port %d leased twice", p)
		}
		seen[p] = true
		if p < 20000 || p >= 20000+n {
			t.Errorf("port %d outside the lowest %d", p, n)
		}
	}
}
