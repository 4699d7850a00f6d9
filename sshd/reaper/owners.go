package reaper

import (
	"context"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authlog"
	"github.com/mas4h/mas4h/sshd/sessions"
)

// keysGrace: a connection that authenticated this recently is kept in the
// key index even when a walk does not show it yet (the walk began first).
const keysGrace = 30 * time.Second

// owned is a session with what the slave knows of whose it is.
type owned struct {
	sess  sessions.Session
	fp    string          // the key it authenticated with; "" unknown
	owner registry.Device // the device of that key, when found
	found bool
}

// doomed is a session to end, why, and the reap reason it counts as.
type doomed struct {
	sess   sessions.Session
	device string
	why    string
	metric string
}

// remoteOf is the session's device connection as the key index knows it.
func remoteOf(sess sessions.Session) (netip.AddrPort, bool) {
	ap, err := netip.ParseAddrPort(sess.Remote)
	if err != nil {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), true
}

// owners finds the key and device of each session. A key the registry
// cannot be asked about (the master unreachable) leaves the session
// unknown: nothing is ended on a missing answer.
func (r *Reaper) owners(ctx context.Context, list []sessions.Session) []owned {
	out := make([]owned, len(list))
	live := make(map[netip.AddrPort]bool, len(list))
	for i, sess := range list {
		out[i].sess = sess
		if r.d.Keys == nil {
			continue
		}
		remote, ok := remoteOf(sess)
		if !ok {
			continue
		}
		live[remote] = true
		a, ok := r.d.Keys.Lookup(remote)
		if !ok || r.operator(a) {
			continue
		}
		dev, found, err := r.d.Leases.Owner(ctx, a.Fingerprint)
		if err != nil {
			r.log.Warn("cannot tell whose key a session has; judging it by its ports", "monitor_pid", sess.MonitorPID,
				"fingerprint", a.Fingerprint, "err", err)
			continue
		}
		out[i].fp, out[i].owner, out[i].found = a.Fingerprint, dev, found
	}
	if r.d.Keys != nil {
		r.d.Keys.Keep(live, keysGrace)
	}
	return out
}

// operator says whether a session logged in as the operator user.
func (r *Reaper) operator(a authlog.Accepted) bool {
	return r.cfg.OperatorUser != "" && a.User == r.cfg.OperatorUser
}

// trespass says why a session must end although nothing is wrong with its
// connection: its key is no device's (removed), its device is revoked, or
// it holds a port leased to no device or to another device — and which
// device the event belongs to (the one whose port it holds, if any). ""
// when it may stay (or when its key is unknown: it is then judged by its
// ports alone).
func trespass(o owned, leases map[int]Lease) (device, why, metric string) {
	if o.fp == "" {
		return "", "", ""
	}
	if !o.found {
		why = fmt.Sprintf("its key %s is no enrolled device's", o.fp)
		for _, p := range o.sess.Ports {
			if l, ok := leases[p]; ok {
				return l.Device.Name, fmt.Sprintf("%s; it holds port %d, leased to device %s", why, p, l.Device.Name), metrics.ReapTrespass
			}
		}
		return "", why, metrics.ReapRevoked
	}
	if o.owner.Status != registry.StatusActive {
		return o.owner.Name, fmt.Sprintf("device %s is %s", o.owner.Name, o.owner.Status), metrics.ReapRevoked
	}
	for _, p := range o.sess.Ports {
		l, ok := leases[p]
		switch {
		case !ok:
			return o.owner.Name, fmt.Sprintf("device %s holds port %d, which is leased to no device", o.owner.Name, p), metrics.ReapTrespass
		case l.Device.Fingerprint != o.fp:
			return o.owner.Name, fmt.Sprintf("device %s holds port %d, which is leased to device %s", o.owner.Name, p, l.Device.Name), metrics.ReapTrespass
		}
	}
	return "", "", ""
}

// overCap picks the sessions of each key beyond max, keeping those that
// hold ports (the tunnels) and the newest of the rest (a device that just
// logged in again keeps its new session; the port-less ones it left behind
// go first).
func overCap(all []owned, max int) []owned {
	if max <= 0 {
		return nil
	}
	byKey := map[string][]owned{}
	for _, o := range all {
		if o.fp != "" && o.found {
			byKey[o.fp] = append(byKey[o.fp], o)
		}
	}
	var out []owned
	for _, os := range byKey {
		if len(os) <= max {
			continue
		}
		sort.Slice(os, func(i, j int) bool {
			pi, pj := len(os[i].sess.Ports) > 0, len(os[j].sess.Ports) > 0
			if pi != pj {
				return pi // port holders first: kept
			}
			if !os[i].sess.Started.Equal(os[j].sess.Started) {
				return os[i].sess.Started.After(os[j].sess.Started) // then the newest
			}
			return os[i].sess.MonitorPID > os[j].sess.MonitorPID
		})
		out = append(out, os[max:]...)
	}
	return out
}

// police is what a walk finds wrong with the sessions' ownership, by
// monitor pid.
func (r *Reaper) police(all []owned, leases map[int]Lease) map[int]doomed {
	out := map[int]doomed{}
	for _, o := range all {
		if device, why, metric := trespass(o, leases); why != "" {
			out[o.sess.MonitorPID] = doomed{o.sess, device, why, metric}
		}
	}
	for _, o := range overCap(all, r.cfg.MaxSessions) {
		if _, ok := out[o.sess.MonitorPID]; !ok {
			why := fmt.Sprintf("session cap: device %s has more than %d sessions (--max-sessions-per-device)", o.owner.Name, r.cfg.MaxSessions)
			out[o.sess.MonitorPID] = doomed{o.sess, o.owner.Name, why, metrics.ReapCap}
		}
	}
	return out
}

// endAll ends the doomed sessions in the background (Run waits for them).
func (r *Reaper) endAll(ctx context.Context, ds map[int]doomed) {
	for _, d := range ds {
		r.mu.Lock()
		busy := r.ending[d.sess.MonitorPID]
		r.ending[d.sess.MonitorPID] = true
		r.mu.Unlock()
		if busy {
			continue
		}
		r.d.Metrics.Reap(d.metric)
		r.kills.Add(1)
		go func() {
			defer r.kills.Done()
			r.end(ctx, d.sess, d.device, d.why, "kill")
		}()
	}
}

// capKey ends the sessions of key fp beyond the cap at once, when the key
// index counts more than the cap (a login sshd took from the keys file,
// before the file could leave the device out).
func (r *Reaper) capKey(ctx context.Context, fp string) {
	if r.cfg.MaxSessions <= 0 || r.d.Keys == nil || r.d.Keys.Count(fp) <= r.cfg.MaxSessions {
		return
	}
	list, err := r.d.Sessions.Sessions()
	if err != nil {
		r.log.Error("listing sessions for the session cap", "err", err)
		return
	}
	var mine []sessions.Session
	for _, sess := range list {
		if remote, ok := remoteOf(sess); ok {
			if a, known := r.d.Keys.Lookup(remote); known && a.Fingerprint == fp {
				mine = append(mine, sess)
			}
		}
	}
	all := r.owners(ctx, mine)
	ds := map[int]doomed{}
	for _, o := range overCap(all, r.cfg.MaxSessions) {
		why := fmt.Sprintf("session cap: device %s has more than %d sessions (--max-sessions-per-device)", o.owner.Name, r.cfg.MaxSessions)
		ds[o.sess.MonitorPID] = doomed{o.sess, o.owner.Name, why, metrics.ReapCap}
	}
	r.endAll(ctx, ds)
}
