package registry

import (
	"sort"
	"time"
)

// StickyMargin is how much busier (in load, 0..1) a device's previous slave
// may be than the least busy one and still get the device back: moving a
// device costs a new connection and loses nothing, but bouncing devices
// between slaves of nearly equal load helps no one.
const StickyMargin = 0.10

// DeadAfter is how many heartbeat intervals a slave may miss before it
// counts as dead.
const DeadAfter = 3

// SlaveLoad is what dispatch knows about one slave.
type SlaveLoad struct {
	Name     string
	Tunnels  int       // tunnels in its last heartbeat
	Pending  int       // slots granted to it since its last heartbeat
	Capacity int       // tunnels it accepts
	LastSeen time.Time // its last heartbeat
}

// Load is (tunnels + pending grants) / capacity. Pending grants count so that
// devices asking one after the other between two heartbeats spread out
// instead of all landing on the slave that was idlest at the last one.
func (s SlaveLoad) Load() float64 {
	c := s.Capacity
	if c <= 0 {
		c = 1
	}
	return float64(s.Tunnels+s.Pending) / float64(c)
}

// Live reports whether s heartbeat within DeadAfter intervals of now.
func (s SlaveLoad) Live(now time.Time, interval time.Duration) bool {
	return !s.LastSeen.Before(now.Add(-DeadAfter * interval))
}

// Full reports whether s has no room for another device.
func (s SlaveLoad) Full() bool { return s.Tunnels+s.Pending >= s.Capacity }

// Dispatch picks the slave for a device whose previous slave was previous
// ("" for none): among live slaves with room, the least loaded, ties broken
// by name; but the previous slave when it is live, has room and its load is
// within StickyMargin of the least loaded. ok is false when no slave
// qualifies.
func Dispatch(slaves []SlaveLoad, previous string, now time.Time, interval time.Duration) (name string, ok bool) {
	cands := make([]SlaveLoad, 0, len(slaves))
	for _, s := range slaves {
		if s.Live(now, interval) && !s.Full() {
			cands = append(cands, s)
		}
	}
	if len(cands) == 0 {
		return "", false
	}
	sort.Slice(cands, func(i, j int) bool {
		li, lj := cands[i].Load(), cands[j].Load()
		if li != lj {
			return li < lj
		}
		return cands[i].Name < cands[j].Name
	})
	best := cands[0]
	if previous != "" {
		for _, s := range cands {
			// A small epsilon so that exactly 10 points apart still sticks
			// despite floating point.
			if s.Name == previous && s.Load()-best.Load() <= StickyMargin+1e-9 {
				return s.Name, true
			}
		}
	}
	return best.Name, true
}
