package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/sshsig"
)

// fakeClock advances only when the agent sleeps or a fake client runs.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
	onSlp  func(n int)
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// After never fires: fake clients have exited by the time it is asked.
func (c *fakeClock) After(time.Duration) <-chan time.Time { return nil }

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.sleeps = append(c.sleeps, d)
	c.now = c.now.Add(d)
	n := len(c.sleeps)
	c.mu.Unlock()
	if c.onSlp != nil {
		c.onSlp(n)
	}
	return ctx.Err()
}

type fakeRun struct {
	ran    time.Duration
	stderr string
	err    error
}

// fakeRunner plays scripted client runs (the last one repeats).
type fakeRunner struct {
	clock *fakeClock
	runs  []fakeRun
	cmds  []Command
}

type fakeProc struct {
	done chan struct{}
	res  Result
}

func (p *fakeProc) Pid() int              { return 4242 }
func (p *fakeProc) Done() <-chan struct{} { return p.done }
func (p *fakeProc) Wait() Result          { return p.res }

func (r *fakeRunner) Start(ctx context.Context, c Command) (Process, error) {
	r.cmds = append(r.cmds, c)
	run := fakeRun{err: errors.New("exit status 255")}
	if len(r.runs) > 0 {
		run = r.runs[0]
		if len(r.runs) > 1 {
			r.runs = r.runs[1:]
		}
	}
	r.clock.advance(run.ran)
	p := &fakeProc{done: make(chan struct{}), res: Result{Err: run.err, Stderr: run.stderr}}
	close(p.done)
	return p, nil
}

type fakeLookup map[string]string // name → version output

func (l fakeLookup) LookPath(name string) (string, error) {
	if _, ok := l[name]; ok {
		return "/usr/bin/" + name, nil
	}
	return "", errors.New("not found")
}

func (l fakeLookup) Version(_ context.Context, path string) string { return l[filepath.Base(path)] }

var openssh = fakeLookup{"ssh": "OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.15"}

// macOS is what `ssh -V` prints on macOS 15.
var macOS = fakeLookup{"ssh": "OpenSSH_9.8p1, LibreSSL 3.3.6"}

// writeKey writes a fresh ed25519 key in OpenSSH format.
func writeKey(t *testing.T, dir string) (path, pub string) {
	t.Helper()
	k := testkit.NewKey(t, "test")
	path = filepath.Join(dir, "id_ed25519")
	k.Write(t, path)
	return path, k.AuthorizedKey
}

func testSlot(t *testing.T) wire.Slot {
	return wire.Slot{Device: "pi-1", Slave: "s1", Host: "198.18.0.1", Port: 2222, User: "mas4h-tunnel",
		HostKeys: []string{testkit.NewKey(t, "").AuthorizedKey},
		Forwards: []wire.Forward{{Name: "ssh", Target: "localhost:22", RemotePort: 20000}, {Name: "web", Target: "127.0.0.1:80", RemotePort: 20001}}}
}

type harness struct {
	agent  *Agent
	clock  *fakeClock
	runner *fakeRunner
	log    *testkit.Buffer
	state  string
	key    string
	pub    string
}

// newHarness builds an agent against master, stopping after sleeps sleeps.
func newHarness(t *testing.T, master string, sleeps int, lookup Lookup, runs ...fakeRun) (*harness, context.Context) {
	t.Helper()
	dir := t.TempDir()
	key, pub := writeKey(t, dir)
	clock := newFakeClock()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	clock.onSlp = func(n int) {
		if n >= sleeps {
			cancel()
		}
	}
	h := &harness{clock: clock, runner: &fakeRunner{clock: clock, runs: runs}, log: &testkit.Buffer{}, state: filepath.Join(dir, "state"), key: key, pub: pub}
	a, err := New(Config{Master: master, KeyPath: key, StateDir: h.state, InsecureHTTP: true}, slog.New(slog.NewTextHandler(h.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Deps{Runner: h.runner, Clock: clock, Lookup: lookup, Rand: func() float64 { return 0.5 }})
	if err != nil {
		t.Fatal(err)
	}
	h.agent = a
	return h, ctx
}

func (h *harness) run(t *testing.T, ctx context.Context) {
	t.Helper()
	done := make(chan error)
	go func() { done <- h.agent.Run(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("agent did not stop; log:\n%s", h.log)
	}
}

// warns counts WARN lines containing s.
func (h *harness) warns(s string) int {
	n := 0
	for _, l := range strings.Split(h.log.String(), "\n") {
		if strings.Contains(l, "level=WARN") && strings.Contains(l, s) {
			n++
		}
	}
	return n
}

// checkBounded checks that every wait is at least 0.1 s (no hot loop) and
// that the waits grow as the backoff says.
func (h *harness) checkBounded(t *testing.T, min time.Duration) {
	t.Helper()
	for i, d := range h.clock.sleeps {
		if d < 100*time.Millisecond || d < min {
			t.Errorf("wait %d is %s (want ≥ 0.1 s and ≥ %s): %v", i, d, min, h.clock.sleeps)
		}
	}
}

func TestBadMasterAnswers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		handler http.HandlerFunc
		msg     string
		min     time.Duration
	}{
		{"garbage", func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "<html>captive portal</html>") }, "no slot from the master", 0},
		{"bad slot", func(w http.ResponseWriter, r *http.Request) {
			json.NewEncoder(w).Encode(wire.Slot{Host: "-oProxyCommand=evil", Port: 22, User: "x", HostKeys: []string{"ssh-ed25519 AAAA"}, Forwards: []wire.Forward{{Target: "localhost:22", RemotePort: 1}}})
		}, "no slot from the master", 0},
		{"403", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(403)
			fmt.Fprint(w, `{"error":"key not accepted"}`)
		}, "refuses this device's key", 0},
		{"429", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(429)
			fmt.Fprint(w, `{"error":"too many"}`)
		}, "rate-limits", 7 * time.Second},
		{"503", func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "9")
			w.WriteHeader(503)
			fmt.Fprint(w, `{"error":"no live slave with room; retry in 9 s"}`)
		}, "no slot from the master and no last slot", 9 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			var body []byte
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				body, _ = readAll(r)
				mu.Unlock()
				tc.handler(w, r)
			}))
			defer srv.Close()
			h, ctx := newHarness(t, srv.URL, 5, openssh)
			h.run(t, ctx)
			if len(h.clock.sleeps) != 5 {
				t.Fatalf("sleeps %v", h.clock.sleeps)
			}
			h.checkBounded(t, tc.min)
			if len(h.runner.cmds) != 0 {
				t.Errorf("a client ran with no usable slot: %v", h.runner.cmds)
			}
			if n := h.warns(tc.msg); n != 1 {
				t.Errorf("%q logged %d times, want once:\n%s", tc.msg, n, h.log)
			}
			mu.Lock()
			defer mu.Unlock()
			var req wire.SlotRequest
			if err := json.Unmarshal(body, &req); err != nil || req.PublicKey != h.pub {
				t.Errorf("request body %s, want the public key %s", body, h.pub)
			}
			// The request is signed by the device key, for this master.
			signer, err := sshsig.Verify(req.Signature, wire.SlotNamespace, wire.SlotStatement(req))
			if err != nil || strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer))) != h.pub || req.Master != srv.URL {
				t.Errorf("request %s: signature %v, master %q", body, err, req.Master)
			}
		})
	}
}

func readAll(r *http.Request) ([]byte, error) {
	var b bytes.Buffer
	_, err := b.ReadFrom(r.Body)
	return b.Bytes(), err
}

func slotServer(t *testing.T, status *int, slot wire.Slot) *httptest.Server {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if *status != 200 {
			w.Header().Set("Retry-After", "3")
			w.WriteHeader(*status)
			fmt.Fprint(w, `{"error":"down"}`)
			return
		}
		json.NewEncoder(w).Encode(slot)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func TestRunsOpenSSHWithPinnedHostKeys(t *testing.T) {
	slot := testSlot(t)
	status := 200
	srv := slotServer(t, &status, slot)
	h, ctx := newHarness(t, srv.URL, 1, openssh, fakeRun{ran: time.Second, stderr: "Connection closed by remote host", err: errors.New("exit status 255")})
	h.run(t, ctx)
	if len(h.runner.cmds) != 1 {
		t.Fatalf("runs: %v", h.runner.cmds)
	}
	argv := strings.Join(h.runner.cmds[0].Argv, " ")
	for _, want := range []string{"/usr/bin/ssh -N -F /dev/null -i " + h.key + " -p 2222 ", "ExitOnForwardFailure=yes", "ServerAliveInterval=10",
		"ServerAliveCountMax=3", "StrictHostKeyChecking=yes", "UserKnownHostsFile=" + filepath.Join(h.state, "known_hosts"), "BatchMode=yes",
		"IdentitiesOnly=yes", "-l mas4h-tunnel -R 20000:localhost:22 -R 20001:127.0.0.1:80 -- 198.18.0.1"} {
		if !strings.Contains(argv, want) {
			t.Errorf("argv lacks %q:\n%s", want, argv)
		}
	}
	kh := string(mustRead(t, filepath.Join(h.state, "known_hosts")))
	if !strings.Contains(kh, "[198.18.0.1]:2222 "+slot.HostKeys[0]+"\n") {
		t.Errorf("known_hosts:\n%s", kh)
	}
	var saved wire.Slot
	if err := json.Unmarshal(mustRead(t, filepath.Join(h.state, slotFile)), &saved); err != nil || saved.Slave != "s1" {
		t.Errorf("last slot not kept: %v %+v", err, saved)
	}
	if fi, _ := os.Stat(h.state); fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir mode %o", fi.Mode().Perm())
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestRunsDropbearWithConvertedKey(t *testing.T) {
	slot := testSlot(t)
	status := 200
	srv := slotServer(t, &status, slot)
	h, ctx := newHarness(t, srv.URL, 1, fakeLookup{"dbclient": "Dropbear v2022.83"})
	h.run(t, ctx)
	if len(h.runner.cmds) != 1 {
		t.Fatalf("runs: %v", h.runner.cmds)
	}
	c := h.runner.cmds[0]
	conv := filepath.Join(h.state, "key.dropbear")
	argv := strings.Join(c.Argv, " ")
	want := "/usr/bin/dbclient -N -T -i " + conv + " -p 2222 -K 10 -o ExitOnForwardFailure=yes -l mas4h-tunnel -R 20000:localhost:22 -R 20001:127.0.0.1:80 198.18.0.1"
	if argv != want {
		t.Errorf("argv\n%s\nwant\n%s", argv, want)
	}
	home := filepath.Join(h.state, "home")
	if len(c.Env) != 1 || c.Env[0] != "HOME="+home {
		t.Errorf("env %v", c.Env)
	}
	kh := string(mustRead(t, filepath.Join(home, ".ssh", "known_hosts")))
	if !strings.Contains(kh, "\n198.18.0.1 "+slot.HostKeys[0]+"\n") {
		t.Errorf("dropbear known_hosts:\n%s", kh)
	}
	k, err := LoadKey(conv)
	if err != nil || k.Format != FormatDropbear || k.Public != h.pub {
		t.Errorf("converted key: %v %+v", err, k)
	}
}

func TestFallsBackToTheLastSlot(t *testing.T) {
	slot := testSlot(t)
	status := 200
	srv := slotServer(t, &status, slot)
	h, ctx := newHarness(t, srv.URL, 3, openssh)
	ctx, cancel := context.WithCancel(ctx)
	h.clock.onSlp = func(n int) {
		switch n {
		case 1:
			status = 503
		case 2:
			srv.Close() // unreachable
		case 3:
			cancel()
		}
	}
	h.run(t, ctx)
	if len(h.runner.cmds) != 3 {
		t.Fatalf("want 3 client runs (master, 503 → last slot, unreachable → last slot), got %d:\n%s", len(h.runner.cmds), h.log)
	}
	for _, c := range h.runner.cmds {
		if c.Argv[len(c.Argv)-1] != "198.18.0.1" {
			t.Errorf("run to %v", c.Argv)
		}
	}
	if h.clock.sleeps[1] < 3*time.Second {
		t.Errorf("Retry-After 3 not honoured after the 503: %v", h.clock.sleeps)
	}
	if h.warns("connecting to the last slave directly") != 2 {
		t.Errorf("fallbacks not logged once per cause:\n%s", h.log)
	}
}

func TestResetAfterLongRun(t *testing.T) {
	slot := testSlot(t)
	status := 200
	srv := slotServer(t, &status, slot)
	fail := fakeRun{ran: 100 * time.Millisecond, stderr: "Connection refused", err: errors.New("exit status 255")}
	h, ctx := newHarness(t, srv.URL, 6, openssh, fail, fail, fail, fakeRun{ran: 2 * time.Minute, err: errors.New("exit status 255")}, fail)
	h.agent.backoff.Rand = func() float64 { return 0 }
	h.run(t, ctx)
	want := []time.Duration{1, 2, 4, 1, 2, 4}
	for i, w := range want {
		if h.clock.sleeps[i] != w*time.Second {
			t.Fatalf("sleeps %v, want %v s", h.clock.sleeps, want)
		}
	}
	if n := h.warns("ssh client failed"); n != 2 {
		t.Errorf("refused connection logged %d times, want once per episode (2):\n%s", n, h.log)
	}
	if n := h.warns("tunnel down"); n != 1 {
		t.Errorf("tunnel down logged %d times", n)
	}
}

func TestHostKeyMismatchIsRefusedAndBackedOff(t *testing.T) {
	slot := testSlot(t)
	status := 200
	srv := slotServer(t, &status, slot)
	mismatch := fakeRun{ran: 50 * time.Millisecond, err: errors.New("exit status 255"), stderr: `@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
Host key for [198.18.0.1]:2222 has changed and you have requested strict checking.
Host key verification failed.`}
	h, ctx := newHarness(t, srv.URL, 6, openssh, mismatch)
	h.run(t, ctx)
	if n := h.warns("host key mismatch"); n != 1 {
		t.Errorf("host key mismatch logged %d times, want once:\n%s", n, h.log)
	}
	if !strings.Contains(h.log.String(), "refusing to connect") {
		t.Errorf("no reason given:\n%s", h.log)
	}
	for i := 1; i < len(h.clock.sleeps); i++ {
		if h.clock.sleeps[i] < h.clock.sleeps[i-1] {
			t.Errorf("backoff does not grow: %v", h.clock.sleeps)
		}
	}
	h.checkBounded(t, 0)
}

func TestKeyProblems(t *testing.T) {
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, key string)
		msg   string
	}{
		{"missing", func(t *testing.T, key string) { os.Remove(key) }, "does not exist"},
		{"world-readable", func(t *testing.T, key string) { os.Chmod(key, 0o644) }, "accessible by others (mode 0644)"},
		{"group-readable", func(t *testing.T, key string) { os.Chmod(key, 0o640) }, "accessible by others"},
		{"unreadable", func(t *testing.T, key string) { os.Chmod(key, 0o000) }, "not readable by its owner (mode 0000)"},
		{"public key", func(t *testing.T, key string) { copyFile(t, key+".pub", key) }, "holds a public key"},
		{"garbage", func(t *testing.T, key string) { os.WriteFile(key, []byte("hello\n"), 0o600) }, "not a private key"},
		{"empty", func(t *testing.T, key string) { os.WriteFile(key, nil, 0o600) }, "is empty"},
		{"directory", func(t *testing.T, key string) { os.Remove(key); os.Mkdir(key, 0o700) }, "not a regular file"},
		{"encrypted", func(t *testing.T, key string) {
			b, err := ssh.MarshalPrivateKeyWithPassphrase(testkit.NewKey(t, "").Private, "", []byte("secret"))
			if err != nil {
				t.Fatal(err)
			}
			os.WriteFile(key, pem.EncodeToMemory(b), 0o600)
		}, "encrypted with a passphrase"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status := 200
			srv := slotServer(t, &status, testSlot(t))
			h, ctx := newHarness(t, srv.URL, 5, openssh)
			tc.setup(t, h.key)
			h.run(t, ctx)
			if len(h.runner.cmds) != 0 {
				t.Errorf("client ran with a bad key")
			}
			if n := h.warns(tc.msg); n != 1 {
				t.Errorf("%q logged %d times, want once:\n%s", tc.msg, n, h.log)
			}
			if len(h.clock.sleeps) != 5 {
				t.Errorf("sleeps %v", h.clock.sleeps)
			}
			h.checkBounded(t, 0)
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	b := mustRead(t, from)
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestRepeatedProblemIsLoggedAgainRarely(t *testing.T) {
	h, ctx := newHarness(t, "http://127.0.0.1:1", 40, openssh) // nothing listens on port 1
	h.run(t, ctx)
	// 40 failures take ~30 min at the 60 s cap: logged at start, then once
	// per 10 minutes.
	n := h.warns("no slot from the master")
	if n < 2 || n > 5 {
		t.Errorf("an unchanged problem over %d attempts was logged %d times:\n%s", len(h.clock.sleeps), n, h.log)
	}
}

func TestDetectClient(t *testing.T) {
	ctx := context.Background()
	both := fakeLookup{"ssh": "OpenSSH_9.2p1", "dbclient": "Dropbear v2022.83"}
	openwrt := fakeLookup{"ssh": "Dropbear v2022.82"} // ssh is dbclient
	for _, tc := range []struct {
		want   string
		l      fakeLookup
		kind   string
		path   string
		errSub string
	}{
		{"auto", both, ClientOpenSSH, "/usr/bin/ssh", ""},
		{"auto", fakeLookup{"dbclient": "Dropbear"}, ClientDropbear, "/usr/bin/dbclient", ""},
		{"auto", openwrt, ClientDropbear, "/usr/bin/ssh", ""},
		{"dropbear", both, ClientDropbear, "/usr/bin/dbclient", ""},
		{"dropbear", openwrt, ClientDropbear, "/usr/bin/ssh", ""},
		{"openssh", openwrt, "", "", "not OpenSSH"},
		{"openssh", fakeLookup{}, "", "", "not installed"},
		{"auto", fakeLookup{}, "", "", "no SSH client found"},
		// macOS: /usr/bin/ssh is OpenSSH built against LibreSSL; with
		// Homebrew's dropbear beside it, auto still picks OpenSSH.
		{"auto", macOS, ClientOpenSSH, "/usr/bin/ssh", ""},
		{"auto", fakeLookup{"ssh": macOS["ssh"], "dbclient": "Dropbear v2024.86"}, ClientOpenSSH, "/usr/bin/ssh", ""},
	} {
		c, err := DetectClient(ctx, tc.want, tc.l)
		if tc.errSub != "" {
			if err == nil || !strings.Contains(err.Error(), tc.errSub) {
				t.Errorf("%s %v: err %v, want %q", tc.want, tc.l, err, tc.errSub)
			}
			continue
		}
		if err != nil || c.Kind != tc.kind || c.Path != tc.path {
			t.Errorf("%s %v: %+v %v, want %s %s", tc.want, tc.l, c, err, tc.kind, tc.path)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, tc := range []struct{ stderr, reason string }{
		{"Host key verification failed.", ReasonHostKeyNew},
		{"@ WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED! @\nHost key verification failed.", ReasonHostKey},
		{"dbclient: Connection to mas4h-tunnel@198.18.0.1:2222 exited: \n\nHost key mismatch for 198.18.0.1 !\nFingerprint is SHA256:x", ReasonHostKey},
		{"dbclient: Connection to u@h:2 exited: Didn't validate host key", ReasonHostKeyNew},
		{"mas4h-tunnel@127.0.0.1: Permission denied (publickey).", ReasonAuth},
		{"dbclient: Connection to u@h:2 exited: No auth methods could be used.", ReasonAuth},
		{"Error: remote port forwarding failed for listen port 20000", ReasonForward},
		{"ssh: connect to host 198.18.0.1 port 2222: Connection refused", ReasonConnect},
		{"dbclient: Connection to u@h:2 exited: Error connecting: Connection refused", ReasonConnect},
		{"Connection to 198.18.0.1 closed by remote host.", ReasonEnded},
		{"", ReasonEnded},
	} {
		if r, _ := Classify(tc.stderr); r != tc.reason {
			t.Errorf("%q: %s, want %s", tc.stderr, r, tc.reason)
		}
	}
}

func TestValidSlot(t *testing.T) {
	good := testSlot(t)
	if err := validSlot(good); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(s *wire.Slot){
		"option host":   func(s *wire.Slot) { s.Host = "-oProxyCommand=x" },
		"space host":    func(s *wire.Slot) { s.Host = "a b" },
		"port":          func(s *wire.Slot) { s.Port = 70000 },
		"user":          func(s *wire.Slot) { s.User = "root\n" },
		"no host keys":  func(s *wire.Slot) { s.HostKeys = nil },
		"bad host key":  func(s *wire.Slot) { s.HostKeys = []string{"ssh-ed25519 AAAA\n[evil]:22 ssh-ed25519 AAAA"} },
		"no forwards":   func(s *wire.Slot) { s.Forwards = nil },
		"bad target":    func(s *wire.Slot) { s.Forwards[0].Target = "localhost 22" },
		"remote port 0": func(s *wire.Slot) { s.Forwards[0].RemotePort = 0 },
	} {
		s := testSlot(t)
		mod(&s)
		if validSlot(s) == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// Finding 3: an http:// master is refused unless --insecure-http says
// so, and then warned about at every start.
func TestPlainHTTPMasterNeedsInsecureHTTP(t *testing.T) {
	dir := t.TempDir()
	key, _ := writeKey(t, dir)
	cfg := Config{Master: "http://master.example:8080", KeyPath: key, StateDir: filepath.Join(dir, "state")}
	if _, err := New(cfg, slog.Default(), Deps{}); err == nil || !strings.Contains(err.Error(), "--insecure-http") {
		t.Fatalf("http:// master without --insecure-http: %v", err)
	}
	cfg.Master = "HTTP://master.example:8080"
	if _, err := New(cfg, slog.Default(), Deps{}); err == nil {
		t.Fatal("HTTP:// master accepted without --insecure-http")
	}
	status := 503
	srv := slotServer(t, &status, testSlot(t))
	for start := range 2 {
		h, ctx := newHarness(t, srv.URL, 1, openssh)
		h.run(t, ctx)
		if n := h.warns("plain http (--insecure-http)"); n != 1 {
			t.Errorf("start %d: plain http warned %d times, want once:\n%s", start, n, h.log)
		}
	}
}

// A TLS master is verified: against --master-ca when given (a private CA
// or the master's self-signed certificate); a master whose certificate
// the agent cannot verify gets no request at all.
func TestMasterTLSVerified(t *testing.T) {
	slot := testSlot(t)
	var asked int
	var mu sync.Mutex
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked++
		mu.Unlock()
		json.NewEncoder(w).Encode(slot)
	}))
	defer srv.Close()
	dir := t.TempDir()
	ca := filepath.Join(dir, "master-ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644)
	key, _ := writeKey(t, dir)
	run := func(cfg Config) *testkit.Buffer {
		clock := newFakeClock()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		clock.onSlp = func(int) { cancel() }
		log := &testkit.Buffer{}
		a, err := New(cfg, slog.New(slog.NewTextHandler(log, nil)), Deps{Runner: &fakeRunner{clock: clock}, Clock: clock, Lookup: openssh, Rand: func() float64 { return 0.5 }})
		if err != nil {
			t.Fatal(err)
		}
		a.Run(ctx)
		return log
	}
	log := run(Config{Master: srv.URL, KeyPath: key, StateDir: filepath.Join(dir, "s1")})
	if asked != 0 || !strings.Contains(log.String(), "certificate") {
		t.Errorf("an unverifiable master was asked %d times; log:\n%s", asked, log)
	}
	log = run(Config{Master: srv.URL, KeyPath: key, StateDir: filepath.Join(dir, "s2"), MasterCA: ca})
	if asked != 1 || !strings.Contains(log.String(), "msg=slot slave=s1") {
		t.Errorf("the master, pinned with --master-ca, was asked %d times; log:\n%s", asked, log)
	}
}

// With several masters, a slot from any is good: one that is down or
// answers 503 is passed over in the same attempt, and the request that
// reaches the good one is signed for its URL.
func TestFailsOverToAnotherMaster(t *testing.T) {
	slot := testSlot(t)
	busy := 503
	down := slotServer(t, &busy, slot)
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	var good *httptest.Server
	var signedFor []string
	var mu sync.Mutex
	good = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req wire.SlotRequest
		json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		signedFor = append(signedFor, req.Master)
		mu.Unlock()
		if req.Master != good.URL || req.Signature == "" {
			w.WriteHeader(http.StatusForbidden)
			fmt.Fprint(w, `{"error":"the signature names another master"}`)
			return
		}
		json.NewEncoder(w).Encode(slot)
	}))
	defer good.Close()
	for range 4 { // the order is shuffled: a few starts see several
		h, ctx := newHarness(t, down.URL+","+dead.URL+","+good.URL, 1, openssh, fakeRun{ran: time.Second, err: errors.New("exit status 255")})
		h.run(t, ctx)
		if len(h.runner.cmds) != 1 || !strings.Contains(h.log.String(), "msg=slot slave=s1") || strings.Contains(h.log.String(), "last slot") {
			t.Fatalf("want one run with the good master's slot:\n%s", h.log)
		}
		var saved wire.Slot
		if err := json.Unmarshal(mustRead(t, filepath.Join(h.state, slotFile)), &saved); err != nil || saved.Slave != "s1" {
			t.Errorf("last slot not kept: %v %+v", err, saved)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, m := range signedFor {
		if m != good.URL {
			t.Errorf("the good master got a request signed for %s", m)
		}
	}
}

func TestSeveralMastersChecked(t *testing.T) {
	dir := t.TempDir()
	key, _ := writeKey(t, dir)
	for masters, want := range map[string]string{
		"https://m1:8080,http://m2.example:8080": "--master http://m2.example:8080 is plain http",
		"https://m1:8080,":                       "master 2 of 2: empty",
		"https://m1:8080,https://m1:8080":        "is master 1 already",
	} {
		cfg := Config{Master: masters, KeyPath: key, StateDir: filepath.Join(dir, "state")}
		if _, err := New(cfg, slog.Default(), Deps{}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", masters, err, want)
		}
	}
	cfg := Config{Master: "https://m1:8080,http://127.0.0.1:8080", KeyPath: key, StateDir: filepath.Join(dir, "state"), InsecureHTTP: true, MasterCA: filepath.Join(dir, "nope.pem")}
	cfg.Defaults()
	if err := cfg.Check(); err != nil {
		t.Errorf("--master-ca with an https master among them: %v", err)
	}
}
