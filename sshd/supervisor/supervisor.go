// Package supervisor runs one slave's sshd: as a detached process (its own
// session, so it is not killed with the daemon and tunnels outlive a daemon
// restart), adopted from its pid file when the daemon starts again, reloaded
// with SIGHUP when its config changed, and restarted when it dies.
//
// The pid file is written by sshd, as the tunnel user, so its content is
// the tunnel user's word: a pid is adopted only if that process runs the
// sshd binary, as the tunnel user, with this slave's config, and it is
// signalled only through a pidfd after checking it is still that process
// (same start time, same executable).
package supervisor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/process"
	"github.com/mas4h/mas4h/sshd/sessions"
	"github.com/mas4h/mas4h/sshd/statedir/nofollow"
)

// StartTimeout bounds how long sshd may take to bind its port and write
// its pid file.
const StartTimeout = 5 * time.Second

// Config is one slave's sshd.
type Config struct {
	SSHD       string // the sshd binary
	ConfigPath string // its sshd_config (-f)
	LogPath    string // its log (-E)
	PidPath    string // the PidFile of its config
	ListenAddr string // host:port it binds
	ProcRoot   string // "/proc", or a fixture
	UID, GID   int    // the tunnel user it runs as
	LowPort    bool   // the port is below 1024: start it with CAP_NET_BIND_SERVICE
}

// Starter starts a program in a session of its own (process.Exec).
type Starter interface {
	Start(ctx context.Context, c process.Cmd) (process.Process, error)
}

// Supervisor owns the sshd of one slave.
type Supervisor struct {
	cfg     Config
	start   Starter
	metrics *metrics.Slave
	log     *slog.Logger
	exe     string // cfg.SSHD with links resolved, as /proc/PID/exe shows it

	mu        sync.Mutex
	pid       int
	startTick uint64 // the process's start: a reused pid has another
	restarts  int
}

// New supervises the sshd of cfg; nothing runs until Adopt or Start.
func New(cfg Config, start Starter, m *metrics.Slave, log *slog.Logger) *Supervisor {
	if cfg.ProcRoot == "" {
		cfg.ProcRoot = "/proc"
	}
	exe := cfg.SSHD
	if resolved, err := filepath.EvalSymlinks(cfg.SSHD); err == nil {
		exe = resolved
	}
	return &Supervisor{cfg: cfg, start: start, metrics: m, log: log.With("component", "sshd"), exe: exe}
}

// PID is the supervised sshd's pid (0: none).
func (s *Supervisor) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid
}

func (s *Supervisor) set(pid int) {
	tick, _ := sessions.StartTick(s.cfg.ProcRoot, pid)
	s.mu.Lock()
	s.pid, s.startTick = pid, tick
	s.mu.Unlock()
}

// Adopt takes over an sshd already running from this state dir: the pid in
// the pid file if that process is this slave's sshd (running the sshd
// binary as the tunnel user, started with this slave's config file), else
// the one such sshd found in the process table — the tunnel user can write
// the pid file, so its word alone neither makes nor loses an adoption.
func (s *Supervisor) Adopt() bool {
	pid, err := nofollow.ReadPid(s.cfg.PidPath)
	if err == nil {
		if _, err = s.identify(pid); err == nil {
			s.set(pid)
			return true
		}
	}
	found := s.findListener()
	if found == 0 {
		return false
	}
	s.log.Warn("the pid file does not name this slave's running sshd; adopted the one found in the process table",
		"pid", found, "pid_file", s.cfg.PidPath, "err", err)
	s.set(found)
	return true
}

// findListener looks through the process table for this slave's sshd
// listener: the one process that identify accepts whose parent it does not
// (a connection's child re-executes sshd with the same config for a moment).
// 0: none, or more than one.
func (s *Supervisor) findListener() int {
	entries, err := os.ReadDir(s.cfg.ProcRoot)
	if err != nil {
		return 0
	}
	ours := map[int]bool{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if exe, err := os.Readlink(filepath.Join(s.cfg.ProcRoot, e.Name(), "exe")); err != nil || strings.TrimSuffix(exe, " (deleted)") != s.exe {
			continue // the cheap test first
		}
		if _, err := s.identify(pid); err == nil {
			ours[pid] = true
		}
	}
	found := 0
	for pid := range ours {
		if ours[parentOf(filepath.Join(s.cfg.ProcRoot, strconv.Itoa(pid)))] {
			continue
		}
		if found != 0 {
			return 0
		}
		found = pid
	}
	return found
}

// parentOf reads a process's parent pid from its stat (after the comm,
// which may hold spaces and parentheses).
func parentOf(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return 0
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 2 {
		return 0
	}
	ppid, _ := strconv.Atoi(f[1])
	return ppid
}

// identify checks that pid is this slave's sshd — alive, its executable the
// sshd binary, run by the tunnel user, with this slave's config on its
// command line — and returns its start time.
func (s *Supervisor) identify(pid int) (uint64, error) {
	if !sessions.Alive(s.cfg.ProcRoot, pid) {
		return 0, fmt.Errorf("pid %d is not running", pid)
	}
	dir := filepath.Join(s.cfg.ProcRoot, strconv.Itoa(pid))
	exe, err := os.Readlink(filepath.Join(dir, "exe"))
	if err != nil {
		return 0, fmt.Errorf("pid %d: reading its executable: %w", pid, err)
	}
	// An sshd that runs on after its package was upgraded.
	if exe = strings.TrimSuffix(exe, " (deleted)"); exe != s.exe {
		return 0, fmt.Errorf("pid %d runs %s, not %s", pid, exe, s.exe)
	}
	if uid, ok := procUIDs(dir); !ok || uid[0] != s.cfg.UID || uid[1] != s.cfg.UID {
		return 0, fmt.Errorf("pid %d does not run as the tunnel user (uid %d)", pid, s.cfg.UID)
	}
	cmdline, ok := sessions.Cmdline(s.cfg.ProcRoot, pid)
	if !ok || !bytes.Contains(cmdline, []byte(s.cfg.ConfigPath)) {
		return 0, fmt.Errorf("pid %d was not started with %s", pid, s.cfg.ConfigPath)
	}
	tick, ok := sessions.StartTick(s.cfg.ProcRoot, pid)
	if !ok {
		return 0, fmt.Errorf("pid %d is not running", pid)
	}
	return tick, nil
}

// procUIDs reads the real and effective uid of a process from its status.
func procUIDs(dir string) ([2]int, bool) {
	b, err := os.ReadFile(filepath.Join(dir, "status"))
	if err != nil {
		return [2]int{}, false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			f := strings.Fields(v)
			if len(f) < 2 {
				return [2]int{}, false
			}
			r, err1 := strconv.Atoi(f[0])
			e, err2 := strconv.Atoi(f[1])
			return [2]int{r, e}, err1 == nil && err2 == nil
		}
	}
	return [2]int{}, false
}

// signal sends sig to the supervised sshd, through a pidfd opened before
// the process is checked: it reaches the process that was checked (this
// slave's sshd, started when the one adopted or started did), never a
// later one that reused the pid.
func (s *Supervisor) signal(sig unix.Signal) error {
	s.mu.Lock()
	pid, tick := s.pid, s.startTick
	s.mu.Unlock()
	if pid <= 0 {
		return errors.New("no sshd is running")
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	switch {
	case errors.Is(err, unix.ENOSYS): // before Linux 5.3: check, then kill
		pidfd = -1
	case err != nil:
		return fmt.Errorf("pid %d: %w", pid, err)
	default:
		defer unix.Close(pidfd)
	}
	now, err := s.identify(pid)
	if err != nil {
		return err
	}
	if tick != 0 && now != tick {
		return fmt.Errorf("pid %d is another process now (it started later than the sshd adopted)", pid)
	}
	if pidfd < 0 {
		return unix.Kill(pid, sig)
	}
	return unix.PidfdSendSignal(pidfd, sig, nil, 0)
}

// running reports whether the supervised sshd is alive: its pid lives and
// started when the one adopted or started did (not a later process that
// reused the number).
func (s *Supervisor) running() bool {
	s.mu.Lock()
	pid, tick := s.pid, s.startTick
	s.mu.Unlock()
	if !sessions.Alive(s.cfg.ProcRoot, pid) {
		return false
	}
	now, ok := sessions.StartTick(s.cfg.ProcRoot, pid)
	return ok && (tick == 0 || now == tick)
}

// Start launches sshd and waits until it has bound its port and written its
// pid file, or failed; a failure carries the tail of sshd's log.
func (s *Supervisor) Start(ctx context.Context) error {
	if err := checkPortFree(s.cfg.ListenAddr); err != nil {
		return err
	}
	// Emptied, not removed: sshd, as the tunnel user, can write the files
	// but not create them in its root-owned directory.
	if err := nofollow.Writable(s.cfg.PidPath, s.cfg.GID, true); err != nil {
		return fmt.Errorf("starting sshd: %w", err)
	}
	if err := nofollow.Writable(s.cfg.LogPath, s.cfg.GID, false); err != nil {
		return fmt.Errorf("starting sshd: %w", err)
	}
	logStart, _ := nofollow.Size(s.cfg.LogPath)
	c := process.Command(s.cfg.SSHD, "-D", "-f", s.cfg.ConfigPath, "-E", s.cfg.LogPath)
	c.Dir, c.Cred = "/", &process.Cred{UID: s.cfg.UID, GID: s.cfg.GID}
	if s.cfg.LowPort {
		c.AmbientCaps = []uintptr{unix.CAP_NET_BIND_SERVICE}
	}
	// Not ctx: sshd outlives the daemon, and its tunnels with it.
	p, err := s.start.Start(context.WithoutCancel(ctx), c)
	if err != nil {
		return err
	}
	pid := p.Pid()
	deadline := time.NewTimer(StartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-p.Done():
			return fmt.Errorf("sshd exited at start (%v): %s", p.Wait(), s.logTail(logStart))
		case <-deadline.C:
			p.Signal(unix.SIGKILL) // our child, not reaped yet: its pid is still its own
			return fmt.Errorf("sshd did not come up within %s: %s", StartTimeout, s.logTail(logStart))
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			if got, err := nofollow.ReadPid(s.cfg.PidPath); err == nil && got == pid {
				s.set(pid)
				return nil
			}
		}
	}
}

// Reload makes sshd re-read its config. Sessions are separate processes and
// stay up; sshd re-executes itself under the same pid.
func (s *Supervisor) Reload() error {
	if err := s.signal(unix.SIGHUP); err != nil {
		return fmt.Errorf("reloading sshd: %w", err)
	}
	return nil
}

// Watch restarts sshd whenever it is found dead, every `every`, until ctx
// ends. It leaves a running sshd alone on exit: tunnels outlive the daemon.
func (s *Supervisor) Watch(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		failures = s.check(ctx, failures)
	}
}

// check is one look of Watch: failures counts the restarts that failed in a
// row, and after one only every 10th look tries again.
func (s *Supervisor) check(ctx context.Context, failures int) int {
	if s.running() {
		return 0
	}
	if failures > 0 && failures%10 != 0 {
		return failures + 1
	}
	old := s.PID()
	// Another supervisor (sshd's own systemd unit) may have started it.
	if s.Adopt() {
		s.log.Info("sshd was restarted from outside; adopted it", "old_pid", old, "pid", s.PID())
		return 0
	}
	s.log.Warn("sshd is gone; restarting it", "old_pid", old)
	if err := s.Start(ctx); err != nil {
		if !errors.Is(err, context.Canceled) {
			s.log.Error("restarting sshd failed", "err", err)
		}
		return failures + 1
	}
	s.mu.Lock()
	s.restarts++
	n := s.restarts
	s.mu.Unlock()
	s.metrics.SSHDRestart()
	s.log.Info("sshd restarted", "pid", s.PID(), "restarts", n)
	return 0
}

func (s *Supervisor) logTail(from int64) string {
	f, err := nofollow.Open(s.cfg.LogPath)
	if err != nil {
		return "(no sshd log: " + err.Error() + ")"
	}
	defer f.Close()
	f.Seek(from, 0)
	b := make([]byte, 2048)
	n, _ := f.Read(b)
	out := strings.TrimSpace(string(b[:n]))
	if out == "" {
		return "(sshd logged nothing)"
	}
	return strings.ReplaceAll(out, "\n", "; ")
}

// PortInUseError is returned when the slave's SSH listen address is taken.
type PortInUseError struct{ Addr string }

func (e *PortInUseError) Error() string {
	return fmt.Sprintf("ssh listen address %s is already in use by another process; stop it or pick another --ssh-listen", e.Addr)
}

func checkPortFree(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			return &PortInUseError{Addr: addr}
		}
		if errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("ssh listen address %s is not an address of this host", addr)
		}
		return fmt.Errorf("checking ssh listen address %s: %w", addr, err)
	}
	return l.Close()
}
