package master

import (
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// A registry that cannot be written (its disk full, an I/O error, a file
// made read-only) is the operator's to mend, not the request's fault: the
// API answers 503 with what is wrong and a Retry-After, /healthz says so
// until a write succeeds again, and a metric counts the failures. Before,
// writes failed with a plain 500 while /healthz said ok.

// unwritableRetry is the Retry-After of a 503 for an unwritable registry,
// in seconds: freeing space takes a person.
const unwritableRetry = 30

// unavailableRetry is the Retry-After of a 503 for a registry database out
// of reach (PostgreSQL restarting, failing over), in seconds.
const unavailableRetry = 5

func (s *Server) unwritableMessage(err error) string {
	if s.store.ReadOnly() != "" {
		return "the registry was opened read-only, its filesystem full when the master started (" + err.Error() + "): free space on it (SQLite needs about 4 MiB beyond the database for its write-ahead log) and restart the master"
	}
	if registry.Unavailable(err) {
		return "the registry's database does not answer (" + err.Error() + "): the master reconnects by itself once PostgreSQL takes connections again; check that it runs"
	}
	return "the registry cannot be written (" + err.Error() + "): free space on its filesystem (SQLite needs about 4 MiB beyond the database for its write-ahead log) or make it writable; the master resumes by itself"
}

// storeHealth is the last unwritable-registry failure, until a write
// succeeds.
type storeHealth struct {
	mu          sync.Mutex
	since       time.Time // zero: writable as far as is known
	last        string
	unavailable bool // the last failure was the database out of reach
}

// storeFailed records a write the registry refused.
func (s *Server) storeFailed(err error) {
	s.metrics.StoreUnwritable()
	s.health.mu.Lock()
	defer s.health.mu.Unlock()
	if s.health.since.IsZero() {
		s.health.since = s.now()
		if registry.Unavailable(err) {
			s.log.Error("the registry's database does not answer; answering 503 until it does", "err", err)
		} else {
			s.log.Error("the registry cannot be written; answering 503 until a write succeeds", "err", err)
		}
	}
	s.health.last = err.Error()
	s.health.unavailable = registry.Unavailable(err)
}

// storeWrote records a write that succeeded.
func (s *Server) storeWrote() {
	s.health.mu.Lock()
	defer s.health.mu.Unlock()
	if !s.health.since.IsZero() {
		s.log.Info("the registry is writable again", "unwritable_for", s.now().Sub(s.health.since).Round(time.Second))
		s.health.since, s.health.last = time.Time{}, ""
	}
}

func (s *Server) handleHealthz(c *gin.Context) {
	s.health.mu.Lock()
	since, last, unavailable := s.health.since, s.health.last, s.health.unavailable
	s.health.mu.Unlock()
	if !since.IsZero() {
		what, retry := "the registry cannot be written", unwritableRetry
		if unavailable {
			what, retry = "the registry's database does not answer", unavailableRetry
		}
		c.Header("Retry-After", strconv.Itoa(retry))
		c.JSON(http.StatusServiceUnavailable, wire.Health{Status: "degraded",
			Detail: what + " since " + since.UTC().Format(time.RFC3339) + ": " + last})
		return
	}
	c.JSON(http.StatusOK, wire.Health{Status: "ok"})
}
