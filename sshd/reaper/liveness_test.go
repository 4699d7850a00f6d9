package reaper

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mas4h/mas4h/sshd/sessions"
)

// fakeTCP is the sessions' TCP states by connection inode (the tests give
// each session its pid as inode).
type fakeTCP struct {
	mu  sync.Mutex
	m   map[uint64]sessions.TCPState
	err error
}

func (f *fakeTCP) SampleTCP() (map[uint64]sessions.TCPState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return nil, f.err
	}
	out := map[uint64]sessions.TCPState{}
	for k, v := range f.m {
		out[k] = v
	}
	return out, nil
}

func (f *fakeTCP) set(pid int, s sessions.TCPState) {
	f.mu.Lock()
	f.m[uint64(pid)] = s
	f.mu.Unlock()
}

// A healthy idle client answered sshd's keepalive ago; a frozen one has
// said nothing for silent, though its kernel acknowledged sshd's last
// keepalive.
func healthyTCP(ago time.Duration) sessions.TCPState {
	return sessions.TCPState{Known: true, State: 1, LastDataRecv: ago, LastDataSent: ago, LastAckRecv: ago}
}

func frozenTCP(silent time.Duration) sessions.TCPState {
	return sessions.TCPState{Known: true, State: 1, LastDataRecv: silent, LastDataSent: silent - 6*time.Second, LastAckRecv: silent - 6*time.Second}
}

func newLiveRig(cfg Config) (*rig, *fakeTCP) {
	g := newRig(cfg)
	tcp := &fakeTCP{m: map[uint64]sessions.TCPState{}}
	g.r.d.TCP = tcp
	return g, tcp
}

// session adds a session with a TCP view (its pid as connection inode).
func (g *rig) liveSession(pid, port int, age time.Duration) {
	s := sessions.Session{MonitorPID: pid, PIDs: []int{pid}, Ports: []int{port}, Remote: "198.18.0.2:40000",
		Started: g.clock.Now().Add(-age), Conn: uint64(pid)}
	g.table.add(s)
}

// With a TCP view, a healthy session's forward is probed end to end once
// in the probe interval (5 minutes), not every tick: a daemon that starts
// next to long-lived sessions probes each at its own place in the interval.
func TestHealthyTCPProbesRarely(t *testing.T) {
	g, tcp := newLiveRig(Config{})
	g.device("pi", 20001, "localhost:22")
	g.liveSession(100, 20001, time.Hour)
	tcp.set(100, healthyTCP(2*time.Second))
	for i := range 10 * 60 { // ten minutes of one-second ticks, a walk every 10 s
		g.r.tick(context.Background(), i%10 == 0)
		g.r.probes.Wait()
		g.clock.advance(time.Second)
	}
	if n := g.prober.count(20001); n < 1 || n > 2 {
		t.Errorf("%d probes in 10 minutes, want 1 or 2 (one per 5 minutes)", n)
	}
	if len(g.killer.pids()) != 0 {
		t.Errorf("a healthy session was ended")
	}
}

// A session whose client stopped answering is probed at once, however
// recently it was probed, and ended when that probe fails.
func TestFrozenByTCP(t *testing.T) {
	g, tcp := newLiveRig(Config{})
	g.device("pi", 20001, "localhost:22")
	g.liveSession(100, 20001, time.Hour)
	tcp.set(100, healthyTCP(time.Second))
	g.r.cycle(context.Background())
	before := g.prober.count(20001)
	tcp.set(100, frozenTCP(9*time.Second))
	g.prober.fail[20001] = errors.New("no answer within the timeout")
	g.r.cycle(context.Background())
	if !slices.Contains(g.killer.pids(), 100) {
		t.Fatalf("a frozen session was not ended (probes %d -> %d)", before, g.prober.count(20001))
	}
	if n := g.prober.count(20001) - before; n != 1 {
		t.Errorf("%d probes to confirm, want 1", n)
	}
	ev, _ := g.events.find("reap", "pi")
	if !strings.Contains(ev.detail, "reaped as its client stopped answering") || !strings.Contains(ev.detail, "probe of port 20001 failed") {
		t.Errorf("reap event %q", ev.detail)
	}
}

// A suspect session whose probe passes is left alone.
func TestSuspectProbeOK(t *testing.T) {
	g, tcp := newLiveRig(Config{})
	g.device("pi", 20001, "localhost:22")
	g.liveSession(100, 20001, time.Hour)
	tcp.set(100, frozenTCP(9*time.Second))
	g.r.cycle(context.Background())
	if len(g.killer.pids()) != 0 || g.prober.count(20001) != 1 {
		t.Fatalf("killed %v after %d probes", g.killer.pids(), g.prober.count(20001))
	}
}

// A frozen session with nothing to probe is ended on its TCP state alone,
// once it stayed suspect as long as a probe would have waited.
func TestFrozenNothingToProbe(t *testing.T) {
	g, tcp := newLiveRig(Config{})
	g.device("plc", 20001, "192.168.1.5:502")
	g.liveSession(100, 20001, time.Hour)
	tcp.set(100, frozenTCP(9*time.Second))
	g.r.cycle(context.Background())
	if len(g.killer.pids()) != 0 {
		t.Fatal("ended before the confirmation period")
	}
	tcp.set(100, frozenTCP(9*time.Second+DefaultTimeout))
	g.r.cycle(context.Background())
	if !slices.Contains(g.killer.pids(), 100) {
		t.Fatal("a frozen session with nothing to probe was not ended")
	}
	if g.prober.count(20001) != 0 {
		t.Error("a forward without a probe was probed")
	}
}

// Without a TCP view (the sampler fails) every forward is probed at once
// and then every 10 s, as before.
func TestNoTCPFallsBackToProbes(t *testing.T) {
	g, tcp := newLiveRig(Config{})
	tcp.err = errors.New("sock_diag refused")
	g.device("pi", 20001, "localhost:22")
	g.liveSession(100, 20001, time.Hour)
	g.r.cycle(context.Background())
	if g.prober.count(20001) != 1 {
		t.Fatalf("%d probes at the first cycle, want 1", g.prober.count(20001))
	}
	g.clock.advance(10 * time.Second)
	g.r.cycle(context.Background())
	if g.prober.count(20001) != 2 {
		t.Fatalf("%d probes after 10 s, want 2", g.prober.count(20001))
	}
}

// Newest-wins ends an older session its TCP state says is stale without
// probing it, and probes one whose TCP state looks healthy.
func TestNewestWinsByTCP(t *testing.T) {
	g, tcp := newLiveRig(Config{})
	dev := g.device("pi", 20001, "localhost:22")
	g.liveSession(100, 20001, time.Hour)
	tcp.set(100, frozenTCP(9*time.Second))
	g.accepted(dev)
	if !slices.Contains(g.killer.pids(), 100) || g.prober.count(20001) != 0 {
		t.Fatalf("stale by TCP: killed %v, %d probes", g.killer.pids(), g.prober.count(20001))
	}
	g.liveSession(200, 20001, time.Hour)
	tcp.set(200, healthyTCP(time.Second))
	g.accepted(dev)
	if slices.Contains(g.killer.pids(), 200) || g.prober.count(20001) != 1 {
		t.Fatalf("healthy by TCP: killed %v, %d probes", g.killer.pids(), g.prober.count(20001))
	}
}

// The reaper's own cost of one tick (judging every session from a TCP
// sample, no probe due) at fleet sizes; the sample itself is
// sessions.BenchmarkSampleTCP. Run: go test ./sshd/reaper -bench Tick -run x
func BenchmarkTick(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			g, tcp := newLiveRig(Config{})
			for i := range n {
				pid, port := 1000+i, 20000+i
				g.device("pi-"+strconv.Itoa(i), port, "localhost:22")
				g.liveSession(pid, port, time.Hour)
				tcp.set(pid, healthyTCP(2*time.Second))
			}
			g.r.tick(context.Background(), true)
			g.r.probes.Wait()
			b.ResetTimer()
			for b.Loop() {
				g.r.tick(context.Background(), false)
			}
			b.StopTimer()
			g.r.probes.Wait()
		})
	}
}
