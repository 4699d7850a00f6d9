package master

import (
	"context"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/mas4h/mas4h/metrics"
)

// countSlots counts every answered slot request by its outcome, read from
// the status the handler answered with.
func (s *Server) countSlots(c *gin.Context) {
	c.Next()
	var r string
	switch c.Writer.Status() {
	case http.StatusOK:
		r = metrics.SlotGranted
	case http.StatusForbidden:
		r = metrics.SlotDenied
	case http.StatusServiceUnavailable:
		r = metrics.SlotNoSlave
	case http.StatusTooManyRequests:
		r = metrics.SlotRateLimited
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		r = metrics.SlotBadRequest
	default:
		r = metrics.SlotError
	}
	s.metrics.Slot(r)
}

// countValidations counts and times every validation request that got
// past the slave token check.
func (s *Server) countValidations(c *gin.Context) {
	start := time.Now()
	c.Next()
	var r string
	switch c.Writer.Status() {
	case http.StatusOK:
		r = metrics.ValidationAccepted
	case http.StatusForbidden:
		r = metrics.ValidationDenied
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		r = metrics.ValidationBadRequest
	default:
		r = metrics.ValidationError
	}
	s.metrics.Validation(r, time.Since(start))
}

// metricsSnapshot reads the registry for the gauges of one scrape.
func (s *Server) metricsSnapshot(ctx context.Context) (metrics.MasterSnapshot, error) {
	var snap metrics.MasterSnapshot
	_, active, revoked, err := s.store.DeviceCounts(ctx)
	if err != nil {
		return snap, err
	}
	online, err := s.store.OnlineDevices(ctx)
	if err != nil {
		return snap, err
	}
	slaves, err := s.store.Slaves(ctx)
	if err != nil {
		return snap, err
	}
	snap.DevicesActive, snap.DevicesRevoked, snap.DevicesOnline = active, revoked, online
	snap.OperatorSessions = len(s.live.Operators())
	now := s.now()
	alive := s.live.Alive()
	for _, sl := range slaves {
		ss := metrics.SlaveSnapshot{Name: sl.Name, Alive: alive[sl.Name], HeartbeatAge: now.Sub(sl.LastSeen)}
		if ss.Alive {
			ss.Tunnels = sl.Tunnels
		}
		snap.Slaves = append(snap.Slaves, ss)
	}
	return snap, nil
}
