package reaper

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authlog"
	"github.com/mas4h/mas4h/sshd/probe"
	"github.com/mas4h/mas4h/sshd/sessions"
)

// The fakes: a session table the test edits, leases, a killer that takes
// the session out of the table, a prober with a verdict per port, an event
// log and a clock that moves only when the reaper waits.

type fakeTable struct {
	mu   sync.Mutex
	list []sessions.Session
}

func (f *fakeTable) Sessions() ([]sessions.Session, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.list), nil
}

func (f *fakeTable) add(s sessions.Session) {
	f.mu.Lock()
	f.list = append(f.list, s)
	f.mu.Unlock()
}

func (f *fakeTable) remove(pid int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.list = slices.DeleteFunc(f.list, func(s sessions.Session) bool { return s.MonitorPID == pid })
}

func (f *fakeTable) held(port int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.list {
		if slices.Contains(s.Ports, port) {
			return true
		}
	}
	return false
}

type fakeLeases map[int]Lease

func (f fakeLeases) Leases(context.Context) (map[int]Lease, error) { return f, nil }

func (f fakeLeases) Owner(_ context.Context, fp string) (registry.Device, bool, error) {
	for _, l := range f {
		if l.Device.Fingerprint == fp {
			return l.Device, true, nil
		}
	}
	return registry.Device{}, false, nil
}

type fakeKiller struct {
	table  *fakeTable
	mu     sync.Mutex
	killed []int
}

func (f *fakeKiller) Kill(_ context.Context, s sessions.Session) []int {
	f.mu.Lock()
	f.killed = append(f.killed, s.MonitorPID)
	f.mu.Unlock()
	f.table.remove(s.MonitorPID)
	return nil
}

func (f *fakeKiller) pids() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.killed)
}

type fakeProber struct {
	mu      sync.Mutex
	fail    map[int]error // port -> verdict; absent: healthy
	answers map[int][]error
	probes  map[int]int
}

func newProber() *fakeProber {
	return &fakeProber{fail: map[int]error{}, answers: map[int][]error{}, probes: map[int]int{}}
}

func (f *fakeProber) Probe(_ context.Context, _ probe.Probe, port int, _ time.Duration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.probes[port]++
	if q := f.answers[port]; len(q) > 0 {
		f.answers[port] = q[1:]
		return q[0]
	}
	return f.fail[port]
}

func (f *fakeProber) count(port int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.probes[port]
}

type event struct{ kind, device, detail string }

type fakeEvents struct {
	mu  sync.Mutex
	evs []event
}

func (f *fakeEvents) Report(_ context.Context, kind, device, detail string) {
	f.mu.Lock()
	f.evs = append(f.evs, event{kind, device, detail})
	f.mu.Unlock()
}

func (f *fakeEvents) find(kind, device string) (event, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, e := range f.evs {
		if e.kind == kind && e.device == device {
			return e, true
		}
	}
	return event{}, false
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.advance(d)
	ch := make(chan time.Time, 1)
	ch <- c.Now()
	return ch
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type rig struct {
	r      *Reaper
	table  *fakeTable
	leases fakeLeases
	killer *fakeKiller
	prober *fakeProber
	events *fakeEvents
	clock  *fakeClock
	ended  int
}

var t0 = time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)

func newRig(cfg Config) *rig {
	g := &rig{table: &fakeTable{}, leases: fakeLeases{}, prober: newProber(), events: &fakeEvents{}, clock: &fakeClock{now: t0}}
	g.killer = &fakeKiller{table: g.table}
	g.r = New(cfg, Deps{Sessions: g.table, Leases: g.leases, Killer: g.killer, Events: g.events, Prober: g.prober,
		PortHeld: g.table.held, Clock: g.clock, Ended: func() { g.ended++ }, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	return g
}

// device leases port to name with a forward probed by ssh-banner (target
// port 22) unless target says otherwise.
func (g *rig) device(name string, port int, target string) registry.Device {
	d := registry.Device{Name: name, Fingerprint: "SHA256:" + name, Status: registry.StatusActive,
		Forwards: []registry.Forward{{Name: "ssh", Target: target, RemotePort: port}}}
	g.leases[port] = Lease{d, d.Forwards[0]}
	return d
}

// session is an sshd session of pid on port, up since age ago.
func (g *rig) session(pid, port int, age time.Duration) sessions.Session {
	s := sessions.Session{MonitorPID: pid, PIDs: []int{pid, pid + 1}, Ports: []int{port}, Remote: "198.18.0.2:40000",
		Started: g.clock.Now().Add(-age)}
	g.table.add(s)
	return s
}

var errNoBanner = errors.New("no SSH banner")

// newest is the address of a device's new session in the newest-wins tests.
var newest = netip.MustParseAddrPort("198.18.0.9:50000")

// accepted tells the reaper that dev authenticated a new session (from
// newest), as sshd's log would, and waits for newest-wins to be done.
func (g *rig) accepted(dev registry.Device) {
	g.r.Accepted(context.Background(), authlog.Accepted{User: "mas4h-tunnel", Remote: newest, KeyType: "ED25519", Fingerprint: dev.Fingerprint})
	g.r.Wait()
	g.clock.advance(SupersedeEvery) // past the per-device rate limit
}

func TestReapPolicy(t *testing.T) {
	for _, c := range []struct {
		name     string
		failures int
		answers  []error // the probes' verdicts in order; then healthy
		age      time.Duration
		reaped   bool
		probes   int
	}{
		{"healthy", 2, nil, time.Hour, false, 1},
		{"fails twice: reaped", 2, []error{errNoBanner, errNoBanner}, time.Hour, true, 2},
		{"fails once, retry ok", 2, []error{errNoBanner}, time.Hour, false, 2},
		{"three failures wanted", 3, []error{errNoBanner, errNoBanner, errNoBanner}, time.Hour, true, 3},
		{"three wanted, two failed", 3, []error{errNoBanner, errNoBanner}, time.Hour, false, 3},
		{"young session: failures do not count", 2, []error{errNoBanner, errNoBanner}, time.Second, false, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := newRig(Config{Failures: c.failures})
			g.device("pi", 20001, "localhost:22")
			g.session(100, 20001, c.age)
			g.prober.answers[20001] = c.answers
			g.r.cycle(context.Background())
			if reaped := slices.Contains(g.killer.pids(), 100); reaped != c.reaped {
				t.Fatalf("reaped %v, want %v (killed %v)", reaped, c.reaped, g.killer.pids())
			}
			if n := g.prober.count(20001); n != c.probes {
				t.Errorf("%d probes, want %d", n, c.probes)
			}
			ev, ok := g.events.find("reap", "pi")
			if ok != c.reaped {
				t.Fatalf("reap event %v, want %v", ok, c.reaped)
			}
			if c.reaped {
				if want := fmt.Sprintf("reaped after %d failed probes of port 20001", c.failures); !strings.Contains(ev.detail, want) {
					t.Errorf("reap event %q lacks %q", ev.detail, want)
				}
				if g.ended != 1 {
					t.Errorf("Ended called %d times", g.ended)
				}
				// The next walk says why the tunnel went down.
				g.r.cycle(context.Background())
				if ev, ok := g.events.find("disconnect", "pi"); !ok || !strings.Contains(ev.detail, "reaped after") {
					t.Errorf("disconnect event %+v", ev)
				}
			}
		})
	}
}

// A young session is judged once its grace is over.
func TestReapAfterGrace(t *testing.T) {
	g := newRig(Config{})
	g.device("pi", 20001, "localhost:22")
	g.session(100, 20001, time.Second)
	g.prober.fail[20001] = errNoBanner
	g.r.cycle(context.Background())
	if len(g.killer.pids()) != 0 {
		t.Fatal("reaped within its grace")
	}
	g.clock.advance(DefaultGrace)
	g.r.cycle(context.Background())
	if !slices.Contains(g.killer.pids(), 100) {
		t.Fatal("not reaped after its grace")
	}
}

// A forward with no probe (an unknown service) is never probed, so never
// reaped by probes; a forward with a bad probe spec neither.
func TestUnprobedForwards(t *testing.T) {
	g := newRig(Config{})
	g.device("plc", 20001, "192.168.1.5:502")
	d := g.device("bad", 20002, "localhost:22")
	d.Forwards[0].Probe = "banner:("
	g.leases[20002] = Lease{d, d.Forwards[0]}
	g.session(100, 20001, time.Hour)
	g.session(200, 20002, time.Hour)
	g.prober.fail[20001], g.prober.fail[20002] = errNoBanner, errNoBanner
	g.r.cycle(context.Background())
	if len(g.killer.pids()) != 0 || g.prober.count(20001)+g.prober.count(20002) != 0 {
		t.Fatalf("killed %v, probes %v", g.killer.pids(), g.prober.probes)
	}
	if n := g.r.Count(); n != 2 {
		t.Errorf("%d tunnels, want 2", n)
	}
}

// Tunnels up before the first walk (a restarted daemon) get no connect
// event; later ones do, and so does their end.
func TestTunnelEvents(t *testing.T) {
	g := newRig(Config{})
	g.device("old", 20001, "localhost:22")
	g.device("new", 20002, "localhost:22")
	g.session(100, 20001, time.Hour)
	g.r.cycle(context.Background())
	if _, ok := g.events.find("connect", "old"); ok {
		t.Error("a tunnel found at start was reported as a new connection")
	}
	g.session(200, 20002, time.Minute)
	g.r.cycle(context.Background())
	if ev, ok := g.events.find("connect", "new"); !ok || !strings.Contains(ev.detail, "port 20002 from 198.18.0.2:40000") {
		t.Errorf("connect event %+v", ev)
	}
	g.table.remove(200)
	g.r.cycle(context.Background())
	if ev, ok := g.events.find("disconnect", "new"); !ok || !strings.Contains(ev.detail, "client closed") {
		t.Errorf("disconnect event %+v", ev)
	}
	tunnels := g.r.Tunnels(context.Background(), time.Hour)
	if len(tunnels) != 1 || tunnels[0].Device != "old" || tunnels[0].Port != 20001 || tunnels[0].LastProbe == nil || !tunnels[0].LastProbe.OK {
		t.Errorf("tunnels %+v", tunnels)
	}
	// A listener that is no lease (another service of the host) is no tunnel.
	g.session(300, 31000, time.Hour)
	if n := len(g.r.Tunnels(context.Background(), 0)); n != 1 {
		t.Errorf("%d tunnels after an unleased listener appeared", n)
	}
}

func TestNewestWins(t *testing.T) {
	for _, c := range []struct {
		policy  string
		healthy bool
		ended   bool
		probed  bool
	}{
		{NewestWinsStale, false, true, true},
		{NewestWinsStale, true, false, true},
		{NewestWinsAlways, true, true, false},
		{NewestWinsOff, false, false, false},
	} {
		t.Run(fmt.Sprintf("%s/healthy=%v", c.policy, c.healthy), func(t *testing.T) {
			g := newRig(Config{NewestWins: c.policy})
			dev := g.device("pi", 20001, "localhost:22")
			g.session(100, 20001, time.Hour)
			g.session(300, 20999, time.Hour) // another device's session
			if !c.healthy {
				g.prober.fail[20001] = errNoBanner
			}
			g.accepted(dev)
			if ended := slices.Contains(g.killer.pids(), 100); ended != c.ended {
				t.Errorf("older session ended %v, want %v", ended, c.ended)
			}
			if slices.Contains(g.killer.pids(), 300) {
				t.Error("another device's session was ended")
			}
			if probed := g.prober.count(20001) > 0; probed != c.probed {
				t.Errorf("probed %v, want %v", probed, c.probed)
			}
			if _, ok := g.events.find("kill", "pi"); ok != c.ended {
				t.Errorf("kill event %v, want %v", ok, c.ended)
			}
		})
	}
}

// Newest-wins does nothing when the device's port is free (its first
// connection), and leaves a session it cannot judge (no probe) alone.
func TestNewestWinsNothingToJudge(t *testing.T) {
	g := newRig(Config{})
	dev := g.device("pi", 20001, "localhost:22")
	g.accepted(dev)
	plc := g.device("plc", 20002, "192.168.1.5:502")
	g.session(100, 20002, time.Hour)
	g.prober.fail[20002] = errNoBanner
	g.accepted(plc)
	if len(g.killer.pids()) != 0 || g.prober.count(20001)+g.prober.count(20002) != 0 {
		t.Fatalf("killed %v, probes %v", g.killer.pids(), g.prober.probes)
	}
}

// A revoked device loses every session that holds one of its ports.
func TestEndDevice(t *testing.T) {
	g := newRig(Config{})
	dev := registry.Device{Name: "nas", Forwards: []registry.Forward{{Name: "ssh", RemotePort: 20001}, {Name: "web", RemotePort: 20002}}}
	g.session(100, 20001, time.Hour)
	g.session(200, 20002, time.Hour)
	g.session(300, 20003, time.Hour)
	g.r.EndDevice(context.Background(), dev, "device revoked")
	g.r.Wait()
	killed := g.killer.pids()
	slices.Sort(killed)
	if !slices.Equal(killed, []int{100, 200}) {
		t.Fatalf("killed %v, want [100 200]", killed)
	}
	if ev, ok := g.events.find("kill", "nas"); !ok || !strings.Contains(ev.detail, "device revoked") {
		t.Errorf("kill event %+v", ev)
	}
}
