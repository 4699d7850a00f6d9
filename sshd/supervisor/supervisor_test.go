package supervisor

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/process"
	"github.com/mas4h/mas4h/sshd/sessions"
)

// TestMain makes this test binary the fake sshd when it runs as "sshd"
// (through a link named so): the supervisor checks /proc/PID/exe against
// the sshd binary, so a shell script would not do.
func TestMain(m *testing.M) {
	if filepath.Base(os.Args[0]) == "sshd" {
		fakeSSHD(os.Args[1:])
		return
	}
	os.Exit(m.Run())
}

// fakeSSHD stands in for sshd with the argv the supervisor gives it
// (-D -f CONFIG -E LOG): it writes its pid where CONFIG's PidFile says and
// waits to be killed; with CONFIG's line "Fail yes" it logs a reason and
// exits at once.
func fakeSSHD(args []string) {
	if len(args) < 5 {
		os.Exit(2)
	}
	cfg, logPath := args[2], args[4]
	b, err := os.ReadFile(cfg)
	if err != nil {
		os.Exit(1)
	}
	if strings.Contains(string(b), "\nFail yes") {
		f, _ := os.OpenFile(logPath, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		fmt.Fprintln(f, "fatal: Bind to port 2222 on 0.0.0.0 failed: Address already in use.")
		os.Exit(255)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "PidFile "); ok {
			os.WriteFile(p, []byte(fmt.Sprintln(os.Getpid())), 0o644)
		}
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, unix.SIGTERM, unix.SIGHUP)
	<-sig
	os.Exit(0)
}

type rig struct {
	t   *testing.T
	dir string
	cfg Config
	sup *Supervisor
}

func newRig(t *testing.T) *rig {
	dir := t.TempDir()
	g := &rig{t: t, dir: dir}
	self, err := os.Executable()
	must(t, err)
	sshd := filepath.Join(dir, "sshd")
	must(t, os.Symlink(self, sshd))
	g.cfg = Config{SSHD: sshd, ConfigPath: filepath.Join(dir, "sshd_config"), LogPath: filepath.Join(dir, "sshd.log"),
		PidPath: filepath.Join(dir, "sshd.pid"), ListenAddr: "127.0.0.1:0", UID: os.Getuid(), GID: os.Getgid()}
	g.config("")
	g.sup = New(g.cfg, process.Exec{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	t.Cleanup(func() {
		if pid := g.sup.PID(); pid > 0 {
			unix.Kill(pid, unix.SIGKILL)
		}
	})
	return g
}

func (g *rig) config(extra string) {
	must(g.t, os.WriteFile(g.cfg.ConfigPath, []byte("PidFile "+g.cfg.PidPath+"\n"+extra), 0o644))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// waitGone waits for pid to end (the supervisor's Detached reaps it).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	testkit.Eventually(t, 5*time.Second, func() bool { return !sessions.Alive("/proc", pid) }, "pid %d still alive", pid)
}

func TestStartAndAdopt(t *testing.T) {
	g := newRig(t)
	must(t, g.sup.Start(context.Background()))
	pid := g.sup.PID()
	if pid == 0 || !g.sup.running() {
		t.Fatalf("started: pid %d, running %v", pid, g.sup.running())
	}
	// A restarted daemon adopts it from the pid file.
	again := New(g.cfg, process.Exec{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if !again.Adopt() || again.PID() != pid {
		t.Fatalf("adopt: pid %d, want %d", again.PID(), pid)
	}
	must(t, again.Reload()) // SIGHUP: the fake ends, as an sshd would re-exec
}

// The pid file of a process that is not this slave's sshd (the pid was
// reused, or the file is stale) is not adopted.
func TestAdoptRefusesStrangers(t *testing.T) {
	g := newRig(t)
	sleeper := exec.Command("sleep", "30")
	must(t, sleeper.Start())
	defer func() { sleeper.Process.Kill(); sleeper.Wait() }()
	for name, content := range map[string]string{
		"another program":  fmt.Sprint(sleeper.Process.Pid),
		"a dead process":   "999999999",
		"garbage":          "sshd",
		"an empty file":    "",
		"pid 1 (not ours)": "1",
	} {
		must(t, os.WriteFile(g.cfg.PidPath, []byte(content+"\n"), 0o644))
		if g.sup.Adopt() {
			t.Errorf("%s: adopted pid %d", name, g.sup.PID())
		}
	}
	os.Remove(g.cfg.PidPath)
	if g.sup.Adopt() {
		t.Error("adopted without a pid file")
	}
}

// The pid file is the tunnel user's word: a process that is not an sshd
// (another program whose command line names this slave's config, such as
// an admin's `less sshd_config`) or not the tunnel user's is not adopted;
// the slave's real sshd is, whatever the pid file says.
func TestAdoptChecksTheProcess(t *testing.T) {
	g := newRig(t)
	impostor := &exec.Cmd{Path: "/bin/sleep", Args: []string{"/usr/sbin/sshd -D -f " + g.cfg.ConfigPath, "30"}}
	must(t, impostor.Start())
	defer func() { impostor.Process.Kill(); impostor.Wait() }()
	must(t, os.WriteFile(g.cfg.PidPath, []byte(fmt.Sprintln(impostor.Process.Pid)), 0o644))
	if g.sup.Adopt() {
		t.Errorf("adopted %d, a sleep whose command line names the config", g.sup.PID())
	}

	must(t, g.sup.Start(context.Background()))
	pid := g.sup.PID()
	other := g.cfg
	other.UID++
	if sup := New(other, process.Exec{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil))); sup.Adopt() {
		t.Errorf("adopted sshd pid %d as another tunnel user's", pid)
	}

	// The tunnel user writes the impostor's pid, or makes the file a link:
	// the real sshd is found and adopted all the same.
	must(t, os.WriteFile(g.cfg.PidPath, []byte(fmt.Sprintln(impostor.Process.Pid)), 0o644))
	if sup := New(g.cfg, process.Exec{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil))); !sup.Adopt() || sup.PID() != pid {
		t.Errorf("with the impostor's pid in the file: adopted %d, want %d", sup.PID(), pid)
	}
	must(t, os.Remove(g.cfg.PidPath))
	must(t, os.Symlink(filepath.Join(g.dir, "elsewhere"), g.cfg.PidPath))
	if sup := New(g.cfg, process.Exec{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil))); !sup.Adopt() || sup.PID() != pid {
		t.Errorf("with a link as the pid file: adopted %d, want %d", sup.PID(), pid)
	}
}

// Reload signals only the process it adopted: not one that started later
// under the same pid, not a dead one.
func TestReloadChecksThePid(t *testing.T) {
	g := newRig(t)
	must(t, g.sup.Start(context.Background()))
	pid := g.sup.PID()
	g.sup.mu.Lock()
	g.sup.startTick++ // as if pid were a later process
	g.sup.mu.Unlock()
	if err := g.sup.Reload(); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Errorf("reload of a reused pid: %v", err)
	}
	if !sessions.Alive("/proc", pid) {
		t.Fatal("the process was signalled")
	}
	g.sup.set(pid)
	must(t, g.sup.Reload()) // the fake exits on SIGHUP
	waitGone(t, pid)
	if err := g.sup.Reload(); err == nil {
		t.Error("reloaded a dead sshd")
	}
}

// Watch's look: an sshd found dead is started again; one restarted from
// outside (its own systemd unit) is adopted instead of fought.
func TestRestart(t *testing.T) {
	g := newRig(t)
	must(t, g.sup.Start(context.Background()))
	first := g.sup.PID()
	unix.Kill(first, unix.SIGKILL)
	waitGone(t, first)
	if n := g.sup.check(context.Background(), 0); n != 0 {
		t.Fatalf("restart failed (%d)", n)
	}
	second := g.sup.PID()
	if second == first || !g.sup.running() {
		t.Fatalf("after restart: pid %d (was %d), running %v", second, first, g.sup.running())
	}
	// Someone else starts it: the supervisor adopts that one.
	other := New(g.cfg, process.Exec{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	unix.Kill(second, unix.SIGKILL)
	waitGone(t, second)
	must(t, other.Start(context.Background()))
	g.sup.check(context.Background(), 0)
	if g.sup.PID() != other.PID() {
		t.Errorf("pid %d, want the outside sshd's %d", g.sup.PID(), other.PID())
	}
}

// A pid that now belongs to another process (it started later) is not the
// sshd the supervisor knew: it restarts sshd instead of trusting the pid.
func TestPidReuse(t *testing.T) {
	g := newRig(t)
	root := t.TempDir()
	proc := func(pid int, tick uint64, cmdline string) {
		d := filepath.Join(root, fmt.Sprint(pid))
		must(t, os.MkdirAll(d, 0o755))
		must(t, os.WriteFile(filepath.Join(d, "stat"), []byte(fmt.Sprintf("%d (sshd) S 1 %d %d 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 %d 0 0\n", pid, pid, pid, tick)), 0o644))
		must(t, os.WriteFile(filepath.Join(d, "cmdline"), []byte(cmdline), 0o644))
	}
	g.cfg.ProcRoot = root
	started := 0
	g.sup = New(g.cfg, startFunc(func(argv []string) int {
		started++
		pid := 5000 + started
		proc(pid, 100*uint64(started), strings.Join(argv, "\x00"))
		must(t, os.WriteFile(g.cfg.PidPath, []byte(fmt.Sprint(pid)), 0o644))
		return pid
	}), nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	must(t, g.sup.Start(context.Background()))
	if g.sup.PID() != 5001 || !g.sup.running() {
		t.Fatalf("pid %d running %v", g.sup.PID(), g.sup.running())
	}
	// sshd died and pid 5001 went to another program, started later.
	proc(5001, 999, "/usr/bin/some-daemon\x00--flag")
	if g.sup.running() {
		t.Fatal("a reused pid counts as the running sshd")
	}
	g.sup.check(context.Background(), 0)
	if g.sup.PID() != 5002 || started != 2 {
		t.Errorf("after the pid was reused: pid %d, %d starts", g.sup.PID(), started)
	}
}

// startFunc is a Starter for fixtures: it records and returns a pid.
type startFunc func(argv []string) int

func (f startFunc) Start(_ context.Context, c process.Cmd) (process.Process, error) {
	return fixtureProcess(f(c.Argv)), nil
}

// fixtureProcess is a process of a fixture /proc: it never exits.
type fixtureProcess int

func (p fixtureProcess) Pid() int               { return int(p) }
func (p fixtureProcess) Signal(os.Signal) error { return nil }
func (p fixtureProcess) Done() <-chan struct{}  { return nil }
func (p fixtureProcess) Wait() error            { select {} }

// A failing start says why, from sshd's own log; a taken port is named.
func TestStartFailures(t *testing.T) {
	g := newRig(t)
	g.config("Fail yes\n")
	err := g.sup.Start(context.Background())
	if err == nil || !strings.Contains(err.Error(), "sshd exited at start") || !strings.Contains(err.Error(), "Address already in use") {
		t.Fatalf("error %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	defer l.Close()
	g.cfg.ListenAddr = l.Addr().String()
	g.sup = New(g.cfg, process.Exec{}, nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	err = g.sup.Start(context.Background())
	if _, ok := err.(*PortInUseError); !ok {
		t.Fatalf("error %v, want a PortInUseError", err)
	}
}
