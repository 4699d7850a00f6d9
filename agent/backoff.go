package agent

import (
	"math/rand/v2"
	"time"
)

// Backoff is the reconnect delay: Min doubling up to Max, each delay cut by
// up to 90% at random, so that a fleet that lost its slave comes back spread
// over the whole step instead of in waves at each doubling (a reconnect
// storm of 2,000 devices: 69 s with cuts of up to a fifth, about 40 s with
// these; see README, Performance). A client that stayed up for ResetAfter
// starts again from Min.
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
	return d - time.Duration(r()*float64(d)*maxJitter)
}

// maxJitter is the largest share of a delay cut at random. Not all of it: a
// tenth is kept so that a failing client never spins.
const maxJitter = 0.9

// Jitter is the agent's jitter, for harnesses that play its fleet.
func Jitter() float64 {
	return maxJitter
}

// Reset starts over from Min.
func (b *Backoff) Reset() { b.next = 0 }

// Ran tells the backoff how long the last client ran; a long run resets it.
func (b *Backoff) Ran(d time.Duration) {
	if d >= b.ResetAfter {
		b.Reset()
	}
}
