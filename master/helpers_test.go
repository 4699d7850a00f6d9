package master

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/internal/pgcluster"
	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// The store the handlers run against is the real one: SQLite, or
// PostgreSQL when MAS4H_TEST_DB=postgres.
var _ Store = (*registry.Store)(nil)

const (
	adminTok = "admin-token-0123456789abcdef"
	slaveTok = "slave-token-0123456789abcdef"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type testEnv struct {
	t     testing.TB
	srv   *Server
	ts    *httptest.Server
	store *registry.Store
	clock *fakeClock
	cfg   Config
}

// newEnv starts the API over a fresh SQLite registry in t.TempDir(), on a
// fake clock. mutate adjusts the config before New.
// TestMain stops the PostgreSQL cluster a MAS4H_TEST_DB=postgres run
// started.
func TestMain(m *testing.M) {
	code := m.Run()
	pgcluster.StopShared()
	os.Exit(code)
}

func newEnv(t testing.TB, mutate func(*Config)) *testEnv {
	t.Helper()
	st, err := registry.Open(context.Background(), testkit.RegistryLocation(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return newEnvOn(t, st, &fakeClock{t: time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)}, mutate)
}

func newEnvOn(t testing.TB, st *registry.Store, clock *fakeClock, mutate func(*Config)) *testEnv {
	t.Helper()
	cfg := Config{
		Store:             st,
		Logger:            slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		AdminToken:        adminTok,
		SlaveToken:        slaveTok,
		HeartbeatInterval: 5 * time.Second,
		SlotRate:          -1, // most tests ask for many slots from one address
		Now:               clock.Now,
	}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(srv.Close)
	t.Cleanup(ts.Close)
	return &testEnv{t: t, srv: srv, ts: ts, store: st, clock: clock, cfg: cfg}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// do sends body (a string as is, anything else as JSON) and returns the
// answer and its body.
func (e *testEnv) do(method, path, token string, body any) (*http.Response, []byte) {
	e.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	case []byte:
		r = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		r = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, e.ts.URL+wire.APIPrefix+path, r)
	if err != nil {
		e.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := e.ts.Client().Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp, data
}

// want checks the status and decodes the body into out (if not nil).
func (e *testEnv) want(method, path, token string, body any, status int, out any) []byte {
	e.t.Helper()
	resp, data := e.do(method, path, token, body)
	if resp.StatusCode != status {
		e.t.Fatalf("%s %s = %d %s, want %d", method, path, resp.StatusCode, data, status)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			e.t.Fatalf("%s %s: decoding %s: %v", method, path, data, err)
		}
	}
	return data
}

// signers are the private halves of the keys newKey made, by authorized
// key, so that tests can sign slot requests for them.
var signers sync.Map

func newKey(t testing.TB) (ssh.PublicKey, string) {
	t.Helper()
	k := testkit.NewKey(t, "")
	ak := registry.AuthorizedKey(k.Public)
	signers.Store(ak, k.Signer)
	return k.Public, ak
}

// signed is ak's slot request for this master, signed at the fake clock's
// now, as the agent makes it.
func (e *testEnv) signed(ak string) wire.SlotRequest {
	e.t.Helper()
	s, ok := signers.Load(ak)
	if !ok {
		e.t.Fatalf("no private key for %s", ak)
	}
	req, err := client.SignSlotRequest(s, e.ts.URL, e.clock.Now())
	if err != nil {
		e.t.Fatal(err)
	}
	return req
}

// enrol adds a device through the API and returns its authorized key.
func (e *testEnv) enrol(name string, forwards ...string) string {
	e.t.Helper()
	_, ak := newKey(e.t)
	e.want("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: name, PublicKey: ak + " " + name + "@test", Forwards: forwards}, http.StatusCreated, nil)
	return ak
}

var hostKey = func() string {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	k, _ := ssh.NewPublicKey(pub)
	return registry.AuthorizedKey(k)
}()

func heartbeatOf(capacity int, tunnels ...wire.Tunnel) wire.Heartbeat {
	if tunnels == nil {
		tunnels = []wire.Tunnel{}
	}
	return wire.Heartbeat{Host: "127.0.0.1", Port: 2222, User: "mas4h-tunnel", HostKeys: []string{hostKey},
		Capacity: capacity, Tunnels: tunnels}
}

func (e *testEnv) beat(slave string, hb wire.Heartbeat) wire.HeartbeatReply {
	e.t.Helper()
	var r wire.HeartbeatReply
	e.want("POST", "/slaves/"+slave+"/heartbeat", slaveTok, hb, http.StatusOK, &r)
	return r
}

func (e *testEnv) slot(ak string) wire.Slot {
	e.t.Helper()
	var s wire.Slot
	e.want("POST", "/slots", "", e.signed(ak), http.StatusOK, &s)
	return s
}

func (e *testEnv) events(query string) []wire.Event {
	e.t.Helper()
	var evs []wire.Event
	e.want("GET", "/events"+query, adminTok, nil, http.StatusOK, &evs)
	return evs
}
