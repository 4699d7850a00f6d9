// Package history turns what the registry keeps into the answers an
// operator asks about time: when each device was reachable over a window
// (its timeline, availability and disconnects), from its tunnel events and
// the slaves' deaths; and the fleet's online devices and each slave's load
// over a window, from per-minute samples, folded into a few buckets for a
// chart. Everything here is pure: events and samples in, figures out.
package history

import (
	"cmp"
	"fmt"
	"slices"
	"time"

	"github.com/mas4h/mas4h/registry"
)

// Windows the dashboard and the API offer, by name.
var Windows = map[string]time.Duration{
	"24h": 24 * time.Hour,
	"7d":  7 * 24 * time.Hour,
}

// ParseWindow returns the window named w ("" is 24h).
func ParseWindow(w string) (time.Duration, error) {
	if w == "" {
		w = "24h"
	}
	d, ok := Windows[w]
	if !ok {
		return 0, fmt.Errorf("window must be 24h or 7d, got %q", trunc(w))
	}
	return d, nil
}

func trunc(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}

// State is a device's state over a segment of time.
type State int

const (
	Unenrolled State = iota // before the device was enrolled
	Down
	Up
)

func (s State) String() string {
	switch s {
	case Up:
		return "up"
	case Down:
		return "down"
	default:
		return "unenrolled"
	}
}

// Segment is a span of time in one state: [Start, End).
type Segment struct {
	Start, End time.Time
	State      State
}

// Availability is a device's history over a window [Start, End).
type Availability struct {
	Start, End time.Time
	// Segments cover the window, in order, adjacent ones in different
	// states.
	Segments []Segment
	Up       time.Duration // time up
	Enrolled time.Duration // time enrolled (the rest is before enrolment)
	// Disconnects counts the times the device went from up to down in
	// the window (a device with two forwards that loses one stays up).
	Disconnects int
}

// Percent is the share of the enrolled time the device was up, 0-100, or
// -1 when it was not enrolled at all in the window.
func (a Availability) Percent() float64 {
	if a.Enrolled <= 0 {
		return -1
	}
	return 100 * float64(a.Up) / float64(a.Enrolled)
}

// Device is the availability over [start, end) of a device enrolled at
// enrolled, from events (in any order): its connect and disconnect
// events (one per forward, each naming the slave that saw it), the slaves'
// slave-down events (a dead slave's tunnels are gone: it writes no
// disconnect for them) and anything else, which is ignored. Events
// before start give the state when the window opens. When the first of
// the device's events is a disconnect, the device was up before it (its
// connect is older than the log); when it has none, it was up all along
// if onlineNow, else down.
func Device(events []registry.Event, enrolled, start, end time.Time, onlineNow bool) Availability {
	a := Availability{Start: start, End: end}
	if !end.After(start) {
		return a
	}
	evs := slices.Clone(events)
	slices.SortStableFunc(evs, func(x, y registry.Event) int {
		return cmp.Or(x.At.Compare(y.At), cmp.Compare(x.ID, y.ID))
	})
	open := map[string]int{} // tunnels up, by slave
	seeded := false
	for _, e := range evs {
		if e.Kind == registry.EventConnect || e.Kind == registry.EventDisconnect {
			if e.Kind == registry.EventDisconnect {
				open[e.Slave] = 1
			}
			seeded = true
			break
		}
	}
	if !seeded && onlineNow {
		open["\x00now"] = 1
	}
	up := func() bool {
		for _, n := range open {
			if n > 0 {
				return true
			}
		}
		return false
	}

	var segs []Segment
	cur := start
	state := func() State {
		if cur.Before(enrolled) {
			return Unenrolled
		}
		if up() {
			return Up
		}
		return Down
	}
	add := func(to time.Time, st State) {
		if !to.After(cur) {
			return
		}
		if n := len(segs); n > 0 && segs[n-1].State == st {
			segs[n-1].End = to
		} else {
			segs = append(segs, Segment{Start: cur, End: to, State: st})
		}
		cur = to
	}
	// advance closes the segment up to t in the current state, splitting
	// at the enrolment.
	advance := func(t time.Time) {
		if t.After(end) {
			t = end
		}
		if cur.Before(enrolled) && enrolled.Before(t) {
			add(enrolled, Unenrolled)
		}
		add(t, state())
	}
	for _, e := range evs {
		if e.At.After(end) || e.At.Equal(end) {
			break
		}
		wasUp := up()
		if e.At.After(cur) {
			advance(e.At)
		}
		switch e.Kind {
		case registry.EventConnect:
			open[e.Slave]++
		case registry.EventDisconnect:
			if open[e.Slave] > 0 {
				open[e.Slave]--
			}
		case registry.EventSlaveDown:
			delete(open, e.Slave)
		default:
			continue
		}
		if wasUp && !up() && !e.At.Before(start) && !e.At.Before(enrolled) {
			a.Disconnects++
		}
	}
	advance(end)
	// A state change exactly at a segment's edge can leave two adjacent
	// segments in one state; merge them.
	merged := segs[:0]
	for _, s := range segs {
		if n := len(merged); n > 0 && merged[n-1].State == s.State {
			merged[n-1].End = s.End
			continue
		}
		merged = append(merged, s)
	}
	a.Segments = merged
	for _, s := range merged {
		d := s.End.Sub(s.Start)
		if s.State != Unenrolled {
			a.Enrolled += d
		}
		if s.State == Up {
			a.Up += d
		}
	}
	return a
}

// Point is one bucket of a series: [Start, End), the least and most
// seen in it, the capacity (of a slave), whether any sample fell in it
// (Known) and whether the slave was dead at any of them (Down).
type Point struct {
	Start, End time.Time
	Min, Max   int
	Capacity   int
	Known      bool
	Down       bool
}

// Series folds samples of one series (in any order) into n buckets
// covering [start, end): each bucket keeps the least and most of its
// samples (a short dip stays visible in a wide bucket), the largest
// capacity, and whether the slave was dead at any of them. A bucket with
// no sample is not Known (nobody was sampling: the master was down).
func Series(samples []registry.LoadSample, start, end time.Time, n int) []Point {
	if n <= 0 || !end.After(start) {
		return nil
	}
	width := end.Sub(start) / time.Duration(n)
	if width <= 0 {
		width = 1
	}
	pts := make([]Point, n)
	for i := range pts {
		pts[i].Start = start.Add(time.Duration(i) * width)
		pts[i].End = start.Add(time.Duration(i+1) * width)
	}
	pts[n-1].End = end
	for _, s := range samples {
		if s.At.Before(start) || !s.At.Before(end) {
			continue
		}
		i := min(int(s.At.Sub(start)/width), n-1)
		p := &pts[i]
		if !p.Known {
			p.Known, p.Min, p.Max = true, s.Min, s.Max
		} else {
			p.Min, p.Max = min(p.Min, s.Min), max(p.Max, s.Max)
		}
		p.Capacity = max(p.Capacity, s.Capacity)
		p.Down = p.Down || !s.Alive
	}
	return pts
}
