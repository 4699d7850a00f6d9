package sshd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/netfilter"
	"github.com/mas4h/mas4h/process"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authkeys"
	"github.com/mas4h/mas4h/sshd/authlog"
	"github.com/mas4h/mas4h/sshd/hookserver"
	"github.com/mas4h/mas4h/sshd/keysfile"
	"github.com/mas4h/mas4h/sshd/operators"
	"github.com/mas4h/mas4h/sshd/reaper"
	"github.com/mas4h/mas4h/sshd/sessions"
	"github.com/mas4h/mas4h/sshd/source"
	"github.com/mas4h/mas4h/sshd/sshdconfig"
	"github.com/mas4h/mas4h/sshd/statedir"
	"github.com/mas4h/mas4h/sshd/supervisor"
	"github.com/mas4h/mas4h/sshd/vipkeeper"
)

// SlaveConfig is the slave's configuration, filled and validated in cmd/.
type SlaveConfig struct {
	Name       string
	StateDir   string // absolute
	SSHListen  string // host:port
	TunnelUser string
	// OperatorUser is the account operators log in as: a second name for
	// the tunnel user's uid (EnsureOperatorUser).
	OperatorUser string
	SSHDPath     string // absolute path of the OpenSSH sshd binary
	ProcRoot     string // "/proc" outside tests
	Executable   string // the mas4h binary installed as the hook; "" = this process's
	PublicHost   string // what the master tells devices to dial ("" = derive)
	Capacity     int    // tunnels this slave is sized for (dispatch weight)

	ProbeInterval time.Duration // how often a forward is probed end to end while its session's TCP state looks healthy
	ProbeFailures int           // consecutive failures before a session is reaped
	ProbeTimeout  time.Duration // one probe's budget
	NewestWins    string        // reaper.NewestWinsStale, NewestWinsAlways or NewestWinsOff
	// MaxSessionsPerDevice caps the sessions one device's key may hold at
	// once (0: no cap).
	MaxSessionsPerDevice int
	Keepalive            time.Duration // sshd's ClientAliveInterval, whole seconds; 0: sshdconfig's default
	KeysFile             bool          // keep STATE/authorized_keys for sshd to read before the hook
	MetricsListen        string        // host:port serving GET /metrics; "" = none
	DebugPprof           bool          // also serve net/http/pprof under /debug/pprof/ on MetricsListen

	// VIP, when set, is this slave's share of a shared virtual IP: the
	// slave keeps its rules applied and takes over dead peers' buckets.
	VIP *netfilter.Config
	// GuardPorts, when set, is the port range the loopback guard keeps
	// to the tunnel user's uid and root (netfilter.Guard); nil: no guard.
	GuardPorts *registry.PortRange
	// GuardRequired: a guard that cannot be applied stops the start (the
	// range was asked for); otherwise it is logged as an error and the
	// slave serves unguarded (the default range, on a host or under a unit
	// without CAP_NET_ADMIN).
	GuardRequired bool
}

// Slave is a slave daemon: the composition of its parts.
type Slave struct {
	cfg  SlaveConfig
	dir  statedir.Dir
	src  source.Source
	run  process.Runner
	log  *slog.Logger
	port int
}

// NewSlave checks what can be checked without touching the system.
func NewSlave(cfg SlaveConfig, src source.Source, log *slog.Logger) (*Slave, error) {
	if !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("state dir %q must be an absolute path", cfg.StateDir)
	}
	host, portStr, err := net.SplitHostPort(cfg.SSHListen)
	if err != nil {
		return nil, fmt.Errorf("ssh listen address %q: want HOST:PORT: %w", cfg.SSHListen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 1 || port > 65535 {
		return nil, fmt.Errorf("ssh listen address %q: port must be 1-65535", cfg.SSHListen)
	}
	if net.ParseIP(host) == nil {
		return nil, fmt.Errorf("ssh listen address %q: host must be an IP address (0.0.0.0 for all)", cfg.SSHListen)
	}
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	if cfg.Keepalive == 0 {
		cfg.Keepalive = sshdconfig.DefaultClientAliveInterval * time.Second
	}
	if cfg.Keepalive < time.Second || cfg.Keepalive%time.Second != 0 {
		return nil, fmt.Errorf("keepalive %s: must be whole seconds, at least 1s", cfg.Keepalive)
	}
	switch cfg.NewestWins {
	case "":
		cfg.NewestWins = reaper.NewestWinsStale
	case reaper.NewestWinsStale, reaper.NewestWinsAlways, reaper.NewestWinsOff:
	default:
		return nil, fmt.Errorf("newest-wins must be %s, %s or %s, not %q", reaper.NewestWinsStale, reaper.NewestWinsAlways, reaper.NewestWinsOff, cfg.NewestWins)
	}
	return &Slave{cfg: cfg, dir: statedir.Dir(cfg.StateDir), src: src, run: process.Exec{}, log: log.With("component", "slave", "slave", cfg.Name), port: port}, nil
}

// parts are the pieces of a running slave, made by prepare.
type parts struct {
	s        *Slave
	user     TunnelUser
	hostKeys []HostKey
	cache    *authkeys.Cache
	metrics  *metrics.Slave
	registry *prometheus.Registry
	table    *sessions.Table
	sup      *supervisor.Supervisor
	reaper   *reaper.Reaper
	keys     *keysfile.File // nil without the keys file
	auths    *authlog.Index // which key each live connection authenticated with
	follow   *authlog.Follower
	vip      *vipkeeper.Keeper
	guard    *netfilter.System // nil without the loopback guard
	ops      *operators.Tracker
	hook     *hookserver.Server
	denials  *hookserver.Denials

	closers []func()
}

// Run prepares the state dir, lock, user, host key, hook, cache and config,
// adopts or starts sshd, then serves until ctx ends. sshd keeps running
// after Run returns, so a daemon restart drops no tunnel.
func (s *Slave) Run(ctx context.Context) error {
	p := &parts{s: s}
	defer p.close()
	if err := p.prepare(ctx); err != nil {
		return err
	}
	p.serve(ctx)
	return nil
}

func (p *parts) close() {
	for i := len(p.closers) - 1; i >= 0; i-- {
		p.closers[i]()
	}
}

// prepare does everything that can fail before the slave serves.
func (p *parts) prepare(ctx context.Context) error {
	s := p.s
	if os.Geteuid() != 0 {
		return errors.New("mas4h slave must run as root: it creates the tunnel user and starts sshd as that user (run it with sudo or from its systemd unit)")
	}
	if fi, err := os.Stat(s.cfg.SSHDPath); err != nil || fi.IsDir() {
		return fmt.Errorf("sshd not found at %s: install OpenSSH's server (apt-get install openssh-server) or pass its path", s.cfg.SSHDPath)
	}
	if err := s.prepareStateDir(); err != nil {
		return err
	}
	unlock, err := lockStateDir(s.dir.Lock())
	if err != nil {
		return err
	}
	p.closers = append(p.closers, unlock)
	if p.user, err = EnsureTunnelUser(ctx, s.run, "/", s.cfg.TunnelUser); err != nil {
		return err
	}
	if p.user.Created {
		s.log.Info("created tunnel user", "user", p.user.Name, "uid", p.user.UID)
	}
	if err := EnsureOperatorUser(ctx, s.run, "/", s.cfg.OperatorUser, p.user); err != nil {
		return err
	}
	if err := s.prepareSharedDirs(p.user); err != nil {
		return err
	}
	hk, err := ensureHostKey(s.dir.HostKey(), p.user.GID)
	if err != nil {
		return err
	}
	p.hostKeys = []HostKey{hk}
	s.log.Info("host key", "type", "ed25519", "fingerprint", hk.Fingerprint)
	hookCmd, err := s.installHook()
	if err != nil {
		return err
	}
	if err := p.openCache(ctx); err != nil {
		return err
	}
	p.build()
	if p.keys == nil {
		if err := keysfile.Remove(s.dir.KeysFile()); err != nil {
			return err
		}
	} else if err := p.keys.Write(ctx, true); err != nil {
		return fmt.Errorf("keys file: %w", err)
	}
	if p.hook, err = hookserver.Listen(s.dir.Socket(), p.user.GID, s.cfg.Name,
		hookserver.Deciders{Authorize: p.authorizer().Authorize, Tunnels: p.tunnels}, s.log); err != nil {
		return err
	}
	p.closers = append(p.closers, func() { p.hook.Close() })
	changed, err := s.writeConfig(ctx, p.user, hk, hookCmd)
	if err != nil {
		return err
	}
	// The guard is up before sshd (re)starts binding forwards.
	if err := p.startGuard(ctx); err != nil {
		return err
	}
	if err := p.startSSHD(ctx, changed); err != nil {
		return err
	}
	if s.cfg.VIP != nil {
		sys, err := netfilter.NewSystem(s.log)
		if err != nil {
			return err
		}
		p.vip = vipkeeper.New(*s.cfg.VIP, vipkeeper.System(sys), s.src.Report, s.log)
		if err := p.vip.Apply(ctx); err != nil {
			return err
		}
	}
	return s.serveMetrics(ctx, p.registry)
}

// build makes the long-running parts, each given what it works with.
func (p *parts) build() {
	s := p.s
	p.registry = metrics.NewRegistry()
	g := metrics.SlaveGauges{Tunnels: func() int { return p.reaper.Count() }}
	if s.cfg.KeysFile {
		g.KeysFileEntries = func() int { return p.keys.Count() }
	}
	if _, ok := s.src.LastContact(); ok {
		g.LastHeartbeat = func() time.Time { at, _ := s.src.LastContact(); return at }
	}
	m, err := metrics.NewSlave(p.registry, g)
	if err != nil {
		// A fresh registry cannot hold a clashing collector: a defect.
		panic(fmt.Sprintf("registering the slave's metrics: %v", err))
	}
	p.metrics = m
	p.denials = hookserver.NewDenials(s.src.Report, nil)
	p.closers = append(p.closers, p.denials.Close)
	p.sup = supervisor.New(supervisor.Config{
		SSHD: s.cfg.SSHDPath, ConfigPath: s.dir.SSHDConfig(), LogPath: s.dir.Log(), PidPath: s.dir.PidFile(),
		ListenAddr: s.cfg.SSHListen, ProcRoot: s.cfg.ProcRoot, UID: p.user.UID, GID: p.user.GID, LowPort: s.port < 1024,
	}, s.run, m, s.log)
	p.table = sessions.NewTable(sessions.Discoverer{ProcRoot: s.cfg.ProcRoot, TunnelUID: p.user.UID,
		LogPath: s.dir.Log(), SSHPort: s.port}, p.sup.PID)
	p.auths = authlog.NewIndex(nil)
	p.follow = &authlog.Follower{Path: s.dir.Log(), Log: s.log.With("component", "auth-log")}
	if s.cfg.KeysFile {
		p.keys = keysfile.New(keysfile.Config{Slave: s.cfg.Name, Path: s.dir.KeysFile(), GID: p.user.GID, LogPath: s.dir.Log()},
			keysfile.Deps{Cache: p.cache, Held: p.table.ListeningPorts, Busy: p.auths.Fingerprints, Log: s.log})
	}
	var ended func()
	if p.keys != nil {
		ended = p.keys.Poke // its ports are free: its device may go back in the keys file
	}
	ask := func(ctx context.Context, fp string) (registry.Device, bool, error) { return s.src.Lookup(ctx, fp, nil) }
	p.reaper = reaper.New(reaper.Config{
		Slave: s.cfg.Name, Interval: s.cfg.ProbeInterval, Failures: s.cfg.ProbeFailures,
		Timeout: s.cfg.ProbeTimeout, NewestWins: s.cfg.NewestWins,
		Keepalive:    s.cfg.Keepalive, // what writeConfig renders
		MaxSessions:  s.cfg.MaxSessionsPerDevice,
		OperatorUser: s.cfg.OperatorUser,
	}, reaper.Deps{
		Sessions: p.table, TCP: p.table, Leases: &reaper.CacheLeases{Cache: p.cache, Ask: ask}, Keys: p.auths,
		Killer: reaper.Terminator{ProcRoot: s.cfg.ProcRoot}, Events: s.src, Prober: reaper.LoopbackProber{},
		PortHeld: reaper.PortHeld, Clock: reaper.SystemClock{}, Metrics: m, Ended: ended, Log: s.log,
	})
	killer := reaper.Terminator{ProcRoot: s.cfg.ProcRoot}
	p.ops = operators.New(s.cfg.OperatorUser, operators.Deps{
		Sessions: p.table.Sessions, Opens: p.table.Opens, Keys: p.auths.Lookup, Logins: p.auths.Users,
		Alive: func(pid int, tick uint64) bool {
			t, ok := sessions.StartTick(s.cfg.ProcRoot, pid)
			return ok && t == tick
		},
		Grant:  func(ctx context.Context, fp string) (source.Grant, bool, error) { return s.src.Operator(ctx, fp, nil) },
		Report: s.src.ReportOperator,
		End:    func(ctx context.Context, sess sessions.Session) { killer.Kill(ctx, sess) },
		Log:    s.log,
	})
}

// guardCheck is how often the loopback guard is read back and repaired
// (a firewall reload that flushed OUTPUT drops its jump).
const guardCheck = 30 * time.Second

// startGuard applies the loopback guard: only the tunnel user's uid
// (sshd's listeners and operators' channels) and root (the probes) may
// open connections to the guarded ports on lo.
func (p *parts) startGuard(ctx context.Context) error {
	r := p.s.cfg.GuardPorts
	if r == nil {
		return nil
	}
	sys, err := netfilter.NewSystem(p.s.log.With("component", "loopback-guard"))
	if err == nil {
		_, err = netfilter.ApplyGuard(ctx, sys, p.guardSpec())
	}
	if err != nil {
		if p.s.cfg.GuardRequired {
			return fmt.Errorf("loopback guard of ports %s (--guard-ports; none turns it off): %w", r, err)
		}
		p.s.log.Error("loopback guard not applied: every local user can connect to the leased ports on loopback "+
			"(the slave needs CAP_NET_ADMIN and CAP_NET_RAW, and iptables; --guard-ports none says the host's firewall sees to it)",
			"ports", r.String(), "err", err)
		return nil
	}
	p.guard = sys
	p.s.log.Info("loopback guard applied", "chain", netfilter.GuardChain(p.s.cfg.Name), "ports", r.String(), "uid", p.user.UID)
	return nil
}

func (p *parts) guardSpec() netfilter.Guard {
	r := p.s.cfg.GuardPorts
	return netfilter.Guard{Slave: p.s.cfg.Name, UID: p.user.UID, Lo: r.Lo, Hi: r.Hi}
}

// keepGuard reapplies the guard until ctx ends.
func (p *parts) keepGuard(ctx context.Context) {
	t := time.NewTicker(guardCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		plan, err := netfilter.ApplyGuard(ctx, p.guard, p.guardSpec())
		switch {
		case err != nil && ctx.Err() == nil:
			p.s.log.Error("reapplying the loopback guard", "err", err)
		case err == nil && len(plan.Steps) > 0:
			p.s.log.Warn("loopback guard was changed from outside; repaired", "steps", len(plan.Steps))
		}
	}
}

// stopGuard removes the guard at a clean stop; ctx has ended by then.
func (p *parts) stopGuard() {
	if p.guard == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := netfilter.RemoveGuard(ctx, p.guard, p.s.cfg.Name); err != nil {
		p.s.log.Error("removing the loopback guard", "err", err)
		return
	}
	p.s.log.Info("loopback guard removed", "chain", netfilter.GuardChain(p.s.cfg.Name))
}

// operatorWalk is how often operator sessions are walked: an access shows
// in the events within it, a revoked operator's session ends within it.
const operatorWalk = time.Second

// followOperators walks the operator sessions until ctx ends.
func (p *parts) followOperators(ctx context.Context) {
	t := time.NewTicker(operatorWalk)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := p.ops.Cycle(ctx); err != nil && ctx.Err() == nil {
			p.s.log.Error("walking operator sessions", "err", err)
		}
	}
}

func (p *parts) authorizer() *hookserver.Authorizer {
	return &hookserver.Authorizer{
		TunnelUser: p.user.Name, Lookup: p.s.src.Lookup, Sessions: p.sessionsOf, MaxSessions: p.s.cfg.MaxSessionsPerDevice,
		OperatorUser: p.s.cfg.OperatorUser, Operator: p.operatorPorts,
		Denials: p.denials, Metrics: p.metrics, Log: p.s.log,
	}
}

// openCache opens the hook's read-only fallback, readable by the tunnel
// group, and has the source fill it.
func (p *parts) openCache(ctx context.Context) error {
	path := p.s.dir.Cache()
	c, err := authkeys.OpenCache(path)
	if err != nil {
		return err
	}
	p.closers = append(p.closers, func() { c.Close() })
	p.cache = c
	if err := os.Chown(path, 0, p.user.GID); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		return fmt.Errorf("cache: %w", err)
	}
	if err := c.SetTunnelUser(ctx, p.user.Name); err != nil {
		return err
	}
	return p.s.src.Start(ctx, c)
}

// startSSHD adopts the running sshd of this state dir (reloading it when
// its config changed) or starts one.
func (p *parts) startSSHD(ctx context.Context, configChanged bool) error {
	log := p.s.log
	switch {
	case p.sup.Adopt() && configChanged:
		if err := p.sup.Reload(); err != nil {
			return err
		}
		log.Info("adopted running sshd and reloaded its new config", "pid", p.sup.PID())
	case p.sup.PID() != 0:
		log.Info("adopted running sshd", "pid", p.sup.PID())
	default:
		if err := p.sup.Start(ctx); err != nil {
			return err
		}
		log.Info("started sshd", "pid", p.sup.PID(), "listen", p.s.cfg.SSHListen, "user", p.user.Name)
	}
	return nil
}

// serve runs the parts until ctx ends.
func (p *parts) serve(ctx context.Context) {
	var wg sync.WaitGroup
	run := func(f func(context.Context)) {
		wg.Add(1)
		go func() { defer wg.Done(); f(ctx) }()
	}
	if p.vip != nil {
		run(p.vip.Run)
	}
	if p.guard != nil {
		run(p.keepGuard)
	}
	if p.keys != nil {
		run(p.keys.Run)
	}
	run(func(ctx context.Context) { p.sup.Watch(ctx, 500*time.Millisecond) })
	run(p.reaper.Run)
	run(p.followOperators)
	run(func(ctx context.Context) {
		p.follow.Run(ctx, func(line []byte, live bool) { p.logLine(ctx, line, live) })
	})
	run(func(ctx context.Context) { p.s.src.Follow(ctx, follower{p}) })
	run(p.hook.Serve)
	wg.Wait()
	p.reaper.Wait()
	p.stopGuard()
	p.s.log.Info("slave daemon stopping; sshd keeps running so tunnels stay up", "sshd_pid", p.sup.PID())
}

// tunnels lists the live tunnels as of a table walk at most a second old.
func (p *parts) tunnels(ctx context.Context) []wire.Tunnel {
	return p.reaper.Tunnels(ctx, time.Second)
}

// follower is what the source tells the slave.
type follower struct{ p *parts }

// Gone takes a revoked or removed device out of the keys file, then ends
// its sessions (in that order, or it could log straight back in), and
// the operator sessions whose permitopen lines name its ports.
func (f follower) Gone(ctx context.Context, dev registry.Device, reason string) {
	if f.p.keys != nil {
		f.p.keys.Revoke(ctx, dev.Name)
	}
	f.p.reaper.EndDevice(ctx, dev, reason)
	ports := make([]int, 0, len(dev.Forwards))
	for _, fw := range dev.Forwards {
		ports = append(ports, fw.RemotePort)
	}
	f.p.ops.EndPorts(ctx, ports, "operator may open the port of "+dev.Name+", "+reason)
}

// OperatorGone ends the live sessions of a revoked or removed operator.
func (f follower) OperatorGone(ctx context.Context, operator, fingerprint, reason string) {
	f.p.ops.EndOperator(ctx, operator, fingerprint, reason)
}

// operatorPorts is the hook's operator lookup: the ports the key's
// operator may open.
func (p *parts) operatorPorts(ctx context.Context, fp string, key ssh.PublicKey) (string, []int, bool, error) {
	g, found, err := p.s.src.Operator(ctx, fp, key)
	if err != nil || !found {
		return "", nil, found, err
	}
	ports := make([]int, 0, len(g.Open))
	for _, o := range g.Open {
		ports = append(ports, o.Port)
	}
	return g.Operator, ports, true, nil
}

// Status is the heartbeat's content.
func (f follower) Status(ctx context.Context) wire.Heartbeat { return f.p.heartbeat(ctx) }

// Peers hands the VIP's peers to its keeper.
func (f follower) Peers(ctx context.Context, peers []wire.Peer) {
	if f.p.vip != nil {
		f.p.vip.Peers(ctx, peers)
	}
}

// logLine takes one line of sshd's log: an authentication is noted (and,
// as it happens, lets newest-wins judge the device's older sessions), a
// connection's end forgotten.
func (p *parts) logLine(ctx context.Context, line []byte, live bool) {
	if a, ok := authlog.ParseAccepted(string(line)); ok {
		if a.User != p.user.Name && a.User != p.s.cfg.OperatorUser {
			return
		}
		p.auths.Accept(a)
		if live {
			p.reaper.Accepted(ctx, a)
		}
		return
	}
	if c, ok := authlog.ParseClosed(string(line)); ok {
		p.auths.Close(c.Remote)
	}
}

// sessionsOf counts the live sessions that authenticated with key fp: from
// the log's index, checked against a walk of the session table when it
// reaches the cap (the index may still hold a connection that just ended).
func (p *parts) sessionsOf(_ context.Context, fp string) int {
	n := p.auths.Count(fp)
	if n < p.s.cfg.MaxSessionsPerDevice {
		return n
	}
	list, err := p.table.Sessions()
	if err != nil {
		return n
	}
	live := 0
	for _, sess := range list {
		ap, err := netip.ParseAddrPort(sess.Remote)
		if err != nil {
			continue
		}
		if a, ok := p.auths.Lookup(netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())); ok && a.Fingerprint == fp {
			live++
		}
	}
	return live
}
