// Package operators follows the operator sessions of a slave's sshd: which
// operator each is (by the key sshd's log says it authenticated with),
// which device ports it has open (its connections to the slave's
// loopback), the operator-connect and operator-disconnect events of each
// access, the live sessions for the heartbeat, and the end of every
// session of an operator who lost the right to it.
package operators

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/sshd/authlog"
	"github.com/mas4h/mas4h/sshd/sessions"
	"github.com/mas4h/mas4h/sshd/source"
)

// Deps are what the tracker works with.
type Deps struct {
	// Sessions lists the sshd's sessions; Opens the loopback ports the
	// given processes are connected to (sessions.Table).
	Sessions func() ([]sessions.Session, error)
	Opens    func(pids []int) (map[int][]int, error)
	// Keys knows the key and user of each session by its remote end
	// (authlog.Index).
	Keys func(remote netip.AddrPort) (authlog.Accepted, bool)
	// Logins lists the remote ends of the live connections that
	// authenticated as user (authlog.Index.Users), and Alive tells
	// whether a session's monitor (pid and start) still runs
	// (sessions.StartTick); with both, the table is walked only when a
	// login is not a session followed yet, or a followed one is new, or
	// every fullWalk, and otherwise the followed sessions alone are read.
	// A session the log does not name is not one the tracker could tell
	// is an operator's. Either nil: the table is walked every time.
	Logins func(user string) []netip.AddrPort
	Alive  func(pid int, startTick uint64) bool
	// Grant is what an operator key may open now (source.Source.Operator,
	// with no key: a live session's).
	Grant func(ctx context.Context, fp string) (source.Grant, bool, error)
	// Report records an operator event (source.Source.ReportOperator).
	Report func(ctx context.Context, kind, operator, device, detail string)
	// End ends a session (reaper.Terminator.Kill).
	End func(ctx context.Context, s sessions.Session)
	Now func() time.Time // nil: time.Now
	Log *slog.Logger
}

// Tracker follows the operator sessions of one sshd.
type Tracker struct {
	user string
	d    Deps

	mu       sync.Mutex
	live     map[int]*session // by monitor pid
	walked   time.Time        // the last walk of the whole table
	walks    int              // how many, for tests
	lightRun int              // cycles that read the followed sessions only
}

// fullWalk bounds how long the tracker goes on reading only the sessions
// it follows (the reaper's walk is as frequent); newSession is how long a
// session just found is walked for anyway (its processes may still be
// forking: the child that holds the channels starts right after the
// login line).
const (
	fullWalk   = 10 * time.Second
	newSession = 3 * time.Second
)

type session struct {
	sess        sessions.Session
	operator    string
	fingerprint string
	access      map[int]*access // by port
	// granted holds every port the operator's grant has had while the
	// session was followed: what its permitopen line, fixed at login,
	// may still let it open.
	granted map[int]bool
	ending  bool
	found   time.Time // when a walk first found it
}

type access struct {
	open  wire.OpenPort
	since time.Time
}

// New follows the sessions of operators, who log in as user.
func New(user string, d Deps) *Tracker {
	if d.Now == nil {
		d.Now = time.Now
	}
	d.Log = d.Log.With("component", "operators")
	return &Tracker{user: user, d: d, live: map[int]*session{}}
}

// Cycle walks the sessions once: new operator sessions are named, their
// device ports read, an access that appeared is an operator-connect
// event, a session gone ends its accesses (operator-disconnect, with the
// duration), and a session whose operator is revoked, removed, or has a
// port open that it may no longer open is ended.
func (t *Tracker) Cycle(ctx context.Context) error {
	list, err := t.sessions()
	if err != nil {
		return fmt.Errorf("listing sessions: %w", err)
	}
	type found struct {
		sess sessions.Session
		a    authlog.Accepted
	}
	var mine []found
	var pids []int
	for _, s := range list {
		ap, err := netip.ParseAddrPort(s.Remote)
		if err != nil {
			continue
		}
		a, ok := t.d.Keys(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()))
		if !ok || a.User != t.user {
			continue
		}
		mine = append(mine, found{s, a})
		pids = append(pids, s.PIDs...)
	}
	opens, err := t.d.Opens(pids)
	if err != nil {
		return fmt.Errorf("reading operator connections: %w", err)
	}
	now := t.d.Now().UTC()
	seen := map[int]bool{}
	var doomed []*session
	for _, f := range mine {
		seen[f.sess.MonitorPID] = true
		g, ok, err := t.d.Grant(ctx, f.a.Fingerprint)
		if err != nil {
			t.d.Log.Warn("cannot tell whose key an operator session has; leaving it", "monitor_pid", f.sess.MonitorPID, "err", err)
			continue
		}
		t.mu.Lock()
		s := t.live[f.sess.MonitorPID]
		if s == nil {
			s = &session{sess: f.sess, fingerprint: f.a.Fingerprint, access: map[int]*access{}, granted: map[int]bool{}, found: now}
			t.live[f.sess.MonitorPID] = s
		}
		s.sess = f.sess
		if ok {
			s.operator = g.Operator
			for _, o := range g.Open {
				s.granted[o.Port] = true
			}
		}
		var ports []int
		for _, pid := range f.sess.PIDs {
			ports = append(ports, opens[pid]...)
		}
		why := ""
		if !ok {
			why = "operator key no longer accepted"
		}
		for _, p := range ports {
			if _, had := s.access[p]; had {
				continue
			}
			op, allowed := g.Port(p)
			if !allowed {
				if ok {
					why = fmt.Sprintf("operator %s may no longer open port %d", g.Operator, p)
				}
				continue
			}
			s.access[p] = &access{open: op, since: now}
			t.d.Log.Info("operator access", "operator", g.Operator, "device", op.Device, "forward", op.Forward, "port", p, "remote", f.sess.Remote)
			t.d.Report(ctx, wire.EventOperatorConnect, g.Operator, op.Device,
				fmt.Sprintf("%s (port %d) from %s since %s", op.Forward, p, f.sess.Remote, now.Format(time.RFC3339)))
		}
		for _, a := range s.access {
			if ok {
				if _, still := g.Port(a.open.Port); !still {
					why = fmt.Sprintf("operator %s may no longer reach device %s", g.Operator, a.open.Device)
				}
			}
		}
		if why != "" && !s.ending {
			s.ending = true
			t.d.Log.Info("ending operator session", "operator", s.operator, "monitor_pid", f.sess.MonitorPID, "reason", why)
			doomed = append(doomed, s)
		}
		t.mu.Unlock()
	}
	t.mu.Lock()
	for pid, s := range t.live {
		if !seen[pid] {
			t.closeLocked(ctx, s, now)
			delete(t.live, pid)
		}
	}
	t.mu.Unlock()
	for _, s := range doomed {
		t.d.End(ctx, s.sess)
	}
	return nil
}

// sessions lists the sessions a cycle looks at: every session of the
// sshd (a walk of the table), or, when every operator login is a session
// already followed and none of those is new, the followed sessions whose
// monitor still runs (the end of the others is seen at once).
func (t *Tracker) sessions() ([]sessions.Session, error) {
	now := t.d.Now()
	var logins []netip.AddrPort
	if t.d.Logins != nil {
		logins = t.d.Logins(t.user)
	}
	t.mu.Lock()
	light := t.d.Logins != nil && t.d.Alive != nil && now.Sub(t.walked) < fullWalk
	known := make(map[netip.AddrPort]bool, len(t.live))
	followed := make([]sessions.Session, 0, len(t.live))
	for _, s := range t.live {
		if now.Sub(s.found) < newSession {
			light = false
		}
		if ap, err := netip.ParseAddrPort(s.sess.Remote); err == nil {
			known[netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())] = true
		}
		followed = append(followed, s.sess)
	}
	for _, r := range logins {
		light = light && known[r]
	}
	if t.d.Logins != nil && len(logins) == 0 && len(t.live) == 0 {
		t.mu.Unlock()
		return nil, nil // no operator logged in: nothing to walk
	}
	if light {
		t.lightRun++
	} else {
		t.walked, t.walks = now, t.walks+1
	}
	t.mu.Unlock()
	if !light {
		return t.d.Sessions()
	}
	out := followed[:0]
	for _, s := range followed {
		if t.d.Alive(s.MonitorPID, s.StartTick) {
			out = append(out, s)
		}
	}
	return out, nil
}

// closeLocked reports the end of each access of s.
func (t *Tracker) closeLocked(ctx context.Context, s *session, now time.Time) {
	ports := make([]int, 0, len(s.access))
	for p := range s.access {
		ports = append(ports, p)
	}
	sort.Ints(ports)
	for _, p := range ports {
		a := s.access[p]
		d := now.Sub(a.since).Round(time.Second)
		t.d.Log.Info("operator access ended", "operator", s.operator, "device", a.open.Device, "port", p, "duration", d)
		t.d.Report(ctx, wire.EventOperatorDisconnect, s.operator, a.open.Device,
			fmt.Sprintf("%s (port %d) from %s since %s for %s", a.open.Forward, p, s.sess.Remote, a.since.Format(time.RFC3339), d))
	}
}

// Live lists the live operator sessions and what each has open, for the
// heartbeat.
func (t *Tracker) Live() []wire.OperatorSession {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]wire.OperatorSession, 0, len(t.live))
	for _, s := range t.live {
		if s.operator == "" {
			continue
		}
		os := wire.OperatorSession{Operator: s.operator, Fingerprint: s.fingerprint, Remote: s.sess.Remote, Since: s.sess.Started}
		for _, a := range s.access {
			os.Open = append(os.Open, wire.OperatorAccess{Device: a.open.Device, Forward: a.open.Forward, Port: a.open.Port, Since: a.since})
		}
		slices.SortFunc(os.Open, func(a, b wire.OperatorAccess) int { return a.Port - b.Port })
		out = append(out, os)
	}
	slices.SortFunc(out, func(a, b wire.OperatorSession) int { return a.Since.Compare(b.Since) })
	return out
}

// EndPorts ends every live operator session that may open one of ports
// (its grant had it): a device was revoked or removed, and its port,
// freed, may be leased to another device that the session's permitopen
// line, fixed at login, would still reach.
func (t *Tracker) EndPorts(ctx context.Context, ports []int, reason string) {
	var doomed []*session
	t.mu.Lock()
	for _, s := range t.live {
		if s.ending {
			continue
		}
		for _, p := range ports {
			if s.granted[p] {
				s.ending = true
				doomed = append(doomed, s)
				break
			}
		}
	}
	t.mu.Unlock()
	for _, s := range doomed {
		t.d.Log.Info("ending operator session", "operator", s.operator, "monitor_pid", s.sess.MonitorPID, "reason", reason)
		t.d.End(ctx, s.sess)
	}
}

// EndOperator ends every live session of operator (by name) or of key
// fingerprint: the operator was revoked or removed. The sessions a
// walk has not seen yet are ended by the next walk, whose Grant then
// refuses the key.
func (t *Tracker) EndOperator(ctx context.Context, operator, fingerprint, reason string) {
	var doomed []sessions.Session
	t.mu.Lock()
	for _, s := range t.live {
		if (operator != "" && s.operator == operator) || (fingerprint != "" && s.fingerprint == fingerprint) {
			if !s.ending {
				s.ending = true
				doomed = append(doomed, s.sess)
			}
		}
	}
	t.mu.Unlock()
	for _, s := range doomed {
		t.d.Log.Info("ending operator session", "operator", operator, "monitor_pid", s.MonitorPID, "reason", reason)
		t.d.End(ctx, s)
	}
	if err := t.Cycle(ctx); err != nil {
		t.d.Log.Error("walking operator sessions", "err", err)
	}
}
