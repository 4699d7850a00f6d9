// Package tally turns a flood of like events into a few: per key and
// interval, the first Burst events pass as they are and the rest are
// counted into one summary when the interval ends. The master and the
// slaves use it for refused keys, which anyone can cause as often as they
// like, so that the event log grows by a bounded number of rows per
// interval however many keys are tried.
//
// Intervals are shared by all keys: one opens with the first event after
// the last one closed and closes Interval later, on a timer (or at the
// first event after that, for a clock that is not the wall's), and at
// Close.
package tally

import (
	"slices"
	"strings"
	"sync"
	"time"
)

// Defaults of Config.
const (
	DefaultInterval = time.Minute
	DefaultBurst    = 1
	DefaultMaxKeys  = 256
)

// Summary is what a key's suppressed events come to at the end of an
// interval.
type Summary[E any] struct {
	// Key is the events' key; "" for the overflow of keys beyond MaxKeys.
	Key string
	// Count is how many events were suppressed, Last the last of them.
	Count int
	Last  E
	// Interval is how long the interval lasted.
	Interval time.Duration
}

// Config configures a Tally. Emit is required.
type Config[E any] struct {
	// Interval is how long events are counted before the summaries are
	// emitted (0: DefaultInterval).
	Interval time.Duration
	// Burst is how many events of a key pass per interval (0:
	// DefaultBurst).
	Burst int
	// MaxKeys bounds the keys tracked per interval (0: DefaultMaxKeys):
	// events of further keys pass not at all and share one summary with
	// Key "", so that memory and rows stay bounded when every event has a
	// key of its own.
	MaxKeys int
	// Emit is called with each summary, outside the lock, from the timer's
	// goroutine or from Add's caller.
	Emit func(Summary[E])
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Tally counts events per key per interval. It is safe for concurrent use.
type Tally[E any] struct {
	cfg Config[E]

	mu     sync.Mutex
	open   bool
	gen    int // of the open interval, so that a late timer closes only its own
	start  time.Time
	keys   map[string]*count[E]
	over   count[E]
	timer  *time.Timer
	closed bool
}

type count[E any] struct {
	seen, suppressed int
	last             E
}

// New makes a Tally.
func New[E any](cfg Config[E]) *Tally[E] {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Burst <= 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.MaxKeys <= 0 {
		cfg.MaxKeys = DefaultMaxKeys
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Tally[E]{cfg: cfg, keys: map[string]*count[E]{}}
}

// Add counts an event of key and reports whether it should be written as
// it is (one of the first Burst of its key this interval). A suppressed
// event is kept as the key's last, for its summary.
func (t *Tally[E]) Add(key string, ev E) (pass bool) {
	now := t.cfg.Now()
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return true
	}
	var due []Summary[E]
	if t.open && !now.Before(t.start.Add(t.cfg.Interval)) {
		due = t.closeLocked(now)
	}
	if !t.open {
		t.open, t.start = true, now
		t.gen++
		gen := t.gen
		t.timer = time.AfterFunc(t.cfg.Interval, func() { t.flush(gen) })
	}
	c := t.keys[key]
	switch {
	case c != nil:
	case len(t.keys) < t.cfg.MaxKeys:
		c = &count[E]{}
		t.keys[key] = c
	default:
		// A key too many: counted, never passed.
		t.over.suppressed++
		t.over.last = ev
		t.mu.Unlock()
		t.emit(due)
		return false
	}
	c.seen++
	pass = c.seen <= t.cfg.Burst
	if !pass {
		c.suppressed++
		c.last = ev
	}
	t.mu.Unlock()
	t.emit(due)
	return pass
}

// Flush closes the open interval now and emits its summaries.
func (t *Tally[E]) Flush() { t.flush(0) }

// flush closes the open interval if it is gen (0: whichever is open).
func (t *Tally[E]) flush(gen int) {
	now := t.cfg.Now()
	t.mu.Lock()
	var due []Summary[E]
	if gen == 0 || gen == t.gen {
		due = t.closeLocked(now)
	}
	t.mu.Unlock()
	t.emit(due)
}

// Close emits what the open interval holds; afterwards every event passes
// uncounted, so that nothing is lost to a tally nobody flushes any more.
func (t *Tally[E]) Close() {
	now := t.cfg.Now()
	t.mu.Lock()
	due := t.closeLocked(now)
	t.closed = true
	t.mu.Unlock()
	t.emit(due)
}

func (t *Tally[E]) closeLocked(now time.Time) []Summary[E] {
	if !t.open {
		return nil
	}
	t.timer.Stop()
	d := now.Sub(t.start)
	if d <= 0 || d > t.cfg.Interval {
		d = t.cfg.Interval
	}
	var out []Summary[E]
	for k, c := range t.keys {
		if c.suppressed > 0 {
			out = append(out, Summary[E]{Key: k, Count: c.suppressed, Last: c.last, Interval: d})
		}
	}
	slices.SortFunc(out, func(a, b Summary[E]) int { return strings.Compare(a.Key, b.Key) })
	if t.over.suppressed > 0 {
		out = append(out, Summary[E]{Count: t.over.suppressed, Last: t.over.last, Interval: d})
	}
	t.open, t.over = false, count[E]{}
	clear(t.keys)
	return out
}

func (t *Tally[E]) emit(due []Summary[E]) {
	for _, s := range due {
		t.cfg.Emit(s)
	}
}
