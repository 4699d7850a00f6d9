package main

// Helpers for the end-to-end tests: they build the real mas4h binary, run
// real `mas4h slave` daemons (which run the system's sshd), and real OpenSSH
// and dropbear clients on loopback. Everything a test starts is stopped by
// pid in t.Cleanup, also when the test fails.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/sessions"
	"github.com/mas4h/mas4h/sshd/statedir"
)

const (
	e2eTunnelUser = "mas4h-e2e"
	// e2eOperatorUser is the operator user the slaves of e2eTunnelUser
	// make (the default for a tunnel user of another name).
	e2eOperatorUser = e2eTunnelUser + "-operator"
	e2eRoot         = "/var/lib/mas4h-e2e" // sshd demands root-owned parents: not /tmp
)

var testBin string // the mas4h binary under test

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() != 0 && os.Getenv("MAS4H_E2E") == "" {
			return m.Run() // e2e tests skip themselves
		}
		dir, err := os.MkdirTemp("", "mas4h-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		testBin = filepath.Join(dir, "mas4h")
		// The lean hook next to mas4h, as `make build` leaves them: slaves
		// install it as their AuthorizedKeysCommand.
		for pkg, out := range map[string]string{".": testBin, "../mas4h-authkeys": filepath.Join(dir, "mas4h-authkeys")} {
			if b, err := exec.Command("go", "build", "-o", out, pkg).CombinedOutput(); err != nil {
				fmt.Fprintf(os.Stderr, "building %s: %v\n%s", pkg, err, b)
				return 1
			}
		}
		_, lookupErr := user.Lookup(e2eTunnelUser)
		_, opLookupErr := user.Lookup(e2eOperatorUser)
		code := m.Run()
		if _, err := user.Lookup(e2eOperatorUser); opLookupErr != nil && err == nil {
			// The tests' slaves created it with the tunnel user's uid: it
			// goes first, with its group.
			exec.Command("userdel", "--force", e2eOperatorUser).Run()
		}
		if _, err := user.Lookup(e2eTunnelUser); lookupErr != nil && err == nil {
			// The tests' slaves created it; leave the host as it was.
			exec.Command("userdel", e2eTunnelUser).Run()
		}
		os.Remove(e2eRoot)
		return code
	}()
	os.Exit(code)
}

// requireE2E skips without root and the system parts, unless MAS4H_E2E is
// set: then a missing part is a failure (CI must not skip silently).
func requireE2E(t *testing.T, tools ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, tool := range append([]string{"/usr/sbin/sshd", "ssh"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) == 0 {
		return
	}
	if os.Getenv("MAS4H_E2E") != "" {
		t.Fatalf("MAS4H_E2E is set but this test lacks %s", strings.Join(missing, ", "))
	}
	t.Skipf("needs %s (set MAS4H_E2E=1 to make this a failure)", strings.Join(missing, ", "))
}

type env struct {
	t      *testing.T
	dir    string
	db     string
	portLo int
}

var envSeq atomic.Int64

func newEnv(t *testing.T, tools ...string) *env {
	requireE2E(t, tools...)
	if err := os.MkdirAll(e2eRoot, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Chmod(e2eRoot, 0o755)
	name := strings.ToLower(regexp.MustCompile(`[^A-Za-z0-9]+`).ReplaceAllString(t.Name(), "-"))
	dir := filepath.Join(e2eRoot, fmt.Sprintf("%.40s-%d-%d", name, os.Getpid(), envSeq.Add(1)))
	os.RemoveAll(dir)
	if err := os.MkdirAll(filepath.Join(dir, "keys"), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !t.Failed() {
			os.RemoveAll(dir)
		} else {
			t.Logf("left %s for inspection", dir)
		}
	})
	return &env{t: t, dir: dir, db: filepath.Join(dir, "registry.db"), portLo: freePortBlock(t, 20)}
}

// freePortBlock finds n consecutive free loopback ports for leases, below
// the kernel's ephemeral range (32768+): a client socket using 127.0.0.1:P
// would make sshd bind a forward on [::1]:P only.
func freePortBlock(t *testing.T, n int) int {
	for try := 0; try < 50; try++ {
		r, _ := rand.Int(rand.Reader, big.NewInt(110))
		lo := 21000 + int(r.Int64())*100
		free := true
		for p := lo; p < lo+n && free; p++ {
			l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
			if err != nil {
				free = false
				continue
			}
			l.Close()
		}
		if free {
			return lo
		}
	}
	t.Fatal("no free port block")
	return 0
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// mas4h runs the binary and returns stdout, stderr and the exit status.
func (e *env) mas4h(stdin string, args ...string) (string, string, int) {
	e.t.Helper()
	return exitOf(e.t, exec.Command(testBin, args...), stdin)
}

// exitOf runs cmd with stdin and returns its stdout, stderr and exit
// status; a command that cannot start fails the test.
func exitOf(t testing.TB, cmd *exec.Cmd, stdin string) (string, string, int) {
	t.Helper()
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return out.String(), errb.String(), ee.ExitCode()
	case err != nil:
		t.Fatalf("running %s: %v", strings.Join(cmd.Args, " "), err)
	}
	return out.String(), errb.String(), 0
}

type deviceKey struct {
	name    string
	private string // OpenSSH format
	public  string
	pub     ssh.PublicKey
	signer  ssh.Signer // signs slot requests
}

func (e *env) newKey(name string) deviceKey {
	e.t.Helper()
	key := testkit.NewKey(e.t, name)
	k := deviceKey{name: name, private: filepath.Join(e.dir, "keys", name), public: filepath.Join(e.dir, "keys", name+".pub"), pub: key.Public, signer: key.Signer}
	key.Write(e.t, k.private)
	return k
}

// dropbearKey converts a key for dbclient, which reads only its own format.
func (k deviceKey) dropbearKey(t *testing.T) string {
	out := k.private + ".dropbear"
	if b, err := exec.Command("dropbearconvert", "openssh", "dropbear", k.private, out).CombinedOutput(); err != nil {
		t.Fatalf("dropbearconvert: %v: %s", err, b)
	}
	return out
}

// enrol adds a device with a fresh key and returns the registry's view of it.
func (e *env) enrol(name string, extra ...string) (registry.Device, deviceKey) {
	e.t.Helper()
	k := e.newKey(name)
	args := append([]string{"device", "add", name, "--key", k.public, "--db", e.db, "-o", "json",
		"--port-range", fmt.Sprintf("%d-%d", e.portLo, e.portLo+19)}, extra...)
	out, stderr, code := e.mas4h("", args...)
	if code != 0 {
		e.t.Fatalf("device add %s: exit %d: %s", name, code, stderr)
	}
	var dev registry.Device
	if err := json.Unmarshal([]byte(out), &dev); err != nil {
		e.t.Fatalf("device add output: %v: %s", err, out)
	}
	return dev, k
}

// slaveProc is a running `mas4h slave` daemon.
type slaveProc struct {
	e    *env
	host string   // listen address (default 127.0.0.1)
	wrap []string // run the daemon under this command (ip netns exec NS, setpriv …)
	mode []string // --db PATH, or --master URL --token-file F
	// guard is --guard-ports: "none" unless a test in a network namespace
	// of its own asks, so that no test touches the host's firewall;
	// "default" gives no flag.
	guard    string
	name     string
	stateDir string
	port     int
	cmd      *exec.Cmd
	log      *syncBuffer
	done     chan struct{}
}

// syncBuffer is the shared locked buffer, under the name these tests knew.
type syncBuffer = testkit.Buffer

func (e *env) startSlave(name string) *slaveProc {
	e.t.Helper()
	return e.startSlaveWith(name, "--db", e.db)
}

// startSlaveWith starts a slave in the given mode (--db … or --master …).
func (e *env) startSlaveWith(name string, mode ...string) *slaveProc {
	e.t.Helper()
	sp := &slaveProc{e: e, mode: mode, name: name, stateDir: filepath.Join(e.dir, "slave-"+name), port: freePort(e.t)}
	sp.start()
	e.t.Cleanup(sp.cleanup)
	return sp
}

// start runs the daemon and waits until its sshd accepts connections.
func (sp *slaveProc) start() {
	t := sp.e.t
	t.Helper()
	sp.log = &syncBuffer{}
	host := sp.host
	if host == "" {
		host = "127.0.0.1"
	}
	args := append(sp.baseArgs(host), sp.mode...)
	if len(sp.wrap) > 0 {
		sp.cmd = exec.Command(sp.wrap[0], append(append(sp.wrap[1:], testBin), args...)...)
	} else {
		sp.cmd = exec.Command(testBin, args...)
	}
	sp.cmd.Stdout, sp.cmd.Stderr = sp.log, sp.log
	if err := sp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sp.done = make(chan struct{})
	go func() { sp.cmd.Wait(); close(sp.done) }()
	testkit.Eventually(t, 10*time.Second, func() bool {
		select {
		case <-sp.done:
			t.Fatalf("slave %s exited at start:\n%s", sp.name, sp.log)
		default:
		}
		up := dialOK(sp.port)
		if len(sp.wrap) > 0 { // maybe in another namespace, whose loopback is not ours
			up = sp.log.Contains("started sshd") || sp.log.Contains("adopted running sshd")
		}
		return sp.log.Contains("sshd") && sp.log.Contains("pid=") && up
	}, "slave %s did not come up:\n%s", sp.name, sp.log)
}

// baseArgs are the slave's flags but its mode.
func (sp *slaveProc) baseArgs(host string) []string {
	args := []string{"slave", "--name", sp.name, "--state-dir", sp.stateDir,
		"--ssh-listen", net.JoinHostPort(host, strconv.Itoa(sp.port)), "--tunnel-user", e2eTunnelUser, "--log-level", "debug"}
	switch sp.guard {
	case "":
		return append(args, "--guard-ports", "none")
	case "default": // no flag
		return args
	}
	return append(args, "--guard-ports", sp.guard)
}

// kill9 kills the daemon only; sshd and the tunnels must survive it.
func (sp *slaveProc) kill9() {
	sp.cmd.Process.Signal(syscall.SIGKILL)
	<-sp.done
}

// sshdPid is the slave's sshd from its pid file, if that process runs with
// the slave's config: sshd cannot remove the file from its root-owned
// directory when it exits, so the pid in it may be stale.
func (sp *slaveProc) sshdPid() int {
	b, err := os.ReadFile(statedir.Dir(sp.stateDir).PidFile())
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	if cmdline, ok := sessions.Cmdline("/proc", pid); !ok || !bytes.Contains(cmdline, []byte(statedir.Dir(sp.stateDir).SSHDConfig())) {
		return 0
	}
	return pid
}

// cleanup stops the daemon, then the sessions and the sshd it left running
// (by design it leaves them), all found by pid.
func (sp *slaveProc) cleanup() {
	if sp.cmd.Process != nil {
		sp.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-sp.done:
		case <-time.After(5 * time.Second):
			sp.cmd.Process.Kill()
			<-sp.done
		}
	}
	pid := sp.sshdPid()
	if u, err := user.Lookup(e2eTunnelUser); err == nil && pid > 0 {
		uid, _ := strconv.Atoi(u.Uid)
		d := sessions.Discoverer{ProcRoot: "/proc", ListenerPID: pid, TunnelUID: uid, LogPath: statedir.Dir(sp.stateDir).Log(), SSHPort: sp.port}
		if sessions, err := d.Sessions(); err == nil {
			for _, s := range sessions {
				for _, p := range s.PIDs {
					syscall.Kill(p, syscall.SIGKILL)
				}
			}
		}
	}
	if pid > 0 {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	if sp.e.t.Failed() {
		sp.e.t.Logf("slave %s log:\n%s", sp.name, sp.log)
		if b, err := os.ReadFile(statedir.Dir(sp.stateDir).Log()); err == nil {
			sp.e.t.Logf("sshd log:\n%s", b)
		}
	}
}

func dialOK(port int) bool {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 200*time.Millisecond)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// tunnelClient is a running ssh or dbclient process.
type tunnelClient struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{}
	err    error
}

func (c *tunnelClient) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// wait waits up to d for the client to exit and returns its exit status
// (-1 if it is still running).
func (c *tunnelClient) wait(d time.Duration) int {
	select {
	case <-c.done:
		if ee, ok := c.err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if c.err != nil {
			return -2
		}
		return 0
	case <-time.After(d):
		return -1
	}
}

func (e *env) startClient(name string, args ...string) *tunnelClient {
	e.t.Helper()
	cmd := exec.Command(name, args...)
	c := &tunnelClient{cmd: cmd, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = c.stderr
	cmd.Stdout = io.Discard
	cmd.Env = append(os.Environ(), "HOME="+e.dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	e.t.Cleanup(func() {
		if !c.exited() {
			cmd.Process.Kill()
			<-c.done
		}
	})
	return c
}

// sshArgs are OpenSSH client options for a device: no config, no agent, no
// host-key prompts, fail fast on forwarding errors.
func sshArgs(k deviceKey, port int, extra ...string) []string {
	args := []string{"-F", "/dev/null", "-i", k.private, "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
		"-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "ExitOnForwardFailure=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR", "-p", strconv.Itoa(port)}
	return append(args, extra...)
}

// tunnel starts `ssh -N -R spec` as a device would.
func (e *env) tunnel(k deviceKey, sp *slaveProc, spec string) *tunnelClient {
	return e.startClient("ssh", sshArgs(k, sp.port, "-N", "-R", spec, e2eTunnelUser+"@127.0.0.1")...)
}

// upTunnel starts k's tunnel from dev's port on sp to the echo server es,
// and waits until the port listens.
func (e *env) upTunnel(k deviceKey, sp *slaveProc, dev registry.Device, es *echoServer) *tunnelClient {
	e.t.Helper()
	c := e.tunnel(k, sp, fmt.Sprintf("%d:localhost:%d", port(dev), es.port))
	if !waitListen(e.t, port(dev), c, 10*time.Second) {
		e.t.Fatalf("tunnel of %s did not come up: %s", k.name, c.stderr)
	}
	return c
}

// waitListen waits until port accepts on loopback; it is false if the
// client exits first or within passes.
func waitListen(t *testing.T, port int, c *tunnelClient, within time.Duration) bool {
	t.Helper()
	listening := false
	testkit.Wait(within, func() bool {
		listening = dialOK(port)
		return listening || c != nil && c.exited()
	})
	return listening
}

// echoServer is the device-side target: it greets like an SSH server and
// echoes what it reads. It counts connections so a test can tell whether a
// refused forward ever reached it.
type echoServer struct {
	port    int
	accepts atomic.Int64
}

const echoBanner = "SSH-2.0-mas4h-echo\r\n"

func startEcho(t *testing.T) *echoServer { return startEchoOn(t, "127.0.0.1") }

func startEchoOn(t *testing.T, host string) *echoServer {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		t.Fatal(err)
	}
	es := &echoServer{port: l.Addr().(*net.TCPAddr).Port}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			es.accepts.Add(1)
			go func() {
				defer c.Close()
				c.Write([]byte(echoBanner))
				io.Copy(c, c)
			}()
		}
	}()
	return es
}

// roundTrip connects to port on the slave's loopback, expects the echo
// banner, sends a line and expects it back.
func roundTrip(port int) error {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	r := bufio.NewReader(c)
	banner, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading banner: %w", err)
	}
	if banner != echoBanner {
		return fmt.Errorf("banner %q", banner)
	}
	msg := fmt.Sprintf("ping %d\n", time.Now().UnixNano())
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	back, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("reading echo: %w", err)
	}
	if back != msg {
		return fmt.Errorf("echo %q, want %q", back, msg)
	}
	return nil
}

func port(dev registry.Device) int { return dev.Forwards[0].RemotePort }

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// newCmd returns a runner for a command that reports stdout, stderr and the
// exit status, with no environment but PATH (as sshd gives its hook).
func newCmd(t testing.TB, name string, args ...string) func() (string, string, int) {
	return func() (string, string, int) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = []string{"PATH=/usr/bin:/bin:/usr/sbin:/sbin"}
		return exitOf(t, cmd, "")
	}
}
