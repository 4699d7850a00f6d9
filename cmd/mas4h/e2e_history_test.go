package main

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/statedir"
)

// The dashboard's history in a real browser, light and dark: a day of a
// small fleet written into the registry file through the registry's own
// calls (heartbeats with their events, the slave marked dead, the
// per-minute load samples), then a real master on that file and a real
// slave s1 (the one that died, back now). pi-flap dropped 5 times in the
// last 24 h and has been down for the last 4 h; s1 was dead for 10
// minutes two hours ago. The screenshots are the evidence; the
// assertions read what they show.
func TestDashboardHistoryInChromium(t *testing.T) {
	e := newEnv(t, "chromium")
	now := time.Now().UTC()
	hostKey := slaveHostKey(t, filepath.Join(e.dir, "slave-s1"))
	writeFleetDay(t, filepath.Join(e.dir, "master.db"), now, hostKey)

	m := e.startMaster()
	e.startSlaveWith("s1", "--master", m.url, "--token-file", m.slaveToken, "--public-host", "127.0.0.1", "--capacity", "4")
	waitSlavesAlive(t, m, 1)
	tok := strings.TrimSpace(string(mustRead(t, m.adminToken)))
	dir := artifactDir(t)
	ctx := headlessChromium(t)

	browse(t, ctx, 15*time.Second, chromedp.Navigate(m.url+"/"), chromedp.WaitVisible(chromedp.CSS(`#token`)))
	browse(t, ctx, 15*time.Second,
		chromedp.SendKeys(chromedp.CSS(`#token`), tok),
		chromedp.Submit(chromedp.CSS(`#token`)),
		chromedp.WaitVisible(chromedp.CSS(`#fleet-history`)))

	text := func(sel string) string { return get(t, ctx, chromedp.Text(chromedp.CSS(sel))) }
	count := func(sel string) int {
		return get(t, ctx, chromedp.Evaluate[int](`document.querySelectorAll(`+jsString(sel)+`).length`))
	}
	titles := func(sel string) string {
		return get(t, ctx, chromedp.Evaluate[string](`Array.from(document.querySelectorAll(`+jsString(sel)+`)).map(e => e.textContent).join("\n")`))
	}
	if n := count(`svg[data-chart="fleet"] rect.max`); n == 0 {
		t.Error("the fleet chart has no bars")
	}
	if got := text(`tr[data-flapping="pi-flap"]`); !strings.Contains(got, "5 tunnel disconnects") {
		t.Errorf("most disconnects: pi-flap's row is %q, want 5 tunnel disconnects", got)
	}
	if first := attr(t, ctx, `#flapping tr[data-flapping]`, "data-flapping"); first != "pi-flap" {
		t.Errorf("most disconnects starts with %q, want pi-flap", first)
	}
	dead := titles(`tr[data-slave="s1"] rect.dead > title`)
	if !strings.Contains(dead, "slave dead") {
		t.Errorf("s1's load history has no dead segment titled as such: %q", dead)
	}
	if s := text(`tr[data-slave="s1"] .badge`); s != "alive" {
		t.Errorf("s1 shows %q now, want alive", s)
	}
	screenshot(t, ctx, dir, "history-overview-light.png")
	// The README's picture: the top of the overview, small.
	browse(t, ctx, 15*time.Second, chromedp.EmulateViewport(1100, 560))
	png := get(t, ctx, chromedp.CaptureScreenshot())
	if err := os.WriteFile(filepath.Join(dir, "dashboard.png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
	browse(t, ctx, 15*time.Second, chromedp.EmulateViewport(1280, 900))

	browse(t, ctx, 15*time.Second,
		chromedp.Click(chromedp.CSS(`tr[data-flapping="pi-flap"] a`)),
		chromedp.WaitVisible(chromedp.CSS(`#availability`)))
	day := `.timeline[data-window="24h"]`
	if d := attr(t, ctx, day, "data-disconnects"); d != "5" {
		t.Errorf("pi-flap's page: %s disconnects over 24 h, want 5", d)
	}
	// Up 18 of the last 24 h: 4 h, then 3 h 30 after each of the first
	// four drops; down since the fifth, 4 h ago. The window slides on
	// while the test runs: each minute takes a minute of up time off.
	p := attr(t, ctx, day, "data-percent")
	if pct, err := strconv.ParseFloat(strings.TrimSuffix(p, "%"), 64); err != nil || pct < 74 || pct > 75 {
		t.Errorf("pi-flap's page: %s up over 24 h, want 75.0%% (74%% after 15 minutes)", p)
	}
	if got := text(day + " .figures"); !strings.Contains(got, p+" up over the last 24h") || !strings.Contains(got, "5 disconnects") {
		t.Errorf("pi-flap's figures read %q", got)
	}
	if n := count(day + ` rect.down`); n != 5 {
		t.Errorf("pi-flap's 24 h timeline has %d down segments, want 5", n)
	}
	if downs := titles(day + ` rect.down > title`); !strings.Contains(downs, "down for 30m00s") || !strings.Contains(downs, "down for 4h00m") {
		t.Errorf("pi-flap's down segments are titled %q", downs)
	}
	screenshot(t, ctx, dir, "history-device-light.png")

	// Dark: the page follows prefers-color-scheme.
	browse(t, ctx, 15*time.Second, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
			Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}}})
		return err
	}))
	if bg := get(t, ctx, chromedp.Evaluate[string](`getComputedStyle(document.body).backgroundColor`)); bg == "rgb(255, 255, 255)" {
		t.Errorf("dark scheme: the page's background is still %s", bg)
	}
	screenshot(t, ctx, dir, "history-device-dark.png")
	browse(t, ctx, 15*time.Second, chromedp.Navigate(m.url+"/"), chromedp.WaitVisible(chromedp.CSS(`#fleet-history`)))
	screenshot(t, ctx, dir, "history-overview-dark.png")
}

func jsString(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// slaveHostKey gives the slave whose state directory is stateDir its
// ed25519 host key before its first start, and returns the public half
// as its heartbeats present it: the history written for s1 is bound to
// the key the real s1 then shows.
func slaveHostKey(t *testing.T, stateDir string) string {
	t.Helper()
	path := statedir.Dir(stateDir).HostKey()
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "mas4h host key")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o640); err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey())))
}

// writeFleetDay writes the last day of pi-flap and pi-calm on slave s1
// into the registry at path, as the master would have recorded it:
//
//   - both enrolled 30 h ago and connected 26 h ago;
//   - pi-flap drops 20, 16, 12, 8 and 4 h ago, back 30 minutes later
//     each time but the last;
//   - s1 falls silent 2 h ago and is marked dead (pi-calm goes with it),
//     and returns 10 minutes later, pi-calm reconnecting;
//   - a load sample every minute of the day: the fleet's online devices,
//     and s1's tunnels out of a capacity of 4, dead for those 10 minutes.
func writeFleetDay(t *testing.T, path string, now time.Time, hostKey string) {
	t.Helper()
	ctx := context.Background()
	st, err := registry.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, name := range []string{"pi-flap", "pi-calm"} {
		pub, _, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		key, err := ssh.NewPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := st.EnrolDevice(ctx, name, key, []registry.ForwardSpec{{Name: "ssh", Target: "localhost:22"}}, nil, registry.DefaultPortRange, ""); err != nil {
			t.Fatal(err)
		}
	}
	// The registry stamps an enrolment with the time it happens; these
	// were enrolled 30 h ago.
	if _, err := st.DB().ExecContext(ctx, `UPDATE devices SET created_at = ?, updated_at = ?`,
		now.Add(-30*time.Hour).UnixNano(), now.Add(-30*time.Hour).UnixNano()); err != nil {
		t.Fatal(err)
	}

	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	flapUp := func(at time.Time) bool {
		if at.Before(ago(26 * time.Hour)) {
			return false
		}
		for _, h := range []time.Duration{20, 16, 12, 8} {
			if !at.Before(ago(h*time.Hour)) && at.Before(ago(h*time.Hour-30*time.Minute)) {
				return false
			}
		}
		return at.Before(ago(4 * time.Hour))
	}
	deadFrom, deadTo := ago(2*time.Hour), ago(2*time.Hour-10*time.Minute)
	calmUp := func(at time.Time) bool {
		return !at.Before(ago(26*time.Hour)) && (at.Before(deadFrom) || !at.Before(deadTo))
	}
	tunnelsAt := func(at time.Time) []registry.Tunnel {
		var ts []registry.Tunnel
		for dev, up := range map[string]bool{"pi-calm": calmUp(at), "pi-flap": flapUp(at)} {
			if up {
				ts = append(ts, registry.Tunnel{Device: dev, Forward: "ssh", Port: 20000 + len(ts), Remote: "127.0.0.1:40000", Since: at})
			}
		}
		return ts
	}
	beat := func(at time.Time, evs ...registry.Event) {
		t.Helper()
		r := registry.SlaveReport{Name: "s1", Host: "127.0.0.1", Port: 2222, User: e2eTunnelUser, HostKeys: []string{hostKey},
			Capacity: 4, At: at, Tunnels: tunnelsAt(at), Events: evs}
		// Heard from all along (but for the death below): no slave-up.
		if _, err := st.RecordHeartbeat(ctx, r, ago(48*time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	ev := func(at time.Time, kind, dev string) registry.Event {
		return registry.Event{At: at, Kind: kind, Device: dev, Detail: "tunnel " + kind + ": ssh"}
	}
	start := ago(26 * time.Hour)
	beat(start, ev(start, registry.EventConnect, "pi-calm"), ev(start, registry.EventConnect, "pi-flap"))
	for _, h := range []time.Duration{20, 16, 12, 8, 4} {
		down := ago(h * time.Hour)
		beat(down, ev(down, registry.EventDisconnect, "pi-flap"))
		if h != 4 {
			up := down.Add(30 * time.Minute)
			beat(up, ev(up, registry.EventConnect, "pi-flap"))
		}
	}
	last := deadFrom.Add(-30 * time.Second)
	beat(last)
	if ok, err := st.MarkSlaveDead(ctx, "s1", last, deadFrom, "slave s1: no heartbeat for 30s"); err != nil || !ok {
		t.Fatalf("marking s1 dead: %v, %v", ok, err)
	}
	beat(deadTo, ev(deadTo, registry.EventConnect, "pi-calm"))

	var samples []registry.LoadSample
	for at := ago(24 * time.Hour).Truncate(time.Minute); at.Before(now.Truncate(time.Minute)); at = at.Add(time.Minute) {
		n := len(tunnelsAt(at))
		alive := at.Before(deadFrom.Truncate(time.Minute)) || !at.Before(deadTo)
		samples = append(samples,
			registry.LoadSample{Series: registry.FleetSeries, At: at, Min: n, Max: n, Alive: true},
			registry.LoadSample{Series: "s1", At: at, Min: n, Max: n, Capacity: 4, Alive: alive})
	}
	if err := st.RecordLoad(ctx, samples); err != nil {
		t.Fatal(err)
	}
	beat(time.Now().UTC()) // its last heartbeat: the real s1 takes over from here
}
