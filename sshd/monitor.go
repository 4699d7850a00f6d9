package sshd

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/probe"
	"github.com/mas4h/mas4h/sshd/sessions"
)

// Probing defaults: a stale tunnel is found and its port freed within
// interval × (failures + 1) + a few seconds.
const (
	DefaultProbeInterval = 10 * time.Second
	DefaultProbeFailures = 2
	DefaultProbeTimeout  = 3 * time.Second
	probeRetryDelay      = time.Second // a failing tunnel is probed again this soon, not a whole interval later
	probeConcurrency     = 64
	supersedeProbeBudget = 600 * time.Millisecond // inside the hook's answer budget
)

// Newest-wins policies: probe the older session and kill it only if it fails
// (the default), or always kill it.
const (
	NewestWinsStale  = "stale"
	NewestWinsAlways = "always"
	NewestWinsOff    = "off"
)

// tunnelKey is one forwarded port of one session.
type tunnelKey struct {
	monitor int
	port    int
}

// tunnelState is what the monitor knows of a live tunnel between cycles.
type tunnelState struct {
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

// setProbe parses f's probe unless st already holds it. Call with m.mu held.
func (st *tunnelState) setProbe(f registry.Forward) {
	if st.probeSpec == f.Probe && st.probeTarget == f.Target && (st.probe.Kind != "" || st.probeErr != nil) {
		return
	}
	st.probeSpec, st.probeTarget = f.Probe, f.Target
	st.probe, st.probeErr = probe.Parse(f.Probe, f.Target)
}

// monitor discovers this slave's tunnels, probes them, reaps stale sessions
// and writes connect/disconnect/probe/reap events.
type monitor struct {
	s *Slave

	mu      sync.Mutex
	tunnels map[tunnelKey]*tunnelState
	killed  map[int]string // monitor pid -> why mas4h ended it
	primed  bool

	refreshMu sync.Mutex // one table walk at a time
	refreshed time.Time
	table     *sessions.Table

	leaseMu  sync.Mutex
	leaseMap map[int]lease // as of cache generation leaseGen
	leaseGen uint64

	// The slave's Prometheus metrics (see metrics.go); nil counts nothing.
	registry *prometheus.Registry
	metrics  *metrics.Slave
}

func newMonitor(s *Slave) *monitor {
	m := &monitor{s: s, tunnels: map[tunnelKey]*tunnelState{}, killed: map[int]string{}}
	m.registry, m.metrics = newSlaveMetrics(s, m)
	return m
}

// count is the number of live tunnels as of the last table walk.
func (m *monitor) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.tunnels)
}

type lease struct {
	device registry.Device
	fwd    registry.Forward
}

// leases maps each leased port to its device and forward. The cache is
// reread only when this daemon has written to it since (decoding every
// device each cycle was a good part of a cycle's cost); callers must not
// change the map.
func (m *monitor) leases(ctx context.Context) map[int]lease {
	m.leaseMu.Lock()
	defer m.leaseMu.Unlock()
	if m.leaseMap != nil && m.s.cache.Generation() == m.leaseGen {
		return m.leaseMap
	}
	out := map[int]lease{}
	all, gen, err := m.s.cache.Snapshot(ctx)
	if err != nil {
		m.s.log.Error("reading cache", "err", err)
		return out
	}
	for _, cd := range all {
		for _, f := range cd.Device.Forwards {
			out[f.RemotePort] = lease{cd.Device, f}
		}
	}
	m.leaseMap, m.leaseGen = out, gen
	return out
}

// run cycles every interval until ctx ends. The first cycle rebuilds the
// picture from the process and socket tables alone, so a restarted daemon
// knows every tunnel without having seen it connect.
func (m *monitor) run(ctx context.Context) {
	t := time.NewTicker(m.s.cfg.ProbeInterval)
	defer t.Stop()
	for {
		m.cycle(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *monitor) cycle(ctx context.Context) {
	current, byMonitor, _, err := m.refresh(ctx)
	if err != nil {
		m.s.log.Error("discovering sessions", "err", err)
		return
	}
	m.probeAll(ctx, current)
	// A failure is re-checked after a short delay rather than a whole
	// interval, so a stale session is confirmed (or cleared) in seconds.
	for {
		failing := map[tunnelKey]*tunnelState{}
		m.mu.Lock()
		for k, st := range current {
			if st.failures > 0 && st.failures < m.s.cfg.ProbeFailures {
				failing[k] = st
			}
		}
		m.mu.Unlock()
		if len(failing) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(probeRetryDelay):
		}
		m.probeAll(ctx, failing)
	}

	// Reap sessions with a port past the failure threshold.
	reap := map[int]string{}
	m.mu.Lock()
	for k, st := range current {
		if st.failures >= m.s.cfg.ProbeFailures {
			reap[k.monitor] = fmt.Sprintf("reaped after %d failed probes of port %d: %s", st.failures, k.port, st.last.Detail)
		}
	}
	m.mu.Unlock()
	for pid, why := range reap {
		sess := byMonitor[pid]
		dev := current[tunnelKey{pid, sess.Ports[0]}]
		name := ""
		if dev != nil {
			name = dev.device
		}
		m.metrics.Reap(metrics.ReapProbe)
		m.end(ctx, sess, name, why, "reap")
	}
}

// refresh rereads the process and socket tables, notes tunnels that came
// up or went down (with events), and returns the live ones.
// sessions lists this slave's sessions through the monitor's fd cache, one
// table walk at a time: newest-wins and revocations ask for them while a
// device waits, and a fresh walk of every process's fds costs tens of
// milliseconds per thousand sessions.
func (m *monitor) sessions() ([]sessions.Session, error) {
	return m.table.Sessions()
}

func (m *monitor) refresh(ctx context.Context) (map[tunnelKey]*tunnelState, map[int]sessions.Session, map[int]lease, error) {
	m.refreshMu.Lock()
	defer m.refreshMu.Unlock()
	list, err := m.table.Sessions()
	if err != nil {
		return nil, nil, nil, err
	}
	leases := m.leases(ctx)
	byMonitor := map[int]sessions.Session{}
	current := map[tunnelKey]*tunnelState{}

	m.mu.Lock()
	for _, sess := range list {
		byMonitor[sess.MonitorPID] = sess
		for _, p := range sess.Ports {
			l, ok := leases[p]
			if !ok {
				continue
			}
			k := tunnelKey{sess.MonitorPID, p}
			st, seen := m.tunnels[k]
			if !seen {
				st = &tunnelState{device: l.device.Name, forward: l.fwd.Name, remote: sess.Remote, since: sess.Started}
				if m.primed {
					m.s.log.Info("tunnel up", "device", st.device, "forward", st.forward, "port", p, "remote", st.remote)
					m.s.src.Report(ctx, "connect", st.device, fmt.Sprintf("tunnel up: %s on port %d from %s", st.forward, p, st.remote))
				}
			}
			st.setProbe(l.fwd)
			current[k] = st
		}
	}
	for k, st := range m.tunnels {
		if _, ok := current[k]; ok {
			continue
		}
		reason, ok := m.killed[k.monitor]
		if !ok {
			reason = "client closed"
		}
		m.s.log.Info("tunnel down", "device", st.device, "forward", st.forward, "port", k.port, "reason", reason)
		m.s.src.Report(ctx, "disconnect", st.device, fmt.Sprintf("tunnel down: %s on port %d: %s", st.forward, k.port, reason))
	}
	for pid := range m.killed {
		if _, ok := byMonitor[pid]; !ok {
			delete(m.killed, pid)
		}
	}
	m.tunnels, m.primed = current, true
	m.refreshed = time.Now()
	m.mu.Unlock()
	return current, byMonitor, leases, nil
}

// probeAll probes every tunnel with bounded concurrency and records results.
func (m *monitor) probeAll(ctx context.Context, current map[tunnelKey]*tunnelState) {
	type job struct {
		k     tunnelKey
		st    *tunnelState
		probe probe.Probe
	}
	jobs := make([]job, 0, len(current))
	m.mu.Lock()
	for k, st := range current {
		if st.probeErr != nil {
			m.s.log.Warn("bad probe spec; not probing", "device", st.device, "forward", st.forward, "err", st.probeErr)
			continue
		}
		if st.probe.Kind == probe.None {
			continue
		}
		jobs = append(jobs, job{k, st, st.probe})
	}
	m.mu.Unlock()
	next := make(chan job)
	var wg sync.WaitGroup
	for range min(probeConcurrency, len(jobs)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range next {
				err := j.probe.Run(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(j.k.port)), m.s.cfg.ProbeTimeout)
				if ctx.Err() != nil {
					continue
				}
				m.record(ctx, j.k, j.st, err)
			}
		}()
	}
	for _, j := range jobs {
		next <- j
	}
	close(next)
	wg.Wait()
}

func (m *monitor) record(ctx context.Context, k tunnelKey, st *tunnelState, err error) {
	m.metrics.Probe(err == nil)
	m.mu.Lock()
	defer m.mu.Unlock()
	wasOK := st.last == nil || st.last.OK
	p := &wire.Probe{OK: err == nil, At: time.Now().UTC()}
	if err != nil {
		p.Detail = err.Error()
		st.failures++
	} else {
		st.failures = 0
	}
	st.last = p
	switch {
	case wasOK && !p.OK:
		m.s.log.Warn("probe failing", "device", st.device, "forward", st.forward, "port", k.port, "detail", p.Detail)
		m.s.src.Report(ctx, "probe", st.device, fmt.Sprintf("probe of %s (port %d) failing: %s", st.forward, k.port, p.Detail))
	case !wasOK && p.OK:
		m.s.log.Info("probe ok again", "device", st.device, "forward", st.forward, "port", k.port)
		m.s.src.Report(ctx, "probe", st.device, fmt.Sprintf("probe of %s (port %d) ok again", st.forward, k.port))
	}
}

// end kills a session, checks its ports are free, and writes an event.
func (m *monitor) end(ctx context.Context, sess sessions.Session, device, why, kind string) {
	m.mu.Lock()
	m.killed[sess.MonitorPID] = why
	m.mu.Unlock()
	start := time.Now()
	sessions.Terminate(m.s.cfg.ProcRoot, sess, 2*time.Second)
	if m.s.keys != nil {
		m.s.keys.poke() // its ports are free: its device may go back in the keys file
	}
	free := "free"
	if listening, err := sessions.ListeningPorts(m.s.cfg.ProcRoot); err == nil {
		for _, p := range sess.Ports {
			if listening[p] {
				free = fmt.Sprintf("port %d STILL BOUND", p)
			}
		}
	}
	m.s.log.Info("ended session", "device", device, "monitor_pid", sess.MonitorPID, "ports", sess.Ports,
		"remote", sess.Remote, "why", why, "ports_now", free, "took", time.Since(start).Round(time.Millisecond))
	m.s.src.Report(context.WithoutCancel(ctx), kind, device,
		fmt.Sprintf("session pid %d from %s on ports %v ended: %s (ports %s)", sess.MonitorPID, sess.Remote, sess.Ports, why, free))
}

// snapshot returns the live tunnels with their last probe, for heartbeats
// and `mas4h tunnels`. The tables are reread unless the last walk is fresher
// than maxAge, so a heartbeat reports tunnels that came up since the last
// probe cycle.
func (m *monitor) snapshot(ctx context.Context, slave string, maxAge time.Duration) []wire.Tunnel {
	m.mu.Lock()
	stale := time.Since(m.refreshed) > maxAge
	m.mu.Unlock()
	if stale {
		if _, _, _, err := m.refresh(ctx); err != nil {
			m.s.log.Error("discovering sessions", "err", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	out := []wire.Tunnel{}
	for k, st := range m.tunnels {
		out = append(out, wire.Tunnel{Device: st.device, Forward: st.forward, Slave: slave, Port: k.port,
			Remote: st.remote, Since: st.since, LastProbe: st.last})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Port < out[j].Port })
	return out
}

// supersede applies newest-wins before the hook answers for dev: an older
// session still holding one of dev's ports is probed at once and ended if it
// fails (or always, by policy), so the new client's forward binds on its
// first try.
func (m *monitor) supersede(ctx context.Context, dev registry.Device) {
	if m.s.cfg.NewestWins == NewestWinsOff {
		return
	}
	held := map[int]bool{}
	for _, f := range dev.Forwards {
		if portHeld(f.RemotePort) {
			held[f.RemotePort] = true
		}
	}
	if len(held) == 0 {
		return
	}
	sessions, err := m.sessions()
	if err != nil {
		return
	}
	for _, sess := range sessions {
		var fwd *registry.Forward
		for _, p := range sess.Ports {
			for i, f := range dev.Forwards {
				if f.RemotePort == p && held[p] {
					fwd = &dev.Forwards[i]
				}
			}
		}
		if fwd == nil {
			continue
		}
		why := "superseded by a newer session of the same device"
		if m.s.cfg.NewestWins != NewestWinsAlways {
			pr, err := probe.Parse(fwd.Probe, fwd.Target)
			if err != nil || pr.Kind == probe.None {
				continue // nothing to judge it by: leave the live session alone
			}
			perr := pr.Run(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(fwd.RemotePort)), min(m.s.cfg.ProbeTimeout, supersedeProbeBudget))
			m.metrics.Probe(perr == nil)
			if perr == nil {
				m.s.log.Info("older session still healthy; newest does not win", "device", dev.Name, "port", fwd.RemotePort)
				continue
			}
			why = "superseded: older session failed its probe (" + perr.Error() + ")"
		}
		m.metrics.Reap(metrics.ReapSuperseded)
		m.end(ctx, sess, dev.Name, why, "kill")
	}
}

// portHeld reports whether something listens on 127.0.0.1:port, cheaply:
// a bind that fails with "in use" (far cheaper than reading the process
// table on every authentication).
func portHeld(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return true
	}
	l.Close()
	return false
}
