package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/atomicfile"
	"github.com/mas4h/mas4h/process"
	"github.com/mas4h/mas4h/sshd/statedir"
)

// Config is the harness's configuration, filled and validated in
// cmd/mas4h-bench.
type Config struct {
	Bin          string // absolute path of the mas4h binary under test
	SSHD         string // OpenSSH sshd, used by both sides
	SSH          string // OpenSSH client
	Devices      int
	HookRuns     int
	FallbackRuns int
	Rounds       int // per side, alternating mas4h, raw, mas4h, raw, …
	Parallel     int // ssh clients in their handshake at once
	RoundTimeout time.Duration
	WorkParent   string // temp dirs go here; root-owned, like every parent (sshd checks)
	TunnelUser   string
	SlavePort    int // mas4h's sshd on 127.0.0.1
	RawPort      int // baseline sshd on 127.0.0.1
	PortRange    string
	SlaveArgs    []string // more `mas4h slave` flags (issue 7: --metrics-listen, --capacity)
}

// harness holds what one run started, so that cleanup can undo it in
// reverse order whatever step failed or was interrupted.
type harness struct {
	cfg Config
	log *slog.Logger

	work, state, raw, db string
	devs                 []device
	uid, gid             int
	targetPort           int

	slave   *child
	clients []*child

	undo []undoStep
}

type undoStep struct {
	what string
	fn   func() error
}

func (h *harness) onCleanup(what string, fn func() error) {
	h.undo = append(h.undo, undoStep{what, fn})
}

// Run measures everything and always cleans up after itself, also when ctx
// is cancelled (SIGINT, the global timeout).
func Run(ctx context.Context, cfg Config, log *slog.Logger) (*Result, error) {
	h := &harness{cfg: cfg, log: log}
	res, err := h.run(ctx)
	h.cleanup()
	return res, err
}

func (h *harness) run(ctx context.Context) (*Result, error) {
	res := &Result{
		Date:    time.Now().Format("2006-01-02"),
		Machine: machine(h.cfg.SSHD),
		Params: Params{Devices: h.cfg.Devices, HookRuns: h.cfg.HookRuns, FallbackRuns: h.cfg.FallbackRuns,
			Rounds: h.cfg.Rounds, Parallel: h.cfg.Parallel},
	}
	if err := h.prepare(ctx); err != nil {
		return nil, err
	}
	if err := h.startSlave(ctx); err != nil {
		return nil, err
	}
	cfgText, err := os.ReadFile(statedir.Dir(h.state).SSHDConfig())
	if err != nil {
		return nil, err
	}
	argv, err := hookArgv(cfgText)
	if err != nil {
		return nil, err
	}
	hook := hookTarget{Argv: argv, User: h.cfg.TunnelUser, UID: h.uid, GID: h.gid, MaxFailLog: 3}

	h.log.Info("measuring the hook through the daemon", "runs", h.cfg.HookRuns)
	var samples []string
	if res.Hook, samples, err = measureHook(ctx, hook, h.devs, h.cfg.HookRuns); err != nil {
		return nil, err
	}
	res.HookSamples = append(res.HookSamples, samples...)

	if err := h.startRaw(ctx); err != nil {
		return nil, err
	}
	mas4hSpec := stormSpec{SSHPath: h.cfg.SSH, Port: h.cfg.SlavePort, User: h.cfg.TunnelUser,
		TargetPort: h.targetPort, Parallel: h.cfg.Parallel, Timeout: h.cfg.RoundTimeout}
	rawSpec := mas4hSpec
	rawSpec.Port = h.cfg.RawPort
	for i := 1; i <= h.cfg.Rounds; i++ {
		for _, side := range []struct {
			name string
			spec stormSpec
			into *Side
		}{{"mas4h", mas4hSpec, &res.Mas4h}, {"raw", rawSpec, &res.Raw}} {
			st, clients := runStorm(ctx, side.spec, h.devs)
			h.clients = clients
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			h.log.Info("storm round", "side", side.name, "round", i, "seconds", st.Seconds,
				"failures", st.Failures, "first_error", st.FirstError)
			side.into.Rounds = append(side.into.Rounds, st)
			if err := stopClients(ctx, clients, h.devs); err != nil {
				return nil, fmt.Errorf("after %s round %d: %w", side.name, i, err)
			}
			h.clients = nil
		}
	}
	res.Mas4h.finish(h.cfg.Devices)
	res.Raw.finish(h.cfg.Devices)
	if res.Raw.MedianSeconds > 0 {
		res.TimeRatio = round3(res.Mas4h.MedianSeconds / res.Raw.MedianSeconds)
	}

	h.log.Info("stopping the slave daemon (sshd stays) to measure the cache fallback")
	h.slave.stop(unix.SIGTERM, 10*time.Second)
	if conn, err := net.Dial("unix", statedir.Dir(h.state).Socket()); err == nil {
		conn.Close()
		return nil, errors.New("the hook socket still answers after the slave daemon stopped")
	}
	if res.HookFallback, samples, err = measureHook(ctx, hook, h.devs, h.cfg.FallbackRuns); err != nil {
		return nil, err
	}
	res.HookSamples = append(res.HookSamples, samples...)
	return res, nil
}

// prepare makes the work dir, the device keys, the registry and a target
// for the forwards.
func (h *harness) prepare(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("mas4h-bench must run as root: the slave creates its tunnel user and runs sshd as that user")
	}
	for _, p := range []string{h.cfg.Bin, h.cfg.SSHD, h.cfg.SSH} {
		if fi, err := os.Stat(p); err != nil || fi.IsDir() {
			return fmt.Errorf("%s: not an executable file", p)
		}
	}
	for _, p := range []int{h.cfg.SlavePort, h.cfg.RawPort} {
		if err := portFree(p); err != nil {
			return err
		}
	}
	if err := checkEphemeralOverlap(h.cfg.PortRange); err != nil {
		return err
	}
	if err := checkRootOwnedParents(h.cfg.WorkParent); err != nil {
		return err
	}
	work, err := os.MkdirTemp(h.cfg.WorkParent, "mas4h-bench-")
	if err != nil {
		return fmt.Errorf("creating work dir: %w", err)
	}
	h.work = work
	h.onCleanup("removing "+work, func() error { return os.RemoveAll(work) })
	if err := os.Chmod(work, 0o755); err != nil { // the tunnel user must reach the hook below it
		return err
	}
	h.state, h.raw, h.db = filepath.Join(work, "slave"), filepath.Join(work, "raw"), filepath.Join(work, "registry.db")
	keys := filepath.Join(work, "keys")
	if err := os.Mkdir(keys, 0o700); err != nil {
		return err
	}

	h.log.Info("generating and enrolling devices", "n", h.cfg.Devices, "work", work)
	for i := 1; i <= h.cfg.Devices; i++ {
		d, err := newDevice(keys, fmt.Sprintf("bench-%04d", i))
		if err != nil {
			return err
		}
		h.devs = append(h.devs, d)
	}
	if err := enrol(ctx, h.cfg.Bin, h.db, h.cfg.PortRange, h.devs); err != nil {
		return err
	}
	for _, d := range h.devs {
		for _, p := range d.Ports {
			if err := portFree(p); err != nil {
				return fmt.Errorf("leased port of %s: %w", d.Name, err)
			}
		}
	}

	// The forwards' target: accepts and hangs up, so that anything probing a
	// tunnel (the slave's reaper) sees it working.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("target listener: %w", err)
	}
	h.onCleanup("closing the target listener", l.Close)
	h.targetPort = l.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return nil
}

// startSlave runs `mas4h slave` on the registry and waits until its sshd
// listens and its hook socket exists.
func (h *harness) startSlave(ctx context.Context) error {
	_, err := user.Lookup(h.cfg.TunnelUser)
	userExisted := err == nil
	_, err = user.LookupGroup(h.cfg.TunnelUser)
	groupExisted := err == nil
	h.onCleanup("removing the tunnel user it created", func() error {
		return h.removeUser(userExisted, groupExisted)
	})
	sshdPid := statedir.Dir(h.state).PidFile()
	sshdConfig := statedir.Dir(h.state).SSHDConfig()
	h.onCleanup("stopping mas4h's sshd", func() error { return stopSSHD(sshdPid, sshdConfig, 10*time.Second) })

	logPath := filepath.Join(h.work, "slave.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command(h.cfg.Bin, "slave", "--name", "bench", "--db", h.db, "--state-dir", h.state,
		"--ssh-listen", "127.0.0.1:"+strconv.Itoa(h.cfg.SlavePort), "--tunnel-user", h.cfg.TunnelUser,
		"--sshd", h.cfg.SSHD)
	cmd.Args = append(cmd.Args, h.cfg.SlaveArgs...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	h.log.Info("starting the slave", "cmd", strings.Join(cmd.Args, " "))
	if h.slave, err = startChild(cmd); err != nil {
		return err
	}
	h.onCleanup("stopping the slave daemon", func() error { h.slave.stop(unix.SIGTERM, 10*time.Second); return nil })

	deadline := time.Now().Add(30 * time.Second)
	for {
		if h.slave.exited() {
			return fmt.Errorf("the slave exited at start (%v): %s", h.slave.err, tail(logPath))
		}
		_, pidErr := pidFromFile(sshdPid, sshdConfig)
		_, sockErr := os.Stat(statedir.Dir(h.state).Socket())
		_, loop, _ := listeners("/proc")
		if pidErr == nil && sockErr == nil && loop[h.cfg.SlavePort] {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the slave was not ready within 30s: %s", tail(logPath))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	u, err := user.Lookup(h.cfg.TunnelUser)
	if err != nil {
		return fmt.Errorf("tunnel user after the slave started: %w", err)
	}
	h.uid, _ = strconv.Atoi(u.Uid)
	h.gid, _ = strconv.Atoi(u.Gid)
	h.log.Info("slave ready", "tunnel_user", u.Username, "uid", h.uid, "created_user", !userExisted)
	return nil
}

// startRaw runs the baseline: the same sshd binary, the same config but for
// an AuthorizedKeysFile holding the very lines the hook prints, as the same
// user, on another port.
func (h *harness) startRaw(ctx context.Context) error {
	if err := os.Mkdir(h.raw, 0o755); err != nil {
		return err
	}
	// sshd writes its pid file as the tunnel user; StrictModes accepts a
	// directory owned by that user when it is not group/world-writable.
	if err := os.Chown(h.raw, h.uid, h.gid); err != nil {
		return err
	}
	var keys bytes.Buffer
	for _, d := range h.devs {
		keys.WriteString(d.Line + "\n")
	}
	akPath := filepath.Join(h.raw, "authorized_keys")
	if err := atomicfile.Write(akPath, keys.Bytes(), 0o644); err != nil {
		return err
	}
	mas4hCfg, err := os.ReadFile(statedir.Dir(h.state).SSHDConfig())
	if err != nil {
		return fmt.Errorf("reading mas4h's sshd_config: %w", err)
	}
	pidPath, cfgPath, logPath := filepath.Join(h.raw, "sshd.pid"), filepath.Join(h.raw, "sshd_config"), filepath.Join(h.raw, "sshd.log")
	rawCfg, err := RawConfig(mas4hCfg, akPath, pidPath, "127.0.0.1:"+strconv.Itoa(h.cfg.RawPort))
	if err != nil {
		return err
	}
	// Checked as the tunnel user, as the slave checks its own.
	err = atomicfile.Write(cfgPath, rawCfg, 0o644, atomicfile.Check(func(tmp string) error {
		check := process.Command(h.cfg.SSHD, "-t", "-f", tmp)
		check.Cred = &process.Cred{UID: h.uid, GID: h.gid}
		_, err := process.Exec{}.Run(ctx, check)
		return err
	}))
	if err != nil {
		return err
	}
	asUser := &syscall.Credential{Uid: uint32(h.uid), Gid: uint32(h.gid), Groups: []uint32{}}

	// Started exactly as mas4h's supervisor starts its sshd.
	cmd := exec.Command(h.cfg.SSHD, "-D", "-f", cfgPath, "-E", logPath)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: asUser}
	c, err := startChild(cmd)
	if err != nil {
		return err
	}
	h.onCleanup("stopping the raw sshd", func() error {
		err := stopSSHD(pidPath, cfgPath, 10*time.Second)
		c.stop(unix.SIGTERM, 5*time.Second)
		return err
	})
	deadline := time.Now().Add(10 * time.Second)
	for {
		if c.exited() {
			return fmt.Errorf("raw sshd exited at start (%v): %s", c.err, tail(logPath))
		}
		_, pidErr := pidFromFile(pidPath, cfgPath)
		_, loop, _ := listeners("/proc")
		if pidErr == nil && loop[h.cfg.RawPort] {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("raw sshd did not come up within 10s: %s", tail(logPath))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// cleanup undoes every step in reverse, ssh clients first, logging (not
// stopping at) failures.
func (h *harness) cleanup() {
	if len(h.clients) > 0 {
		h.log.Info("cleanup: stopping ssh clients", "n", len(h.clients))
		for _, c := range h.clients {
			c.stop(unix.SIGTERM, 3*time.Second)
		}
	}
	for i := len(h.undo) - 1; i >= 0; i-- {
		u := h.undo[i]
		h.log.Info("cleanup: " + u.what)
		if err := u.fn(); err != nil {
			h.log.Warn("cleanup step failed", "step", u.what, "err", err)
		}
	}
}

// removeUser deletes the tunnel user (and its group) when this run created
// them. userdel refuses while a process still runs as the user, so it retries
// briefly after the sshd sessions have gone.
func (h *harness) removeUser(userExisted, groupExisted bool) error {
	name := h.cfg.TunnelUser
	if !userExisted {
		if _, err := user.Lookup(name); err == nil {
			var err error
			for try := 0; try < 20; try++ {
				if _, err = runCmd(context.Background(), "userdel", name); err == nil {
					break
				}
				time.Sleep(250 * time.Millisecond)
			}
			if err != nil {
				return err
			}
		}
	}
	if !groupExisted {
		if _, err := user.LookupGroup(name); err == nil {
			if _, err := runCmd(context.Background(), "groupdel", name); err != nil {
				return err
			}
		}
	}
	return nil
}

func portFree(port int) error {
	l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		return fmt.Errorf("port %d on 127.0.0.1 is busy: %w", port, err)
	}
	return l.Close()
}

// checkEphemeralOverlap refuses a lease range inside the kernel's ephemeral
// port range. The storm's own connections to sshd take ephemeral ports (a
// run of consecutive ones per destination); a leased port held that way
// cannot be bound on 127.0.0.1, sshd still reports the forward as bound
// (on ::1 only), and the client waits forever.
func checkEphemeralOverlap(portRange string) error {
	lo, hi, ok := strings.Cut(portRange, "-")
	a, err1 := strconv.Atoi(lo)
	b, err2 := strconv.Atoi(hi)
	if !ok || err1 != nil || err2 != nil || a > b {
		return fmt.Errorf("port range %q: want LOW-HIGH", portRange)
	}
	raw, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return nil // no such knob: nothing to check
	}
	f := strings.Fields(string(raw))
	if len(f) != 2 {
		return nil
	}
	ea, _ := strconv.Atoi(f[0])
	eb, _ := strconv.Atoi(f[1])
	if a <= eb && ea <= b {
		return fmt.Errorf("port range %s overlaps the kernel's ephemeral ports %d-%d (net.ipv4.ip_local_port_range): "+
			"outgoing connections would take leased ports and forwards would fail at random; pick -port-range below %d", portRange, ea, eb, ea)
	}
	return nil
}

// checkRootOwnedParents checks what sshd will check of the hook's and the
// authorized_keys file's directories: root-owned, not group/world-writable,
// all the way up.
func checkRootOwnedParents(dir string) error {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	for p := abs; ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("work parent: %w", err)
		}
		var st unix.Stat_t
		if unix.Stat(p, &st) != nil || st.Uid != 0 || fi.Mode().Perm()&0o022 != 0 {
			return fmt.Errorf("work parent %s: %s must be root-owned and not group/world-writable (sshd refuses the hook otherwise); pick another -work-dir", abs, p)
		}
		if p == "/" {
			return nil
		}
	}
}

func machine(sshd string) Machine {
	m := Machine{NProc: runtime.NumCPU(), Go: runtime.Version()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	version := process.Command(sshd, "-V")
	version.Combined = true // on stderr
	out, _ := process.Exec{}.Run(context.Background(), version)
	m.SSHD, _, _ = strings.Cut(strings.TrimSpace(string(out)), "\n")
	return m
}
