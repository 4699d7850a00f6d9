package master

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// ipLimiter is a token bucket per source: an IPv4 address, or an IPv6
// /64 (one host or one customer line usually holds a whole /64, so a
// bucket per IPv6 address would give it 2^64 buckets). Buckets idle for
// idleAfter are dropped, so a scan from many addresses costs memory only
// while it lasts.
type ipLimiter struct {
	rate  rate.Limit
	burst int

	mu        sync.Mutex
	buckets   map[string]*bucket
	lastSweep time.Time
}

type bucket struct {
	lim  *rate.Limiter
	last time.Time
}

const (
	idleAfter     = 10 * time.Minute
	sweepInterval = time.Minute
)

func newIPLimiter(perSecond float64, burst int) *ipLimiter {
	return &ipLimiter{rate: rate.Limit(perSecond), burst: burst, buckets: map[string]*bucket{}}
}

// allow takes a token from ip's bucket; when there is none it says how
// long until there is.
func (l *ipLimiter) allow(ip string, now time.Time) (bool, time.Duration) {
	ip = sourceAddr(ip) // an IPv6 address counts by its /64
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.lastSweep) >= sweepInterval {
		for k, b := range l.buckets {
			if now.Sub(b.last) >= idleAfter {
				delete(l.buckets, k)
			}
		}
		l.lastSweep = now
	}
	b := l.buckets[ip]
	if b == nil {
		b = &bucket{lim: rate.NewLimiter(l.rate, l.burst)}
		l.buckets[ip] = b
	}
	b.last = now
	if b.lim.AllowN(now, 1) {
		return true, 0
	}
	r := b.lim.ReserveN(now, 1)
	wait := r.DelayFrom(now)
	r.CancelAt(now)
	if wait <= 0 || wait == rate.InfDuration {
		wait = time.Duration(math.Ceil(float64(time.Second) / float64(l.rate)))
	}
	return false, wait
}
