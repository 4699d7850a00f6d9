package liveness

import (
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/sshd/sessions"
)

var t0 = time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)

const s = time.Second

// idle is the TCP state of a healthy idle session whose client last
// answered a keepalive `ago`.
func idle(ago time.Duration) sessions.TCPState {
	return sessions.TCPState{Known: true, State: 1, LastDataRecv: ago, LastDataSent: ago, LastAckRecv: ago}
}

// frozen: sshd's keepalive went out `sent` ago and was acknowledged by the
// client's kernel; the client has said nothing for `silent`.
func frozen(silent, sent time.Duration) sessions.TCPState {
	return sessions.TCPState{Known: true, State: 1, LastDataRecv: silent, LastDataSent: sent, LastAckRecv: sent}
}

// cut: the link is dead; sshd's keepalive and its retransmissions are not
// acknowledged.
func cut(silent time.Duration) sessions.TCPState {
	return sessions.TCPState{Known: true, State: 1, LastDataRecv: silent, LastDataSent: 400 * time.Millisecond,
		LastAckRecv: silent, Unacked: 1, Retransmits: 4, Backoff: 4}
}

func session(tcp sessions.TCPState, fwds ...Forward) Session {
	return Session{MonitorPID: 4242, StartTick: 99, Started: t0.Add(-time.Hour), FirstSeen: t0.Add(-time.Hour), TCP: tcp, Forwards: fwds}
}

// restarted is s as a daemon that started just now first sees it.
func restarted(s Session) Session {
	s.FirstSeen = t0
	return s
}

func probed(port int, last time.Duration, ok bool, failures int) Forward {
	f := Forward{Port: port, Probed: true, LastOK: ok, Failures: failures}
	if last >= 0 {
		f.LastProbe = t0.Add(-last)
	}
	if !ok {
		f.LastDetail = "no answer within the timeout"
	}
	return f
}

func TestJudge(t *testing.T) {
	c := Defaults()
	never := time.Duration(-1)
	cases := []struct {
		name      string
		s         Session
		verdict   Verdict
		probe     []int
		next      time.Duration // NextProbe - t0; -1: zero
		reasonHas string
	}{
		{"healthy idle, probed 1 min ago", session(idle(5*s), probed(20001, time.Minute, true, 0)), Healthy, nil, 4 * time.Minute, ""},
		{"healthy idle, probe due", session(idle(5*s), probed(20001, 5*time.Minute, true, 0)), Healthy, []int{20001}, 0, ""},
		{"keepalive just answered", session(idle(100*time.Millisecond), probed(20001, time.Minute, true, 0)), Healthy, nil, 4 * time.Minute, ""},
		{"silent just at the limit", session(frozen(8*s, 2*s), probed(20001, time.Minute, true, 0)), Healthy, nil, 4 * time.Minute, ""},
		{"frozen: silent past two keepalive periods", session(frozen(8*s+time.Millisecond, 2*s), probed(20001, time.Minute, true, 0)), Suspect, []int{20001}, 0, "stopped answering"},
		{"frozen, probed after the suspicion began and failed", session(frozen(12*s, 6*s), probed(20001, 3*s, false, 1)), Dead, nil, -1, "probe of port 20001 failed"},
		{"frozen, the failed probe is older than the suspicion", session(frozen(12*s, 6*s), probed(20001, 5*s, false, 1)), Suspect, []int{20001}, 0, "stopped answering"},
		{"frozen, the probe since the suspicion passed", session(frozen(12*s, 6*s), probed(20001, 3*s, true, 0)), Suspect, nil, 5*time.Minute - 3*s, "stopped answering"},
		{"link cut", session(cut(9*s), probed(20001, time.Minute, true, 0)), Suspect, []int{20001}, 0, "link is dead"},
		{"link cut, probe failed", session(cut(13*s), probed(20001, 3*s, false, 1)), Dead, nil, -1, "link is dead"},
		{"frozen, poked: channel opens sent and acknowledged, never answered", session(sessions.TCPState{Known: true, State: 1, LastDataRecv: 9 * s,
			LastDataSent: 100 * time.Millisecond, LastAckRecv: 60 * time.Millisecond}, probed(20001, time.Minute, true, 0)), Suspect, []int{20001}, 0, "stopped answering"},
		{"a silent upload over a slow link: probed, once per silence", session(sessions.TCPState{Known: true, State: 1, LastDataRecv: 9 * s,
			LastDataSent: 10 * time.Millisecond, LastAckRecv: 5 * time.Millisecond, Unacked: 40}, probed(20001, time.Minute, true, 0)), Suspect, []int{20001}, 0, ""},
		{"upload stalled on a full window (frozen mid-upload)", session(sessions.TCPState{Known: true, State: 1, LastDataRecv: 30 * s,
			LastDataSent: 5 * s, LastAckRecv: 200 * time.Millisecond, Probes: 0}, probed(20001, time.Minute, true, 0)), Suspect, []int{20001}, 0, "stopped answering"},
		{"not established", session(sessions.TCPState{Known: true, State: 8}, probed(20001, time.Minute, true, 0)), Suspect, []int{20001}, 0, "state 8"},
		{"suspect: only the first probed forward is probed", session(frozen(9*s, 3*s), Forward{Port: 20000}, probed(20001, time.Minute, true, 0),
			probed(20002, time.Minute, true, 0)), Suspect, []int{20001}, 0, ""},
		{"suspect, nothing to probe, not long", session(frozen(9*s, 3*s), Forward{Port: 20000}), Suspect, nil, -1, "stopped answering"},
		{"suspect, nothing to probe, long enough", session(frozen(11*s, 5*s), Forward{Port: 20000}), Dead, nil, -1, "nothing to probe"},
		{"healthy TCP, a probe failed: retried soon", session(idle(2*s), probed(20001, 500*time.Millisecond, false, 1)), Healthy, nil, 500 * time.Millisecond, ""},
		{"a failure the caller did not count (young session): retried soon", session(idle(2*s), probed(20001, 500*time.Millisecond, false, 0)), Healthy, nil, 500 * time.Millisecond, ""},
		{"healthy TCP, retry due", session(idle(2*s), probed(20001, 1*s, false, 1)), Healthy, []int{20001}, 0, ""},
		{"healthy TCP, forwarding broken: two failures", session(idle(2*s), probed(20001, 1*s, false, 2)), Dead, nil, -1, "2 failed probes of port 20001"},
		{"no tcp_info: probes every 10 s", session(sessions.TCPState{}, probed(20001, 4*s, true, 0)), Healthy, nil, 6 * s, ""},
		{"no tcp_info: probe due", session(sessions.TCPState{}, probed(20001, 10*s, true, 0)), Healthy, []int{20001}, 0, ""},
		{"no tcp_info: two failures", session(sessions.TCPState{}, probed(20001, 1*s, false, 2)), Dead, nil, -1, "2 failed probes"},
		{"no tcp_info, nothing to probe", session(sessions.TCPState{}, Forward{Port: 20000}), Healthy, nil, -1, ""},
		{"no tcp_info, never probed: at once", restarted(session(sessions.TCPState{}, probed(20001, never, true, 0))), Healthy, []int{20001}, 0, ""},
		{"two forwards: the earlier due is next", session(idle(1*s), probed(20001, 4*time.Minute, true, 0), probed(20002, 2*time.Minute, true, 0)),
			Healthy, nil, time.Minute, ""},
		{"never probed, seen for an hour: overdue", session(idle(1*s), probed(20001, never, true, 0)), Healthy, []int{20001}, 0, ""},
		{"just restarted: on the session's grid, no probe yet", restarted(session(idle(1*s), probed(20001, never, true, 0))), Healthy, nil, -2, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := c.Judge(t0, tc.s)
			if d.Verdict != tc.verdict {
				t.Errorf("verdict %s, want %s (%s)", d.Verdict, tc.verdict, d.Reason)
			}
			if !equalInts(d.Probe, tc.probe) {
				t.Errorf("probe %v, want %v", d.Probe, tc.probe)
			}
			switch {
			case tc.next == -1 && !d.NextProbe.IsZero():
				t.Errorf("next probe %s, want none", d.NextProbe.Sub(t0))
			case tc.next == -2:
				if d.NextProbe.Before(t0) || !d.NextProbe.Before(t0.Add(c.ProbeInterval)) {
					t.Errorf("next probe %s, want within an interval", d.NextProbe.Sub(t0))
				}
			case tc.next >= 0 && !d.NextProbe.Equal(t0.Add(tc.next)):
				t.Errorf("next probe %v, want %s", d.NextProbe.Sub(t0), tc.next)
			}
			if !strings.Contains(d.Reason, tc.reasonHas) {
				t.Errorf("reason %q lacks %q", d.Reason, tc.reasonHas)
			}
		})
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// A forward never probed in this daemon's life is first probed on its own
// grid, anchored at the session's start: a new session within one interval
// of its start, a session found after a daemon restart at the point its
// predecessor's cadence would have probed it, and each forward at its own
// phase, so a fleet that came up at once is not probed at once.
func TestFirstProbeGrid(t *testing.T) {
	c := Defaults()
	fresh := Session{MonitorPID: 100, StartTick: 5, Started: t0, FirstSeen: t0, TCP: idle(s)}
	phases := map[time.Duration]bool{}
	for port := 20000; port < 20020; port++ {
		f := Forward{Port: port, Probed: true}
		due := c.due(fresh, f, c.ProbeInterval, true)
		if due.Before(t0) || !due.Before(t0.Add(c.ProbeInterval)) {
			t.Fatalf("port %d: first probe at %s, want within the first interval", port, due.Sub(t0))
		}
		phases[due.Sub(t0)] = true
		// After a restart an hour and a bit later, the same grid.
		restarted := fresh
		restarted.FirstSeen = t0.Add(time.Hour + 17*time.Second)
		again := c.due(restarted, f, c.ProbeInterval, true)
		if again.Before(restarted.FirstSeen) || !again.Before(restarted.FirstSeen.Add(c.ProbeInterval)) {
			t.Fatalf("port %d after a restart: %s", port, again.Sub(restarted.FirstSeen))
		}
		if (again.Sub(due))%c.ProbeInterval != 0 {
			t.Errorf("port %d: the restarted daemon's grid is off its predecessor's by %s", port, (again.Sub(due))%c.ProbeInterval)
		}
	}
	if len(phases) < 15 {
		t.Errorf("20 forwards got only %d distinct phases", len(phases))
	}
	// No start time known: anchored where first seen.
	noStart := fresh
	noStart.Started = time.Time{}
	if due := c.due(noStart, Forward{Port: 20000, Probed: true}, c.ProbeInterval, true); due.Before(t0) || !due.Before(t0.Add(c.ProbeInterval)) {
		t.Errorf("no start time: first probe at %s", due.Sub(t0))
	}
}

func TestSupersede(t *testing.T) {
	c := Defaults()
	cases := []struct {
		name    string
		s       Session
		verdict Verdict
		probe   []int
	}{
		{"TCP says frozen: dead at once", session(frozen(9*s, 3*s), probed(20001, time.Minute, true, 0)), Dead, nil},
		{"TCP says cut: dead at once", session(cut(9*s), probed(20001, time.Minute, true, 0)), Dead, nil},
		{"TCP healthy: probe the first probed forward now", session(idle(s), Forward{Port: 20002}, probed(20001, time.Minute, true, 0), probed(20003, 0, true, 0)), Suspect, []int{20001}},
		{"no tcp_info: probe now", session(sessions.TCPState{}, probed(20001, time.Minute, true, 0)), Suspect, []int{20001}},
		{"TCP healthy, nothing to probe: left alone", session(idle(s), Forward{Port: 20002}), Healthy, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d := c.Supersede(t0, tc.s)
			if d.Verdict != tc.verdict || !equalInts(d.Probe, tc.probe) {
				t.Errorf("%s %v (%s), want %s %v", d.Verdict, d.Probe, d.Reason, tc.verdict, tc.probe)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	if err := Defaults().Validate(); err != nil {
		t.Fatal(err)
	}
	for name, mod := range map[string]func(*Config){
		"keepalive off":          func(c *Config) { c.KeepaliveInterval = 0 },
		"no grace":               func(c *Config) { c.ReplyGrace = 0 },
		"interval below retry":   func(c *Config) { c.ProbeInterval = c.ProbeRetry / 2 },
		"fallback below retry":   func(c *Config) { c.FallbackInterval = c.ProbeRetry / 2 },
		"no failures":            func(c *Config) { c.ProbeFailures = 0 },
		"no sampling":            func(c *Config) { c.SampleEvery = 0 },
		"no confirmation period": func(c *Config) { c.ConfirmAfter = 0 },
	} {
		c := Defaults()
		mod(&c)
		if c.Validate() == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}
