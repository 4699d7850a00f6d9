package history

import (
	"reflect"
	"testing"
	"time"

	"github.com/mas4h/mas4h/registry"
)

var t0 = time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC)

func at(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }

func ev(id int64, m int, kind, slave string) registry.Event {
	return registry.Event{ID: id, At: at(m), Kind: kind, Slave: slave, Device: "pi"}
}

func conn(id int64, m int, slave string) registry.Event {
	return ev(id, m, registry.EventConnect, slave)
}

func disc(id int64, m int, slave string) registry.Event {
	return ev(id, m, registry.EventDisconnect, slave)
}

func seg(from, to int, s State) Segment { return Segment{Start: at(from), End: at(to), State: s} }

func TestDevice(t *testing.T) {
	long := at(-10000) // enrolled long before the windows below
	flaps := []registry.Event{conn(1, -30, "s1")}
	for i := range 5 { // 5 times: down at 10, 30, 50, 70, 90 for 5 min each
		m := 10 + 20*i
		flaps = append(flaps, disc(int64(2+2*i), m, "s1"), conn(int64(3+2*i), m+5, "s1"))
	}
	tests := []struct {
		name      string
		events    []registry.Event
		enrolled  time.Time
		from, to  int
		onlineNow bool
		want      []Segment
		up        time.Duration
		disc      int
		pct       float64
	}{
		{
			name: "flapped 5 times", events: flaps, enrolled: long, from: 0, to: 120,
			want: []Segment{seg(0, 10, Up), seg(10, 15, Down), seg(15, 30, Up), seg(30, 35, Down), seg(35, 50, Up),
				seg(50, 55, Down), seg(55, 70, Up), seg(70, 75, Down), seg(75, 90, Up), seg(90, 95, Down), seg(95, 120, Up)},
			up: 95 * time.Minute, disc: 5, pct: 100 * 95.0 / 120,
		},
		{
			name: "its slave died for 10 minutes, then it came back through another",
			events: []registry.Event{conn(1, -5, "s1"), ev(2, 20, registry.EventSlaveDown, "s1"),
				conn(3, 30, "s2"), ev(4, 30, registry.EventSlaveUp, "s1")},
			enrolled: long, from: 0, to: 60,
			want: []Segment{seg(0, 20, Up), seg(20, 30, Down), seg(30, 60, Up)},
			up:   50 * time.Minute, disc: 1, pct: 100 * 50.0 / 60,
		},
		{
			name: "a dead slave's late disconnect does not count twice",
			events: []registry.Event{conn(1, 0, "s1"), ev(2, 10, registry.EventSlaveDown, "s1"),
				disc(3, 12, "s1")},
			enrolled: long, from: 0, to: 20,
			want: []Segment{seg(0, 10, Up), seg(10, 20, Down)}, up: 10 * time.Minute, disc: 1, pct: 50,
		},
		{
			name: "events out of order", events: []registry.Event{conn(3, 40, "s1"), disc(2, 20, "s1"), conn(1, 0, "s1")},
			enrolled: long, from: 0, to: 60,
			want: []Segment{seg(0, 20, Up), seg(20, 40, Down), seg(40, 60, Up)}, up: 40 * time.Minute, disc: 1, pct: 100 * 40.0 / 60,
		},
		{
			name: "enrolled mid-window, connected 10 minutes later", events: []registry.Event{conn(1, 40, "s1")},
			enrolled: at(30), from: 0, to: 60,
			want: []Segment{seg(0, 30, Unenrolled), seg(30, 40, Down), seg(40, 60, Up)}, up: 20 * time.Minute, pct: 100 * 20.0 / 30,
		},
		{
			name: "enrolled after the window", enrolled: at(90), from: 0, to: 60,
			want: []Segment{seg(0, 60, Unenrolled)}, pct: -1,
		},
		{
			name:     "state at the window's start from an event before it; changes on both edges",
			events:   []registry.Event{conn(1, -100, "s1"), disc(2, 0, "s1"), conn(3, 60, "s1")},
			enrolled: long, from: 0, to: 60,
			want: []Segment{seg(0, 60, Down)}, disc: 1, pct: 0,
		},
		{
			name:   "first known event a disconnect: up before it (its connect was pruned)",
			events: []registry.Event{disc(5, 30, "s1")}, enrolled: long, from: 0, to: 60,
			want: []Segment{seg(0, 30, Up), seg(30, 60, Down)}, up: 30 * time.Minute, disc: 1, pct: 50,
		},
		{
			name: "no event, online now: up all along", enrolled: long, from: 0, to: 60, onlineNow: true,
			want: []Segment{seg(0, 60, Up)}, up: time.Hour, pct: 100,
		},
		{
			name: "no event, offline", enrolled: long, from: 0, to: 60,
			want: []Segment{seg(0, 60, Down)}, pct: 0,
		},
		{
			name: "two forwards: one dropping leaves it up",
			events: []registry.Event{conn(1, 0, "s1"), conn(2, 0, "s1"), disc(3, 10, "s1"), conn(4, 12, "s1"),
				disc(5, 20, "s1"), disc(6, 20, "s1"), conn(7, 30, "s1")},
			enrolled: long, from: 0, to: 60,
			want: []Segment{seg(0, 20, Up), seg(20, 30, Down), seg(30, 60, Up)}, up: 50 * time.Minute, disc: 1, pct: 100 * 50.0 / 60,
		},
		{
			name: "events after the window are ignored", events: []registry.Event{conn(1, 0, "s1"), disc(2, 70, "s1")},
			enrolled: long, from: 0, to: 60,
			want: []Segment{seg(0, 60, Up)}, up: time.Hour, pct: 100,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := Device(tt.events, tt.enrolled, at(tt.from), at(tt.to), tt.onlineNow)
			if !reflect.DeepEqual(a.Segments, tt.want) {
				t.Errorf("segments:\n got %v\nwant %v", a.Segments, tt.want)
			}
			if a.Up != tt.up || a.Disconnects != tt.disc {
				t.Errorf("up %v, %d disconnects; want %v, %d", a.Up, a.Disconnects, tt.up, tt.disc)
			}
			if p := a.Percent(); p-tt.pct > 1e-9 || tt.pct-p > 1e-9 {
				t.Errorf("percent %.3f, want %.3f", p, tt.pct)
			}
		})
	}
}

func sample(m, lo, hi int, alive bool) registry.LoadSample {
	return registry.LoadSample{Series: "s1", At: at(m), Min: lo, Max: hi, Capacity: 100, Alive: alive}
}

func TestSeries(t *testing.T) {
	// A slave with 50 tunnels dies for 10 minutes (at 30-39) in an hour
	// sampled each minute, but not at minute 50 (the master was down).
	var samples []registry.LoadSample
	for m := 59; m >= 0; m-- { // out of order
		switch {
		case m == 50:
		case m >= 30 && m < 40:
			samples = append(samples, sample(m, 0, 0, false))
		default:
			samples = append(samples, sample(m, 50, 50, true))
		}
	}
	samples = append(samples, sample(60, 1, 1, true), sample(-1, 1, 1, true)) // outside
	pts := Series(samples, at(0), at(60), 4)
	want := []Point{
		{Start: at(0), End: at(15), Min: 50, Max: 50, Capacity: 100, Known: true},
		{Start: at(15), End: at(30), Min: 50, Max: 50, Capacity: 100, Known: true},
		{Start: at(30), End: at(45), Min: 0, Max: 50, Capacity: 100, Known: true, Down: true},
		{Start: at(45), End: at(60), Min: 50, Max: 50, Capacity: 100, Known: true},
	}
	if !reflect.DeepEqual(pts, want) {
		t.Errorf("4 buckets:\n got %+v\nwant %+v", pts, want)
	}
	pts = Series(samples, at(0), at(60), 60)
	if pts[50].Known || !pts[49].Known || !pts[35].Down || pts[29].Down {
		t.Errorf("60 buckets: minute 50 known %v, 49 known %v, 35 down %v, 29 down %v", pts[50].Known, pts[49].Known, pts[35].Down, pts[29].Down)
	}
	if Series(samples, at(0), at(0), 4) != nil || Series(samples, at(0), at(60), 0) != nil {
		t.Error("an empty window or no bucket gives points")
	}
}

func TestParseWindow(t *testing.T) {
	for w, want := range map[string]time.Duration{"": 24 * time.Hour, "24h": 24 * time.Hour, "7d": 7 * 24 * time.Hour} {
		if d, err := ParseWindow(w); err != nil || d != want {
			t.Errorf("ParseWindow(%q) = %v, %v; want %v", w, d, err, want)
		}
	}
	for _, w := range []string{"1h", "30d", "7D", "24h ", "-24h"} {
		if _, err := ParseWindow(w); err == nil {
			t.Errorf("ParseWindow(%q) accepted", w)
		}
	}
}
