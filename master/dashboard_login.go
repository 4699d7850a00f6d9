package master

import (
	"sync"
	"time"
)

// The dashboard's login form takes a secret that no rate limit of its own
// protects, so each source gets a few free failures and then waits, twice
// as long after each further one: 5 failures, then 5 s, 10 s, 20 s ... up
// to 15 minutes between tries, so that guessing costs hours per dozen
// guesses, while a person who mistyped waits seconds. A success or an
// hour without failures forgets the source. While a source waits, every
// try is refused without looking at the token (a right one too): else the
// wait would not slow guessing at all.
const (
	loginFreeFailures = 5
	loginFirstWait    = 5 * time.Second
	loginMaxWait      = 15 * time.Minute
	loginForgetAfter  = time.Hour
	// loginMaxSources bounds the memory: past it, forgotten sources go
	// first, then the one that failed longest ago.
	loginMaxSources = 10000
)

// loginThrottle is the per-source backoff of the login form.
type loginThrottle struct {
	mu      sync.Mutex
	sources map[string]*loginFailures
}

type loginFailures struct {
	n     int       // failures in a row
	last  time.Time // of the last failure
	until time.Time // no try before this
}

func newLoginThrottle() *loginThrottle {
	return &loginThrottle{sources: map[string]*loginFailures{}}
}

// wait says how long src must wait before its next try; 0: it may try now.
func (l *loginThrottle) wait(src string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.sources[src]
	if f == nil {
		return 0
	}
	if now.Sub(f.last) >= loginForgetAfter {
		delete(l.sources, src)
		return 0
	}
	return max(f.until.Sub(now), 0)
}

// failed counts a failed try of src and returns how long it must now wait.
func (l *loginThrottle) failed(src string, now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.sources[src]
	if f != nil && now.Sub(f.last) >= loginForgetAfter {
		f = nil
	}
	if f == nil {
		l.makeRoom(now)
		f = &loginFailures{}
		l.sources[src] = f
	}
	f.n++
	f.last = now
	if f.n < loginFreeFailures {
		return 0
	}
	wait := loginMaxWait
	if k := f.n - loginFreeFailures; k < 20 {
		wait = min(loginFirstWait<<k, loginMaxWait)
	}
	f.until = now.Add(wait)
	return wait
}

// succeeded forgets src.
func (l *loginThrottle) succeeded(src string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.sources, src)
}

// makeRoom keeps the table under loginMaxSources before an insert.
func (l *loginThrottle) makeRoom(now time.Time) {
	if len(l.sources) < loginMaxSources {
		return
	}
	for k, f := range l.sources {
		if now.Sub(f.last) >= loginForgetAfter {
			delete(l.sources, k)
		}
	}
	for len(l.sources) >= loginMaxSources {
		var oldest string
		var at time.Time
		for k, f := range l.sources {
			if oldest == "" || f.last.Before(at) {
				oldest, at = k, f.last
			}
		}
		delete(l.sources, oldest)
	}
}
