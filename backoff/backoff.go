// Package backoff is mas4h's one retry delay: Min doubling up to Max, each
// delay cut by up to 90% at random, so that a fleet that lost its slave (or
// slaves that lost their master) comes back spread over the whole step
// instead of in waves at each doubling. Measured with the agent: a
// reconnect storm of 2,000 devices took 69 s with cuts of up to a fifth and
// about 40 s with these (README, Performance). A tenth of each delay is
// always kept, so that a failing client never spins.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Defaults, the agent's: 1 s doubling to 60 s, reset after 60 s up, each
// delay cut by up to 90%.
const (
	DefaultMin        = time.Second
	DefaultMax        = 60 * time.Second
	DefaultResetAfter = 60 * time.Second
	DefaultJitter     = 0.9
)

// Backoff is the delay before each next attempt. Zero fields take the
// defaults; the zero Backoff is the agent's. It is not safe for concurrent
// use: each retrying loop keeps its own.
type Backoff struct {
	Min, Max time.Duration
	// ResetAfter: an attempt that lasted this long (Ran) starts over from
	// Min.
	ResetAfter time.Duration
	// Jitter is the largest share of a delay cut at random, in (0, 1].
	Jitter float64
	// Rand returns a float in [0, 1); nil means math/rand/v2.
	Rand func() float64

	next time.Duration
}

// Next returns the delay before the next attempt and doubles the one after.
func (b *Backoff) Next() time.Duration {
	lo, hi := b.Min, b.Max
	if lo <= 0 {
		lo = DefaultMin
	}
	if hi <= 0 {
		hi = max(lo, DefaultMax)
	}
	hi = max(hi, lo)
	b.next = min(max(b.next, lo), hi)
	d := b.next
	b.next = min(b.next*2, hi)
	jitter := b.Jitter
	if jitter <= 0 {
		jitter = DefaultJitter
	}
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	return d - time.Duration(r()*float64(d)*min(jitter, 1))
}

// Reset starts over from Min.
func (b *Backoff) Reset() { b.next = 0 }

// Ran tells the backoff how long the last attempt lasted (how long a client
// stayed up): ResetAfter or more starts over from Min.
func (b *Backoff) Ran(d time.Duration) {
	resetAfter := b.ResetAfter
	if resetAfter <= 0 {
		resetAfter = DefaultResetAfter
	}
	if d >= resetAfter {
		b.Reset()
	}
}
