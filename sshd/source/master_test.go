package source

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authkeys"
)

// fakeMaster answers validations from its devices and heartbeats with the
// revocations the test queues; down makes every call fail as an unreachable
// master would.
type fakeMaster struct {
	mu        sync.Mutex
	devices   map[string]registry.Device // by authorized key
	down      bool
	validates int
	beats     []wire.Heartbeat
	reply     wire.HeartbeatReply
}

var errUnreachable = errors.New("dial tcp 198.18.0.1:8080: connect: connection refused")

func (f *fakeMaster) Validate(_ context.Context, req wire.ValidateRequest) (wire.Validation, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.validates++
	if f.down {
		return wire.Validation{}, errUnreachable
	}
	d, ok := f.devices[req.PublicKey]
	if !ok || d.Status != registry.StatusActive {
		return wire.Validation{}, fmt.Errorf("%w: 403 key not accepted", ErrNotAccepted)
	}
	v := wire.Validation{Device: d.Name, Fingerprint: d.Fingerprint, PublicKey: d.PublicKey, Status: d.Status, TTLSeconds: 300}
	for _, fw := range d.Forwards {
		v.Forwards = append(v.Forwards, fw.Wire())
	}
	return v, nil
}

func (f *fakeMaster) Heartbeat(_ context.Context, _ string, hb wire.Heartbeat) (wire.HeartbeatReply, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return wire.HeartbeatReply{}, errUnreachable
	}
	f.beats = append(f.beats, hb)
	r := f.reply
	f.reply.Revocations = nil
	return r, nil
}

func (f *fakeMaster) Revocations(ctx context.Context, _ string, after int64, wait time.Duration) (wire.RevocationsReply, error) {
	return wire.RevocationsReply{}, fmt.Errorf("%w: not in this fake", ErrNoRevocationFeed)
}

func (f *fakeMaster) calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.validates
}

func (f *fakeMaster) setDown(down bool) {
	f.mu.Lock()
	f.down = down
	f.mu.Unlock()
}

// recorder is the slave's side of Follow.
type recorder struct {
	gone  []string
	peers [][]wire.Peer
}

func (r *recorder) Gone(_ context.Context, dev registry.Device, reason string) {
	r.gone = append(r.gone, dev.Name+": "+reason)
}
func (r *recorder) OperatorGone(_ context.Context, operator, fp, reason string) {
	r.gone = append(r.gone, "operator "+operator+": "+reason)
}
func (r *recorder) Status(context.Context) wire.Heartbeat {
	return wire.Heartbeat{Host: "s1.example.net"}
}
func (r *recorder) Peers(_ context.Context, peers []wire.Peer) { r.peers = append(r.peers, peers) }
func discard() *slog.Logger                                    { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openCache(t *testing.T, dir string) *authkeys.Cache {
	t.Helper()
	c, err := authkeys.OpenCache(filepath.Join(dir, "cache.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

type clock struct{ now time.Time }

func (c *clock) Now() time.Time { return c.now }

func newDevice(t *testing.T, name string, port int) (registry.Device, ssh.PublicKey) {
	t.Helper()
	k := testkit.NewKey(t, name).Public
	return registry.Device{Name: name, Fingerprint: registry.Fingerprint(k), PublicKey: registry.AuthorizedKey(k), KeyType: k.Type(),
		Status: registry.StatusActive, Forwards: []registry.Forward{{Name: "ssh", Target: "localhost:22", RemotePort: port}}}, k
}

type masterRig struct {
	api   *fakeMaster
	clock *clock
	cache *authkeys.Cache
	m     *Master
}

func newMasterRig(t *testing.T, dir string) *masterRig {
	g := &masterRig{api: &fakeMaster{devices: map[string]registry.Device{}}, clock: &clock{now: time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)}}
	g.cache = openCache(t, dir)
	g.m = NewMaster(g.api, "s1", g.clock.Now, discard())
	if err := g.m.Start(context.Background(), g.cache); err != nil {
		t.Fatal(err)
	}
	return g
}

func (g *masterRig) lookup(t *testing.T, k ssh.PublicKey) (registry.Device, bool, error) {
	t.Helper()
	return g.m.Lookup(context.Background(), registry.Fingerprint(k), k)
}

// A validated device is served from the cache until its TTL runs out, then
// asked about again.
func TestMasterCacheTTL(t *testing.T) {
	g := newMasterRig(t, t.TempDir())
	dev, k := newDevice(t, "pi", 20001)
	g.api.devices[dev.PublicKey] = dev
	for i := 0; i < 3; i++ {
		got, found, err := g.lookup(t, k)
		if err != nil || !found || got.Name != "pi" || len(got.Forwards) != 1 || got.Forwards[0].RemotePort != 20001 {
			t.Fatalf("lookup %d: %+v %v %v", i, got, found, err)
		}
	}
	if n := g.api.calls(); n != 1 {
		t.Fatalf("%d validations within the TTL, want 1", n)
	}
	g.clock.now = g.clock.now.Add(DefaultCacheTTL + time.Second)
	if _, found, _ := g.lookup(t, k); !found || g.api.calls() != 2 {
		t.Fatalf("after the TTL: found %v, %d validations (want 2)", found, g.api.calls())
	}
}

// While the master is down, a cached device (even expired) keeps
// connecting and an unknown key gets no answer (the hook refuses it).
func TestMasterDownServesCache(t *testing.T) {
	g := newMasterRig(t, t.TempDir())
	dev, k := newDevice(t, "pi", 20001)
	g.api.devices[dev.PublicKey] = dev
	if _, found, err := g.lookup(t, k); !found || err != nil {
		t.Fatal(found, err)
	}
	g.api.setDown(true)
	g.clock.now = g.clock.now.Add(time.Hour)
	if got, found, err := g.lookup(t, k); !found || err != nil || got.Name != "pi" {
		t.Fatalf("cached device while the master is down: %+v %v %v", got, found, err)
	}
	_, stranger := newDevice(t, "x", 20002)
	if _, found, err := g.lookup(t, stranger); found || err == nil {
		t.Fatalf("unknown key while the master is down: found %v, err %v", found, err)
	}
}

// A refused key is remembered for a few seconds (a reconnect storm of a
// revoked device asks the master once), and dropped from the cache.
func TestMasterNegativeCache(t *testing.T) {
	g := newMasterRig(t, t.TempDir())
	dev, k := newDevice(t, "pi", 20001)
	g.api.devices[dev.PublicKey] = dev
	g.lookup(t, k)
	g.api.mu.Lock()
	delete(g.api.devices, dev.PublicKey)
	g.api.mu.Unlock()
	g.clock.now = g.clock.now.Add(DefaultCacheTTL + time.Second)
	for i := 0; i < 3; i++ {
		if _, found, err := g.lookup(t, k); found || err != nil {
			t.Fatalf("refused key: found %v, %v", found, err)
		}
	}
	if n := g.api.calls(); n != 2 {
		t.Errorf("%d validations, want 2 (one, then one refusal remembered)", n)
	}
	if _, _, found, _ := g.cache.Get(context.Background(), dev.Fingerprint); found {
		t.Error("a refused key is still cached")
	}
	g.clock.now = g.clock.now.Add(negativeCacheFor + time.Second)
	g.lookup(t, k)
	if n := g.api.calls(); n != 3 {
		t.Errorf("%d validations after the refusal expired, want 3", n)
	}
}

// Revocations come with heartbeat replies: the device leaves the cache and
// the slave is told, and the sequence survives a daemon restart.
func TestMasterRevocationSequence(t *testing.T) {
	dir := t.TempDir()
	g := newMasterRig(t, dir)
	dev, k := newDevice(t, "pi", 20001)
	g.api.devices[dev.PublicKey] = dev
	g.lookup(t, k)
	g.api.reply = wire.HeartbeatReply{Seq: 7, IntervalSeconds: 2, CacheTTLSeconds: 60,
		Revocations: []wire.Revocation{{Device: "pi", Fingerprint: dev.Fingerprint, Ports: []int{20001}, Reason: "removed", Seq: 7}}}
	h := &recorder{}
	if err := g.m.beat(context.Background(), h); err != nil {
		t.Fatal(err)
	}
	if len(h.gone) != 1 || h.gone[0] != "pi: device removed" {
		t.Fatalf("gone %v", h.gone)
	}
	if _, _, found, _ := g.cache.Get(context.Background(), dev.Fingerprint); found {
		t.Error("a revoked device is still cached")
	}
	if at, ok := g.m.LastContact(); !ok || !at.Equal(g.clock.now) {
		t.Errorf("last contact %v %v", at, ok)
	}
	// The next beat says where it is; so does a restarted daemon's first.
	g.api.reply = wire.HeartbeatReply{Seq: 7}
	g.m.beat(context.Background(), h)
	again := NewMaster(g.api, "s1", g.clock.Now, discard())
	if err := again.Start(context.Background(), g.cache); err != nil {
		t.Fatal(err)
	}
	again.beat(context.Background(), h)
	for i, hb := range g.api.beats {
		if want := map[int]int64{0: 0, 1: 7, 2: 7}[i]; hb.Seq != want {
			t.Errorf("beat %d sent seq %d, want %d", i, hb.Seq, want)
		}
	}
}

// Events wait for a heartbeat that reaches the master, at most
// maxQueuedEvents of them.
func TestMasterEventsQueue(t *testing.T) {
	g := newMasterRig(t, t.TempDir())
	g.api.setDown(true)
	for i := 0; i < maxQueuedEvents+10; i++ {
		g.m.Report(context.Background(), "connect", "pi", fmt.Sprint(i))
	}
	if err := g.m.beat(context.Background(), &recorder{}); err == nil {
		t.Fatal("beat to a dead master succeeded")
	}
	g.api.setDown(false)
	if err := g.m.beat(context.Background(), &recorder{}); err != nil {
		t.Fatal(err)
	}
	evs := g.api.beats[0].Events
	if len(evs) != maxQueuedEvents || evs[len(evs)-1].Detail != fmt.Sprint(maxQueuedEvents+9) {
		t.Fatalf("%d events sent, last %+v", len(evs), evs[len(evs)-1])
	}
	g.m.beat(context.Background(), &recorder{})
	if n := len(g.api.beats[1].Events); n != 0 {
		t.Errorf("%d events sent twice", n)
	}
}

// Entries about to expire are revalidated after a heartbeat, so a
// connecting device rarely waits for the master; one the master no longer
// accepts is gone.
func TestMasterRefresh(t *testing.T) {
	g := newMasterRig(t, t.TempDir())
	keep, kk := newDevice(t, "keep", 20001)
	drop, kd := newDevice(t, "drop", 20002)
	g.api.devices[keep.PublicKey], g.api.devices[drop.PublicKey] = keep, drop
	g.lookup(t, kk)
	g.lookup(t, kd)
	g.api.mu.Lock()
	delete(g.api.devices, drop.PublicKey)
	g.api.mu.Unlock()
	h := &recorder{}
	g.m.refresh(context.Background(), h) // nothing near expiry yet
	if n := g.api.calls(); n != 2 || len(h.gone) != 0 {
		t.Fatalf("%d validations, gone %v", n, h.gone)
	}
	g.clock.now = g.clock.now.Add(DefaultCacheTTL - DefaultCacheTTL/10)
	g.m.refresh(context.Background(), h)
	if n := g.api.calls(); n != 4 {
		t.Errorf("%d validations, want 4", n)
	}
	if len(h.gone) != 1 || h.gone[0] != "drop: device no longer accepted by the master" {
		t.Errorf("gone %v", h.gone)
	}
	_, exp, found, _ := g.cache.Get(context.Background(), keep.Fingerprint)
	if !found || !exp.After(g.clock.now.Add(DefaultCacheTTL/2)) {
		t.Errorf("keep: found %v, expires %v", found, exp)
	}
}

// The master answering for another key than the one asked about is an
// error, not an admission.
func TestMasterAnswerForAnotherKey(t *testing.T) {
	g := newMasterRig(t, t.TempDir())
	dev, _ := newDevice(t, "pi", 20001)
	_, other := newDevice(t, "x", 20002)
	g.api.devices[registry.AuthorizedKey(other)] = dev
	if _, found, err := g.lookup(t, other); found || err == nil {
		t.Fatalf("found %v, err %v", found, err)
	}
}

// The refusals remembered are bounded: a flood of unknown keys cannot grow
// the slave's memory.
func TestMasterRefusalsBounded(t *testing.T) {
	g := newMasterRig(t, t.TempDir())
	for i := 0; i < 3*maxNegative; i++ {
		g.m.rememberRefusal(fmt.Sprintf("SHA256:%043d", i))
	}
	if n := len(g.m.negative); n > maxNegative {
		t.Fatalf("%d refusals remembered, at most %d", n, maxNegative)
	}
}
