package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
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
