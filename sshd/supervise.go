package sshd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/sshd/sessions"
)

// supervisor runs one slave's sshd as a detached process (its own session,
// not killed with the daemon), adopts it from its pid file after a daemon
// restart, reloads it with SIGHUP and restarts it when it dies.
type supervisor struct {
	sshdPath   string
	configPath string
	logPath    string
	pidPath    string
	procRoot   string
	listenAddr string
	uid, gid   int
	lowPort    bool // needs CAP_NET_BIND_SERVICE
	log        *slog.Logger
	metrics    *metrics.Slave // set before watch runs; nil counts nothing

	pid     int
	restart int
}

const sshdStartTimeout = 5 * time.Second

// adopt takes over an sshd already running from this state dir: the pid in
// the pid file, alive, and an sshd started with our config file.
func (s *supervisor) adopt() bool {
	b, err := os.ReadFile(s.pidPath)
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || !sessions.Alive(s.procRoot, pid) {
		return false
	}
	cmdline, err := os.ReadFile(filepath.Join(s.procRoot, strconv.Itoa(pid), "cmdline"))
	if err != nil || !bytes.Contains(cmdline, []byte(s.configPath)) {
		return false
	}
	s.pid = pid
	return true
}

// start launches sshd and waits until it has bound its port and written its
// pid file, or failed; a failure carries the tail of sshd's log.
func (s *supervisor) start(ctx context.Context) error {
	if err := checkPortFree(s.listenAddr); err != nil {
		return err
	}
	os.Remove(s.pidPath)
	cmd := exec.Command(s.sshdPath, "-D", "-f", s.configPath, "-E", s.logPath)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:     true,
		Credential: &syscall.Credential{Uid: uint32(s.uid), Gid: uint32(s.gid), Groups: []uint32{}},
	}
	if s.lowPort {
		cmd.SysProcAttr.AmbientCaps = []uintptr{10} // CAP_NET_BIND_SERVICE
	}
	logStart, _ := fileSize(s.logPath)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", s.sshdPath, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it while this daemon lives
	deadline := time.NewTimer(sshdStartTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			return fmt.Errorf("sshd exited at start (%v): %s", err, s.logTail(logStart))
		case <-deadline.C:
			cmd.Process.Kill()
			return fmt.Errorf("sshd did not come up within %s: %s", sshdStartTimeout, s.logTail(logStart))
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			b, err := os.ReadFile(s.pidPath)
			if err == nil && strings.TrimSpace(string(b)) == strconv.Itoa(cmd.Process.Pid) {
				s.pid = cmd.Process.Pid
				return nil
			}
		}
	}
}

// reload makes sshd re-read its config. Sessions are separate processes and
// stay up; sshd re-executes itself under the same pid.
func (s *supervisor) reload() error {
	if err := syscall.Kill(s.pid, syscall.SIGHUP); err != nil {
		return fmt.Errorf("reloading sshd (pid %d): %w", s.pid, err)
	}
	return nil
}

// watch restarts sshd whenever it is found dead, until ctx ends. It leaves a
// running sshd alone on exit: tunnels outlive the daemon.
func (s *supervisor) watch(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if sessions.Alive(s.procRoot, s.pid) {
			failures = 0
			continue
		}
		if failures > 0 && failures%10 != 0 {
			failures++ // back off: try every 10th tick after a failure
			continue
		}
		s.log.Warn("sshd is gone; restarting it", "old_pid", s.pid)
		if err := s.start(ctx); err != nil {
			if !errors.Is(err, context.Canceled) {
				s.log.Error("restarting sshd failed", "err", err)
			}
			failures++
			continue
		}
		failures = 0
		s.restart++
		s.metrics.SSHDRestart()
		s.log.Info("sshd restarted", "pid", s.pid, "restarts", s.restart)
	}
}

func (s *supervisor) logTail(from int64) string {
	f, err := os.Open(s.logPath)
	if err != nil {
		return "(no sshd log)"
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

func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// PortInUseError is returned when the slave's SSH listen address is taken.
type PortInUseError struct{ Addr string }

func (e *PortInUseError) Error() string {
	return fmt.Sprintf("ssh listen address %s is already in use by another process; stop it or pick another --ssh-listen", e.Addr)
}

func checkPortFree(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			return &PortInUseError{Addr: addr}
		}
		if errors.Is(err, syscall.EADDRNOTAVAIL) {
			return fmt.Errorf("ssh listen address %s is not an address of this host", addr)
		}
		return fmt.Errorf("checking ssh listen address %s: %w", addr, err)
	}
	return l.Close()
}
