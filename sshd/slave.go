package sshd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/mas4h/mas4h/netfilter"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authkeys"
	"github.com/mas4h/mas4h/sshd/sessions"
	"github.com/mas4h/mas4h/sshd/sshdconfig"
)

// SlaveConfig is the slave's configuration, filled and validated in cmd/.
type SlaveConfig struct {
	Name       string
	StateDir   string // absolute
	SSHListen  string // host:port
	TunnelUser string
	SSHDPath   string // absolute path of the OpenSSH sshd binary
	ProcRoot   string // "/proc" outside tests
	Executable string // the mas4h binary installed as the hook; "" = this process's
	PublicHost string // what the master tells devices to dial ("" = derive)
	Capacity   int    // tunnels this slave is sized for (dispatch weight)

	ProbeInterval time.Duration // how often every tunnel is probed
	ProbeFailures int           // consecutive failures before a session is reaped
	ProbeTimeout  time.Duration // one probe's budget
	NewestWins    string        // NewestWinsStale, NewestWinsAlways or NewestWinsOff
	KeysFile      bool          // keep STATE/authorized_keys for sshd to read before the hook
	MetricsListen string        // host:port serving GET /metrics; "" = none
	DebugPprof    bool          // also serve net/http/pprof under /debug/pprof/ on MetricsListen

	// VIP, when set, is this slave's share of a shared virtual IP: the
	// slave keeps its rules applied and takes over dead peers' buckets.
	VIP *netfilter.Config
}

// Slave is a running slave daemon.
type Slave struct {
	cfg   SlaveConfig
	src   Source
	log   *slog.Logger
	user  TunnelUser
	cache *authkeys.Cache
	sup   *supervisor
	mon   *monitor
	vip   *vipKeeper
	keys  *keysFile // nil with HookOnly
	port  int

	HostKeys []HostKey

	killWG     sync.WaitGroup
	listenHook net.Listener
}

// Paths inside a slave's state dir.
func (c SlaveConfig) configPath() string { return filepath.Join(c.StateDir, "sshd_config") }
func (c SlaveConfig) sshdDir() string    { return filepath.Join(c.StateDir, "sshd") }
func (c SlaveConfig) lockPath() string   { return filepath.Join(c.StateDir, "slave.lock") }

// SSHDPidPath is where the slave's sshd writes its pid.
func SSHDPidPath(stateDir string) string { return filepath.Join(stateDir, "sshd", "sshd.pid") }

// SSHDLogPath is the slave's sshd log (sshd -E).
func SSHDLogPath(stateDir string) string { return filepath.Join(stateDir, "sshd", "sshd.log") }

// NewSlave checks what can be checked without touching the system.
func NewSlave(cfg SlaveConfig, src Source, log *slog.Logger) (*Slave, error) {
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
	if cfg.ProbeInterval <= 0 {
		cfg.ProbeInterval = DefaultProbeInterval
	}
	if cfg.ProbeFailures <= 0 {
		cfg.ProbeFailures = DefaultProbeFailures
	}
	if cfg.ProbeTimeout <= 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	switch cfg.NewestWins {
	case "":
		cfg.NewestWins = NewestWinsStale
	case NewestWinsStale, NewestWinsAlways, NewestWinsOff:
	default:
		return nil, fmt.Errorf("newest-wins must be %s, %s or %s, not %q", NewestWinsStale, NewestWinsAlways, NewestWinsOff, cfg.NewestWins)
	}
	s := &Slave{cfg: cfg, src: src, log: log.With("component", "slave", "slave", cfg.Name), port: port}
	if cfg.KeysFile {
		s.keys = newKeysFile(s)
	}
	s.mon = newMonitor(s)
	return s, nil
}

// Run prepares the state dir, user, keys, hook and config, adopts or starts
// sshd, and serves the hook until ctx ends. sshd keeps running after Run
// returns, so a daemon restart drops no tunnel.
func (s *Slave) Run(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("mas4h slave must run as root: it creates the tunnel user and starts sshd as that user (run it with sudo or from its systemd unit)")
	}
	if fi, err := os.Stat(s.cfg.SSHDPath); err != nil || fi.IsDir() {
		return fmt.Errorf("sshd not found at %s: install OpenSSH's server (apt-get install openssh-server) or pass its path", s.cfg.SSHDPath)
	}
	if err := s.prepareDirs(); err != nil {
		return err
	}
	unlock, err := lockStateDir(s.cfg.lockPath())
	if err != nil {
		return err
	}
	defer unlock()
	if s.user, err = EnsureTunnelUser(ctx, s.cfg.TunnelUser); err != nil {
		return err
	}
	if s.user.Created {
		s.log.Info("created tunnel user", "user", s.user.Name, "uid", s.user.UID)
	}
	if err := s.prepareOwnedDirs(); err != nil {
		return err
	}
	hk, err := ensureHostKey(filepath.Join(s.cfg.sshdDir(), "ssh_host_ed25519_key"), s.user.UID, s.user.GID)
	if err != nil {
		return err
	}
	s.HostKeys = []HostKey{hk}
	s.log.Info("host key", "type", "ed25519", "fingerprint", hk.Fingerprint)
	hookCmd, err := s.installHook()
	if err != nil {
		return err
	}
	if err := s.openCache(ctx); err != nil {
		return err
	}
	defer s.cache.Close()
	if s.keys == nil {
		if err := removeKeysFile(s.cfg.StateDir); err != nil {
			return err
		}
	} else {
		if err := s.keys.write(ctx, true); err != nil {
			return fmt.Errorf("keys file: %w", err)
		}
	}
	if err := s.serveHook(ctx); err != nil {
		return err
	}
	defer s.listenHook.Close()

	s.sup = &supervisor{
		sshdPath: s.cfg.SSHDPath, configPath: s.cfg.configPath(),
		logPath: SSHDLogPath(s.cfg.StateDir), pidPath: SSHDPidPath(s.cfg.StateDir),
		procRoot: s.cfg.ProcRoot, listenAddr: s.cfg.SSHListen,
		uid: s.user.UID, gid: s.user.GID, lowPort: s.port < 1024,
		log: s.log.With("component", "sshd"),
	}
	changed, err := s.writeConfig(ctx, hookCmd)
	if err != nil {
		return err
	}
	switch {
	case s.sup.adopt() && changed:
		if err := s.sup.reload(); err != nil {
			return err
		}
		s.log.Info("adopted running sshd and reloaded its new config", "pid", s.sup.pid)
	case s.sup.pid != 0:
		s.log.Info("adopted running sshd", "pid", s.sup.pid)
	default:
		if err := s.sup.start(ctx); err != nil {
			return err
		}
		s.log.Info("started sshd", "pid", s.sup.pid, "listen", s.cfg.SSHListen, "user", s.user.Name)
	}

	s.mon.table = sessions.NewTable(s.discoverer(), func() int { return s.sup.pid })
	if s.cfg.VIP != nil {
		sys, err := netfilter.NewSystem(s.log)
		if err != nil {
			return err
		}
		s.vip = newVIPKeeper(*s.cfg.VIP, sys, s.src, s.log)
		if err := s.vip.apply(ctx); err != nil {
			return err
		}
		if m, ok := s.src.(*MasterSource); ok {
			m.OnPeers = s.vip.peers
		}
	}

	if err := s.serveMetrics(ctx); err != nil {
		return err
	}
	var wg sync.WaitGroup
	if s.vip != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.vip.run(ctx) }()
	}
	if s.keys != nil {
		wg.Add(1)
		go func() { defer wg.Done(); s.keys.run(ctx) }()
	}
	wg.Add(3)
	go func() { defer wg.Done(); s.sup.watch(ctx, 500*time.Millisecond) }()
	go func() { defer wg.Done(); s.mon.run(ctx) }()
	go func() {
		defer wg.Done()
		s.src.Follow(ctx, func(dev registry.Device, reason string) { s.killDevice(ctx, dev, reason) })
	}()
	<-ctx.Done()
	s.listenHook.Close()
	wg.Wait()
	s.killWG.Wait()
	s.log.Info("slave daemon stopping; sshd keeps running so tunnels stay up", "sshd_pid", s.sup.pid)
	return nil
}

// SSHDPid is the pid of the supervised sshd listener.
func (s *Slave) SSHDPid() int { return s.sup.pid }

func (s *Slave) prepareDirs() error {
	if err := os.MkdirAll(s.cfg.StateDir, 0o755); err != nil {
		return fmt.Errorf("creating state dir: %w", err)
	}
	if err := os.Chown(s.cfg.StateDir, 0, 0); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if err := os.Chmod(s.cfg.StateDir, 0o755); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if err := CheckRootOwnedPath(s.cfg.StateDir); err != nil {
		return err
	}
	return os.MkdirAll(filepath.Join(s.cfg.StateDir, "bin"), 0o755)
}

func (s *Slave) prepareOwnedDirs() error {
	dirs := []struct {
		path     string
		mode     os.FileMode
		uid, gid int
	}{
		{s.cfg.sshdDir(), 0o700, s.user.UID, s.user.GID},
		{filepath.Join(s.cfg.StateDir, "run"), 0o750, 0, s.user.GID},
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			return fmt.Errorf("creating %s: %w", d.path, err)
		}
		if err := os.Chown(d.path, d.uid, d.gid); err != nil {
			return fmt.Errorf("chown %s: %w", d.path, err)
		}
		if err := os.Chmod(d.path, d.mode); err != nil {
			return fmt.Errorf("chmod %s: %w", d.path, err)
		}
	}
	return nil
}

// installHook copies the hook into the state dir's bin, root-owned, where
// sshd accepts it as an AuthorizedKeysCommand, and returns the command line
// for sshd_config. It prefers the lean mas4h-authkeys binary next to this one
// (static, about 2.5 ms less CPU per run, twice per authentication), which
// only asks the daemon and execs this binary's `authkeys --cache-only`, found
// next to it, when the daemon cannot answer: so this binary goes there too,
// first, so that an upgraded hook never finds an older fallback. Without the
// lean binary the hook is this binary's `authkeys` subcommand.
func (s *Slave) installHook() (string, error) {
	src := s.cfg.Executable
	if src == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("finding the mas4h binary to install as the hook: %w", err)
		}
		src = exe
	}
	full, err := s.installHookBinary(src, "mas4h")
	if err != nil {
		return "", err
	}
	hook := full + " authkeys"
	if lean := filepath.Join(filepath.Dir(src), "mas4h-authkeys"); isFile(lean) {
		if hook, err = s.installHookBinary(lean, "mas4h-authkeys"); err != nil {
			return "", err
		}
	}
	return hook + " --state-dir " + s.cfg.StateDir + " --", nil
}

// installHookBinary copies src to the state dir's bin/name, root-owned 0755,
// unless it is there already, checks the path as sshd will, and returns it.
func (s *Slave) installHookBinary(src, name string) (string, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return "", fmt.Errorf("reading %s to install for the hook: %w", src, err)
	}
	dst := filepath.Join(s.cfg.StateDir, "bin", name)
	if !sameContent(dst, data) {
		if err := writeFileAtomic(dst, data, 0o755, 0, 0); err != nil {
			return "", fmt.Errorf("installing the hook: %w", err)
		}
		s.log.Info("installed hook binary", "path", dst, "from", src)
	}
	if err := CheckRootOwnedPath(dst); err != nil {
		return "", err
	}
	return dst, nil
}

func isFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

func (s *Slave) openCache(ctx context.Context) error {
	path := authkeys.PathsFor(s.cfg.StateDir).Cache
	c, err := authkeys.OpenCache(path)
	if err != nil {
		return err
	}
	if err := os.Chown(path, 0, s.user.GID); err != nil {
		c.Close()
		return fmt.Errorf("cache: %w", err)
	}
	if err := os.Chmod(path, 0o640); err != nil {
		c.Close()
		return fmt.Errorf("cache: %w", err)
	}
	s.cache = c
	if err := c.SetTunnelUser(ctx, s.user.Name); err != nil {
		return err
	}
	return s.src.Start(ctx, c)
}

// writeConfig renders sshd_config, has sshd check it (as the tunnel user, as
// it will run), and replaces the old file only when it changed.
func (s *Slave) writeConfig(ctx context.Context, hookCmd string) (bool, error) {
	keysFile := ""
	if s.keys != nil {
		keysFile = s.keys.path
	}
	cfg, err := sshdconfig.Render(sshdconfig.Params{
		SlaveName:           s.cfg.Name,
		TunnelUser:          s.user.Name,
		ListenAddresses:     []string{s.cfg.SSHListen},
		HostKeys:            []string{s.HostKeys[0].Path},
		PidFile:             SSHDPidPath(s.cfg.StateDir),
		HookCommand:         hookCmd,
		KeysFile:            keysFile,
		MaxStartups:         sshdconfig.DefaultMaxStartups,
		LoginGraceTime:      sshdconfig.DefaultLoginGraceTime,
		ClientAliveInterval: sshdconfig.DefaultClientAliveInterval,
		ClientAliveCountMax: sshdconfig.DefaultClientAliveCountMax,
	})
	if err != nil {
		return false, err
	}
	path := s.cfg.configPath()
	if sameContent(path, cfg) {
		return false, nil
	}
	tmp := path + ".new"
	if err := writeFileAtomic(tmp, cfg, 0o644, 0, 0); err != nil {
		return false, err
	}
	defer os.Remove(tmp)
	check := exec.CommandContext(ctx, s.cfg.SSHDPath, "-t", "-f", tmp)
	check.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(s.user.UID), Gid: uint32(s.user.GID), Groups: []uint32{}}}
	if out, err := check.CombinedOutput(); err != nil {
		return false, fmt.Errorf("sshd -t rejected the generated config (%v): %s", err, out)
	}
	if err := os.Rename(tmp, path); err != nil {
		return false, fmt.Errorf("replacing %s: %w", path, err)
	}
	s.log.Info("wrote sshd_config", "path", path)
	return true, nil
}

// lockStateDir keeps two daemons off one state dir.
func lockStateDir(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("locking state dir: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		return nil, fmt.Errorf("another mas4h slave (pid %s) is running on state dir %s", string(b), filepath.Dir(path))
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())), 0)
	return func() { f.Close() }, nil
}
