package bench

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/sshd/sessions"
	"github.com/mas4h/mas4h/sshd/statedir"
)

// LivenessConfig is the liveness measurement's configuration, filled in
// cmd/mas4h-liveness.
type LivenessConfig struct {
	Bin        string // the mas4h binary under test
	SSHD, SSH  string // OpenSSH, for the slave, the devices' own sshd and the clients
	WorkParent string // root-owned, like every parent (sshd checks)
	TunnelUser string
	SlavePort  int
	PortRange  string
	SlaveArgs  []string // more `mas4h slave` flags; none: the default settings
	// LogForwards forwards, each to its own real sshd (the device's), have
	// their device's log counted over LogWindow.
	LogForwards int
	LogWindow   time.Duration
	// BrokenLimit bounds the wait for broken forwarding to be found (0:
	// not measured): it is broken just after a probe passed, the worst
	// moment.
	BrokenLimit time.Duration
	Net         int // the dead-link device's veth is on 198.18.Net.0/30
}

// LivenessResult is what mas4h-liveness measured, with one binary at one
// set of slave flags.
type LivenessResult struct {
	Date     string   `json:"date"`
	Binary   string   `json:"binary"`
	Settings []string `json:"slave_flags"`
	// Seconds from the client's stop (SIGSTOP; its veth down) until its
	// leased port is free; -1: not within a minute.
	FrozenProbedSeconds   float64 `json:"frozen_probed_seconds"`
	FrozenUnprobedSeconds float64 `json:"frozen_unprobed_seconds"` // a forward with probe=none
	DeadLinkSeconds       float64 `json:"dead_link_seconds"`
	// Seconds from the device's target hanging, just after a probe passed,
	// until the port is free; -1: not within BrokenLimit, 0: not measured.
	BrokenSeconds float64 `json:"broken_seconds"`
	// Lines in each counted device's sshd log over the window.
	LogLines               []int    `json:"log_lines"`
	LogErrorLines          int      `json:"log_error_lines"`
	LogWindowSeconds       float64  `json:"log_window_seconds"`
	LinesPerHourPerForward float64  `json:"lines_per_hour_per_forward"`
	Errors                 []string `json:"errors,omitempty"`
}

type liveRun struct {
	cfg  LivenessConfig
	log  *slog.Logger
	work string
	db   string
	st   statedir.Dir
	undo []func()

	mu sync.Mutex // guards the result's Errors
}

// RunLiveness measures detection times and device-log lines at the slave
// flags of cfg (none: the defaults), and always cleans up after itself.
func RunLiveness(ctx context.Context, cfg LivenessConfig, log *slog.Logger) (*LivenessResult, error) {
	r := &liveRun{cfg: cfg, log: log}
	defer func() {
		for i := len(r.undo) - 1; i >= 0; i-- {
			r.undo[i]()
		}
	}()
	return r.run(ctx)
}

type liveDevice struct {
	name  string
	key   string // private key file
	port  int    // leased
	fwd   string
	netns bool
}

func (r *liveRun) run(ctx context.Context) (*LivenessResult, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("mas4h-liveness must run as root (the slave runs sshd as its tunnel user; the dead link needs a network namespace)")
	}
	res := &LivenessResult{Date: time.Now().Format("2006-01-02"), Binary: r.cfg.Bin, Settings: r.cfg.SlaveArgs}
	if res.Settings == nil {
		res.Settings = []string{}
	}
	var err error
	if r.work, err = os.MkdirTemp(r.cfg.WorkParent, "mas4h-liveness-"); err != nil {
		return nil, err
	}
	os.Chmod(r.work, 0o755)
	r.undo = append(r.undo, func() { os.RemoveAll(r.work) })
	r.db = filepath.Join(r.work, "registry.db")
	r.st = statedir.Dir(filepath.Join(r.work, "slave"))
	_, userErr := user.Lookup(r.cfg.TunnelUser)
	r.undo = append(r.undo, func() {
		if _, err := user.Lookup(r.cfg.TunnelUser); userErr != nil && err == nil {
			exec.Command("userdel", r.cfg.TunnelUser).Run()
		}
	})

	// The device side: a dead-link namespace, banner targets, real sshds.
	ns := fmt.Sprintf("mas4h-live-%d", os.Getpid())
	hostIf, devIf := fmt.Sprintf("m4lh%d", r.cfg.Net), fmt.Sprintf("m4ld%d", r.cfg.Net)
	hostIP, devIP := fmt.Sprintf("198.18.%d.1", r.cfg.Net), fmt.Sprintf("198.18.%d.2", r.cfg.Net)
	if err := r.netns(ns, hostIf, devIf, hostIP, devIP); err != nil {
		return nil, err
	}
	banner, err := newBreakableTarget(hostIP)
	if err != nil {
		return nil, err
	}
	r.undo = append(r.undo, banner.close)
	broken, err := newBreakableTarget("127.0.0.1")
	if err != nil {
		return nil, err
	}
	r.undo = append(r.undo, broken.close)
	var logs []string
	var devs []liveDevice
	for i := range r.cfg.LogForwards {
		port, logPath, err := r.deviceSSHD(ctx, i)
		if err != nil {
			return nil, err
		}
		logs = append(logs, logPath)
		devs = append(devs, liveDevice{name: fmt.Sprintf("log-%d", i), fwd: fmt.Sprintf("ssh=localhost:%d,probe=ssh-banner", port)})
	}
	frozenP := liveDevice{name: "frozen-probed", fwd: fmt.Sprintf("ssh=%s:%d,probe=ssh-banner", hostIP, banner.port)}
	frozenU := liveDevice{name: "frozen-none", fwd: fmt.Sprintf("ssh=%s:%d,probe=none", hostIP, banner.port)}
	dead := liveDevice{name: "dead-link", fwd: fmt.Sprintf("ssh=%s:%d,probe=ssh-banner", hostIP, banner.port), netns: true}
	brk := liveDevice{name: "broken", fwd: fmt.Sprintf("ssh=localhost:%d,probe=ssh-banner", broken.port)}
	devs = append(devs, frozenP, frozenU, dead, brk)
	for i := range devs {
		if err := r.enrol(ctx, &devs[i]); err != nil {
			return nil, err
		}
	}
	idx := map[string]liveDevice{}
	for _, d := range devs {
		idx[d.name] = d
	}

	if err := r.startSlave(ctx, hostIP); err != nil {
		return nil, err
	}
	procs := map[string]*liveClient{}
	for _, d := range devs {
		c, err := r.client(d, hostIP, devIP, ns)
		if err != nil {
			return nil, err
		}
		procs[d.name] = c
	}
	for _, d := range devs {
		if err := waitFor(ctx, 30*time.Second, func() bool { return portListening(d.port) }); err != nil {
			return nil, fmt.Errorf("tunnel of %s (port %d) did not come up", d.name, d.port)
		}
	}
	if err := waitFor(ctx, 30*time.Second, func() bool { return r.tunnels(ctx) == len(devs) }); err != nil {
		b, _ := os.ReadFile(filepath.Join(r.work, "slave.log"))
		return nil, fmt.Errorf("the slave lists %d tunnels, not %d; its log ends:\n%s", r.tunnels(ctx), len(devs), lastLines(string(b), 20))
	}
	r.log.Info("tunnels up", "devices", len(devs))
	start := time.Now()

	var wg sync.WaitGroup
	measure := func(what string, fn func()) {
		wg.Add(1)
		go func() { defer wg.Done(); fn(); r.log.Info("measured", "what", what) }()
	}
	measure("frozen clients", func() {
		procs["frozen-probed"].cmd.Process.Signal(syscall.SIGSTOP)
		procs["frozen-none"].cmd.Process.Signal(syscall.SIGSTOP)
		t0 := time.Now()
		var inner sync.WaitGroup
		for _, x := range []struct {
			d    liveDevice
			into *float64
		}{{idx["frozen-probed"], &res.FrozenProbedSeconds}, {idx["frozen-none"], &res.FrozenUnprobedSeconds}} {
			inner.Add(1)
			go func() { defer inner.Done(); *x.into = untilFree(ctx, x.d.port, t0, time.Minute) }()
		}
		inner.Wait()
	})
	measure("dead link", func() {
		if out, err := exec.Command("ip", "-n", ns, "link", "set", devIf, "down").CombinedOutput(); err != nil {
			r.addErr(res, fmt.Sprintf("link down: %v: %s", err, out))
			return
		}
		res.DeadLinkSeconds = untilFree(ctx, idx["dead-link"].port, time.Now(), time.Minute)
	})
	if r.cfg.BrokenLimit > 0 {
		measure("broken forwarding", func() {
			// Break it just after a probe passed: the worst moment.
			n := broken.accepts.Load()
			if err := waitFor(ctx, r.cfg.BrokenLimit, func() bool { return broken.accepts.Load() > n }); err != nil {
				r.addErr(res, "the broken forward's target was never probed")
				res.BrokenSeconds = -1
				return
			}
			broken.hang.Store(true)
			res.BrokenSeconds = untilFree(ctx, idx["broken"].port, time.Now(), r.cfg.BrokenLimit)
		})
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(r.cfg.LogWindow):
	}
	res.LogWindowSeconds = round3(time.Since(start).Seconds())
	total := 0
	for _, l := range logs {
		lines, errs, err := countLogLines(l)
		if err != nil {
			return nil, err
		}
		res.LogLines = append(res.LogLines, lines)
		res.LogErrorLines += errs
		total += lines
	}
	if len(logs) > 0 {
		res.LinesPerHourPerForward = round3(float64(total) / float64(len(logs)) / time.Since(start).Hours())
	}
	for _, d := range devs[:len(logs)] {
		if procs[d.name].exited() {
			r.addErr(res, fmt.Sprintf("the healthy tunnel of %s ended during the window", d.name))
		}
	}
	wg.Wait()
	return res, nil
}

func (r *liveRun) addErr(res *LivenessResult, s string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	res.Errors = append(res.Errors, s)
}

// netns makes the dead-link device's namespace and veth pair (removed at
// the end).
func (r *liveRun) netns(ns, hostIf, devIf, hostIP, devIP string) error {
	exec.Command("ip", "netns", "del", ns).Run()
	steps := [][]string{
		{"netns", "add", ns},
		{"link", "add", hostIf, "type", "veth", "peer", "name", devIf, "netns", ns},
		{"addr", "add", hostIP + "/30", "dev", hostIf},
		{"link", "set", hostIf, "up"},
		{"-n", ns, "addr", "add", devIP + "/30", "dev", devIf},
		{"-n", ns, "link", "set", devIf, "up"},
		{"-n", ns, "link", "set", "lo", "up"},
	}
	r.undo = append(r.undo, func() {
		exec.Command("ip", "link", "del", hostIf).Run()
		exec.Command("ip", "netns", "del", ns).Run()
	})
	for _, s := range steps {
		if out, err := exec.Command("ip", s...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(s, " "), err, out)
		}
	}
	return nil
}

// deviceSSHD starts the i-th device's own sshd (LogLevel INFO, Debian's
// default) on loopback.
func (r *liveRun) deviceSSHD(ctx context.Context, i int) (int, string, error) {
	dir := filepath.Join(r.work, fmt.Sprintf("device-sshd-%d", i))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, "", err
	}
	if out, err := exec.CommandContext(ctx, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir+"/host_key").CombinedOutput(); err != nil {
		return 0, "", fmt.Errorf("ssh-keygen: %v: %s", err, out)
	}
	port, err := freeLoopbackPort()
	if err != nil {
		return 0, "", err
	}
	cfg := fmt.Sprintf("ListenAddress 127.0.0.1:%d\nHostKey %s/host_key\nPidFile %s/sshd.pid\nLogLevel INFO\nUsePAM no\nAuthorizedKeysFile none\n", port, dir, dir)
	if err := os.WriteFile(dir+"/sshd_config", []byte(cfg), 0o644); err != nil {
		return 0, "", err
	}
	os.MkdirAll("/run/sshd", 0o755)
	logPath := dir + "/sshd.log"
	cmd := exec.Command(r.cfg.SSHD, "-D", "-f", dir+"/sshd_config", "-E", logPath)
	if err := cmd.Start(); err != nil {
		return 0, "", err
	}
	r.undo = append(r.undo, func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	err = waitFor(ctx, 10*time.Second, func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "Server listening on")
	})
	return port, logPath, err
}

// enrol adds d to the registry with a fresh key.
func (r *liveRun) enrol(ctx context.Context, d *liveDevice) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	block, err := ssh.MarshalPrivateKey(priv, d.name)
	if err != nil {
		return err
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return err
	}
	d.key = filepath.Join(r.work, d.name+".key")
	if err := os.WriteFile(d.key, pem.EncodeToMemory(block), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(d.key+".pub", ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o644); err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, r.cfg.Bin, "device", "add", d.name, "--key", d.key+".pub", "--db", r.db,
		"--forward", d.fwd, "--port-range", r.cfg.PortRange, "-o", "json").Output()
	if err != nil {
		return fmt.Errorf("device add %s: %w", d.name, err)
	}
	var dev struct {
		Forwards []struct {
			RemotePort int `json:"remote_port"`
		} `json:"forwards"`
	}
	if err := json.Unmarshal(out, &dev); err != nil || len(dev.Forwards) != 1 {
		return fmt.Errorf("device add %s: %v: %s", d.name, err, out)
	}
	d.port = dev.Forwards[0].RemotePort
	return nil
}

// startSlave runs `mas4h slave` on hostIP (reachable from the namespace
// and from this host) and, at the end, stops it, its sshd and its sessions.
func (r *liveRun) startSlave(ctx context.Context, hostIP string) error {
	args := append([]string{"slave", "--name", "live", "--db", r.db, "--state-dir", string(r.st),
		"--ssh-listen", net.JoinHostPort(hostIP, strconv.Itoa(r.cfg.SlavePort)), "--tunnel-user", r.cfg.TunnelUser}, r.cfg.SlaveArgs...)
	cmd := exec.Command(r.cfg.Bin, args...)
	logf, err := os.Create(filepath.Join(r.work, "slave.log"))
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return err
	}
	r.undo = append(r.undo, func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		logf.Close()
		r.stopSSHD(hostIP)
	})
	return waitFor(ctx, 20*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(hostIP, strconv.Itoa(r.cfg.SlavePort)), 200*time.Millisecond)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
}

// stopSSHD ends the sessions of the slave's sshd, then sshd (the daemon
// leaves both running by design).
func (r *liveRun) stopSSHD(hostIP string) {
	b, err := os.ReadFile(r.st.PidFile())
	if err != nil {
		return
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if pid <= 0 {
		return
	}
	if u, err := user.Lookup(r.cfg.TunnelUser); err == nil {
		uid, _ := strconv.Atoi(u.Uid)
		d := sessions.Discoverer{ProcRoot: "/proc", ListenerPID: pid, TunnelUID: uid, LogPath: r.st.Log(), SSHPort: r.cfg.SlavePort}
		if list, err := d.Sessions(); err == nil {
			for _, s := range list {
				for _, p := range s.PIDs {
					syscall.Kill(p, syscall.SIGKILL)
				}
			}
		}
	}
	syscall.Kill(pid, syscall.SIGTERM)
	waitFor(context.Background(), 5*time.Second, func() bool { return syscall.Kill(pid, 0) != nil })
}

// liveClient is a running `ssh -N -R`.
type liveClient struct {
	cmd  *exec.Cmd
	done chan struct{}
}

func (c *liveClient) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// client starts `ssh -N -R` for d, in the namespace for the dead-link device.
// No client keepalives: only sshd's and mas4h's view judge the tunnels.
func (r *liveRun) client(d liveDevice, hostIP, devIP, ns string) (*liveClient, error) {
	target := strings.SplitN(strings.TrimPrefix(d.fwd, "ssh="), ",", 2)[0]
	args := []string{"-N", "-F", "/dev/null", "-i", d.key, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR", "-p", strconv.Itoa(r.cfg.SlavePort),
		"-R", fmt.Sprintf("%d:%s", d.port, target), r.cfg.TunnelUser + "@" + hostIP}
	var cmd *exec.Cmd
	if d.netns {
		cmd = exec.Command("ip", append([]string{"netns", "exec", ns, r.cfg.SSH}, args...)...)
	} else {
		cmd = exec.Command(r.cfg.SSH, args...)
	}
	cmd.Env = append(os.Environ(), "HOME="+r.work)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	c := &liveClient{cmd: cmd, done: make(chan struct{})}
	go func() { cmd.Wait(); close(c.done) }()
	r.undo = append(r.undo, func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGCONT)
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
	})
	return c, nil
}

// tunnels is how many live tunnels the slave lists.
func (r *liveRun) tunnels(ctx context.Context) int {
	out, err := exec.CommandContext(ctx, r.cfg.Bin, "tunnels", "--state-dir", string(r.st), "-o", "json").Output()
	if err != nil {
		return -1
	}
	var ts []json.RawMessage
	if json.Unmarshal(out, &ts) != nil {
		return -1
	}
	return len(ts)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// breakableTarget is a device-side service that greets like an SSH server
// until told to hang (accept, then say nothing).
type breakableTarget struct {
	l       net.Listener
	port    int
	hang    atomic.Bool
	accepts atomic.Int64
}

func newBreakableTarget(host string) (*breakableTarget, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return nil, err
	}
	b := &breakableTarget{l: l, port: l.Addr().(*net.TCPAddr).Port}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b.accepts.Add(1)
			go func() {
				defer c.Close()
				if !b.hang.Load() {
					c.Write([]byte("SSH-2.0-mas4h-bench-target\r\n"))
				}
				c.SetReadDeadline(time.Now().Add(time.Minute))
				buf := make([]byte, 256)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return b, nil
}

func (b *breakableTarget) close() { b.l.Close() }

// untilFree polls until port no longer listens and returns the seconds
// since t0, or -1 after limit.
func untilFree(ctx context.Context, port int, t0 time.Time, limit time.Duration) float64 {
	if waitFor(ctx, limit-time.Since(t0), func() bool { return !portListening(port) }) != nil {
		return -1
	}
	return round3(time.Since(t0).Seconds())
}

func portListening(port int) bool {
	ports, err := sessions.ListeningPorts("/proc")
	return err == nil && ports[port]
}

func waitFor(ctx context.Context, limit time.Duration, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("not within %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return nil
}

func freeLoopbackPort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// countLogLines counts a device sshd log's lines about connections (all but
// its own start), and those at error level.
func countLogLines(path string) (lines, errs int, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || strings.HasPrefix(l, "Server listening on") || strings.HasPrefix(l, "Received signal") {
			continue
		}
		lines++
		if strings.Contains(l, "kex_exchange_identification") {
			errs++
		}
	}
	return lines, errs, sc.Err()
}

// LivenessTable renders results (before, after, …) as a markdown table.
func LivenessTable(names []string, rs []*LivenessResult) string {
	var b strings.Builder
	b.WriteString("| run | frozen client s (probe) | frozen client s (probe=none) | dead link s | broken forwarding s | device-log lines / hour / forward (errors) |\n|---|---:|---:|---:|---:|---:|\n")
	for i, r := range rs {
		broken := "–"
		if r.BrokenSeconds != 0 {
			broken = fmt.Sprint(r.BrokenSeconds)
		}
		fmt.Fprintf(&b, "| %s | %v | %v | %v | %s | %.1f (%d in %.0f s) |\n", names[i], r.FrozenProbedSeconds, r.FrozenUnprobedSeconds,
			r.DeadLinkSeconds, broken, r.LinesPerHourPerForward, r.LogErrorLines, r.LogWindowSeconds)
	}
	return b.String()
}
