package master

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/mas4h/mas4h/registry"
)

// BenchmarkDashboard100k renders the dashboard's pages for a fleet of
// 100,000 devices on 10 slaves (90% online) with a month of tunnel
// events (each device drops every 4 days on average, 100 flappers drop
// 50 times a day: about 1.8 million events) and 8 days of per-minute load
// samples. "overview-without-charts" is today's overview before the
// charts (the same reads, model and template with no history read), for
// comparison in the same run. The registry is written with plain SQL:
// enrolling 100,000 keys through the API would take a quarter of an hour.
func BenchmarkDashboard100k(b *testing.B) {
	ctx := context.Background()
	st, err := registry.Open(ctx, filepath.Join(b.TempDir(), "registry.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	now := time.Now().UTC()
	const devices, slaves, flappers = 100_000, 10, 100
	start := time.Now()
	nEvents := fillFleet(b, st.DB(), now, devices, slaves, flappers)
	b.Logf("generated %d devices, %d events in %s", devices, nEvents, time.Since(start).Round(time.Second))

	e := newEnvOn(b, st, &fakeClock{t: now}, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil)) })
	fillTunnels(b, st.DB(), now, devices, slaves)
	for i := range slaves { // the live view learns they are alive
		e.srv.live.Heard(registry.SlaveReport{Name: fmt.Sprintf("s%d", i), At: now, Capacity: 12000})
	}
	client := e.browser()
	login(b, client, e.ts.URL, adminTok, "/")

	page := func(b *testing.B, path string) {
		var size int
		for b.Loop() {
			resp, err := client.Get(e.ts.URL + path)
			if err != nil {
				b.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Fatalf("%s = %d", path, resp.StatusCode)
			}
			size = int(n)
		}
		b.ReportMetric(float64(size), "bytes/page")
	}
	// The overview's reads as they were before the counts moved into SQL:
	// every device and every live tunnel, counted and filtered in Go.
	b.Run("overview-reading-every-row", func(b *testing.B) {
		var size int
		for b.Loop() {
			d, err := overviewEveryRow(ctx, e.srv)
			if err != nil {
				b.Fatal(err)
			}
			v := buildOverview(d, "", "", now)
			if v.History, err = e.srv.overviewHistory(ctx, "24h"); err != nil {
				b.Fatal(err)
			}
			ts, _ := dashTemplates()
			w := &countWriter{}
			if err := ts["dashboard.tmpl"].Execute(w, v); err != nil {
				b.Fatal(err)
			}
			size = w.n
		}
		b.ReportMetric(float64(size), "bytes/page")
	})
	b.Run("overview-24h", func(b *testing.B) { page(b, "/") })
	b.Run("overview-filtered-offline", func(b *testing.B) { page(b, "/?show=offline&q=d09") })
	b.Run("overview-7d", func(b *testing.B) { page(b, "/?window=7d") })
	b.Run("device-flapper", func(b *testing.B) { page(b, "/ui/devices/d000007") })
	b.Run("device-calm", func(b *testing.B) { page(b, "/ui/devices/d050001") })
	b.Run("api-availability-7d", func(b *testing.B) { apiBench(b, e, "/devices/d000007/availability?window=7d") })
	b.Run("api-fleet-7d", func(b *testing.B) { apiBench(b, e, "/history/fleet?window=7d") })
	b.Run("history-only-24h", func(b *testing.B) {
		for b.Loop() {
			if _, err := e.srv.overviewHistory(ctx, "24h"); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// overviewEveryRow is overviewData as it was: every device and every
// live tunnel read, the counts and the filter ("all") done in Go.
func overviewEveryRow(ctx context.Context, s *Server) (overviewData, error) {
	var d overviewData
	var err error
	if d.Slaves, err = s.store.Slaves(ctx); err != nil {
		return d, err
	}
	d.Alive = s.live.Alive()
	devices, err := s.store.Devices(ctx)
	if err != nil {
		return d, err
	}
	tunnels, err := s.store.LiveTunnels(ctx)
	if err != nil {
		return d, err
	}
	online := map[string]bool{}
	for _, t := range tunnels {
		online[t.Device] = true
	}
	for _, dev := range devices {
		d.Counts.Total++
		switch {
		case dev.Status != registry.StatusActive:
			d.Counts.Revoked++
		case online[dev.Name]:
			d.Counts.Online++
		default:
			d.Counts.Offline++
		}
	}
	d.Matching = len(devices)
	d.Devices = devices[:min(len(devices), dashMaxDevices)]
	d.Tunnels = tunnels
	d.Events, err = s.latestEvents(ctx, "", dashEvents)
	return d, err
}

func apiBench(b *testing.B, e *testEnv, path string) {
	for b.Loop() {
		resp, _ := e.do("GET", path, adminTok, nil)
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("%s = %d", path, resp.StatusCode)
		}
	}
}

type countWriter struct{ n int }

func (w *countWriter) Write(p []byte) (int, error) { w.n += len(p); return len(p), nil }

// fillFleet writes devices d000000… (every 1000th a flapper among the
// first: d000000, d000007, …), a month of their connects and disconnects
// on slaves s0…, a few slave deaths, and 8 days of load samples; it
// returns the number of events.
func fillFleet(b *testing.B, db *sql.DB, now time.Time, devices, slaves, flappers int) int {
	b.Helper()
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	dev, _ := tx.Prepare(`INSERT INTO devices (id, name, fingerprint, key_type, public_key, status, created_at, updated_at) VALUES (?, ?, ?, 'ssh-ed25519', ?, 'active', ?, ?)`)
	fwd, _ := tx.Prepare(`INSERT INTO forwards (device_id, position, name, target, remote_port) VALUES (?, 0, 'ssh', 'localhost:22', ?)`)
	evt, _ := tx.Prepare(`INSERT INTO events (at, kind, slave, device, detail) VALUES (?, ?, ?, ?, ?)`)
	month := 30 * 24 * time.Hour
	created := now.Add(-month - time.Hour).UnixNano()
	rng := rand.New(rand.NewPCG(1, 2))
	type ev struct {
		at           int64
		kind, sl, dv string
	}
	var evs []ev
	for i := range devices {
		name := fmt.Sprintf("d%06d", i)
		if _, err := dev.Exec(i+1, name, fmt.Sprintf("SHA256:bench%06d", i), "AAAA"+name, created, created); err != nil {
			b.Fatal(err)
		}
		if _, err := fwd.Exec(i+1, 20000+i); err != nil {
			b.Fatal(err)
		}
		sl := fmt.Sprintf("s%d", i%slaves)
		drops := 7 // every 4 days or so
		if i%7 == 0 && i/7 < flappers {
			drops = 50 * 30
		}
		evs = append(evs, ev{now.Add(-month).UnixNano(), "connect", sl, name})
		for range drops {
			t := now.Add(-time.Duration(rng.Int64N(int64(month))))
			evs = append(evs, ev{t.UnixNano(), "disconnect", sl, name}, ev{t.Add(time.Duration(rng.IntN(600)) * time.Second).UnixNano(), "connect", sl, name})
		}
	}
	for d := range 30 { // a slave dies for 10 minutes once a day
		t := now.Add(-time.Duration(d)*24*time.Hour - 3*time.Hour)
		sl := fmt.Sprintf("s%d", d%slaves)
		evs = append(evs, ev{t.UnixNano(), registry.EventSlaveDown, sl, ""}, ev{t.Add(10 * time.Minute).UnixNano(), registry.EventSlaveUp, sl, ""})
	}
	// Ids follow time, as in a real log.
	slices.SortFunc(evs, func(x, y ev) int { return cmp.Compare(x.at, y.at) })
	for _, e := range evs {
		if _, err := evt.Exec(e.at, e.kind, e.sl, e.dv, "tunnel "+e.kind+": ssh on port 20000"); err != nil {
			b.Fatal(err)
		}
	}
	var samples []registry.LoadSample
	for m := range 8 * 24 * 60 {
		at := now.Add(-time.Duration(m) * time.Minute)
		online := devices*9/10 - rng.IntN(500)
		samples = append(samples, registry.LoadSample{Series: registry.FleetSeries, At: at, Min: online - 50, Max: online, Alive: true})
		for s := range slaves {
			n := online / slaves
			dead := m%(24*60) >= 180 && m%(24*60) < 190 && s == (m/(24*60))%slaves
			if dead {
				n = 0
			}
			samples = append(samples, registry.LoadSample{Series: fmt.Sprintf("s%d", s), At: at, Min: n, Max: n, Capacity: 12000, Alive: !dead})
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
	st := &sampleWriter{db: db}
	if err := st.write(samples); err != nil {
		b.Fatal(err)
	}
	return len(evs)
}

type sampleWriter struct{ db *sql.DB }

func (w *sampleWriter) write(samples []registry.LoadSample) error {
	tx, err := w.db.Begin()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	ins, err := tx.Prepare(`INSERT OR REPLACE INTO load_samples (series, at, min, max, capacity, alive) VALUES (?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	for _, s := range samples {
		if _, err := ins.Exec(s.Series, s.At.Truncate(time.Minute).Unix(), s.Min, s.Max, s.Capacity, s.Alive); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// fillTunnels registers slaves s0… and puts 90% of the devices online on
// them.
func fillTunnels(b *testing.B, db *sql.DB, now time.Time, devices, slaves int) {
	b.Helper()
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	for s := range slaves {
		if _, err := tx.Exec(`INSERT INTO slaves (name, host, port, user, capacity, first_seen, last_seen, alive) VALUES (?, '127.0.0.1', 2222, 'mas4h-tunnel', 12000, ?, ?, 1)`,
			fmt.Sprintf("s%d", s), now.UnixNano(), now.UnixNano()); err != nil {
			b.Fatal(err)
		}
	}
	ins, _ := tx.Prepare(`INSERT INTO tunnels (slave, device, forward, port, remote, since) VALUES (?, ?, 'ssh', ?, '192.0.2.1:5000', ?)`)
	for i := range devices {
		if i%10 == 9 {
			continue
		}
		if _, err := ins.Exec(fmt.Sprintf("s%d", i%slaves), fmt.Sprintf("d%06d", i), 20000+i, now.Add(-time.Hour).UnixNano()); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
}
