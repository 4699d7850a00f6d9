package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authkeys"
	"github.com/mas4h/mas4h/sshd/source"
)

// goneRecorder is the slave's side of source.Master: what it reports and
// the revocations it is told.
type goneRecorder struct {
	mu   sync.Mutex
	gone []string
}

func (r *goneRecorder) Gone(_ context.Context, dev registry.Device, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.gone = append(r.gone, dev.Name)
}
func (r *goneRecorder) OperatorGone(context.Context, string, string, string) {}
func (r *goneRecorder) Status(context.Context) wire.Heartbeat {
	return wire.Heartbeat{Host: "127.0.0.1", Port: 2222, User: "mas4h-tunnel", Capacity: 10, Tunnels: []wire.Tunnel{}}
}
func (r *goneRecorder) Peers(context.Context, []wire.Peer) {}
func (r *goneRecorder) has(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, g := range r.gone {
		if g == name {
			return true
		}
	}
	return false
}

// slaveAlive says whether the master at url has slave s1 alive.
func slaveAlive(t *testing.T, url, adminTokenFile string) bool {
	t.Helper()
	c, err := (&masterFlags{master: url, tokenFile: adminTokenFile}).client(&globals{stderr: &testkit.Buffer{}})
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.Status(context.Background())
	if err != nil {
		return false
	}
	for _, s := range st.Slaves {
		if s.Name == "s1" && s.Alive {
			return true
		}
	}
	return false
}

// A slave under two real masters heartbeats to one and sticks to it;
// when that one stops, the next heartbeat goes to the other master at
// once, and revocations come from the master it now follows. (The two
// masters have registries of their own here, both accepting the shared
// slave token; in production they share one PostgreSQL registry.)
func TestSlaveHeartbeatFailsOver(t *testing.T) {
	dir := t.TempDir()
	shared := filepath.Join(dir, "slave.token")
	if err := os.WriteFile(shared, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	flags := []string{"--heartbeat-interval", "1s", "--allow-shared-slave-token", "--slave-token-file", shared}
	urlA, dirA, stopA := startStoppableMaster(t, flags...)
	urlB, dirB, stopB := startStoppableMaster(t, flags...)
	admin := map[string]string{urlA: filepath.Join(dirA, "state", "admin.token"), urlB: filepath.Join(dirB, "state", "admin.token")}
	stop := map[string]func(){urlA: stopA, urlB: stopB}

	var logb testkit.Buffer
	log := slog.New(slog.NewTextHandler(&logb, &slog.HandlerOptions{Level: slog.LevelDebug}))
	api, _, err := newSlaveMasterAPI(urlA+","+urlB, shared, "s1", log)
	if err != nil {
		t.Fatal(err)
	}
	cache, err := authkeys.OpenCache(filepath.Join(dir, "cache.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	m := source.NewMaster(api, "s1", nil, log)
	if err := m.Start(context.Background(), cache); err != nil {
		t.Fatal(err)
	}
	rec := &goneRecorder{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); m.Follow(ctx, rec) }()
	defer func() { cancel(); <-done }()

	first := api.c.URL() // the first of the shuffled order
	second := urlB
	if first == urlB {
		second = urlA
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return slaveAlive(t, first, admin[first]) }, "slave s1 not alive on the first master %s:\n%s", first, &logb)
	time.Sleep(1500 * time.Millisecond) // a few more heartbeats: all to the first
	if slaveAlive(t, second, admin[second]) {
		t.Fatalf("slave s1 heartbeats to both masters, not sticking to one:\n%s", &logb)
	}

	stop[first]()
	stopped := time.Now()
	// The next heartbeat (an interval of 1 s ±10%) fails at the first master
	// and goes to the second in the same beat, without a backoff.
	testkit.Eventually(t, 10*time.Second, func() bool { return slaveAlive(t, second, admin[second]) }, "slave s1 not alive on the second master %s after the first stopped:\n%s", second, &logb)
	if waited := time.Since(stopped); waited > 3*time.Second {
		t.Errorf("the second master heard the slave %s after the first stopped, want within about one heartbeat interval (1 s)", waited)
	}

	// Revocations come from the master that answers now.
	keyDir := t.TempDir()
	if _, errs, code := cliRun(t, "device", "add", "pi-1", "--key", writePubKey(t, keyDir), "--master", second, "--token-file", admin[second]); code != 0 {
		t.Fatalf("device add: %s", errs)
	}
	if _, errs, code := cliRun(t, "device", "revoke", "pi-1", "--master", urlA+","+urlB, "--token-file", admin[second]); code != 0 {
		t.Fatalf("device revoke through the list, %s stopped: %s", first, errs)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return rec.has("pi-1") }, "the revocation of pi-1 did not reach the slave:\n%s", &logb)
}
