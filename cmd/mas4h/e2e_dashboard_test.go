package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/mas4h/mas4h/internal/testkit"
)

// artifactDir is where tests leave files for people to look at:
// $MAS4H_ARTIFACTS (CI keeps it), else the test's temp dir.
func artifactDir(t *testing.T) string {
	t.Helper()
	if d := os.Getenv("MAS4H_ARTIFACTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

// headlessChromium starts Debian's chromium under chromedp, with a fresh
// profile and nothing that phones home.
func headlessChromium(t *testing.T) context.Context {
	t.Helper()
	path, err := exec.LookPath("chromium")
	if err != nil {
		t.Fatalf("chromium: %v", err) // requireE2E checked it already
	}
	log := &syncBuffer{}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(path),
		chromedp.Headless,
		chromedp.NoSandbox, // root in CI
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-extensions", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
		chromedp.CombinedOutput(log),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		cancelAlloc()
		if t.Failed() {
			t.Logf("chromium output:\n%s", log)
		}
	})
	// The first action starts the browser, with no deadline (one would
	// stop the browser with it).
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting chromium: %v\n%s", err, log)
	}
	return ctx
}

// browse runs browser actions in order with a deadline.
func browse(t *testing.T, ctx context.Context, within time.Duration, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatalf("browser: %v", err)
	}
}

// get runs one browser action that returns a value, with a deadline.
func get[T any](t *testing.T, ctx context.Context, a chromedp.Action[T]) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		t.Fatalf("browser: %v", err)
	}
	return v
}

// attr evaluates a selector's attribute in the current page ("" if absent).
func attr(t *testing.T, ctx context.Context, selector, name string) string {
	t.Helper()
	js := fmt.Sprintf(`(document.querySelector(%q) || {getAttribute: () => ""}).getAttribute(%q) || ""`, selector, name)
	return get(t, ctx, chromedp.Evaluate[string](js))
}

func screenshot(t *testing.T, ctx context.Context, dir, name string) string {
	t.Helper()
	png := get(t, ctx, chromedp.FullScreenshot(100))
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", path)
	return path
}

// The dashboard in a real browser: log in with the admin token, see two
// slaves and a device online; the device's tunnel freezes and is reaped,
// and the page (refreshing itself) shows it offline; its page shows the
// reap in its history.
func TestDashboardInChromium(t *testing.T) {
	e := newEnv(t, "chromium")
	es := startEcho(t)
	m := e.startMaster()
	for _, name := range []string{"s1", "s2"} {
		m.e.startSlaveWith(name, append([]string{"--master", m.url, "--token-file", m.slaveToken, "--public-host", "127.0.0.1"}, fastProbe...)...)
	}
	waitSlavesAlive(t, m, 2)
	_, k := m.enrol("pi-dash", fwd(es))
	m.enrol("pi-never") // enrolled, never connected
	slot, c, p := m.connect(k, es)
	waitTunnelCount(t, m, 1, 5*time.Second)
	tok := strings.TrimSpace(string(mustRead(t, m.adminToken)))
	dir := artifactDir(t)
	ctx := headlessChromium(t)

	// Not logged in: the login form.
	browse(t, ctx, 15*time.Second, chromedp.Navigate(m.url+"/"), chromedp.WaitVisible(chromedp.CSS(`#token`)))
	browse(t, ctx, 15*time.Second,
		chromedp.SendKeys(chromedp.CSS(`#token`), "not-the-token-0000"),
		chromedp.Submit(chromedp.CSS(`#token`)),
		chromedp.WaitVisible(chromedp.CSS(`p.error`)))
	browse(t, ctx, 15*time.Second,
		chromedp.SendKeys(chromedp.CSS(`#token`), tok),
		chromedp.Submit(chromedp.CSS(`#token`)),
		chromedp.WaitVisible(chromedp.CSS(`#slaves`)))

	slaves := get(t, ctx, chromedp.Evaluate[int](`document.querySelectorAll('#slaves tr[data-slave] .badge.alive').length`))
	if slaves != 2 {
		t.Errorf("page shows %d live slaves, want 2", slaves)
	}
	if s := attr(t, ctx, `tr[data-device="pi-dash"]`, "data-state"); s != "online" {
		t.Fatalf("pi-dash shows %q, want online", s)
	}
	if s := attr(t, ctx, `tr[data-device="pi-never"]`, "data-state"); s != "offline" {
		t.Errorf("pi-never shows %q, want offline", s)
	}
	text := get(t, ctx, chromedp.Text(chromedp.CSS(`tr[data-device="pi-dash"]`)))
	if !strings.Contains(text, slot.Slave) || !strings.Contains(text, fmt.Sprint(p)) {
		t.Errorf("pi-dash's row %q lacks its slave %s or port %d", text, slot.Slave, p)
	}
	screenshot(t, ctx, dir, "dashboard-online.png")

	// The device freezes; the slave reaps its tunnel; the page, reloading
	// itself every 10 s, shows the device offline.
	if err := syscall.Kill(c.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(c.cmd.Process.Pid, syscall.SIGCONT)
	waitReaped(t, p, time.Now(), reapLimit())
	testkit.Eventually(t, 30*time.Second, func() bool { return attr(t, ctx, `tr[data-device="pi-dash"]`, "data-state") == "offline" },
		"the page did not show pi-dash offline after the reap")
	reloaded := get(t, ctx, chromedp.Text(chromedp.CSS(`#events`)))
	if !strings.Contains(reloaded, "reap") {
		t.Errorf("latest events lack the reap:\n%s", reloaded)
	}
	screenshot(t, ctx, dir, "dashboard-offline.png")

	// The device's own page: offline, with the reap in its history.
	browse(t, ctx, 15*time.Second,
		chromedp.Click(chromedp.CSS(`tr[data-device="pi-dash"] a`)),
		chromedp.WaitVisible(chromedp.CSS(`#history`)))
	if s := attr(t, ctx, `#device`, "data-state"); s != "offline" {
		t.Errorf("device page shows %q, want offline", s)
	}
	history := get(t, ctx, chromedp.Text(chromedp.CSS(`#history`)))
	for _, want := range []string{"reap", "connect", "slot", "enrol"} {
		if !strings.Contains(history, want) {
			t.Errorf("device history lacks %q:\n%s", want, history)
		}
	}
	screenshot(t, ctx, dir, "dashboard-device.png")
}

// cookieTap is a reverse proxy in front of the master that keeps a copy
// of every session cookie the master sets, as a proxy's log, a shared
// machine or a stolen backup would, and can put a copy back into
// requests.
type cookieTap struct {
	url    string
	mu     sync.Mutex
	copied string // the last session cookie set
	replay string // when set, the Cookie header of every request
}

func startCookieTap(t *testing.T, master string) *cookieTap {
	t.Helper()
	target, err := url.Parse(master)
	if err != nil {
		t.Fatal(err)
	}
	tap := &cookieTap{}
	p := httputil.NewSingleHostReverseProxy(target) // keeps the browser's Host
	p.ModifyResponse = func(r *http.Response) error {
		for _, c := range r.Cookies() {
			if c.Name == "mas4h_session" && c.Value != "" {
				tap.mu.Lock()
				tap.copied = c.Value
				tap.mu.Unlock()
			}
		}
		return nil
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tap.mu.Lock()
		replay := tap.replay
		tap.mu.Unlock()
		if replay != "" {
			r.Header.Set("Cookie", "mas4h_session="+replay)
		}
		p.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	tap.url = srv.URL
	return tap
}

func (tap *cookieTap) copy() string {
	tap.mu.Lock()
	defer tap.mu.Unlock()
	return tap.copied
}

func (tap *cookieTap) replayCookie(v string) {
	tap.mu.Lock()
	tap.replay = v
	tap.mu.Unlock()
}

// submit submits the form of selector and returns the answer's status and
// Retry-After header.
func submit(t *testing.T, ctx context.Context, selector string, fill ...chromedp.Action[chromedp.Void]) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	resp, err := chromedp.RunResponse(ctx, append(fill, chromedp.Submit(chromedp.CSS(selector)))...)
	if err != nil {
		t.Fatalf("browser: submitting %s: %v", selector, err)
	}
	retry := ""
	for k, v := range resp.Headers {
		if strings.EqualFold(k, "Retry-After") {
			retry = fmt.Sprint(v)
		}
	}
	return int(resp.Status), retry
}

// tryToken types tok into the login form (empty on each page) and submits it.
func tryToken(t *testing.T, ctx context.Context, tok string) (int, string) {
	t.Helper()
	return submit(t, ctx, `#token`, chromedp.WaitVisible(chromedp.CSS(`#token`)), chromedp.SendKeys(chromedp.CSS(`#token`), tok))
}

// Issue 14, section 4, in a real browser: every wrong secret (the slave
// token, a near miss of the admin token, a guess) gets the same words;
// logging in and out; a copy of the session cookie taken before logging
// out is refused after it, replayed by the browser and by another client;
// a page of another origin (another port of the same host: the same site,
// so SameSite=Strict sends the cookie) cannot post the dashboard's forms;
// a handful of wrong tokens and the form answers 429 with Retry-After.
func TestDashboardSessionsInChromium(t *testing.T) {
	e := newEnv(t, "chromium")
	m := e.startMaster()
	tap := startCookieTap(t, m.url)
	admin := strings.TrimSpace(string(mustRead(t, m.adminToken)))
	slave := strings.TrimSpace(string(mustRead(t, m.slaveToken)))
	dir := artifactDir(t)
	ctx := headlessChromium(t)
	browse(t, ctx, 15*time.Second, chromedp.Navigate(tap.url+"/"), chromedp.WaitVisible(chromedp.CSS(`#token`)))

	// One message for every wrong secret.
	var first string
	for _, tok := range []string{slave, admin + "0", "0" + admin[1:], "a-guess-0123456789abcdef"} {
		if code, _ := tryToken(t, ctx, tok); code != http.StatusUnauthorized {
			t.Fatalf("wrong token: %d, want 401", code)
		}
		msg := get(t, ctx, chromedp.Text(chromedp.CSS(`p.error`)))
		switch {
		case first == "":
			first = msg
			if strings.Contains(strings.ToLower(msg), "slave") {
				t.Errorf("the slave token is recognised: %q", msg)
			}
		case msg != first:
			t.Errorf("wrong secrets answer differently: %q and %q", first, msg)
		}
	}
	screenshot(t, ctx, dir, "dashboard-wrong-token.png")

	// Log in.
	if code, _ := tryToken(t, ctx, admin); code != http.StatusOK {
		t.Fatalf("login: %d", code)
	}
	browse(t, ctx, 10*time.Second, chromedp.WaitVisible(chromedp.CSS(`#slaves`)))
	copied := tap.copy()
	if copied == "" {
		t.Fatal("the tap saw no session cookie")
	}

	// Another origin's page posts the dashboard's forms: refused, the
	// session lives on.
	evil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `<!DOCTYPE html><title>evil</title>
<form id="login" method="post" action="%[1]s/login"><input name="token" value="%[2]s"><input name="next" value="/"><button>go</button></form>
<form id="logout" method="post" action="%[1]s/logout"><button>go</button></form>`, tap.url, admin)
	}))
	defer evil.Close()
	for _, form := range []string{"#login", "#logout"} {
		browse(t, ctx, 10*time.Second, chromedp.Navigate(evil.URL+"/"), chromedp.WaitVisible(chromedp.CSS(form)))
		if code, _ := submit(t, ctx, form+" button"); code != http.StatusForbidden {
			t.Errorf("a post of %s from %s: %d, want 403", form, evil.URL, code)
		}
	}
	browse(t, ctx, 10*time.Second, chromedp.Navigate(tap.url+"/"), chromedp.WaitVisible(chromedp.CSS(`#slaves`)))

	// Log out with the page's button; then the copy is worth nothing.
	browse(t, ctx, 10*time.Second,
		chromedp.Click(chromedp.CSS(`header form button`)),
		chromedp.WaitVisible(chromedp.CSS(`#token`)))
	screenshot(t, ctx, dir, "dashboard-logged-out.png")
	req, _ := http.NewRequest("GET", m.url+"/", nil)
	req.AddCookie(&http.Cookie{Name: "mas4h_session", Value: copied})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("the copied cookie after log-out, from another client: %d, want 401", resp.StatusCode)
	}
	tap.replayCookie(copied)
	browse(t, ctx, 10*time.Second, chromedp.Navigate(tap.url+"/"), chromedp.WaitVisible(chromedp.CSS(`#token`)))
	if n := get(t, ctx, chromedp.Evaluate[int](`document.querySelectorAll('#slaves').length`)); n != 0 {
		t.Error("the browser replaying the copied cookie sees the dashboard")
	}
	tap.replayCookie("")

	// Backoff: after five wrong tokens the sixth try waits.
	for i := 1; i <= 5; i++ {
		code, retry := tryToken(t, ctx, fmt.Sprintf("guess-%d-0123456789abcdef", i))
		if code != http.StatusUnauthorized || (i == 5) != (retry != "") {
			t.Fatalf("wrong token %d: %d, Retry-After %q", i, code, retry)
		}
	}
	code, retry := tryToken(t, ctx, admin)
	if code != http.StatusTooManyRequests || retry == "" {
		t.Fatalf("a try right after five wrong tokens: %d, Retry-After %q; want 429 and a Retry-After", code, retry)
	}
	if msg := get(t, ctx, chromedp.Text(chromedp.CSS(`p.error`))); !strings.Contains(msg, "try again in") {
		t.Errorf("the 429 page says %q", msg)
	}
	screenshot(t, ctx, dir, "dashboard-backoff.png")
}
