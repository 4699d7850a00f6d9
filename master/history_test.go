package master

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// A device that flapped 5 times, and a slave that died for 10 minutes,
// through heartbeats and the master's own sampling, seen in the API and
// on the pages.
func TestHistoryThroughTheAPIAndPages(t *testing.T) {
	ctx := context.Background()
	st, err := registry.Open(ctx, testkit.RegistryLocation(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	// The store stamps enrolments with the real time: so does this clock.
	e := newEnvOn(t, st, &fakeClock{t: time.Now().UTC()}, nil)
	e.enrol("pi-flap")
	e.enrol("pi-calm")
	tun := func(dev string, port int) wire.Tunnel {
		return wire.Tunnel{Device: dev, Forward: "ssh", Port: port, Since: e.clock.Now()}
	}
	calm := tun("pi-calm", 20001)
	event := func(kind, dev string) wire.SlaveEvent {
		return wire.SlaveEvent{At: e.clock.Now(), Kind: kind, Device: dev, Detail: "tunnel " + kind}
	}
	beat := func(tunnels []wire.Tunnel, evs ...wire.SlaveEvent) {
		hb := heartbeatOf(10, tunnels...)
		hb.Events = evs
		e.beat("s1", hb)
		e.srv.sampleLoad(ctx)
	}
	beat([]wire.Tunnel{calm}, event("connect", "pi-calm"))
	for range 5 {
		beat([]wire.Tunnel{calm, tun("pi-flap", 20000)}, event("connect", "pi-flap"))
		e.clock.Advance(5 * time.Minute)
		beat([]wire.Tunnel{calm}, event("disconnect", "pi-flap"))
		e.clock.Advance(time.Minute)
		beat([]wire.Tunnel{calm})
	}
	// s1 falls silent: the master marks it dead; 10 minutes later it is back.
	for range 10 {
		e.clock.Advance(time.Minute)
		e.srv.checkSlaves(ctx)
		e.srv.sampleLoad(ctx)
	}
	beat([]wire.Tunnel{calm})
	e.clock.Advance(time.Minute)
	beat([]wire.Tunnel{calm})

	var a availabilityJSON
	e.want("GET", "/devices/pi-flap/availability?window=24h", adminTok, nil, http.StatusOK, &a)
	if a.Disconnects != 5 || a.UpSeconds < 25*60-1 || a.UpSeconds > 25*60 || a.Percent == nil {
		t.Errorf("pi-flap: %d disconnects, up %vs, percent %v; want 5, 1500 s", a.Disconnects, a.UpSeconds, a.Percent)
	}
	var ups int
	for _, s := range a.Segments {
		if s.State == "up" {
			ups++
		}
	}
	if ups != 5 || a.Segments[0].State != "unenrolled" {
		t.Errorf("pi-flap segments %+v: want unenrolled first, then 5 up", a.Segments)
	}
	e.want("GET", "/devices/pi-calm/availability?window=7d", adminTok, nil, http.StatusOK, &a)
	if a.Disconnects != 1 { // its slave died under it
		t.Errorf("pi-calm: %d disconnects, want 1 (its slave's death)", a.Disconnects)
	}
	for _, bad := range []string{"?window=1h", "?window=7D", "?window=24h%00"} {
		e.want("GET", "/devices/pi-flap/availability"+bad, adminTok, nil, http.StatusBadRequest, nil)
		e.want("GET", "/history/fleet"+bad, adminTok, nil, http.StatusBadRequest, nil)
		e.want("GET", "/slaves/s1/history"+bad, adminTok, nil, http.StatusBadRequest, nil)
	}
	e.want("GET", "/devices/nope/availability", adminTok, nil, http.StatusNotFound, nil)
	e.want("GET", "/slaves/nope/history", adminTok, nil, http.StatusNotFound, nil)
	e.want("GET", "/history/fleet", slaveTok, nil, http.StatusForbidden, nil)

	var sl seriesJSON
	e.want("GET", "/slaves/s1/history?window=24h", adminTok, nil, http.StatusOK, &sl)
	var down, known int
	for _, p := range sl.Points {
		if p.Down {
			down++
		}
		if p.Known {
			known++
		}
	}
	if down == 0 || known == 0 || len(sl.Points) != fleetBuckets24h {
		t.Errorf("s1's history: %d points, %d known, %d with the slave dead; want %d, some, some", len(sl.Points), known, down, fleetBuckets24h)
	}
	var fl seriesJSON
	e.want("GET", "/history/fleet?window=7d", adminTok, nil, http.StatusOK, &fl)
	var most, least = 0, 1 << 30
	for _, p := range fl.Points {
		if p.Known {
			most, least = max(most, p.Max), min(least, p.Min)
		}
	}
	if most != 2 || least != 0 {
		t.Errorf("fleet over 7d: %d-%d online, want 0-2", least, most)
	}

	b := e.browser()
	login(t, b, e.ts.URL, adminTok, "/")
	code, page := get(t, b, e.ts.URL+"/")
	for _, want := range []string{`data-chart="fleet"`, `data-flapping="pi-flap"`, "<b>5</b> tunnel disconnects", `class="dead"`, "slave dead"} {
		if code != http.StatusOK || !strings.Contains(page, want) {
			t.Errorf("overview (%d) lacks %q", code, want)
		}
	}
	if strings.Contains(page, "<script") {
		t.Error("the overview has a script")
	}
	code, page = get(t, b, e.ts.URL+"/ui/devices/pi-flap")
	for _, want := range []string{`data-window="24h"`, `data-disconnects="5"`, `class="down"`, "down for 1m00s", "not enrolled yet"} {
		if code != http.StatusOK || !strings.Contains(page, want) {
			t.Errorf("pi-flap's page (%d) lacks %q", code, want)
		}
	}
	code, _ = get(t, b, e.ts.URL+"/?window=7d")
	if code != http.StatusOK {
		t.Errorf("overview over 7d = %d", code)
	}

	// Samples older than 8 days go.
	if err := e.store.RecordLoad(ctx, []registry.LoadSample{{Series: "s1", At: e.clock.Now().Add(-9 * 24 * time.Hour), Alive: true}}); err != nil {
		t.Fatal(err)
	}
	if n, err := e.store.PruneLoad(ctx, e.clock.Now().Add(-loadSampleMaxAge)); err != nil || n != 1 {
		t.Errorf("PruneLoad = %d, %v; want 1", n, err)
	}
}
