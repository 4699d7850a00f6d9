// Package reaper keeps a slave's tunnels honest. It rebuilds the list of
// live tunnels from the session table and the leases, writes connect and
// disconnect events, judges each session's liveness (sshd/liveness: from
// its connection's TCP state, read every second, and end-to-end probes of
// its forwarded ports, rare while the TCP state looks healthy), and ends
// the sessions judged dead, so that the device's next `ssh -R` binds its
// port on the first try. It also ends the sessions of revoked devices, and
// applies newest-wins when a device authenticates while an older session
// of its own still holds its port. Everything it touches (sessions, their
// TCP states, leases, probes, kills, events, the clock) is passed in, so
// each policy is tested with fakes.
package reaper

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"sync"
	"time"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authlog"
	"github.com/mas4h/mas4h/sshd/liveness"
	"github.com/mas4h/mas4h/sshd/probe"
	"github.com/mas4h/mas4h/sshd/sessions"
)

// Probing defaults. A forward is probed end to end once in Interval while
// its session's TCP state looks healthy (each probe is a line in the
// device's own sshd log), at once when it looks stale; without a TCP view,
// every min(Interval, 10 s), as before.
const (
	DefaultInterval = liveness.DefaultProbeInterval
	DefaultFailures = liveness.DefaultProbeFailures
	DefaultTimeout  = 3 * time.Second
	// RetryDelay: a failing tunnel is probed again this soon, not a whole
	// interval later.
	RetryDelay = liveness.DefaultProbeRetry
	// DefaultGrace: a session's failed probes do not count while it is
	// younger than this: its device may still be setting its forwards up.
	DefaultGrace = 5 * time.Second
	// DefaultWalk: the session table is walked this often (at most every
	// Interval) to find tunnels that came up or went down; the TCP states
	// are read every second in between.
	DefaultWalk      = 10 * time.Second
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
	// Keepalive is sshd's ClientAliveInterval, which the TCP judgement
	// relies on (0: liveness.DefaultKeepaliveInterval).
	Keepalive time.Duration
	// Walk is how often the session table is walked (0: DefaultWalk, at
	// most Interval).
	Walk time.Duration
	// MaxSessions is how many sessions one device's key may hold at once
	// (0: no cap); a walk ends the ones beyond it.
	MaxSessions int
	// OperatorUser is the user operators log in as: its sessions hold no
	// port and have no device's key, and are not the reaper's to judge
	// (sshd/operators follows them).
	OperatorUser string
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

// Leases maps each leased port to its lease, and tells which device a key
// is. Callers must not change the map it returns.
type Leases interface {
	Leases(ctx context.Context) (map[int]Lease, error)
	// Owner is the device whose key has fingerprint fp; found=false when
	// the registry does not know the key (removed, never enrolled). An
	// error means no answer could be had: nothing is done on it.
	Owner(ctx context.Context, fp string) (dev registry.Device, found bool, err error)
}

// Keys says which key each connection authenticated with (authlog.Index).
type Keys interface {
	Lookup(remote netip.AddrPort) (authlog.Accepted, bool)
	// Keep forgets the connections not in live (except recent ones).
	Keep(live map[netip.AddrPort]bool, grace time.Duration)
	// Close forgets a connection that ended.
	Close(remote netip.AddrPort)
	// Count is how many connections authenticated with key fp.
	Count(fp string) int
}

// Killer ends a session and returns the ports it held that are still
// bound afterwards (none, when all went well).
type Killer interface {
	Kill(ctx context.Context, s sessions.Session) (stillBound []int)
}

// TCPSampler reads the TCP state of the sshd's connections, by socket
// inode (sessions.Table.SampleTCP).
type TCPSampler interface {
	SampleTCP() (map[uint64]sessions.TCPState, error)
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
	// TCP reads the sessions' TCP states every second; nil: no TCP view,
	// the probes alone judge (every min(Interval, 10 s)).
	TCP    TCPSampler
	Leases Leases
	// Keys knows the key of each session; nil: sessions are known by the
	// ports they hold alone.
	Keys   Keys
	Killer Killer
	Events Reporter
	Prober Prober
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

	firstSeen    time.Time // by this reaper
	probeStarted time.Time // when the last finished probe started
	inFlight     bool      // a probe is running
}

// probed reports whether the tunnel has an end-to-end probe.
func (t *tunnel) probed() bool { return t.probeErr == nil && t.probe.Kind != probe.None }

// setProbe parses f's probe unless t already holds it, and reports whether
// it parsed it anew. Call with r.mu held.
func (t *tunnel) setProbe(f registry.Forward) bool {
	if t.probeSpec == f.Probe && t.probeTarget == f.Target && (t.probe.Kind != "" || t.probeErr != nil) {
		return false
	}
	t.probeSpec, t.probeTarget = f.Probe, f.Target
	t.probe, t.probeErr = probe.Parse(f.Probe, f.Target)
	return true
}

// Reaper is the slave's liveness and reaping loop.
type Reaper struct {
	cfg  Config
	live liveness.Config
	d    Deps
	log  *slog.Logger

	mu       sync.Mutex
	tunnels  map[tunnelKey]*tunnel
	sessions map[int]sessions.Session // by monitor pid, as of the last walk; TCP as of the last sample
	ports    map[int][]int            // monitor pid -> its leased ports, sorted
	killed   map[int]string           // monitor pid -> why mas4h ended it
	ending   map[int]bool             // monitor pids being ended
	suspect  map[int]string           // monitor pid -> why it is suspect (logged once)
	// superseded: per device, when newest-wins last judged its sessions
	// (zero while it does).
	superseded map[string]time.Time
	primed     bool // a first table walk happened: later tunnels are new
	refreshed  time.Time
	tcpErr     bool // the last TCP sample failed (logged once)

	walkMu sync.Mutex // one refresh at a time
	kills  sync.WaitGroup
	probes sync.WaitGroup // in flight
	sem    chan struct{}  // probes at once
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
	if cfg.Walk <= 0 {
		cfg.Walk = min(DefaultWalk, cfg.Interval)
	}
	live := liveness.Defaults()
	live.ProbeInterval = cfg.Interval
	live.FallbackInterval = min(cfg.Interval, liveness.DefaultFallbackInterval)
	live.ProbeRetry = min(RetryDelay, cfg.Interval)
	live.ProbeFailures = cfg.Failures
	live.ConfirmAfter = cfg.Timeout
	if cfg.Keepalive > 0 {
		live.KeepaliveInterval = cfg.Keepalive
	}
	return &Reaper{cfg: cfg, live: live, d: d, log: d.Log.With("component", "reaper"),
		tunnels: map[tunnelKey]*tunnel{}, sessions: map[int]sessions.Session{}, ports: map[int][]int{},
		killed: map[int]string{}, ending: map[int]bool{}, suspect: map[int]string{}, superseded: map[string]time.Time{},
		sem: make(chan struct{}, probeConcurrency)}
}

// Count is the number of live tunnels as of the last table walk.
func (r *Reaper) Count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.tunnels)
}

// Run judges the tunnels every second until ctx ends, walking the session
// table every Walk, then waits for the probes and the sessions it is
// ending. The first walk rebuilds the picture from the tables alone, so a
// restarted daemon knows every tunnel without having seen it connect.
func (r *Reaper) Run(ctx context.Context) {
	defer r.kills.Wait()
	defer r.probes.Wait()
	t := time.NewTicker(r.live.SampleEvery)
	defer t.Stop()
	var walked time.Time
	for {
		now := r.d.Clock.Now()
		walk := walked.IsZero() || now.Sub(walked) >= r.cfg.Walk
		if walk {
			walked = now
		}
		r.tick(ctx, walk)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// cycle is one whole pass, synchronously: walk, judge every session, run
// the probes due and wait for them, probe failing tunnels again after
// RetryDelay until each is confirmed or cleared, and wait for the sessions
// being ended. Run does the same work spread over its ticks; tests drive
// the reaper by cycles.
func (r *Reaper) cycle(ctx context.Context) {
	r.tick(ctx, true)
	r.probes.Wait()
	for ctx.Err() == nil {
		failing := false
		r.mu.Lock()
		for k, t := range r.tunnels {
			failing = failing || !r.ending[k.monitor] && t.failures > 0 && t.failures < r.cfg.Failures
		}
		r.mu.Unlock()
		if !failing {
			break
		}
		select {
		case <-ctx.Done():
		case <-r.d.Clock.After(RetryDelay):
		}
		r.tick(ctx, false)
		r.probes.Wait()
	}
	r.kills.Wait()
}

// refresh rereads the session table, notes tunnels that came up or went
// down (with events), ends the sessions whose ownership is wrong (see
// police), and returns the live tunnels with the sessions by monitor pid.
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
	bad := r.police(r.owners(ctx, list), leases)
	byMonitor := make(map[int]sessions.Session, len(list))
	ports := map[int][]int{}
	current := map[tunnelKey]*tunnel{}

	r.mu.Lock()
	now := r.d.Clock.Now()
	for _, sess := range list {
		byMonitor[sess.MonitorPID] = sess
		if _, ok := bad[sess.MonitorPID]; ok {
			continue // not the tunnel of the device its ports are leased to
		}
		for _, p := range sess.Ports {
			l, ok := leases[p]
			if !ok {
				continue
			}
			k := tunnelKey{sess.MonitorPID, p}
			ports[sess.MonitorPID] = append(ports[sess.MonitorPID], p)
			t, seen := r.tunnels[k]
			if !seen {
				t = &tunnel{device: l.Device.Name, forward: l.Forward.Name, remote: sess.Remote, since: sess.Started, firstSeen: now}
				if r.primed {
					r.log.Info("tunnel up", "device", t.device, "forward", t.forward, "port", p, "remote", t.remote)
					r.d.Events.Report(ctx, "connect", t.device, fmt.Sprintf("tunnel up: %s on port %d from %s", t.forward, p, t.remote))
				}
			}
			if t.setProbe(l.Forward) && t.probeErr != nil {
				r.log.Warn("bad probe spec; not probing", "device", t.device, "forward", t.forward, "err", t.probeErr)
			}
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
	for _, m := range []map[int]bool{r.ending} {
		for pid := range m {
			if _, ok := byMonitor[pid]; !ok {
				delete(m, pid)
			}
		}
	}
	for pid := range r.suspect {
		if _, ok := byMonitor[pid]; !ok {
			delete(r.suspect, pid)
		}
	}
	r.tunnels, r.sessions, r.ports, r.primed = current, byMonitor, ports, true
	r.refreshed = now
	r.mu.Unlock()
	r.endAll(ctx, bad)
	return current, byMonitor, nil
}

// record notes one probe result, with an event when the tunnel's state
// changes (failing, or ok again).
func (r *Reaper) record(ctx context.Context, k tunnelKey, t *tunnel, started time.Time, err error) {
	r.d.Metrics.Probe(err == nil)
	r.mu.Lock()
	defer r.mu.Unlock()
	wasOK := t.last == nil || t.last.OK
	now := r.d.Clock.Now()
	t.probeStarted, t.inFlight = started, false
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
// kind ("reap" or "kill"). It reports whether the ports are free.
func (r *Reaper) end(ctx context.Context, sess sessions.Session, device, why, kind string) bool {
	r.mu.Lock()
	r.killed[sess.MonitorPID] = why
	r.mu.Unlock()
	start := r.d.Clock.Now()
	bound := r.d.Killer.Kill(ctx, sess)
	if remote, ok := remoteOf(sess); ok && r.d.Keys != nil {
		r.d.Keys.Close(remote)
	}
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
	return len(bound) == 0
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
