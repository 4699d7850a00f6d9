package agent

import (
	"math/rand/v2"
	"time"
)

// Backoff is the reconnect delay: Min doubling up to Max, each delay
// jittered down by up to a fifth so that a fleet that lost its slave does
// not come back in lockstep. A client that stayed up for ResetAfter starts
// again from Min.
type Backoff struct {
	Min, Max   time.Duration
	ResetAfter time.Duration
	// Rand returns a float in [0, 1); nil means math/rand/v2.
	Rand func() float64

	next time.Duration
}

// Defaults of the issue: 1 s doubling to 60 s, reset after 60 s up.
const (
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = 60 * time.Second
	DefaultResetAfter = 60 * time.Second
)

// Next returns the delay before the next attempt and doubles the one after.
func (b *Backoff) Next() time.Duration {
	if b.next < b.Min {
		b.next = b.Min
	}
	d := b.next
	b.next = min(b.next*2, b.Max)
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	return d - time.Duration(r()*float64(d)/5)
}

// Reset starts over from Min.
func (b *Backoff) Reset() { b.next = 0 }

// Ran tells the backoff how long the last client ran; a long run resets it.
func (b *Backoff) Ran(d time.Duration) {
	if d >= b.ResetAfter {
		b.Reset()
	}
}
