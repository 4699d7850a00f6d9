// Package liveness decides whether a device's session is alive, and when
// each of its forwards is next probed end to end, so that a stale tunnel is
// found quickly while a healthy device's own sshd log gets at most one line
// from mas4h every few minutes.
//
// It judges first from what the slave sees without touching the device:
// the session connection's tcp_info. sshd's ClientAlive requests make a
// live client answer every keepalive period (OpenSSH 9.2 sends one every
// second ClientAliveInterval when the connection is idle), so a client that
// has sent nothing for longer than two periods and a reply's grace is
// suspect: frozen (its kernel acknowledges, it never answers) or cut off
// (nothing is acknowledged either). A suspect session's forward is probed at
// once, and a probe that fails then ends it. A session whose TCP looks
// healthy is probed end to end rarely (broken forwarding behind a live SSH
// connection is found only so), and at once when the same device logs in
// again (newest wins). Without tcp_info (no sock_diag) every forward is
// probed at the old, short interval.
//
// The policy is pure: it keeps no state and does no I/O. The caller keeps
// each forward's probe history and passes the time in.
package liveness

import (
	"fmt"
	"hash/fnv"
	"time"

	"github.com/mas4h/mas4h/sshd/sessions"
)

// Config is the policy's settings.
type Config struct {
	// KeepaliveInterval is sshd's ClientAliveInterval.
	KeepaliveInterval time.Duration
	// ReplyGrace is how long a live client may take to answer sshd (its
	// round trip and a lost segment's retransmission).
	ReplyGrace time.Duration
	// ProbeInterval is how often a forward is probed end to end while its
	// session's TCP looks healthy: each probe is one line in the device's
	// sshd log.
	ProbeInterval time.Duration
	// FallbackInterval replaces ProbeInterval when the TCP state is unknown.
	FallbackInterval time.Duration
	// ProbeRetry is how soon a failed probe of a healthy-looking session is
	// repeated; ProbeFailures failures in a row end the session.
	ProbeRetry    time.Duration
	ProbeFailures int
	// ConfirmAfter is how long a session with no forward to probe must stay
	// suspect before it is judged dead on its TCP state alone (as long as a
	// probe would have waited).
	ConfirmAfter time.Duration
	// SampleEvery is how often the caller should read the sessions' TCP
	// state (sessions.SampleTCP): detection takes up to this much longer.
	SampleEvery time.Duration
}

// Default settings. With sshd's ClientAliveInterval 3 (a keepalive every
// 6 s on OpenSSH 9.2 when idle) a healthy client is never silent past 8 s;
// a frozen or cut-off one is suspect at most 8 s after its last answer,
// sampled within 1 s, and its probe times out 3 s later: its port is free
// about 12.5 s after it stopped, at worst. A healthy forward is probed once
// in 5 minutes.
const (
	DefaultKeepaliveInterval = 3 * time.Second
	DefaultReplyGrace        = 2 * time.Second
	DefaultProbeInterval     = 5 * time.Minute
	DefaultFallbackInterval  = 10 * time.Second
	DefaultProbeRetry        = time.Second
	DefaultProbeFailures     = 2
	DefaultConfirmAfter      = 3 * time.Second
	DefaultSampleEvery       = time.Second
)

// Defaults returns the default settings.
func Defaults() Config {
	return Config{
		KeepaliveInterval: DefaultKeepaliveInterval,
		ReplyGrace:        DefaultReplyGrace,
		ProbeInterval:     DefaultProbeInterval,
		FallbackInterval:  DefaultFallbackInterval,
		ProbeRetry:        DefaultProbeRetry,
		ProbeFailures:     DefaultProbeFailures,
		ConfirmAfter:      DefaultConfirmAfter,
		SampleEvery:       DefaultSampleEvery,
	}
}

// Validate refuses settings the policy cannot work with.
func (c Config) Validate() error {
	switch {
	case c.KeepaliveInterval <= 0:
		return fmt.Errorf("liveness: keepalive interval %s: sshd's ClientAliveInterval must be on", c.KeepaliveInterval)
	case c.ReplyGrace <= 0, c.ProbeRetry <= 0, c.ConfirmAfter <= 0, c.SampleEvery <= 0:
		return fmt.Errorf("liveness: reply grace, probe retry, confirmation and sampling periods must be positive")
	case c.ProbeInterval < c.ProbeRetry || c.FallbackInterval < c.ProbeRetry:
		return fmt.Errorf("liveness: probe intervals (%s, %s) shorter than the retry (%s)", c.ProbeInterval, c.FallbackInterval, c.ProbeRetry)
	case c.ProbeFailures < 1:
		return fmt.Errorf("liveness: probe failures %d: at least 1", c.ProbeFailures)
	}
	return nil
}

// Silence is how long a live client may go without sending anything: two
// keepalive periods (OpenSSH 9.2 sends a keepalive only every second
// interval; later versions every one) and the grace of its answer.
func (c Config) Silence() time.Duration { return 2*c.KeepaliveInterval + c.ReplyGrace }

// Silence alone makes a session suspect, whatever sshd sends meanwhile: a
// frozen client's kernel acknowledges everything sshd sends it (keepalives,
// the channel opens of whoever keeps connecting to its forwarded port), so
// data sent and acknowledged proves nothing. The cost falls on a live
// client that receives a long upload over a slow link without a word (its
// window adjustments come every megabyte or so): it is probed once per
// silence, and its answer to the probe ends the suspicion.

// Verdict is the policy's judgement of a session.
type Verdict int

// Verdicts.
const (
	Healthy Verdict = iota
	Suspect         // probe its forward now
	Dead            // end the session
)

func (v Verdict) String() string {
	switch v {
	case Healthy:
		return "healthy"
	case Suspect:
		return "suspect"
	case Dead:
		return "dead"
	}
	return fmt.Sprintf("verdict(%d)", int(v))
}

// Forward is what the caller knows of one forwarded port of a session.
type Forward struct {
	Port int
	// Probed: the forward has an end-to-end probe (its kind is not none and
	// its spec parses).
	Probed bool
	// LastProbe is when the last finished probe started (zero: none yet in
	// this daemon's life); LastOK its outcome, LastDetail its error.
	LastProbe  time.Time
	LastOK     bool
	LastDetail string
	// Failures is the number of failed probes in a row.
	Failures int
}

// Session is what the caller knows of one session.
type Session struct {
	// MonitorPID and StartTick identify the session across daemon
	// restarts; with the port they place its probes in time.
	MonitorPID int
	StartTick  uint64
	// Started is when the session started; FirstSeen when this daemon
	// first saw it (after a restart, later than Started).
	Started, FirstSeen time.Time
	// TCP is its connection's state as last sampled.
	TCP      sessions.TCPState
	Forwards []Forward
}

// Decision is the policy's answer for one session at one time.
type Decision struct {
	Verdict Verdict
	// Reason says why a session is suspect or dead, for logs and events,
	// worded to follow "reaped" ("after 2 failed probes of port …", "as its
	// client stopped answering: …").
	Reason string
	// Probe lists the ports to probe now.
	Probe []int
	// NextProbe is when a forward is next due to be probed (zero: none is),
	// for the caller's timer; TCP samples may bring it forward.
	NextProbe time.Time
}

// Judge decides on one session at now.
func (c Config) Judge(now time.Time, s Session) Decision {
	if !s.TCP.Known {
		return c.byProbes(now, s, c.FallbackInterval, false, "")
	}
	suspect, since, why := c.tcpSuspect(now, s.TCP)
	if !suspect {
		return c.byProbes(now, s, c.ProbeInterval, true, "")
	}
	// Suspect: one forward's probe settles it (the session is one SSH
	// connection): the first probed one.
	var f *Forward
	for i := range s.Forwards {
		if s.Forwards[i].Probed {
			f = &s.Forwards[i]
			break
		}
	}
	if f == nil {
		if now.Sub(since) >= c.ConfirmAfter {
			return Decision{Verdict: Dead, Reason: why + ", and it has nothing to probe"}
		}
		return Decision{Verdict: Suspect, Reason: why}
	}
	switch {
	case f.LastProbe.Before(since):
		// Not probed since the suspicion began: probe now. A healthy
		// client's answer to the probe resets the silence.
		return Decision{Verdict: Suspect, Reason: why, Probe: []int{f.Port}, NextProbe: now}
	case !f.LastOK:
		return Decision{Verdict: Dead, Reason: fmt.Sprintf("%s, and the probe of port %d failed: %s", why, f.Port, f.LastDetail)}
	}
	// Probed fine since the suspicion began and yet silent: the probe's
	// answer did not reach this connection's counters (or was never asked
	// for). The probe is the stronger evidence; judge by probes.
	return c.byProbes(now, s, c.ProbeInterval, true, why)
}

// tcpSuspect says whether the TCP state alone makes a session suspect, since
// when, and why.
func (c Config) tcpSuspect(now time.Time, t sessions.TCPState) (bool, time.Time, string) {
	if !t.Established() {
		return true, now, fmt.Sprintf("as its connection is in TCP state %d, not established", t.State)
	}
	silence := t.LastDataRecv
	if silence <= c.Silence() {
		return false, time.Time{}, ""
	}
	since := now.Add(-(silence - c.Silence()))
	if t.Unacked > 0 && t.LastAckRecv > c.ReplyGrace {
		return true, since, fmt.Sprintf("as its link is dead: client silent %s, %d segments unacknowledged, no acknowledgement for %s, %d retransmissions",
			round(silence), t.Unacked, round(t.LastAckRecv), t.Retransmits)
	}
	return true, since, fmt.Sprintf("as its client stopped answering: silent %s though its kernel acknowledged %s ago", round(silence), round(t.LastAckRecv))
}

// byProbes is the judgement by end-to-end probes alone, every interval:
// when the TCP state is unknown (FallbackInterval, a first probe at once)
// or looks healthy (ProbeInterval, a first probe on the forward's grid).
func (c Config) byProbes(now time.Time, s Session, interval time.Duration, grid bool, note string) Decision {
	d := Decision{Verdict: Healthy, Reason: note}
	if note != "" {
		d.Verdict = Suspect
	}
	for _, f := range s.Forwards {
		if !f.Probed {
			continue
		}
		if f.Failures >= c.ProbeFailures {
			return Decision{Verdict: Dead, Reason: fmt.Sprintf("after %d failed probes of port %d: %s", f.Failures, f.Port, f.LastDetail)}
		}
		due := c.due(s, f, interval, grid)
		if !due.After(now) {
			d.Probe = append(d.Probe, f.Port)
		}
		if d.NextProbe.IsZero() || due.Before(d.NextProbe) {
			d.NextProbe = due
		}
	}
	if len(d.Probe) > 0 {
		d.NextProbe = now
	}
	return d
}

// due is when forward f is next to be probed at the given interval.
func (c Config) due(s Session, f Forward, interval time.Duration, grid bool) time.Time {
	switch {
	case f.LastProbe.IsZero() && !grid:
		return s.FirstSeen
	case f.LastProbe.IsZero():
		// No probe in this daemon's life: the first point at or after
		// FirstSeen of the forward's own grid, anchored at the session's
		// start, so that a restarted daemon keeps its predecessor's cadence
		// and a fleet's probes are spread over the interval.
		anchor := s.Started
		if anchor.IsZero() {
			anchor = s.FirstSeen
		}
		first := anchor.Add(c.phase(s, f.Port, interval))
		if first.Before(s.FirstSeen) {
			n := (s.FirstSeen.Sub(first) + interval - 1) / interval
			first = first.Add(n * interval)
		}
		return first
	case !f.LastOK:
		// A failure is checked again soon: confirmed (or cleared) in
		// seconds. (A failure the caller did not count, a young session's,
		// is retried alike.)
		return f.LastProbe.Add(c.ProbeRetry)
	}
	return f.LastProbe.Add(interval)
}

// phase is a forward's fixed place in the interval, from the session's
// identity and the port.
func (c Config) phase(s Session, port int, interval time.Duration) time.Duration {
	h := fnv.New64a()
	fmt.Fprintf(h, "%d/%d/%d", s.MonitorPID, s.StartTick, port)
	return time.Duration(h.Sum64() % uint64(interval))
}

// Supersede judges an older session of a device that has just logged in
// again (newest wins), at once: dead when its TCP state says so; otherwise
// its first probed forward is to be probed now, and the caller ends the
// session if that probe fails (one probe tells whether its client still
// carries its forwards). Nothing to probe and no TCP evidence leaves it
// Healthy (alone). The caller samples the TCP state just before.
func (c Config) Supersede(now time.Time, s Session) Decision {
	if s.TCP.Known {
		if suspect, _, why := c.tcpSuspect(now, s.TCP); suspect {
			return Decision{Verdict: Dead, Reason: why}
		}
	}
	for _, f := range s.Forwards {
		if f.Probed {
			return Decision{Verdict: Suspect, Reason: "an older session of a device that logged in again", Probe: []int{f.Port}, NextProbe: now}
		}
	}
	return Decision{Verdict: Healthy}
}

func round(d time.Duration) time.Duration {
	if d >= 10*time.Second {
		return d.Round(time.Second)
	}
	return d.Round(100 * time.Millisecond)
}
