package authlog

import (
	"maps"
	"net/netip"
	"sync"
	"time"
)

// Index is the live part of the log: which key each connection
// authenticated with, by the connection's remote address and port, which is
// unique among a listener's live connections. Entries leave when the log
// says the connection ended (Close) or when a walk of the session table no
// longer finds it (Keep).
type Index struct {
	now func() time.Time

	mu       sync.Mutex
	byRemote map[netip.AddrPort]entry
	byKey    map[string]int                     // connections per fingerprint
	byUser   map[string]map[netip.AddrPort]bool // connections per user
}

type entry struct {
	Accepted
	at time.Time
}

// NewIndex makes an empty index; now is its clock (nil: time.Now).
func NewIndex(now func() time.Time) *Index {
	if now == nil {
		now = time.Now
	}
	return &Index{now: now, byRemote: map[netip.AddrPort]entry{}, byKey: map[string]int{}, byUser: map[string]map[netip.AddrPort]bool{}}
}

// Accept records an authentication.
func (x *Index) Accept(a Accepted) {
	x.mu.Lock()
	x.drop(a.Remote)
	x.byRemote[a.Remote] = entry{a, x.now()}
	x.byKey[a.Fingerprint]++
	if x.byUser[a.User] == nil {
		x.byUser[a.User] = map[netip.AddrPort]bool{}
	}
	x.byUser[a.User][a.Remote] = true
	x.mu.Unlock()
}

// Close forgets a connection that ended.
func (x *Index) Close(remote netip.AddrPort) {
	x.mu.Lock()
	x.drop(remote)
	x.mu.Unlock()
}

// Lookup says which key the connection from remote authenticated with.
func (x *Index) Lookup(remote netip.AddrPort) (Accepted, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	e, ok := x.byRemote[remote]
	return e.Accepted, ok
}

// Keep forgets the connections not in live, except those recorded within
// grace (a session that authenticated after the walk that produced live
// began).
func (x *Index) Keep(live map[netip.AddrPort]bool, grace time.Duration) {
	cutoff := x.now().Add(-grace)
	x.mu.Lock()
	defer x.mu.Unlock()
	for r, e := range x.byRemote {
		if !live[r] && e.at.Before(cutoff) {
			x.drop(r)
		}
	}
}

// Count is how many connections authenticated with fingerprint fp.
func (x *Index) Count(fp string) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.byKey[fp]
}

// Users lists the remote ends of the connections that authenticated as
// user.
func (x *Index) Users(user string) []netip.AddrPort {
	x.mu.Lock()
	defer x.mu.Unlock()
	out := make([]netip.AddrPort, 0, len(x.byUser[user]))
	for r := range x.byUser[user] {
		out = append(out, r)
	}
	return out
}

// Fingerprints counts the connections of every key that has one.
func (x *Index) Fingerprints() map[string]int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return maps.Clone(x.byKey)
}

// Len is the number of connections the index knows.
func (x *Index) Len() int {
	x.mu.Lock()
	defer x.mu.Unlock()
	return len(x.byRemote)
}

// drop forgets one connection. Call with x.mu held.
func (x *Index) drop(remote netip.AddrPort) {
	e, ok := x.byRemote[remote]
	if !ok {
		return
	}
	delete(x.byRemote, remote)
	if x.byKey[e.Fingerprint]--; x.byKey[e.Fingerprint] <= 0 {
		delete(x.byKey, e.Fingerprint)
	}
	if delete(x.byUser[e.User], remote); len(x.byUser[e.User]) == 0 {
		delete(x.byUser, e.User)
	}
}
