package reaper

import (
	"context"
	"sort"
	"time"

	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/sshd/liveness"
	"github.com/mas4h/mas4h/sshd/probe"
	"github.com/mas4h/mas4h/sshd/sessions"
)

// job is one probe to run.
type job struct {
	k tunnelKey
	t *tunnel
	p probe.Probe
}

// tick walks the session table (when walk), reads the sessions' TCP states
// and judges every session: it starts the probes due and ends the sessions
// judged dead. Probes run in the background; each one's session is judged
// again as soon as it ends.
func (r *Reaper) tick(ctx context.Context, walk bool) {
	if walk {
		if _, _, err := r.refresh(ctx); err != nil {
			r.log.Error("discovering sessions", "err", err)
		}
	}
	r.sampleTCP()
	now := r.d.Clock.Now()
	r.mu.Lock()
	pids := make([]int, 0, len(r.ports))
	for pid := range r.ports {
		pids = append(pids, pid)
	}
	r.mu.Unlock()
	sort.Ints(pids)
	for _, pid := range pids {
		r.judge(ctx, pid, now)
	}
}

// sampleTCP replaces each session's TCP state with a fresh reading. When
// the sampler fails, every session's state becomes unknown, and the probes
// alone judge until it works again.
func (r *Reaper) sampleTCP() {
	if r.d.TCP == nil {
		return
	}
	sample, err := r.d.TCP.SampleTCP()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil && !r.tcpErr {
		r.log.Warn("reading the sessions' TCP states failed; judging by probes alone", "err", err)
	} else if err == nil && r.tcpErr {
		r.log.Info("reading the sessions' TCP states again")
	}
	r.tcpErr = err != nil
	for pid, s := range r.sessions {
		s.TCP = sample[s.Conn] // unknown when absent (or no sample)
		r.sessions[pid] = s
	}
}

// view is what the liveness policy knows of session pid. Call with r.mu
// held.
func (r *Reaper) view(pid int) liveness.Session {
	sess := r.sessions[pid]
	v := liveness.Session{MonitorPID: pid, StartTick: sess.StartTick, Started: sess.Started, TCP: sess.TCP}
	for _, port := range r.ports[pid] {
		t := r.tunnels[tunnelKey{pid, port}]
		if t == nil {
			continue
		}
		if v.FirstSeen.IsZero() || t.firstSeen.Before(v.FirstSeen) {
			v.FirstSeen = t.firstSeen
		}
		f := liveness.Forward{Port: port, Probed: t.probed(), LastProbe: t.probeStarted, Failures: t.failures}
		if t.last != nil {
			f.LastOK, f.LastDetail = t.last.OK, t.last.Detail
		}
		v.Forwards = append(v.Forwards, f)
	}
	return v
}

// judge asks the policy about session pid at now, and acts on its answer.
func (r *Reaper) judge(ctx context.Context, pid int, now time.Time) {
	r.mu.Lock()
	if r.ending[pid] || len(r.ports[pid]) == 0 {
		r.mu.Unlock()
		return
	}
	d := r.live.Judge(now, r.view(pid))
	sess := r.sessions[pid]
	first := r.tunnels[tunnelKey{pid, r.ports[pid][0]}]
	device := ""
	if first != nil {
		device = first.device
	}
	_, wasSuspect := r.suspect[pid]
	switch d.Verdict {
	case liveness.Dead:
		r.ending[pid] = true
	case liveness.Suspect:
		if !wasSuspect {
			r.log.Warn("session suspect", "device", device, "monitor_pid", pid, "remote", sess.Remote, "why", d.Reason)
		}
		r.suspect[pid] = d.Reason
	default:
		if wasSuspect {
			r.log.Info("session healthy again", "device", device, "monitor_pid", pid)
			delete(r.suspect, pid)
		}
	}
	var jobs []job
	if d.Verdict != liveness.Dead {
		for _, port := range d.Probe {
			k := tunnelKey{pid, port}
			if t := r.tunnels[k]; t != nil && !t.inFlight {
				t.inFlight = true
				jobs = append(jobs, job{k, t, t.probe})
			}
		}
	}
	r.mu.Unlock()
	for _, j := range jobs {
		r.startProbe(ctx, j)
	}
	if d.Verdict == liveness.Dead {
		r.d.Metrics.Reap(metrics.ReapProbe)
		r.kills.Add(1)
		go func() {
			defer r.kills.Done()
			if !r.end(ctx, sess, device, "reaped "+d.Reason, "reap") {
				r.mu.Lock()
				delete(r.ending, pid) // still bound: judged (and ended) again
				r.mu.Unlock()
			}
		}()
	}
}

// startProbe runs one probe in the background (at most probeConcurrency at
// once), records its result and judges its session again at once: a
// suspect session whose probe failed is ended without waiting for a tick.
func (r *Reaper) startProbe(ctx context.Context, j job) {
	r.probes.Add(1)
	go func() {
		defer r.probes.Done()
		select {
		case r.sem <- struct{}{}:
		case <-ctx.Done():
			r.mu.Lock()
			j.t.inFlight = false
			r.mu.Unlock()
			return
		}
		started := r.d.Clock.Now()
		err := r.d.Prober.Probe(ctx, j.p, j.k.port, r.cfg.Timeout)
		<-r.sem
		if ctx.Err() != nil {
			r.mu.Lock()
			j.t.inFlight = false
			r.mu.Unlock()
			return
		}
		r.record(ctx, j.k, j.t, started, err)
		r.judge(ctx, j.k.monitor, r.d.Clock.Now())
	}()
}

// sessionTCP is sess with a fresh TCP state, when there is a sampler.
func (r *Reaper) sessionTCP(sess sessions.Session) sessions.Session {
	if r.d.TCP == nil {
		return sess
	}
	sample, err := r.d.TCP.SampleTCP()
	if err != nil {
		sess.TCP = sessions.TCPState{}
		return sess
	}
	sess.TCP = sample[sess.Conn]
	return sess
}
