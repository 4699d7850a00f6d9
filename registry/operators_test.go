package registry

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/mas4h/mas4h/master/wire"
)

// fleet enrols pi-lyon (site=lyon), pi-paris (site=paris) and nas-lyon
// (site=lyon, two forwards).
func fleet(t *testing.T, s *Store) map[string]Device {
	t.Helper()
	ctx := context.Background()
	pr := PortRange{20000, 20099}
	out := map[string]Device{}
	for _, d := range []struct {
		name   string
		labels map[string]string
		fw     []ForwardSpec
	}{
		{"pi-lyon", map[string]string{"site": "lyon"}, nil},
		{"pi-paris", map[string]string{"site": "paris"}, nil},
		{"nas-lyon", map[string]string{"site": "lyon", "role": "nas"}, []ForwardSpec{{Name: "ssh", Target: "localhost:22"}, {Name: "web", Target: "localhost:80"}}},
	} {
		dev, _, err := s.EnrolDevice(ctx, d.name, newEd25519(t), d.fw, d.labels, pr, "")
		if err != nil {
			t.Fatal(err)
		}
		out[d.name] = dev
	}
	return out
}

func TestOperatorAccess(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	devs := fleet(t, s)
	key := newEd25519(t)
	op, err := s.AddOperator(ctx, "alice", key, []string{"site=lyon", "site=lyon"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(op.Allow, []string{"site=lyon"}) || op.Status != StatusActive {
		t.Fatalf("operator = %+v", op)
	}
	got, open, err := s.OperatorAccess(ctx, Fingerprint(key))
	if err != nil || got.Name != "alice" {
		t.Fatalf("OperatorAccess = %+v, %v", got, err)
	}
	nas, pi := devs["nas-lyon"], devs["pi-lyon"]
	want := []wire.OpenPort{
		{Device: "nas-lyon", Forward: "ssh", Port: nas.Forwards[0].RemotePort},
		{Device: "nas-lyon", Forward: "web", Port: nas.Forwards[1].RemotePort},
		{Device: "pi-lyon", Forward: "ssh", Port: pi.Forwards[0].RemotePort},
	}
	if !reflect.DeepEqual(open, want) {
		t.Fatalf("open = %+v, want %+v", open, want)
	}

	// A name glob adds pi-paris; a revoked device drops out.
	if _, err := s.AllowOperator(ctx, "alice", "pi-*"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Revoke(ctx, "nas-lyon"); err != nil {
		t.Fatal(err)
	}
	_, open, _ = s.OperatorAccess(ctx, Fingerprint(key))
	if len(open) != 2 || open[0].Device != "pi-lyon" || open[1].Device != "pi-paris" {
		t.Fatalf("after allow pi-* and revoking nas-lyon: open = %+v", open)
	}

	// Unknown key, device key: not found.
	if _, _, err := s.OperatorAccess(ctx, Fingerprint(newEd25519(t))); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown key: %v, want ErrNotFound", err)
	}
	if _, _, err := s.OperatorAccess(ctx, pi.Fingerprint); !errors.Is(err, ErrNotFound) {
		t.Errorf("a device's key: %v, want ErrNotFound", err)
	}

	// Revoked: ErrRevoked, and a revocation naming the operator.
	seq, _ := s.RevocationSeq(ctx)
	if _, err := s.RevokeOperator(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, open, err := s.OperatorAccess(ctx, Fingerprint(key)); !errors.Is(err, ErrRevoked) || open != nil {
		t.Errorf("revoked: %v, %v; want ErrRevoked", open, err)
	}
	revs, _ := s.Revocations(ctx, seq, 0)
	if len(revs) != 1 || revs[0].Operator != "alice" || revs[0].Device != "" || revs[0].Reason != RevocationRevoked ||
		revs[0].Fingerprint != Fingerprint(key) {
		t.Fatalf("revocations = %+v", revs)
	}
	// Revoking again changes nothing.
	if _, err := s.RevokeOperator(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if revs, _ := s.Revocations(ctx, seq, 0); len(revs) != 1 {
		t.Errorf("revoking twice: %d revocations", len(revs))
	}
	if err := s.RemoveOperator(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	revs, _ = s.Revocations(ctx, seq, 0)
	if len(revs) != 2 || revs[1].Reason != RevocationRemoved || revs[1].Operator != "alice" {
		t.Fatalf("after rm: %+v", revs)
	}
	if _, err := s.Operator(ctx, "alice"); !errors.Is(err, ErrNotFound) {
		t.Errorf("after rm: %v", err)
	}
	evs, _ := s.Events(ctx, EventFilter{Operator: "alice"})
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
	}
	if !reflect.DeepEqual(kinds, []string{EventOperatorEnrol, EventOperatorAllow, EventOperatorRevoke, EventOperatorRemove}) {
		t.Errorf("events of alice: %v", kinds)
	}
}

func TestOneKeyOneIdentity(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	pr := PortRange{20000, 20099}
	devKey, opKey := newEd25519(t), newEd25519(t)
	if _, err := s.AddDevice(ctx, "pi", devKey, nil, pr); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddOperator(ctx, "alice", devKey, nil); !errors.Is(err, ErrDuplicateKey) {
		t.Errorf("operator with a device's key: %v, want ErrDuplicateKey", err)
	}
	if _, err := s.AddOperator(ctx, "alice", opKey, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddDevice(ctx, "pi2", opKey, nil, pr); !errors.Is(err, ErrDuplicateKey) {
		t.Errorf("device with an operator's key: %v, want ErrDuplicateKey", err)
	}
	if _, err := s.AddOperator(ctx, "bob", opKey, nil); !errors.Is(err, ErrDuplicateKey) {
		t.Errorf("second operator with the same key: %v, want ErrDuplicateKey", err)
	}
	if _, err := s.AddOperator(ctx, "alice", newEd25519(t), nil); !errors.Is(err, ErrExists) {
		t.Errorf("name taken: %v, want ErrExists", err)
	}
	if n := countRows(t, s, "operators"); n != 1 {
		t.Errorf("%d operators, want 1", n)
	}
	if n := countRows(t, s, "devices"); n != 1 {
		t.Errorf("%d devices, want 1", n)
	}
}

func TestOperatorBadInputChangesNothing(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	before := countRows(t, s, "events")
	for _, tc := range []struct {
		name  string
		allow []string
	}{
		{"Alice", nil},
		{"alice;rm", nil},
		{"", nil},
		{"alice", []string{"site=lyon", "pi-["}},
		{"alice", []string{"x=y z"}},
	} {
		if _, err := s.AddOperator(ctx, tc.name, newEd25519(t), tc.allow); !errors.Is(err, ErrInvalid) {
			t.Errorf("AddOperator(%q, %q) = %v, want ErrInvalid", tc.name, tc.allow, err)
		}
	}
	if _, err := s.AddOperator(ctx, "alice", nil, nil); !errors.Is(err, ErrInvalid) {
		t.Errorf("nil key: %v", err)
	}
	if n := countRows(t, s, "operators"); n != 0 {
		t.Errorf("%d operators after refusals", n)
	}
	if _, err := s.AddOperator(ctx, "alice", newEd25519(t), []string{"pi-*"}); err != nil {
		t.Fatal(err)
	}
	mid := countRows(t, s, "events")
	if _, err := s.AllowOperator(ctx, "alice", "bad sel"); !errors.Is(err, ErrInvalid) {
		t.Errorf("allow bad selector: %v", err)
	}
	if _, err := s.DenyOperator(ctx, "alice", "site=paris"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deny a selector not on the list: %v", err)
	}
	if _, err := s.AllowOperator(ctx, "nobody", "pi-*"); !errors.Is(err, ErrNotFound) {
		t.Errorf("allow for an unknown operator: %v", err)
	}
	if _, err := s.AllowOperator(ctx, "alice", "pi-*"); err != nil {
		t.Errorf("allow what is allowed: %v", err)
	}
	if got := countRows(t, s, "events"); got != mid || mid != before+1 {
		t.Errorf("events: %d before, %d after enrol, %d after refusals", before, mid, got)
	}
	if n := countRows(t, s, "revocations"); n != 0 {
		t.Errorf("%d revocations after refusals", n)
	}
}

func TestDenyAndLabelsNarrowReach(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	fleet(t, s)
	key := newEd25519(t)
	if _, err := s.AddOperator(ctx, "alice", key, []string{"site=lyon", "pi-*"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddOperator(ctx, "bob", newEd25519(t), []string{"role=nas"}); err != nil {
		t.Fatal(err)
	}
	seq, _ := s.RevocationSeq(ctx)

	// pi-lyon loses site=lyon, but pi-* still reaches it: no revocation.
	d, err := s.SetDeviceLabels(ctx, "pi-lyon", map[string]string{"floor": "2"}, []string{"site"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(d.Labels, map[string]string{"floor": "2"}) {
		t.Fatalf("labels = %v", d.Labels)
	}
	if revs, _ := s.Revocations(ctx, seq, 0); len(revs) != 0 {
		t.Fatalf("revocations = %+v, want none", revs)
	}
	// nas-lyon moves to paris: alice loses it, bob (role=nas) does not.
	if _, err := s.SetDeviceLabels(ctx, "nas-lyon", map[string]string{"site": "paris"}, nil); err != nil {
		t.Fatal(err)
	}
	revs, _ := s.Revocations(ctx, seq, 0)
	if len(revs) != 1 || revs[0].Operator != "alice" || revs[0].Reason != RevocationChanged {
		t.Fatalf("revocations = %+v, want alice changed", revs)
	}
	_, open, _ := s.OperatorAccess(ctx, Fingerprint(key))
	for _, p := range open {
		if p.Device == "nas-lyon" {
			t.Errorf("alice still reaches nas-lyon: %+v", open)
		}
	}
	// Denying a selector ends her sessions too.
	if _, err := s.DenyOperator(ctx, "alice", "pi-*"); err != nil {
		t.Fatal(err)
	}
	revs, _ = s.Revocations(ctx, seq, 0)
	if len(revs) != 2 || revs[1].Operator != "alice" || revs[1].Reason != RevocationChanged {
		t.Fatalf("after deny: %+v", revs)
	}
	if dev, _ := s.Device(ctx, "pi-lyon"); dev.Labels["floor"] != "2" {
		t.Errorf("labels not kept: %v", dev.Labels)
	}

	// Bad label changes change nothing.
	events := countRows(t, s, "events")
	for _, tc := range []struct {
		set    map[string]string
		remove []string
	}{
		{map[string]string{"Site": "x"}, nil},
		{map[string]string{"site": "a b"}, nil},
		{map[string]string{"ok": "1", "bad": "$(x)"}, nil},
		{nil, []string{"BAD"}},
		{map[string]string{"site": "x"}, []string{"site"}},
		{nil, nil},
	} {
		if _, err := s.SetDeviceLabels(ctx, "pi-paris", tc.set, tc.remove); !errors.Is(err, ErrInvalid) {
			t.Errorf("SetDeviceLabels(%v, %v) = %v, want ErrInvalid", tc.set, tc.remove, err)
		}
	}
	if _, err := s.SetDeviceLabels(ctx, "nope", map[string]string{"a": "b"}, nil); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown device: %v", err)
	}
	if got := countRows(t, s, "events"); got != events {
		t.Errorf("events grew from %d to %d on refused label changes", events, got)
	}
	if dev, _ := s.Device(ctx, "pi-paris"); !reflect.DeepEqual(dev.Labels, map[string]string{"site": "paris"}) {
		t.Errorf("pi-paris labels = %v", dev.Labels)
	}

	sel, _ := ParseSelector("site=paris")
	devs, err := s.DevicesMatching(ctx, []Selector{sel})
	if err != nil || len(devs) != 2 || devs[0].Name != "nas-lyon" || devs[1].Name != "pi-paris" {
		t.Errorf("DevicesMatching(site=paris) = %v, %v", devs, err)
	}
}

// A version-4 file written by a binary that ran the sessions migration
// (5) but recorded 4 opens, and the revocation sequence survives the
// rebuild of its table.
func TestMigrateLaggingVersionAndRevocationSeq(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "r.db")
	s, err := Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddDevice(ctx, "pi", newEd25519(t), nil, PortRange{20000, 20010}); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ctx, "pi"); err != nil {
		t.Fatal(err)
	}
	seq, _ := s.RevocationSeq(ctx)
	// Back to what that binary left: schema 5's tables, version 4.
	for _, q := range []string{
		`DROP TABLE master_pending`, `ALTER TABLE slaves DROP COLUMN operator_user`, `ALTER TABLE slaves DROP COLUMN operators`, // 8's
		`DROP TABLE load_samples`, `DROP INDEX events_kind_at`, // 7's
		`DROP TABLE operators`, `DROP INDEX events_operator_id`,
		`ALTER TABLE events DROP COLUMN operator`, `ALTER TABLE devices DROP COLUMN labels`,
		`UPDATE schema_version SET version = 4`,
	} {
		if _, err := s.db.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	s.Close()
	s, err = Open(ctx, path)
	if err != nil {
		t.Fatalf("reopening a lagging version-4 file: %v", err)
	}
	defer s.Close()
	if got, _ := s.RevocationSeq(ctx); got != seq {
		t.Errorf("revocation seq %d after migration, want %d", got, seq)
	}
	if _, err := s.AddOperator(ctx, "alice", newEd25519(t), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveOperator(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.RevocationSeq(ctx); got != seq+1 {
		t.Errorf("next revocation seq %d, want %d", got, seq+1)
	}
}

func TestFreshRevocationSeqAfterRebuild(t *testing.T) {
	ctx := context.Background()
	s, _ := openTemp(t)
	if seq, _ := s.RevocationSeq(ctx); seq != 1 {
		t.Fatalf("empty log seq = %d, want 1", seq)
	}
	if _, err := s.AddOperator(ctx, "alice", newEd25519(t), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RevokeOperator(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if revs, _ := s.Revocations(ctx, 1, 0); len(revs) != 1 || revs[0].Seq != 2 {
		t.Fatalf("first revocation: %+v, want seq 2", revs)
	}
}

func TestSchemaVersionIsMigrationCount(t *testing.T) {
	if SchemaVersion != len(migrations) {
		t.Fatalf("SchemaVersion = %d, but there are %d migrations", SchemaVersion, len(migrations))
	}
}
