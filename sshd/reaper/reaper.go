// Package reaper keeps a slave's tunnels honest. Every cycle it rebuilds the
// list of live tunnels from the session table and the leases, writes
// connect and disconnect events, probes the forwarded ports, and ends the
// sessions whose tunnels are stale, so that the device's next `ssh -R`
// binds its port on the first try. It also ends the sessions of revoked
// devices, and applies newest-wins when a device authenticates while an
// older session of its own still holds its port. Everything it touches
// (sessions, leases, probes, kills, events, the clock) is passed in, so
// each policy is tested with fakes.
package reaper

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/probe"
	"github.com/mas4h/mas4h/sshd/sessions"
)

// Probing defaults: a stale tunnel is found and its port freed within
// interval × (failures + 1) + a few seconds.
const (
	DefaultInterval = 10 * time.Second
	DefaultFailures = 2
	DefaultTimeout  = 3 * time.Second
	// RetryDelay: a failing tunnel is probed again this soon, not a whole
	// interval later.
	RetryDelay = time.Second
	// DefaultGrace: a session's failed probes do not count while it is
	// younger than this: its device may still be setting its forwards up.
	DefaultGrace = 5 * time.Second
	// SupersedeBudget bounds newest-wins' probe, inside the hook's answer
	// budget.
	SupersedeBudget  = 600 * time.Millisecond
	probeConcurrency = 64
	killGrace        = 2 * time.Second
)

// Newest-wins policies: probe the older session and end it only if it
// fails (the default), always end it, or never.
const (
	NewestWinsStale  = "stale"
	NewestWinsAlways = "always"
	NewestWinsOff    = "off"
)

// Config is the reaper's policy.
type Config struct {
	Slave      string        // this slave's name, for the tunnels it reports
	Interval   time.Duration // how often every tunnel is probed
	Failures   int           // consecutive failures before a session is ended
	Timeout    time.Duration // one probe's budget
	NewestWins string        // NewestWinsStale, NewestWinsAlways or NewestWinsOff
	Grace      time.Duration // failed probes of a younger session do not count
}

// Lister lists the sessions of the slave's sshd.
type Lister interface {
	Sessions() ([]sessions.Session, error)
}

// Lease is what a leased port belongs to.
type Lease struct {
	Device  registry.Device
	Forward registry.Forward
}

// Leases maps each leased port to its lease. Callers must not change the
// map it returns.
type Leases interface {
	Leases(ctx context.Context) (map[int]Lease, error)
}

// Killer ends a session and returns the ports it held that are still
// bound afterwards (none, when all went well).
type Killer interface {
	Kill(ctx context.Context, s sessions.Session) (stillBound []int)
}

// Reporter records an event for the registry.
type Reporter interface {
	Report(ctx context.Context, kind, device, detail string)
}

// Prober probes a forwarded port on the slave's loopback.
type Prober interface {
	Probe(ctx context.Context, p probe.Probe, port int, timeout time.Duration) error
}

// Clock is the reaper's time: Now for records, After for the short wait
// before a failing tunnel is probed again.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// Deps is what the reaper works with.
type Deps struct {
	Sessions Lister
	Leases   Leases
	Killer   Killer
	Events   Reporter
	Prober   Prober
	// PortHeld reports whether something listens on a port of the slave's
	// loopback; newest-wins asks it first, cheaply.
	PortHeld func(port int) bool
	Clock    Clock
	Metrics  *metrics.Slave // nil counts nothing
	// Ended, when set, is called after the reaper ended a session (the
	// keys file then looks at the held ports again).
	Ended func()
	Log   *slog.Logger
}

// tunnelKey is one forwarded port of one session.
type tunnelKey struct {
	monitor int
	port    int
}

// tunnel is what the reaper knows of a live tunnel between cycles.
type tunnel struct {
	device, forward string
	remote          string
	since           time.Time
	failures        int
	last            *wire.Probe

	// The forward's probe, parsed once per spec rather than every cycle.
	probeSpec, probeTarget string
	probe                  probe.Probe
	probeErr               error
}

// setProbe parses f's probe unless t already holds it. Call with r.mu held.
func (t *tunnel) setProbe(f registry.Forward) {
	if t.probeSpec == f.Probe && t.probeTarget == f.Target && (t.probe.Kind != "" || t.probeErr != nil) {
		return
	}
	t.probeSpec, t.probeTarget = f.Probe, f.Target
	t.probe, t.probeErr = probe.Parse(f.Probe, f.Target)
}

// Reaper is the slave's liveness and reaping loop.
type Reaper struct {
	cfg Config
	d   Deps
	log *slog.Logger

	mu        sync.Mutex
	tunnels   map[tunnelKey]*tunnel
	killed    map[int]string // monitor pid -> why mas4h ended it
	primed    bool           // a first table walk happened: later tunnels are new
	refreshed time.Time

	walkMu sync.Mutex // one refresh at a time
	kills  sync.WaitGroup
}

// New makes a reaper; zero fields of cfg get the defaults.
func New(cfg Config, d Deps) *Reaper {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Failures <= 0 {
		cfg.Failures = DefaultFailures
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.NewestWins == "" {
		cfg.NewestWins = NewestWinsStale
	}
	if cfg.Grace == 0 {
		cfg.Grace = DefaultGrace
	}
	return &Reaper{cfg: cfg, d: d, log: d.Log.With("component", "reaper"),
		tunnels: map[tunnelKey]*tunnel{}, killed: map[int]string{}}
}

// Count is the number of live tunnels as of the last table walk.
func (r *Reaper) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.tunnels)
}

// Run cycles every interval until ctx ends, then waits for the sessions it
// is ending. The first cycle rebuilds the picture from the tables alone,
// so a restarted daemon knows every tunnel without having seen it connect.
func (r *Reaper) Run(ctx context.Context) {
	defer r.kills.Wait()
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		r.cycle(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// cycle walks the tables, probes every tunnel, re-probes failing ones after
// a short delay, and ends the sessions past the failure threshold.
func (r *Reaper) cycle(ctx context.Context) {
	current, byMonitor, err := r.refresh(ctx)
	if err != nil {
		r.log.Error("discovering sessions", "err", err)
		return
	}
	r.probeAll(ctx, current)
	// A failure is re-checked after a short delay rather than a whole
	// interval, so a stale session is confirmed (or cleared) in seconds.
	for {
		failing := map[tunnelKey]*tunnel{}
		r.mu.Lock()
		for k, t := range current {
			if t.failures > 0 && t.failures < r.cfg.Failures {
				failing[k] = t
			}
		}
		r.mu.Unlock()
		if len(failing) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-r.d.Clock.After(RetryDelay):
		}
		r.probeAll(ctx, failing)
	}

	type doomed struct {
		device, why string
	}
	reap := map[int]doomed{}
	r.mu.Lock()
	for k, t := range current {
		if t.failures >= r.cfg.Failures {
			reap[k.monitor] = doomed{t.device, fmt.Sprintf("reaped after %d failed probes of port %d: %s", t.failures, k.port, t.last.Detail)}
		}
	}
	r.mu.Unlock()
	for pid, d := range reap {
		r.d.Metrics.Reap(metrics.ReapProbe)
		r.end(ctx, byMonitor[pid], d.device, d.why, "reap")
	}
}

// refresh rereads the session table, notes tunnels that came up or went
// down (with events), and returns the live ones with the sessions by
// monitor pid.
func (r *Reaper) refresh(ctx context.Context) (map[tunnelKey]*tunnel, map[int]sessions.Session, error) {
	r.walkMu.Lock()
	defer r.walkMu.Unlock()
	list, err := r.d.Sessions.Sessions()
	if err != nil {
		return nil, nil, err
	}
	leases, err := r.d.Leases.Leases(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("reading leases: %w", err)
	}
	byMonitor := make(map[int]sessions.Session, len(list))
	current := map[tunnelKey]*tunnel{}

	r.mu.Lock()
	defer r.mu.Unlock()
	for _, sess := range list {
		byMonitor[sess.MonitorPID] = sess
		for _, p := range sess.Ports {
			l, ok := leases[p]
			if !ok {
				continue
			}
			k := tunnelKey{sess.MonitorPID, p}
			t, seen := r.tunnels[k]
			if !seen {
				t = &tunnel{device: l.Device.Name, forward: l.Forward.Name, remote: sess.Remote, since: sess.Started}
				if r.primed {
					r.log.Info("tunnel up", "device", t.device, "forward", t.forward, "port", p, "remote", t.remote)
					r.d.Events.Report(ctx, "connect", t.device, fmt.Sprintf("tunnel up: %s on port %d from %s", t.forward, p, t.remote))
				}
			}
			t.setProbe(l.Forward)
			current[k] = t
		}
	}
	for k, t := range r.tunnels {
		if _, ok := current[k]; ok {
			continue
		}
		reason, ok := r.killed[k.monitor]
		if !ok {
			reason = "client closed"
		}
		r.log.Info("tunnel down", "device", t.device, "forward", t.forward, "port", k.port, "reason", reason)
		r.d.Events.Report(ctx, "disconnect", t.device, fmt.Sprintf("tunnel down: %s on port %d: %s", t.forward, k.port, reason))
	}
	for pid := range r.killed {
		if _, ok := byMonitor[pid]; !ok {
			delete(r.killed, pid)
		}
	}
	r.tunnels, r.primed = current, true
	r.refreshed = r.d.Clock.Now()
	return current, byMonitor, nil
}

// probeAll probes the given tunnels with bounded concurrency and records
// the results.
func (r *Reaper) probeAll(ctx context.Context, ts map[tunnelKey]*tunnel) {
	type job struct {
		k tunnelKey
		t *tunnel
		p probe.Probe
	}
	jobs := make([]job, 0, len(ts))
	r.mu.Lock()
	for k, t := range ts {
		if t.probeErr != nil {
			r.log.Warn("bad probe spec; not probing", "device", t.device, "forward", t.forward, "err", t.probeErr)
			continue
		}
		if t.probe.Kind == probe.None {
			continue
		}
		jobs = append(jobs, job{k, t, t.probe})
	}
	r.mu.Unlock()
	next := make(chan job)
	var wg sync.WaitGroup
	for range min(probeConcurrency, len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				err := r.d.Prober.Probe(ctx, j.p, j.k.port, r.cfg.Timeout)
				if ctx.Err() != nil {
					continue
				}
				r.record(ctx, j.k, j.t, err)
			}
		}()
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
}

// record notes one probe result, with an event when the tunnel's state
// changes (failing, or ok again).
func (r *Reaper) record(ctx context.Context, k tunnelKey, t *tunnel, err error) {
	r.d.Metrics.Probe(err == nil)
	r.mu.Lock()
	defer r.mu.Unlock()
	wasOK := t.last == nil || t.last.OK
	now := r.d.Clock.Now()
	p := &wire.Probe{OK: err == nil, At: now.UTC()}
	if err != nil {
		p.Detail = err.Error()
		if now.Sub(t.since) >= r.cfg.Grace {
			t.failures++
		}
	} else {
		t.failures = 0
	}
	t.last = p
	switch {
	case wasOK && !p.OK:
		r.log.Warn("probe failing", "device", t.device, "forward", t.forward, "port", k.port, "detail", p.Detail)
		r.d.Events.Report(ctx, "probe", t.device, fmt.Sprintf("probe of %s (port %d) failing: %s", t.forward, k.port, p.Detail))
	case !wasOK && p.OK:
		r.log.Info("probe ok again", "device", t.device, "forward", t.forward, "port", k.port)
		r.d.Events.Report(ctx, "probe", t.device, fmt.Sprintf("probe of %s (port %d) ok again", t.forward, k.port))
	}
}

// end ends a session, checks its ports are free, and writes an event of
// kind ("reap" or "kill").
func (r *Reaper) end(ctx context.Context, sess sessions.Session, device, why, kind string) {
	r.mu.Lock()
	r.killed[sess.MonitorPID] = why
	r.mu.Unlock()
	start := r.d.Clock.Now()
	bound := r.d.Killer.Kill(ctx, sess)
	if r.d.Ended != nil {
		r.d.Ended()
	}
	free := "free"
	if len(bound) > 0 {
		free = fmt.Sprintf("%v STILL BOUND", bound)
	}
	r.log.Info("ended session", "device", device, "monitor_pid", sess.MonitorPID, "ports", sess.Ports,
		"remote", sess.Remote, "why", why, "ports_now", free, "took", r.d.Clock.Now().Sub(start).Round(time.Millisecond))
	r.d.Events.Report(context.WithoutCancel(ctx), kind, device,
		fmt.Sprintf("session pid %d from %s on ports %v ended: %s (ports %s)", sess.MonitorPID, sess.Remote, sess.Ports, why, free))
}

// Tunnels returns the live tunnels with their last probe, for heartbeats
// and `mas4h tunnels`. The tables are reread unless the last walk is
// fresher than maxAge, so a heartbeat reports tunnels that came up since
// the last probe cycle.
func (r *Reaper) Tunnels(ctx context.Context, maxAge time.Duration) []wire.Tunnel {
	r.mu.Lock()
	stale := r.d.Clock.Now().Sub(r.refreshed) > maxAge
	r.mu.Unlock()
	if stale {
		if _, _, err := r.refresh(ctx); err != nil {
			r.log.Error("discovering sessions", "err", err)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := []wire.Tunnel{}
	for k, t := range r.tunnels {
		out = append(out, wire.Tunnel{Device: t.device, Forward: t.forward, Slave: r.cfg.Slave, Port: k.port,
			Remote: t.remote, Since: t.since, LastProbe: t.last})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Port < out[j].Port })
	return out
}
