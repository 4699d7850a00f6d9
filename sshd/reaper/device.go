package reaper

import (
	"context"
	"slices"

	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/liveness"
	"github.com/mas4h/mas4h/sshd/probe"
	"github.com/mas4h/mas4h/sshd/sessions"
)

// Supersede applies newest-wins before the hook answers for dev: an older
// session still holding one of dev's ports is judged at once — ended when
// its TCP state says it is stale, otherwise when its forward fails a probe
// (or always, by policy) — so the new client's forward binds on its first
// try. A session with no probe and no TCP evidence is left alone: there is
// nothing to judge it by.
func (r *Reaper) Supersede(ctx context.Context, dev registry.Device) {
	if r.cfg.NewestWins == NewestWinsOff {
		return
	}
	held := map[int]bool{}
	for _, f := range dev.Forwards {
		if r.d.PortHeld(f.RemotePort) {
			held[f.RemotePort] = true
		}
	}
	if len(held) == 0 {
		return
	}
	list, err := r.d.Sessions.Sessions()
	if err != nil {
		r.log.Error("listing sessions for newest-wins", "device", dev.Name, "err", err)
		return
	}
	for _, sess := range list {
		fwds := heldForwards(sess, dev, held)
		if len(fwds) == 0 {
			continue
		}
		why := "superseded by a newer session of the same device"
		if r.cfg.NewestWins != NewestWinsAlways {
			var ok bool
			if why, ok = r.stale(ctx, dev, r.sessionTCP(sess), fwds); !ok {
				continue
			}
		}
		r.d.Metrics.Reap(metrics.ReapSuperseded)
		r.end(ctx, sess, dev.Name, why, "kill")
	}
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
		return "", false
	}
	for _, port := range d.Probe {
		perr := r.d.Prober.Probe(ctx, probes[port], port, min(r.cfg.Timeout, SupersedeBudget))
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

// EndDevice ends, in the background, every session that holds one of dev's
// ports, for reason (the device was revoked or removed). Run waits for
// them before it returns.
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
	for _, sess := range list {
		hit := false
		for _, p := range sess.Ports {
			hit = hit || ports[p]
		}
		if !hit {
			continue
		}
		r.d.Metrics.Reap(metrics.ReapRevoked)
		r.kills.Add(1)
		go func() {
			defer r.kills.Done()
			r.end(ctx, sess, dev.Name, reason, "kill")
		}()
	}
}

// Wait returns once the sessions EndDevice started ending are gone.
func (r *Reaper) Wait() { r.kills.Wait() }
