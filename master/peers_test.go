package master

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// twoMasters starts two masters on one registry (each with its own store
// handle, as two processes have), on one fake clock. Their peer loops are
// off: the tests call syncPeers themselves, so that every step is
// deterministic.
func twoMasters(t *testing.T) (a, b *testEnv) {
	t.Helper()
	loc := testkit.RegistryLocation(t)
	clock := &fakeClock{t: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)}
	var envs [2]*testEnv
	for i := range envs {
		st, err := registry.Open(context.Background(), loc)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		envs[i] = newEnvOn(t, st, clock, func(c *Config) { c.PeerSync = -1 })
		envs[i].srv.id = fmt.Sprintf("master-%d", i)
	}
	return envs[0], envs[1]
}

// syncAll brings every master's view up to date with the others': two
// rounds, as the first master of the first round reads before the others
// have shared. (Running, each master is at most one PeerSync behind.)
func syncAll(t *testing.T, envs ...*testEnv) {
	t.Helper()
	for range 2 {
		for _, e := range envs {
			if err := e.srv.syncPeers(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A slave that beats to one master is live on the other after a sync, and
// the grants of each count as load on the other: two masters fill two
// slaves exactly to capacity between them, and refuse the next device, as
// one master would. Without the shared counts, B would see the slaves
// empty and grant past capacity.
func TestPeersShareLiveViewAndPendingGrants(t *testing.T) {
	a, b := twoMasters(t)
	a.beat("s1", heartbeatOf(4))
	b.beat("s2", heartbeatOf(4))
	var keys []string
	for i := range 9 {
		keys = append(keys, a.enrol(fmt.Sprintf("d%d", i)))
	}
	resp, _ := b.do("POST", "/slots", "", b.signed(keys[0]))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("slot on B before any sync = %d, want 200 (B knows s2)", resp.StatusCode)
	}
	syncAll(t, a, b)
	if alive := b.srv.live.Alive(); !alive["s1"] || !alive["s2"] {
		t.Fatalf("B's live slaves after a sync = %v, want s1 (beats to A) and s2", alive)
	}
	count := map[string]int{}
	count[b.srv.live.slaves["s2"].name]++ // d0's grant above went to s2, B's only slave then
	for i := 1; i < 8; i++ {
		e := a
		if i%2 == 0 {
			e = b
		}
		s := e.slot(keys[i])
		count[s.Slave]++
		syncAll(t, a, b)
	}
	if count["s1"] != 4 || count["s2"] != 4 {
		t.Errorf("grants over two masters = %v, want 4 on each slave of capacity 4", count)
	}
	for _, e := range []*testEnv{a, b} {
		resp, body := e.do("POST", "/slots", "", e.signed(keys[8]))
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Errorf("9th device on a full cluster = %d %s, want 503", resp.StatusCode, body)
		}
	}
	// The tunnels show up in s1's heartbeat to A: their grants stop
	// counting on B too, and B sees which devices s1 holds.
	var tunnels []wire.Tunnel
	for i := range 8 {
		name := fmt.Sprintf("d%d", i)
		if dev, _ := a.store.Device(context.Background(), name); dev.LastSlave == "s1" {
			tunnels = append(tunnels, wire.Tunnel{Device: name, Forward: "ssh", Port: dev.Forwards[0].RemotePort})
		}
	}
	if len(tunnels) != 4 {
		t.Fatalf("devices last sent to s1: %d, want 4", len(tunnels))
	}
	hb := heartbeatOf(8, tunnels...)
	hb.OperatorUser = "mas4h-op"
	a.clock.Advance(time.Second)
	a.beat("s1", hb)
	syncAll(t, a, b)
	if got := b.srv.live.OwnPending()["s1"]; got != 0 {
		t.Errorf("B's pending on s1 after s1 listed every tunnel = %d, want 0", got)
	}
	r, ok := b.srv.live.Reach(tunnels[0].Device, "")
	if !ok || r.slave != "s1" || r.user != "mas4h-op" {
		t.Errorf("B's reach of %s = %+v %v, want s1 as mas4h-op (learnt from A's heartbeat)", tunnels[0].Device, r, ok)
	}
	// s1 now has room (capacity 8, 4 tunnels): the 9th device goes there
	// whichever master it asks.
	if s := b.slot(keys[8]); s.Slave != "s1" {
		t.Errorf("9th device after s1 grew = %s, want s1", s.Slave)
	}
}

// A slave one master finds silent is dead on the other after a sync, and
// back on both when it beats again to either.
func TestPeersShareDeath(t *testing.T) {
	a, b := twoMasters(t)
	ak := a.enrol("d1")
	a.beat("s1", heartbeatOf(10))
	syncAll(t, a, b)
	a.clock.Advance(16 * time.Second) // past three intervals of 5 s
	b.srv.checkSlaves(context.Background())
	syncAll(t, a, b)
	if alive := a.srv.live.Alive(); alive["s1"] {
		t.Errorf("A still counts s1 alive after B marked it dead")
	}
	if down := a.events("?kind=slave-down"); len(down) != 1 {
		t.Errorf("slave-down events = %d, want 1 (marked once, by one master)", len(down))
	}
	a.srv.checkSlaves(context.Background()) // A found it silent too: no second event
	if down := a.events("?kind=slave-down"); len(down) != 1 {
		t.Errorf("slave-down events after A's check = %d, want 1", len(down))
	}
	b.beat("s1", heartbeatOf(10))
	syncAll(t, a, b)
	if s := a.slot(ak); s.Slave != "s1" {
		t.Errorf("slot on A after s1 beat to B = %s", s.Slave)
	}
}

// A slave whose first heartbeat comes in while a sync reads the store is
// not forgotten by that sync; one removed through another master is.
func TestPeersMergeKeepsASlaveHeardDuringTheRead(t *testing.T) {
	l, clock := newLive(t)
	readAt := clock.Now()
	clock.Advance(time.Millisecond)
	heard(l, clock, "new", 10) // after the read began: the read did not see it
	heard(l, clock, "old", 10)
	old := registry.Slave{Name: "old", LastSeen: clock.Now(), Alive: true, Capacity: 10}
	l.Merge([]registry.Slave{old}, nil, readAt)
	if alive := l.Alive(); !alive["new"] || !alive["old"] {
		t.Errorf("after a merge that began before new's first heartbeat: %v, want both", alive)
	}
	clock.Advance(time.Second)
	l.Merge([]registry.Slave{old}, nil, clock.Now())
	if alive := l.Alive(); alive["new"] {
		t.Errorf("a slave missing from a later read is still live: %v", alive)
	}
}
