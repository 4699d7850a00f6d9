package reaper

import (
	"context"

	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/probe"
	"github.com/mas4h/mas4h/sshd/sessions"
)

// Supersede applies newest-wins before the hook answers for dev: an older
// session still holding one of dev's ports is probed at once and ended if it
// fails (or always, by policy), so the new client's forward binds on its
// first try. A forward without a probe leaves its live session alone:
// there is nothing to judge it by.
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
		fwd, ok := heldForward(sess, dev, held)
		if !ok {
			continue
		}
		why := "superseded by a newer session of the same device"
		if r.cfg.NewestWins != NewestWinsAlways {
			p, err := probe.Parse(fwd.Probe, fwd.Target)
			if err != nil || p.Kind == probe.None {
				continue
			}
			perr := r.d.Prober.Probe(ctx, p, fwd.RemotePort, min(r.cfg.Timeout, SupersedeBudget))
			r.d.Metrics.Probe(perr == nil)
			if perr == nil {
				r.log.Info("older session still healthy; newest does not win", "device", dev.Name, "port", fwd.RemotePort)
				continue
			}
			why = "superseded: older session failed its probe (" + perr.Error() + ")"
		}
		r.d.Metrics.Reap(metrics.ReapSuperseded)
		r.end(ctx, sess, dev.Name, why, "kill")
	}
}

// heldForward is the forward of dev whose held port sess listens on.
func heldForward(sess sessions.Session, dev registry.Device, held map[int]bool) (registry.Forward, bool) {
	for _, p := range sess.Ports {
		if !held[p] {
			continue
		}
		for _, f := range dev.Forwards {
			if f.RemotePort == p {
				return f, true
			}
		}
	}
	return registry.Forward{}, false
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
