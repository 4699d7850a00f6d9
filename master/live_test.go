package master

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mas4h/mas4h/registry"
)

// Unit tests of the live view, on a fake clock: slaves beat every 5 s,
// grants count for 30 s.
const (
	liveInterval = 5 * time.Second
	liveTTL      = 30 * time.Second
)

func newLive(t *testing.T, known ...registry.Slave) (*liveSlaves, *fakeClock) {
	t.Helper()
	clock := &fakeClock{t: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)}
	return newLiveSlaves(clock.Now, liveInterval, liveTTL, known), clock
}

// heard gives l slave name's heartbeat now, with capacity and tunnels of devices.
func heard(l *liveSlaves, clock *fakeClock, name string, capacity int, devices ...string) {
	r := registry.SlaveReport{Name: name, Host: "h-" + name, Port: 2222, User: "mas4h-tunnel",
		HostKeys: []string{hostKey}, Capacity: capacity, At: clock.Now()}
	for i, d := range devices {
		r.Tunnels = append(r.Tunnels, registry.Tunnel{Slave: name, Device: d, Forward: "ssh", Port: 20000 + i})
	}
	l.Heard(r)
}

// devWith is device name with forwards forwards, last sent to slave last.
func devWith(name string, forwards int, last string) registry.Device {
	d := registry.Device{Name: name, LastSlave: last}
	for i := range forwards {
		d.Forwards = append(d.Forwards, registry.Forward{Name: fmt.Sprint("f", i), Target: "localhost:22", RemotePort: 20000 + i})
	}
	return d
}

// pickOn asks for a slot for d and returns the slave, "" for none.
func pickOn(t *testing.T, l *liveSlaves, d registry.Device) string {
	t.Helper()
	slot, ok := l.Pick(d)
	if !ok {
		return ""
	}
	if slot.Device != d.Name || slot.Host != "h-"+slot.Slave || slot.Port != 2222 || slot.User != "mas4h-tunnel" ||
		len(slot.HostKeys) != 1 || len(slot.Forwards) != len(d.Forwards) {
		t.Errorf("slot for %s = %+v", d.Name, slot)
	}
	return slot.Slave
}

func wantPick(t *testing.T, l *liveSlaves, d registry.Device, want string) {
	t.Helper()
	if got := pickOn(t, l, d); got != want {
		t.Errorf("slot for %s on %q, want %q", d.Name, got, want)
	}
}

func TestLiveGrantCountsUntilItsTunnelShows(t *testing.T) {
	l, clock := newLive(t)
	heard(l, clock, "a", 1)
	heard(l, clock, "b", 1)
	wantPick(t, l, devWith("d1", 1, ""), "a")
	wantPick(t, l, devWith("d2", 1, ""), "b") // a is full with d1's grant
	wantPick(t, l, devWith("d3", 1, ""), "")
	heard(l, clock, "a", 1, "d1") // d1's tunnel: now load as a tunnel
	wantPick(t, l, devWith("d3", 1, ""), "")
	heard(l, clock, "a", 1) // d1 left; its grant was used up, not pending
	wantPick(t, l, devWith("d3", 1, ""), "a")
}

func TestLiveGrantExpires(t *testing.T) {
	l, clock := newLive(t)
	heard(l, clock, "a", 1)
	wantPick(t, l, devWith("d1", 1, ""), "a")
	for clock.Now().Before(time.Date(2025, 6, 1, 12, 0, 30, 0, time.UTC)) {
		clock.Advance(liveInterval)
		heard(l, clock, "a", 1) // d1 never shows up
		wantPick(t, l, devWith("d2", 1, ""), "")
	}
	clock.Advance(time.Second)
	heard(l, clock, "a", 1)
	wantPick(t, l, devWith("d2", 1, ""), "a")
}

// A grant weighs as many tunnels as the device has forwards.
func TestLiveGrantWeighsItsForwards(t *testing.T) {
	l, clock := newLive(t)
	heard(l, clock, "a", 3)
	wantPick(t, l, devWith("d1", 2, ""), "a")
	wantPick(t, l, devWith("d2", 1, ""), "a")
	wantPick(t, l, devWith("d3", 1, ""), "")
}

func TestLiveGrantAgainMovesThePendingLoad(t *testing.T) {
	l, clock := newLive(t)
	heard(l, clock, "a", 1)
	heard(l, clock, "b", 1)
	wantPick(t, l, devWith("d1", 1, ""), "a")
	// d1 asks again before connecting: a is full with d1's own grant, so
	// d1 goes to b, and its grant on a goes with it.
	wantPick(t, l, devWith("d1", 1, "a"), "b")
	wantPick(t, l, devWith("d2", 1, ""), "a")
	wantPick(t, l, devWith("d3", 1, ""), "")
}

// A device that asks again while its grant is pending did not get
// through: it is sent elsewhere even when its slave is the least busy,
// and back to it only when no other slave has room.
func TestLiveRetryAvoidsTheSlaveItCouldNotReach(t *testing.T) {
	l, clock := newLive(t)
	heard(l, clock, "a", 100)
	heard(l, clock, "b", 100, "x1", "x2", "x3")
	wantPick(t, l, devWith("d1", 1, ""), "a")
	clock.Advance(2 * time.Second)
	wantPick(t, l, devWith("d1", 1, "a"), "b")
	// Connected to b (its heartbeat lists d1): the next ask sticks to b.
	heard(l, clock, "b", 100, "x1", "x2", "x3", "d1")
	wantPick(t, l, devWith("d1", 1, "b"), "b")
	// b dies: d1 connected there (its heartbeat listed d1) asks again,
	// and again before b beats: the second ask goes elsewhere.
	clock.Advance(time.Second)
	wantPick(t, l, devWith("d1", 1, "b"), "b") // the first ask after the drop sticks
	clock.Advance(time.Second)
	wantPick(t, l, devWith("d1", 1, "b"), "a") // b has not beaten since: not there again
	// Only a has room: a retry goes back to a.
	l2, clock2 := newLive(t)
	heard(l2, clock2, "a", 10)
	heard(l2, clock2, "b", 1, "x1")
	wantPick(t, l2, devWith("d2", 1, ""), "a")
	wantPick(t, l2, devWith("d2", 1, "a"), "a")
}

// A device whose tunnel the slave already lists adds no pending load there.
func TestLiveGrantOfAConnectedDeviceAddsNothing(t *testing.T) {
	l, clock := newLive(t)
	heard(l, clock, "a", 2, "d1")
	wantPick(t, l, devWith("d1", 1, "a"), "a")
	wantPick(t, l, devWith("d2", 1, ""), "a")
	wantPick(t, l, devWith("d3", 1, ""), "")
}

func TestLiveUnpick(t *testing.T) {
	l, clock := newLive(t)
	heard(l, clock, "a", 1)
	wantPick(t, l, devWith("d1", 1, ""), "a")
	l.Unpick("d1", "a")
	l.Unpick("d1", "nope") // unknown slave: nothing
	wantPick(t, l, devWith("d2", 1, ""), "a")
}

func TestLiveDeadSlaveGetsNothing(t *testing.T) {
	l, clock := newLive(t)
	heard(l, clock, "a", 10)
	heard(l, clock, "b", 10)
	wantPick(t, l, devWith("d1", 1, ""), "a")
	clock.Advance(3 * liveInterval)
	heard(l, clock, "b", 10)
	if s := l.Silent(); len(s) != 0 {
		t.Fatalf("silent after exactly three intervals: %+v", s)
	}
	clock.Advance(time.Second)
	// Not marked yet, but past the deadline: dispatch passes it over.
	wantPick(t, l, devWith("d2", 1, "a"), "b")
	if alive := l.Alive(); alive["a"] || !alive["b"] {
		t.Errorf("alive = %v, want b only", alive)
	}
	s := l.Silent()
	if len(s) != 1 || s[0].Name != "a" || !s[0].LastSeen.Equal(clock.Now().Add(-3*liveInterval-time.Second)) {
		t.Fatalf("silent = %+v", s)
	}
	if !l.MarkDead(s[0]) || l.MarkDead(s[0]) {
		t.Error("MarkDead: want true once, then false")
	}
	if s := l.Silent(); len(s) != 0 {
		t.Errorf("silent after marking = %+v", s)
	}
	wantPick(t, l, devWith("d3", 1, "a"), "b")
	// Back: d1's grant, not expired yet, was forgotten when a died.
	heard(l, clock, "a", 1)
	wantPick(t, l, devWith("d4", 1, "a"), "a")
}

func TestLiveHeartbeatWinsOverMarkingDead(t *testing.T) {
	l, clock := newLive(t)
	heard(l, clock, "a", 1)
	clock.Advance(4 * liveInterval)
	s := l.Silent()
	if len(s) != 1 {
		t.Fatalf("silent = %+v", s)
	}
	heard(l, clock, "a", 1) // arrives while the store marks it dead
	if l.MarkDead(s[0]) {
		t.Error("MarkDead won over a newer heartbeat")
	}
	if !l.Alive()["a"] {
		t.Error("a not alive after its heartbeat")
	}
	wantPick(t, l, devWith("d1", 1, ""), "a")
}

// A restarted master dispatches at once to the slaves alive in its store
// and heard from within startGrace: they count as heard at its start, and
// are found silent only if they do not beat within DeadAfter intervals
// (after a 45 s outage, every slot request was a 503 for 20 s and more).
func TestLiveStartsFromTheStore(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	l, clock := newLive(t,
		registry.Slave{Name: "a", Host: "h-a", Port: 2222, User: "mas4h-tunnel", HostKeys: []string{hostKey}, Capacity: 1, Tunnels: 1, LastSeen: now, Alive: true},
		registry.Slave{Name: "b", Host: "h-b", Port: 2222, User: "mas4h-tunnel", HostKeys: []string{hostKey}, Capacity: 5, LastSeen: now, Alive: false},
		registry.Slave{Name: "c", Host: "h-c", Port: 2222, User: "mas4h-tunnel", HostKeys: []string{hostKey}, Capacity: 5, LastSeen: now.Add(-45 * time.Second), Alive: true},
		registry.Slave{Name: "d", Host: "h-d", Port: 2222, User: "mas4h-tunnel", HostKeys: []string{hostKey}, Capacity: 5, LastSeen: now.Add(-startGrace - time.Second), Alive: true},
	)
	if alive := l.Alive(); len(alive) != 2 || !alive["a"] || !alive["c"] {
		t.Errorf("alive = %v, want a and c (b dead, d silent too long)", alive)
	}
	if s := l.Silent(); len(s) != 1 || s[0].Name != "d" || !s[0].LastSeen.Equal(now.Add(-startGrace-time.Second)) {
		t.Errorf("silent = %+v, want d with its last heartbeat", s)
	}
	wantPick(t, l, devWith("d1", 1, ""), "c") // a is full with its tunnel, b dead
	// c never beats: after DeadAfter intervals it is silent, with its real
	// last heartbeat; a beats and stays.
	clock.Advance(registry.DeadAfter*liveInterval + time.Second)
	heard(l, clock, "a", 1)
	if s := l.Silent(); len(s) != 2 || s[0].Name == "a" || s[1].Name == "a" {
		t.Errorf("silent after %d intervals = %+v, want c and d", registry.DeadAfter, s)
	}
}

// Concurrent picks see each other's grants: no slave gets more than its
// capacity, and every device gets a slot while there is room.
func TestLiveConcurrentPicks(t *testing.T) {
	l, clock := newLive(t)
	const slaves, capacity = 4, 25
	for i := range slaves {
		heard(l, clock, fmt.Sprint("s", i), capacity)
	}
	var (
		mu  sync.Mutex
		got = map[string]int{}
		wg  sync.WaitGroup
	)
	for i := range slaves * capacity {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slot, ok := l.Pick(devWith(fmt.Sprint("d", i), 1, ""))
			mu.Lock()
			defer mu.Unlock()
			if !ok {
				got[""]++
				return
			}
			got[slot.Slave]++
		}()
	}
	wg.Wait()
	for i := range slaves {
		if n := got[fmt.Sprint("s", i)]; n != capacity {
			t.Errorf("s%d got %d devices, want %d: %v", i, n, capacity, got)
		}
	}
	if got[""] != 0 {
		t.Errorf("%d devices got no slot", got[""])
	}
	wantPick(t, l, devWith("one-more", 1, ""), "")
}
