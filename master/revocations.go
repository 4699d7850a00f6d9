package master

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/names"
)

// Slaves learn of revocations with their heartbeats and, sooner, by asking
// GET /slaves/NAME/revocations?after=SEQ&wait=SECONDS, which answers at
// once when there is one after SEQ and otherwise waits until there is (or
// wait passes): a revoked key is refused by every slave a round trip after
// the revoke, not a heartbeat interval later.
const (
	// MaxRevocationWait bounds a slave's wait.
	MaxRevocationWait = 30 * time.Second
	// revocationRecheck: a waiting request also rereads the store this
	// often, for revocations written by another process on the same store.
	revocationRecheck = time.Second
)

// feed wakes the requests waiting for a revocation, and ends their wait
// when the server shuts down (a slave's long poll would otherwise hold the
// shutdown for its whole wait; the slave asks again, of another master).
type feed struct {
	mu      sync.Mutex
	changed chan struct{}
	stopped chan struct{}
	stop    func()
}

func newFeed() *feed {
	f := &feed{changed: make(chan struct{}), stopped: make(chan struct{})}
	f.stop = sync.OnceFunc(func() { close(f.stopped) })
	return f
}

// wait returns a channel closed at the next notify.
func (f *feed) wait() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

// notify wakes every waiter.
func (f *feed) notify() {
	f.mu.Lock()
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()
}

func (s *Server) handleRevocations(c *gin.Context) {
	if err := names.Slave(c.Param("name")); err != nil {
		fail(c, http.StatusBadRequest, err.Error())
		return
	}
	after, err := strconv.ParseInt(c.Query("after"), 10, 64)
	if err != nil || after < 0 {
		fail(c, http.StatusBadRequest, "after must be the last revocation sequence number the slave applied (0 or more)")
		return
	}
	wait := time.Duration(0)
	if v := c.Query("wait"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || time.Duration(n)*time.Second > MaxRevocationWait {
			fail(c, http.StatusBadRequest, "wait must be 0-30 (seconds)")
			return
		}
		wait = time.Duration(n) * time.Second
	}
	ctx := c.Request.Context()
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	tick := time.NewTicker(revocationRecheck)
	defer tick.Stop()
	for {
		woken := s.revoked.wait() // before the read: a revoke during it wakes the next wait
		reply, err := s.revocationsAfter(ctx, after)
		if err != nil {
			s.internal(c, err)
			return
		}
		if len(reply.Revocations) > 0 || reply.Seq != after {
			c.JSON(http.StatusOK, reply)
			return
		}
		select {
		case <-woken:
		case <-tick.C:
		case <-deadline.C:
			c.JSON(http.StatusOK, reply)
			return
		case <-s.revoked.stopped:
			c.JSON(http.StatusOK, reply)
			return
		case <-ctx.Done():
			return
		}
	}
}

// revocationsAfter is what a slave that applied seq has not: the
// revocations after it, and the sequence number to ask from next (a fresh
// slave, or one ahead of a replaced registry, starts from now).
func (s *Server) revocationsAfter(ctx context.Context, seq int64) (wire.RevocationsReply, error) {
	reply := wire.RevocationsReply{Revocations: []wire.Revocation{}}
	cur, err := s.store.RevocationSeq(ctx)
	if err != nil {
		return reply, err
	}
	if seq <= 0 || seq > cur {
		reply.Seq = cur
		return reply, nil
	}
	revs, err := s.store.Revocations(ctx, seq, maxRevocations)
	if err != nil {
		return reply, err
	}
	reply.Seq = seq
	for _, r := range revs {
		reply.Revocations = append(reply.Revocations, r.Wire())
		reply.Seq = r.Seq
	}
	return reply, nil
}
