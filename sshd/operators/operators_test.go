package operators

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/sshd/authlog"
	"github.com/mas4h/mas4h/sshd/sessions"
	"github.com/mas4h/mas4h/sshd/source"
)

// An operator session that opens a device port is an operator-connect
// event and a live session in the heartbeat; when it ends, an
// operator-disconnect with its duration; a session of a key that is no
// longer accepted, or that has a port open it may no longer open, is
// ended; a device's session (the tunnel user) is not the tracker's.
func TestTracker(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	op := sessions.Session{MonitorPID: 10, PIDs: []int{10, 11}, Remote: "192.0.2.7:50000", Started: now}
	dev := sessions.Session{MonitorPID: 20, PIDs: []int{20}, Remote: "192.0.2.8:40000", Started: now}
	list := []sessions.Session{op, dev}
	opens := map[int][]int{11: {20001}}
	grant := source.Grant{Operator: "alice", Fingerprint: "SHA256:alice", Open: []wire.OpenPort{{Device: "pi-lyon", Forward: "ssh", Port: 20001}}}
	accepted := true
	var events []string
	var ended []int
	tr := New("mas4h-operator", Deps{
		Sessions: func() ([]sessions.Session, error) { return list, nil },
		Opens: func(pids []int) (map[int][]int, error) {
			for _, p := range pids {
				if p == 20 {
					t.Error("asked about a device session's connections")
				}
			}
			return opens, nil
		},
		Keys: func(r netip.AddrPort) (authlog.Accepted, bool) {
			switch r.String() {
			case "192.0.2.7:50000":
				return authlog.Accepted{User: "mas4h-operator", Fingerprint: "SHA256:alice"}, true
			case "192.0.2.8:40000":
				return authlog.Accepted{User: "mas4h-tunnel", Fingerprint: "SHA256:pi"}, true
			}
			return authlog.Accepted{}, false
		},
		Grant: func(context.Context, string) (source.Grant, bool, error) { return grant, accepted, nil },
		Report: func(_ context.Context, kind, operator, device, detail string) {
			events = append(events, kind+" "+operator+" "+device+": "+detail)
		},
		End: func(_ context.Context, s sessions.Session) { ended = append(ended, s.MonitorPID) },
		Now: func() time.Time { return now },
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	ctx := context.Background()
	if err := tr.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	if len(events) != 1 || !strings.HasPrefix(events[0], "operator-connect alice pi-lyon: ssh (port 20001) from 192.0.2.7:50000") {
		t.Fatalf("events %q", events)
	}
	live := tr.Live()
	if len(live) != 1 || live[0].Operator != "alice" || len(live[0].Open) != 1 || live[0].Open[0].Device != "pi-lyon" {
		t.Fatalf("live %+v", live)
	}
	tr.Cycle(ctx)
	if len(events) != 1 {
		t.Errorf("a second walk reported again: %q", events)
	}
	now = now.Add(90 * time.Second)
	list = []sessions.Session{dev}
	tr.Cycle(ctx)
	if len(events) != 2 || !strings.HasPrefix(events[1], "operator-disconnect alice pi-lyon: ssh (port 20001)") || !strings.HasSuffix(events[1], "for 1m30s") {
		t.Fatalf("events %q", events)
	}
	if len(tr.Live()) != 0 {
		t.Errorf("live after the end: %+v", tr.Live())
	}

	// A port it may no longer open; then a key no longer accepted.
	list = []sessions.Session{op, dev}
	grant.Open = nil
	tr.Cycle(ctx)
	if len(ended) != 1 || ended[0] != 10 {
		t.Fatalf("ended %v, want the operator session", ended)
	}
	list, ended = []sessions.Session{dev}, nil
	tr.Cycle(ctx)
	list, accepted, opens = []sessions.Session{op, dev}, false, map[int][]int{}
	tr.Cycle(ctx)
	if len(ended) != 1 || ended[0] != 10 {
		t.Fatalf("ended %v, want the revoked operator's session", ended)
	}
}

// A device revoked or removed ends the operator sessions whose grant had
// its port (their permitopen line, fixed at login, names it, and a freed
// port may be leased to another device), whether or not they use it, and
// leaves the others.
func TestTrackerEndPorts(t *testing.T) {
	alice := sessions.Session{MonitorPID: 10, PIDs: []int{10}, Remote: "192.0.2.7:50000"}
	bob := sessions.Session{MonitorPID: 30, PIDs: []int{30}, Remote: "192.0.2.9:50000"}
	grants := map[string]source.Grant{
		"SHA256:alice": {Operator: "alice", Open: []wire.OpenPort{{Device: "pi-lyon", Forward: "ssh", Port: 20001}, {Device: "pi-paris", Forward: "ssh", Port: 20002}}},
		"SHA256:bob":   {Operator: "bob", Open: []wire.OpenPort{{Device: "pi-paris", Forward: "ssh", Port: 20002}}},
	}
	var ended []int
	tr := New("mas4h-operator", Deps{
		Sessions: func() ([]sessions.Session, error) { return []sessions.Session{alice, bob}, nil },
		Opens:    func([]int) (map[int][]int, error) { return map[int][]int{30: {20002}}, nil },
		Keys: func(r netip.AddrPort) (authlog.Accepted, bool) {
			if r.String() == alice.Remote {
				return authlog.Accepted{User: "mas4h-operator", Fingerprint: "SHA256:alice"}, true
			}
			return authlog.Accepted{User: "mas4h-operator", Fingerprint: "SHA256:bob"}, true
		},
		Grant:  func(_ context.Context, fp string) (source.Grant, bool, error) { return grants[fp], true, nil },
		Report: func(context.Context, string, string, string, string) {},
		End:    func(_ context.Context, s sessions.Session) { ended = append(ended, s.MonitorPID) },
		Log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	ctx := context.Background()
	if err := tr.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	tr.EndPorts(ctx, []int{20001}, "pi-lyon removed")
	if len(ended) != 1 || ended[0] != 10 {
		t.Fatalf("ended %v, want alice's session (10) only", ended)
	}
	tr.EndPorts(ctx, []int{20001, 20002}, "again")
	if len(ended) != 2 || ended[1] != 30 {
		t.Fatalf("ended %v, want bob's (30) next, alice's once", ended)
	}
}

// With no connection logged in as the operator user and no session
// followed, nothing is read. A login not followed yet is a walk of the
// whole table, and so is every cycle while a session is new; then the
// followed sessions alone are read (their monitor still running), until
// fullWalk passes or a login appears that they do not explain; a session
// whose monitor is gone ends its accesses without a walk.
func TestTrackerWalksOnlyWhenItMust(t *testing.T) {
	now := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	alice := sessions.Session{MonitorPID: 10, StartTick: 7, PIDs: []int{10, 11}, Remote: "192.0.2.7:50000", Started: now}
	bob := sessions.Session{MonitorPID: 30, StartTick: 9, PIDs: []int{30, 31}, Remote: "192.0.2.9:50000", Started: now}
	var list []sessions.Session
	var logins []netip.AddrPort
	alive := map[int]bool{}
	walks := 0
	var events []string
	tr := New("mas4h-operator", Deps{
		Sessions: func() ([]sessions.Session, error) { walks++; return list, nil },
		Opens:    func([]int) (map[int][]int, error) { return map[int][]int{11: {20001}, 31: {20001}}, nil },
		Keys: func(r netip.AddrPort) (authlog.Accepted, bool) {
			return authlog.Accepted{User: "mas4h-operator", Fingerprint: "SHA256:" + r.Addr().String()}, true
		},
		Logins: func(user string) []netip.AddrPort {
			if user != "mas4h-operator" {
				t.Errorf("asked about user %q", user)
			}
			return logins
		},
		Alive: func(pid int, tick uint64) bool { return alive[pid] && tick == map[int]uint64{10: 7, 30: 9}[pid] },
		Grant: func(_ context.Context, fp string) (source.Grant, bool, error) {
			return source.Grant{Operator: fp, Open: []wire.OpenPort{{Device: "pi-lyon", Forward: "ssh", Port: 20001}}}, true, nil
		},
		Report: func(_ context.Context, kind, _, _, _ string) { events = append(events, kind) },
		End:    func(context.Context, sessions.Session) { t.Error("ended a session") },
		Now:    func() time.Time { return now },
		Log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	ctx := context.Background()
	step := func(d time.Duration, wantWalks, wantEvents int, what string) {
		t.Helper()
		now = now.Add(d)
		if err := tr.Cycle(ctx); err != nil {
			t.Fatal(err)
		}
		if walks != wantWalks || len(events) != wantEvents {
			t.Fatalf("%s: %d walks, events %v; want %d walks, %d events", what, walks, events, wantWalks, wantEvents)
		}
	}
	step(0, 0, 0, "no operator logged in")
	logins, list, alive[10] = []netip.AddrPort{netip.MustParseAddrPort("192.0.2.7:50000")}, []sessions.Session{alice}, true
	step(time.Second, 1, 1, "alice logs in")
	step(time.Second, 2, 1, "alice's session is new")
	step(time.Second, 3, 1, "alice's session is new")
	step(time.Second, 3, 1, "alice followed alone")
	step(time.Second, 3, 1, "alice followed alone")
	logins = append(logins, netip.MustParseAddrPort("192.0.2.9:50000"))
	list, alive[30] = []sessions.Session{alice, bob}, true
	step(time.Second, 4, 2, "bob logs in")
	step(newSession-time.Second, 5, 2, "bob's session is new")
	step(time.Second, 5, 2, "both followed alone")
	step(fullWalk, 6, 2, "fullWalk passed")
	step(time.Second, 6, 2, "both followed alone")
	alive[30], logins, list = false, logins[:1], []sessions.Session{alice}
	step(time.Second, 6, 3, "bob's monitor gone")
	if events[2] != wire.EventOperatorDisconnect {
		t.Errorf("events %v, want bob's access ended", events)
	}
	alive[10], logins, list = false, nil, nil
	step(time.Second, 6, 4, "alice's monitor gone")
	step(time.Second, 6, 4, "no operator logged in")
}
