package liveness

import (
	"testing"
	"time"

	"github.com/mas4h/mas4h/sshd/sessions"
)

// model is one session as the slave's kernel would see it, in simulated
// time: sshd sends a keepalive after two intervals without a word from the
// client (OpenSSH 9.2), a live client answers within rtt, a frozen one
// never does (its kernel still acknowledges), a cut link acknowledges
// nothing. A probe through a live client comes back within rtt (ok, or
// refused at once when the device's target is gone); through a frozen
// client or a cut link it times out.
type model struct {
	c            Config
	now          time.Time
	rtt          time.Duration
	probeTimeout time.Duration

	frozen, cut, broken bool

	lastRecv, lastSent, lastAck time.Time
	unacked                     bool

	fwd        Forward
	inFlight   bool
	probeStart time.Time
	probeEnd   time.Time
	probeOK    bool
	probes     []time.Time // probes that reached the device's sshd: a log line each
}

func newModel(c Config, start time.Time) *model {
	return &model{c: c, now: start, rtt: 30 * time.Millisecond, probeTimeout: 3 * time.Second,
		lastRecv: start, lastSent: start, lastAck: start, fwd: Forward{Port: 20001, Probed: true}}
}

// sshdSends records something sshd sent at t, and the client's answer if
// one comes.
func (m *model) sshdSends(t time.Time) (answered bool) {
	m.lastSent = t
	if m.cut {
		m.unacked = true
		return false
	}
	m.lastAck = t.Add(m.rtt / 2)
	if m.frozen {
		return false
	}
	m.lastRecv = t.Add(m.rtt)
	return true
}

func (m *model) step(d time.Duration) {
	end := m.now.Add(d)
	for m.now.Before(end) {
		m.now = m.now.Add(10 * time.Millisecond)
		last := m.lastRecv
		if m.lastSent.After(last) {
			last = m.lastSent
		}
		if m.now.Sub(last) >= 2*m.c.KeepaliveInterval {
			m.sshdSends(m.now)
		}
		if m.inFlight && !m.now.Before(m.probeEnd) {
			m.inFlight = false
			m.fwd.LastProbe, m.fwd.LastOK = m.probeStart, m.probeOK
			if m.probeOK {
				m.fwd.Failures, m.fwd.LastDetail = 0, ""
			} else {
				m.fwd.Failures++
				m.fwd.LastDetail = "failed"
			}
		}
	}
}

func (m *model) startProbe() {
	if m.inFlight {
		return
	}
	m.inFlight, m.probeStart = true, m.now
	if m.sshdSends(m.now) { // the channel open reaches a live client
		m.probeEnd, m.probeOK = m.now.Add(m.rtt), !m.broken
		if !m.broken {
			m.probes = append(m.probes, m.now)
		}
		return
	}
	m.probeEnd, m.probeOK = m.now.Add(m.probeTimeout), false
}

func (m *model) tcp() sessions.TCPState {
	t := sessions.TCPState{Known: true, State: 1, LastDataRecv: m.now.Sub(m.lastRecv), LastDataSent: m.now.Sub(m.lastSent), LastAckRecv: m.now.Sub(m.lastAck)}
	if m.unacked {
		t.Unacked, t.Retransmits = 1, 3
		t.LastDataSent = 200 * time.Millisecond // retransmissions count as sends
	}
	return t
}

// run samples every SampleEvery (and at each probe's end) until the policy
// says dead or limit passes; it returns when it said dead.
func (m *model) run(s Session, limit time.Duration) (time.Time, string) {
	deadline := m.now.Add(limit)
	nextSample := m.now
	for m.now.Before(deadline) {
		wasInFlight := m.inFlight
		m.step(10 * time.Millisecond)
		if m.now.Before(nextSample) && !(wasInFlight && !m.inFlight) {
			continue
		}
		if !m.now.Before(nextSample) {
			nextSample = nextSample.Add(m.c.SampleEvery)
		}
		s.TCP, s.Forwards = m.tcp(), []Forward{m.fwd}
		d := m.c.Judge(m.now, s)
		if d.Verdict == Dead {
			return m.now, d.Reason
		}
		if len(d.Probe) > 0 {
			m.startProbe()
		}
	}
	return time.Time{}, ""
}

// Detection budgets at the default settings, whatever the moment the
// client stops within its keepalive cycle: a frozen client and a cut link
// are dead within 13 s (the port is then freed by ending the session),
// broken forwarding within 5 minutes and a retry; a healthy idle device is
// probed once in 5 minutes, never more.
func TestSimulatedDetection(t *testing.T) {
	c := Defaults()
	start := t0
	sess := Session{MonitorPID: 7, StartTick: 1, Started: start, FirstSeen: start}
	for _, kind := range []string{"frozen", "cut"} {
		worst := time.Duration(0)
		for offset := time.Duration(0); offset < 2*c.KeepaliveInterval+time.Second; offset += 250 * time.Millisecond {
			m := newModel(c, start)
			m.step(time.Minute + offset)
			if kind == "frozen" {
				m.frozen = true
			} else {
				m.cut = true
			}
			stopped := m.now
			at, why := m.run(sess, 2*time.Minute)
			if at.IsZero() {
				t.Fatalf("%s at +%s: never found", kind, offset)
			}
			worst = max(worst, at.Sub(stopped))
			if offset == 0 {
				t.Logf("%s: %s", kind, why)
			}
		}
		t.Logf("%s client: dead at worst %s after it stopped", kind, worst)
		if worst > 13*time.Second {
			t.Errorf("%s client: dead %s after it stopped, budget 13 s (15 s to the port free)", kind, worst)
		}
	}

	// Broken right after a probe passed (the worst moment), and at others.
	worst := time.Duration(0)
	for _, offset := range []time.Duration{0, 17 * time.Second, time.Minute, 3 * time.Minute, 299 * time.Second} {
		m := newModel(c, start)
		m.run(sess, 10*time.Minute) // probes on its grid until then
		for n := len(m.probes); len(m.probes) == n; {
			m.run(sess, c.SampleEvery)
		}
		m.step(offset)
		m.broken = true
		broke := m.now
		at, _ := m.run(sess, 20*time.Minute)
		if at.IsZero() {
			t.Fatalf("broken forwarding at +%s: never found", offset)
		}
		worst = max(worst, at.Sub(broke))
	}
	t.Logf("broken forwarding: dead at worst %s after it broke", worst)
	if worst > c.ProbeInterval+c.ProbeRetry+time.Second {
		t.Errorf("broken forwarding found %s after, budget %s and a retry", worst, c.ProbeInterval)
	}

	m := newModel(c, start)
	if at, why := m.run(sess, 3*time.Hour); !at.IsZero() {
		t.Fatalf("a healthy idle device was judged dead at %s: %s", at.Sub(start), why)
	}
	perHour := float64(len(m.probes)) / 3
	for i := 1; i < len(m.probes); i++ {
		if gap := m.probes[i].Sub(m.probes[i-1]); gap < c.ProbeInterval {
			t.Errorf("probes %s apart at %s", gap, m.probes[i].Sub(start))
		}
	}
	t.Logf("healthy idle device: %.1f probes (device log lines) an hour", perHour)
	if perHour > 12 {
		t.Errorf("%.1f probes an hour, want at most 12", perHour)
	}
}
