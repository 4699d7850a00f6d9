package reaper

import (
	"context"
	"net/netip"
	"slices"
	"time"

	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authlog"
	"github.com/mas4h/mas4h/sshd/liveness"
	"github.com/mas4h/mas4h/sshd/probe"
	"github.com/mas4h/mas4h/sshd/sessions"
)

// SupersedeEvery bounds newest-wins per device: one judgement at a time,
// and none within this long of the last (a device whose key sits on two
// machines does not make them end each other's sessions in a loop).
const SupersedeEvery = 5 * time.Second

// Accepted applies newest-wins once a session has authenticated (sshd's
// log says so): an older session of the same device still holding one of
// its ports is judged at once with the reaper's own standard — ended when
// its TCP state says it is stale, otherwise when its forward fails a probe
// (or always, by policy) — so the device's next attempt binds its port if
// this one's forward lost the race. Nothing is done on an unauthenticated
// key query: knowing a device's public key gives nothing. The judging runs
// in the background; Run waits for it.
func (r *Reaper) Accepted(ctx context.Context, a authlog.Accepted) {
	if r.operator(a) {
		return
	}
	r.kills.Add(1)
	go func() {
		defer r.kills.Done()
		r.capKey(ctx, a.Fingerprint)
	}()
	if r.cfg.NewestWins == NewestWinsOff {
		return
	}
	dev, found, err := r.d.Leases.Owner(ctx, a.Fingerprint)
	if err != nil || !found || dev.Status != registry.StatusActive {
		return
	}
	now := r.d.Clock.Now()
	r.mu.Lock()
	last, judging := r.superseded[dev.Name]
	if judging && (last.IsZero() || now.Sub(last) < SupersedeEvery) {
		r.mu.Unlock()
		return
	}
	r.superseded[dev.Name] = time.Time{} // in flight
	r.mu.Unlock()
	r.kills.Add(1)
	go func() {
		defer r.kills.Done()
		judged := r.supersede(ctx, dev, a.Remote)
		r.mu.Lock()
		if judged {
			r.superseded[dev.Name] = r.d.Clock.Now()
		} else {
			delete(r.superseded, dev.Name) // nothing to judge: the next login may
		}
		r.mu.Unlock()
	}()
}

// supersede judges every session of dev but the one from newest that holds
// one of dev's ports, and reports whether there was one.
func (r *Reaper) supersede(ctx context.Context, dev registry.Device, newest netip.AddrPort) (judged bool) {
	held := map[int]bool{}
	for _, f := range dev.Forwards {
		if r.d.PortHeld(f.RemotePort) {
			held[f.RemotePort] = true
		}
	}
	if len(held) == 0 {
		return false
	}
	list, err := r.d.Sessions.Sessions()
	if err != nil {
		r.log.Error("listing sessions for newest-wins", "device", dev.Name, "err", err)
		return false
	}
	for _, sess := range list {
		if remote, ok := remoteOf(sess); ok && remote == newest {
			continue
		}
		fwds := heldForwards(sess, dev, held)
		if len(fwds) == 0 {
			continue
		}
		judged = true
		why := "superseded by a newer session of the same device"
		if r.cfg.NewestWins != NewestWinsAlways {
			var ok bool
			if why, ok = r.stale(ctx, dev, r.sessionTCP(sess), fwds); !ok {
				continue
			}
		}
		r.mu.Lock()
		busy := r.ending[sess.MonitorPID]
		r.ending[sess.MonitorPID] = true
		r.mu.Unlock()
		if busy {
			continue
		}
		r.d.Metrics.Reap(metrics.ReapSuperseded)
		r.end(ctx, sess, dev.Name, why, "kill")
	}
	return judged
}

// stale judges an older session of dev for newest-wins: why it is stale,
// or false to leave it alone.
func (r *Reaper) stale(ctx context.Context, dev registry.Device, sess sessions.Session, fwds []registry.Forward) (string, bool) {
	v := liveness.Session{MonitorPID: sess.MonitorPID, StartTick: sess.StartTick, Started: sess.Started, TCP: sess.TCP}
	probes := map[int]probe.Probe{}
	for _, f := range fwds {
		p, err := probe.Parse(f.Probe, f.Target)
		probed := err == nil && p.Kind != probe.None
		if probed {
			probes[f.RemotePort] = p
		}
		v.Forwards = append(v.Forwards, liveness.Forward{Port: f.RemotePort, Probed: probed})
	}
	d := r.live.Supersede(r.d.Clock.Now(), v)
	switch d.Verdict {
	case liveness.Dead:
		return "superseded: older session stale (" + d.Reason + ")", true
	case liveness.Healthy:
		r.log.Info("older session looks healthy; newest does not win", "device", dev.Name, "monitor_pid", sess.MonitorPID)
		return "", false
	}
	for _, port := range d.Probe {
		perr := r.d.Prober.Probe(ctx, probes[port], port, r.cfg.Timeout)
		r.d.Metrics.Probe(perr == nil)
		if perr != nil {
			return "superseded: older session failed its probe (" + perr.Error() + ")", true
		}
		r.log.Info("older session still healthy; newest does not win", "device", dev.Name, "port", port)
	}
	return "", false
}

// heldForwards are the forwards of dev whose held ports sess listens on.
func heldForwards(sess sessions.Session, dev registry.Device, held map[int]bool) []registry.Forward {
	var out []registry.Forward
	for _, f := range dev.Forwards {
		if held[f.RemotePort] && slices.Contains(sess.Ports, f.RemotePort) {
			out = append(out, f)
		}
	}
	return out
}

// EndDevice ends, in the background, every session of dev — the sessions
// that authenticated with its key, whatever they hold, and any that holds
// one of its ports — for reason (the device was revoked or removed). Run
// waits for them before it returns.
func (r *Reaper) EndDevice(ctx context.Context, dev registry.Device, reason string) {
	ports := map[int]bool{}
	for _, f := range dev.Forwards {
		ports[f.RemotePort] = true
	}
	list, err := r.d.Sessions.Sessions()
	if err != nil {
		r.log.Error("listing sessions", "device", dev.Name, "err", err)
		return
	}
	ds := map[int]doomed{}
	for _, sess := range list {
		hit := false
		for _, p := range sess.Ports {
			hit = hit || ports[p]
		}
		if remote, ok := remoteOf(sess); ok && r.d.Keys != nil && dev.Fingerprint != "" {
			a, known := r.d.Keys.Lookup(remote)
			hit = hit || known && a.Fingerprint == dev.Fingerprint
		}
		if hit {
			ds[sess.MonitorPID] = doomed{sess, dev.Name, reason, metrics.ReapRevoked}
		}
	}
	r.endAll(ctx, ds)
}

// Wait returns once the sessions EndDevice, Accepted and the walks started
// ending are gone.
func (r *Reaper) Wait() { r.kills.Wait() }
