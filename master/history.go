package master

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/mas4h/mas4h/history"
	"github.com/mas4h/mas4h/registry"
)

// History for the dashboard and the API. Two sources, each read through
// an index so that a page costs the same at 100 devices and at 100,000:
//
//   - a device's timeline and availability come from its own connect and
//     disconnect events (and the slaves' deaths), read on demand: exact to
//     the event, and bounded by that one device's events;
//   - the fleet's online devices and each slave's load come from samples
//     the master writes once a minute per series (sampleLoad), so that a
//     week of the fleet is at most 10,080 rows, not every event of every
//     device.

// sampleLoad writes this minute's sample of the fleet's online devices
// and of each slave's tunnels (0 while it is dead), capacity and liveness,
// and, in the first minute of each hour, forgets samples older than
// loadSampleMaxAge. Slaves silent for that long are no longer sampled.
func (s *Server) sampleLoad(ctx context.Context) {
	now := s.now().UTC()
	online, err := s.store.OnlineDevices(ctx)
	if err != nil {
		s.log.Error("sampling the fleet's load", "err", err)
		return
	}
	slaves, err := s.store.Slaves(ctx)
	if err != nil {
		s.log.Error("sampling the fleet's load", "err", err)
		return
	}
	alive := s.live.Alive()
	samples := []registry.LoadSample{{Series: registry.FleetSeries, At: now, Min: online, Max: online, Alive: true}}
	for _, sl := range slaves {
		if !alive[sl.Name] && now.Sub(sl.LastSeen) > loadSampleMaxAge {
			continue
		}
		n := 0
		if alive[sl.Name] {
			n = sl.Tunnels
		}
		samples = append(samples, registry.LoadSample{Series: sl.Name, At: now, Min: n, Max: n, Capacity: sl.Capacity, Alive: alive[sl.Name]})
	}
	if err := s.store.RecordLoad(ctx, samples); err != nil {
		s.log.Error("sampling the fleet's load", "err", err)
		return
	}
	if now.Minute() == 0 {
		if _, err := s.store.PruneLoad(ctx, now.Add(-loadSampleMaxAge)); err != nil {
			s.log.Error("pruning the load history", "err", err)
		}
	}
}

// overviewHistory reads and builds the overview's charts over window (a
// name of history.Windows; anything else is 24h).
func (s *Server) overviewHistory(ctx context.Context, window string) (historyView, error) {
	if _, ok := history.Windows[window]; !ok {
		window = "24h"
	}
	now := s.now().UTC()
	end := now.Truncate(time.Minute).Add(time.Minute)
	day, err := s.store.LoadHistory(ctx, end.Add(-24*time.Hour), end)
	if err != nil {
		return historyView{}, err
	}
	fleet := day
	if window != "24h" {
		if fleet, err = s.store.SeriesHistory(ctx, registry.FleetSeries, end.Add(-history.Windows[window]), end); err != nil {
			return historyView{}, err
		}
	}
	top, err := s.store.TopDisconnects(ctx, now.Add(-24*time.Hour), dashTopDevices)
	if err != nil {
		return historyView{}, err
	}
	return buildHistory(window, fleet, day, top, now), nil
}

// deviceAvailability is dev's history over the last 24 h and 7 days.
func (s *Server) deviceAvailability(ctx context.Context, dev registry.Device, online bool) ([]timeView, error) {
	now := s.now().UTC()
	evs, err := s.store.DeviceHistory(ctx, dev.Name, now.Add(-history.Windows["7d"]))
	if err != nil {
		return nil, err
	}
	var out []timeView
	for _, w := range []string{"24h", "7d"} {
		a := history.Device(evs, dev.CreatedAt, now.Add(-history.Windows[w]), now, online)
		out = append(out, viewTimeline("timeline-"+w, w, a))
	}
	return out, nil
}

// Wire shapes of the history endpoints.
type (
	availabilityJSON struct {
		Device          string        `json:"device"`
		Window          string        `json:"window"`
		Start           time.Time     `json:"start"`
		End             time.Time     `json:"end"`
		Percent         *float64      `json:"percent"` // null: not enrolled in the window
		UpSeconds       float64       `json:"up_seconds"`
		EnrolledSeconds float64       `json:"enrolled_seconds"`
		Disconnects     int           `json:"disconnects"`
		Segments        []segmentJSON `json:"segments"`
	}
	segmentJSON struct {
		Start time.Time `json:"start"`
		End   time.Time `json:"end"`
		State string    `json:"state"` // up, down, unenrolled
	}
	seriesJSON struct {
		Series string      `json:"series"` // "fleet" or the slave's name
		Window string      `json:"window"`
		Start  time.Time   `json:"start"`
		End    time.Time   `json:"end"`
		Points []pointJSON `json:"points"`
	}
	pointJSON struct {
		Start    time.Time `json:"start"`
		End      time.Time `json:"end"`
		Known    bool      `json:"known"` // false: no sample (no master was sampling)
		Min      int       `json:"min"`
		Max      int       `json:"max"`
		Capacity int       `json:"capacity,omitempty"`
		Down     bool      `json:"down,omitempty"` // the slave was dead at some sample
	}
)

// window reads ?window= (24h, 7d; none is 24h), answering 400 otherwise.
func window(c *gin.Context) (string, time.Duration, bool) {
	w := c.DefaultQuery("window", "24h")
	d, err := history.ParseWindow(w)
	if err != nil {
		fail(c, http.StatusBadRequest, err.Error())
		return "", 0, false
	}
	return w, d, true
}

// handleAvailability is GET /devices/{name}/availability?window=.
func (s *Server) handleAvailability(c *gin.Context) {
	w, d, ok := window(c)
	if !ok {
		return
	}
	ctx := c.Request.Context()
	dev, err := s.store.Device(ctx, c.Param("name"))
	if errors.Is(err, registry.ErrNotFound) || errors.Is(err, registry.ErrInvalid) {
		fail(c, http.StatusNotFound, "no such device")
		return
	}
	if err != nil {
		s.internal(c, err)
		return
	}
	online, err := s.deviceOnline(ctx, dev.Name)
	if err != nil {
		s.internal(c, err)
		return
	}
	now := s.now().UTC()
	evs, err := s.store.DeviceHistory(ctx, dev.Name, now.Add(-d))
	if err != nil {
		s.internal(c, err)
		return
	}
	a := history.Device(evs, dev.CreatedAt, now.Add(-d), now, online)
	out := availabilityJSON{Device: dev.Name, Window: w, Start: a.Start, End: a.End, UpSeconds: a.Up.Seconds(),
		EnrolledSeconds: a.Enrolled.Seconds(), Disconnects: a.Disconnects, Segments: []segmentJSON{}}
	if p := a.Percent(); p >= 0 {
		out.Percent = &p
	}
	for _, sg := range a.Segments {
		out.Segments = append(out.Segments, segmentJSON{Start: sg.Start, End: sg.End, State: sg.State.String()})
	}
	c.JSON(http.StatusOK, out)
}

// deviceOnline says whether device has a tunnel on a live slave.
func (s *Server) deviceOnline(ctx context.Context, device string) (bool, error) {
	tunnels, err := s.store.DeviceTunnels(ctx, device)
	return len(tunnels) > 0, err
}

// handleFleetHistory is GET /history/fleet?window=: devices online.
func (s *Server) handleFleetHistory(c *gin.Context) {
	s.seriesAnswer(c, registry.FleetSeries, "fleet")
}

// handleSlaveHistory is GET /slaves/{name}/history?window=: its tunnels,
// capacity and liveness.
func (s *Server) handleSlaveHistory(c *gin.Context) {
	name := c.Param("name")
	slaves, err := s.store.Slaves(c.Request.Context())
	if err != nil {
		s.internal(c, err)
		return
	}
	for _, sl := range slaves {
		if sl.Name == name {
			s.seriesAnswer(c, name, name)
			return
		}
	}
	fail(c, http.StatusNotFound, "no such slave")
}

func (s *Server) seriesAnswer(c *gin.Context, series, label string) {
	w, d, ok := window(c)
	if !ok {
		return
	}
	end := s.now().UTC().Truncate(time.Minute).Add(time.Minute)
	samples, err := s.store.SeriesHistory(c.Request.Context(), series, end.Add(-d), end)
	if err != nil {
		s.internal(c, err)
		return
	}
	n := fleetBuckets24h
	if w == "7d" {
		n = fleetBuckets7d
	}
	out := seriesJSON{Series: label, Window: w, Start: end.Add(-d), End: end, Points: []pointJSON{}}
	for _, p := range history.Series(samples, end.Add(-d), end, n) {
		out.Points = append(out.Points, pointJSON{Start: p.Start, End: p.End, Known: p.Known, Min: p.Min, Max: p.Max, Capacity: p.Capacity, Down: p.Down})
	}
	c.JSON(http.StatusOK, out)
}
