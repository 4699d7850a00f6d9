package main

// End-to-end tests of the device side: `mas4h agent` with OpenSSH and with
// dropbear in a device network namespace, the shell client under busybox
// with dbclient and busybox wget, and `make dist`.

import (
	"context"
	"debug/elf"
	"debug/macho"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/sshd/sessions"
	"github.com/mas4h/mas4h/sshd/statedir"
)

// startMasterOn starts a master listening on host (the veth's host side),
// so that a device in a namespace reaches it.
func (e *env) startMasterOn(host string) *masterProc {
	e.t.Helper()
	m := &masterProc{e: e, url: fmt.Sprintf("http://%s:%d", host, freePort(e.t)),
		db: filepath.Join(e.dir, "master.db"), adminToken: filepath.Join(e.dir, "admin.token"),
		slaveToken: filepath.Join(e.dir, "slave.token")}
	m.start()
	e.t.Cleanup(m.stop)
	return m
}

// startSlaveFor starts a slave under m listening on every address and
// named in slots by publicHost.
func (m *masterProc) startSlaveFor(name, publicHost string, extra ...string) *slaveProc {
	e := m.e
	e.t.Helper()
	mode := append([]string{"--master", m.url, "--token-file", m.slaveToken, "--public-host", publicHost}, extra...)
	sp := &slaveProc{e: e, host: "0.0.0.0", mode: mode, name: name, stateDir: filepath.Join(e.dir, "slave-"+name), port: freePort(e.t)}
	sp.start()
	e.t.Cleanup(sp.cleanup)
	return sp
}

// sessions lists the pids of this slave's live sshd sessions.
func (sp *slaveProc) sessions(t *testing.T) [][]int {
	t.Helper()
	u, err := user.Lookup(e2eTunnelUser)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	d := sessions.Discoverer{ProcRoot: "/proc", ListenerPID: sp.sshdPid(), TunnelUID: uid, LogPath: statedir.Dir(sp.stateDir).Log(), SSHPort: sp.port}
	ss, err := d.Sessions()
	if err != nil {
		t.Fatal(err)
	}
	var out [][]int
	for _, s := range ss {
		out = append(out, s.PIDs)
	}
	return out
}

// killSessions ends this slave's sessions from the slave's side, as the
// reaper does, and returns how many it killed.
func (sp *slaveProc) killSessions(t *testing.T) int {
	t.Helper()
	ss := sp.sessions(t)
	for _, pids := range ss {
		for _, p := range pids {
			syscall.Kill(p, syscall.SIGTERM)
		}
	}
	return len(ss)
}

// stopAll stops the daemon, its sessions and its sshd, and waits until the
// sshd is gone so that the port can be bound again.
func (sp *slaveProc) stopAll(t *testing.T) {
	t.Helper()
	pid := sp.sshdPid()
	sp.cleanup()
	testkit.Eventually(t, 10*time.Second, func() bool { return pid <= 0 || syscall.Kill(pid, 0) != nil }, "sshd %d did not exit", pid)
	testkit.Eventually(t, 10*time.Second, func() bool { return !dialOK(sp.port) }, "port %d still accepts after sshd %d exited", sp.port, pid)
}

// devProc is a device-side process (agent or script) in its own process
// group; cleanup stops it with SIGTERM, then kills its group and the
// children it started by pid.
type devProc struct {
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
	err  error
}

func (e *env) startDevProc(env []string, name string, args ...string) *devProc {
	e.t.Helper()
	p := &devProc{cmd: exec.Command(name, args...), log: &syncBuffer{}, done: make(chan struct{})}
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	p.cmd.Env = append(os.Environ(), env...)
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	e.t.Cleanup(func() {
		kids := childPids(p.cmd.Process.Pid)
		p.stop(5 * time.Second)
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		for _, k := range kids {
			syscall.Kill(k, syscall.SIGKILL)
		}
		if e.t.Failed() {
			e.t.Logf("%s log:\n%s", name, p.log)
		}
	})
	return p
}

// stop sends SIGTERM and waits up to d; it returns the exit status (-1:
// still running, then killed).
func (p *devProc) stop(d time.Duration) int {
	select {
	case <-p.done:
	default:
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(d):
			p.cmd.Process.Kill()
			<-p.done
			return -1
		}
	}
	if ee, ok := p.err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return 0
}

// childPids lists the processes whose parent is pid.
func childPids(pid int) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 2 && f[1] == strconv.Itoa(pid) {
			out = append(out, n)
		}
	}
	return out
}

// childNamed waits for a child of pid running comm and returns its pid.
func childNamed(t *testing.T, pid int, comm string, within time.Duration) int {
	t.Helper()
	child := 0
	testkit.Eventually(t, within, func() bool {
		for _, c := range childPids(pid) {
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c)); err == nil && strings.TrimSpace(string(b)) == comm {
				child = c
				return true
			}
		}
		return false
	}, "no %s child of %d", comm, pid)
	return child
}

func vmRSS(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return "?"
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			return strings.Join(strings.Fields(strings.TrimPrefix(l, "VmRSS:")), " ")
		}
	}
	return "?"
}

// waitRoundTrip waits until bytes go through port and sp has a session
// (other tests on this host may use the same port range), and returns how
// long it took.
func waitRoundTrip(t *testing.T, sp *slaveProc, port int, since time.Time, within time.Duration, what string, logs fmt.Stringer) time.Duration {
	t.Helper()
	testkit.Eventually(t, within-time.Since(since), func() bool { return len(sp.sessions(t)) > 0 && roundTrip(port) == nil },
		"%s: tunnel not up; device log:\n%s", what, logs)
	return time.Since(since)
}

// reconnects ends the device's session with kill and waits until the
// device is back: a new session on sp that carries bytes through port. It
// returns how long that took.
func reconnects(t *testing.T, sp *slaveProc, port int, within time.Duration, what string, logs fmt.Stringer, kill func()) time.Duration {
	t.Helper()
	old := sp.sessions(t)
	kill()
	killed := time.Now()
	waitNewSession(t, sp, old, within)
	return waitRoundTrip(t, sp, port, killed, within, what, logs)
}

// killOneSession ends the slave's one session, as the reaper does.
func (sp *slaveProc) killOneSession(t *testing.T) {
	t.Helper()
	if n := sp.killSessions(t); n != 1 {
		t.Fatalf("killed %d sessions, want 1", n)
	}
}

// waitNewSession waits until the slave has a session other than old.
func waitNewSession(t *testing.T, sp *slaveProc, old [][]int, within time.Duration) {
	t.Helper()
	seen := map[int]bool{}
	for _, pids := range old {
		for _, p := range pids {
			seen[p] = true
		}
	}
	testkit.Eventually(t, within, func() bool {
		for _, pids := range sp.sessions(t) {
			if len(pids) > 0 && !seen[pids[0]] {
				return true
			}
		}
		return false
	}, "no new session on slave %s", sp.name)
}

func countLines(log, level, msg string) int {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "level="+level) && strings.Contains(l, msg) {
			n++
		}
	}
	return n
}

// OpenSSH with `mas4h agent`; dropbear with the standalone static
// mas4h-agent (an OpenSSH-format key, which the agent converts).
func TestAgentOpenSSH(t *testing.T)  { testAgent(t, "openssh", "ssh", false) }
func TestAgentDropbear(t *testing.T) { testAgent(t, "dropbear", "dbclient", true) }

// buildAgent builds the standalone agent as `make dist` does.
func buildAgent(t *testing.T, e *env) string {
	t.Helper()
	bin := filepath.Join(e.dir, "mas4h-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", bin, "../mas4h-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building mas4h-agent: %v: %s", err, out)
	}
	return bin
}

// testAgent runs `mas4h agent` in a device namespace against a master and a
// slave on the host: the tunnel comes up; the slave kills the session and
// the agent reconnects; the master stops and the agent reconnects to the
// last slave directly; the slave's host key changes and the agent refuses,
// says why and backs off, until the master is back with the new key.
func testAgent(t *testing.T, client, comm string, standalone bool) {
	e := newEnv(t, "ip", comm)
	d := newNetnsDevice(t)
	es := startEchoOn(t, d.hostIP)
	m := e.startMasterOn(d.hostIP)
	sp := m.startSlaveFor("s1", d.hostIP)
	waitSlavesAlive(t, m, 1)
	dev, k := m.enrol("pi-agent-"+client, fmt.Sprintf("ssh=%s:%d,probe=ssh-banner", d.hostIP, es.port))
	p := dev.Forwards[0].RemotePort
	state := filepath.Join(e.dir, "agent-state")

	argv := []string{"netns", "exec", d.ns, testBin, "agent"}
	if standalone {
		argv = []string{"netns", "exec", d.ns, buildAgent(t, e)}
	}
	argv = append(argv, "--master", m.url, "--insecure-http", "--key", k.private, "--state-dir", state, "--ssh-client", client, "--log-level", "debug")
	start := time.Now()
	ag := e.startDevProc(nil, "ip", argv...)
	pid := ag.cmd.Process.Pid // ip netns exec execs the agent: same pid
	took := waitRoundTrip(t, sp, p, start, 20*time.Second, "first connect", ag.log)
	if !ag.log.Contains("plain http (--insecure-http)") {
		t.Errorf("the agent did not warn about the plain http master:\n%s", ag.log)
	}
	t.Logf("%s: tunnel up %s after the agent started", client, took.Round(time.Millisecond))
	// "up" is logged once the client has run 5 s.
	testkit.Eventually(t, 10*time.Second, func() bool { return ag.log.Contains(`msg="tunnel up"`) }, "the agent did not log the tunnel up:\n%s", ag.log)
	t.Logf("%s: agent (%s) VmRSS with the tunnel up: %s", client, filepath.Base(argv[3]), vmRSS(pid))

	// The slave kills the session: the agent reconnects within its backoff.
	took = reconnects(t, sp, p, 15*time.Second, "after the slave killed the session", ag.log, func() { sp.killOneSession(t) })
	t.Logf("%s: tunnel up again %s after the slave killed the session", client, took.Round(time.Millisecond))

	// The master goes away; the client is killed: the agent reconnects to
	// the last slave directly.
	m.stop()
	took = reconnects(t, sp, p, 20*time.Second, "master down", ag.log, func() {
		syscall.Kill(childNamed(t, pid, comm, 5*time.Second), syscall.SIGKILL)
	})
	t.Logf("%s: with the master down, tunnel up again %s after the client was killed", client, took.Round(time.Millisecond))
	if !strings.Contains(ag.log.String(), "connecting to the last slave directly") {
		t.Errorf("the agent did not say it used the last slot:\n%s", ag.log)
	}

	// The slave's host key changes while the master is down: the agent
	// cannot learn the new key and must refuse, say why, and back off.
	sp.stopAll(t)
	keys, _ := filepath.Glob(statedir.Dir(sp.stateDir).HostKey() + "*")
	if len(keys) == 0 {
		t.Fatal("no host key files to delete")
	}
	for _, f := range keys {
		os.Remove(f)
	}
	logMark := len(ag.log.String())
	sp.start()
	time.Sleep(12 * time.Second) // a window to count refusals in, not a wait for one
	since := ag.log.String()[logMark:]
	if dialOK(p) {
		t.Fatal("the agent's tunnel is up through a slave with an unpinned host key")
	}
	if n := countLines(since, "WARN", "host key mismatch"); n != 1 {
		t.Errorf("host key mismatch logged %d times (want once):\n%s", n, since)
	}
	attempts := strings.Count(since, `msg="ssh client started"`)
	if attempts < 1 || attempts > 5 {
		t.Errorf("%d client runs in 12 s of host-key refusals: want a few, backing off", attempts)
	}
	t.Logf("%s: %d attempts in 12 s of host-key refusals; the agent said: %s", client, attempts, firstLineWith(since, "host key mismatch"))

	// The master returns; the slave's heartbeat presents the new key, which
	// waits until an admin accepts it (host keys are bound to the slave's
	// name); the agent picks it up at its next attempt.
	m.start()
	back := time.Now()
	testkit.Eventually(t, 30*time.Second, func() bool {
		_, _, code := m.admin("slave", "accept-key", "s1")
		return code == 0
	}, "the slave's new host key never waited for acceptance")
	took = waitRoundTrip(t, sp, p, back, 75*time.Second, "master back with the new host key", ag.log)
	t.Logf("%s: tunnel up %s after the master came back with the new host key", client, took.Round(time.Millisecond))

	// SIGTERM: the agent stops its client and exits 0.
	sshPid := childNamed(t, pid, comm, 5*time.Second)
	if code := ag.stop(10 * time.Second); code != 0 {
		t.Errorf("agent exit status %d after SIGTERM", code)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return syscall.Kill(sshPid, 0) != nil }, "ssh client %d still runs after the agent stopped", sshPid)
	if !strings.Contains(ag.log.String(), "agent stopped") {
		t.Errorf("no clean stop logged:\n%s", ag.log)
	}
}

func firstLineWith(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) && strings.Contains(l, "level=WARN") {
			return l
		}
	}
	return ""
}

// busyboxPath makes a directory of busybox applets plus dbclient and
// dropbearkey, and nothing else: an OpenWrt-like PATH.
func busyboxPath(t *testing.T, e *env, extra ...string) string {
	t.Helper()
	dir := filepath.Join(e.dir, "busybox-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		t.Fatalf("busybox --list: %v", err)
	}
	for _, applet := range strings.Fields(string(out)) {
		os.Symlink(bb, filepath.Join(dir, applet))
	}
	for _, tool := range append([]string{"dbclient", "dropbearkey"}, extra...) {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		os.Symlink(p, filepath.Join(dir, tool))
	}
	return dir
}

func TestClientScriptBusyboxDropbear(t *testing.T) {
	e := newEnv(t, "busybox", "dbclient", "dropbearkey", "dropbearconvert")
	es := startEcho(t)
	m := e.startMaster()
	sp := m.startSlave("s1")
	waitSlavesAlive(t, m, 1)
	dev, k := m.enrol("ap-script", fwd(es))
	p := dev.Forwards[0].RemotePort
	out, stderr, code := e.mas4h("", "client-script", "--master", m.url, "--insecure-http", "--device", "ap-script", "--ssh-client", "dropbear", "--install", "openwrt")
	if code != 0 {
		t.Fatalf("client-script: %d %s", code, stderr)
	}
	script := filepath.Join(e.dir, "mas4h-client.sh")
	if err := os.WriteFile(script, []byte(out), 0o755); err != nil {
		t.Fatal(err)
	}
	// OpenWrt keys come from dropbearkey, in dropbear's format, no .pub.
	key := k.dropbearKey(t)
	os.Chmod(key, 0o600)
	state := filepath.Join(e.dir, "script-state")
	// OpenWrt with openssh-keygen, which signs the slot requests (with the
	// dropbear key converted by dropbearconvert).
	bin := busyboxPath(t, e, "ssh-keygen", "dropbearconvert")
	env := []string{"PATH=" + bin, "MAS4H_KEY=" + key, "MAS4H_STATE=" + state}

	pubWant := strings.Join(strings.Fields(string(mustRead(t, k.public)))[:2], " ")
	cmd := exec.Command(filepath.Join(bin, "sh"), script, "pubkey")
	cmd.Env = env
	if pub, err := cmd.CombinedOutput(); err != nil || strings.TrimSpace(string(pub)) != pubWant {
		t.Fatalf("pubkey: %v: %q, want %q", err, pub, pubWant)
	}

	start := time.Now()
	sc := e.startDevProc(env, filepath.Join(bin, "sh"), script, "run")
	took := waitRoundTrip(t, sp, p, start, 20*time.Second, "script first connect", sc.log)
	t.Logf("script: tunnel up %s after start", took.Round(time.Millisecond))
	if !sc.log.Contains("WARNING: the master " + m.url + " is plain http") {
		t.Errorf("the script did not warn about the plain http master:\n%s", sc.log)
	}

	took = reconnects(t, sp, p, 15*time.Second, "script after the session was killed", sc.log, func() { sp.killOneSession(t) })
	t.Logf("script: tunnel up again %s after the slave killed the session", took.Round(time.Millisecond))

	// The master goes away: the script reconnects with its last slot.
	m.stop()
	took = reconnects(t, sp, p, 20*time.Second, "script with the master down", sc.log, func() {
		syscall.Kill(childNamed(t, sc.cmd.Process.Pid, "dbclient", 5*time.Second), syscall.SIGKILL)
	})
	t.Logf("script: with the master down, tunnel up again %s after dbclient was killed", took.Round(time.Millisecond))
	if !strings.Contains(sc.log.String(), "using the last slot") {
		t.Errorf("script did not say it used the last slot:\n%s", sc.log)
	}
	dbPid := childNamed(t, sc.cmd.Process.Pid, "dbclient", 5*time.Second)
	if code := sc.stop(10 * time.Second); code != 0 {
		t.Errorf("script exit status %d after SIGTERM", code)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return syscall.Kill(dbPid, 0) != nil }, "dbclient %d still runs after the script stopped", dbPid)
}

// A master answering hostile or refusing values never gets them onto the
// client's command line or into a shell: the script backs off and says why.
func TestClientScriptBadMaster(t *testing.T) {
	e := newEnv(t, "busybox", "dbclient", "dropbearkey")
	var mu sync.Mutex
	answer := func(w http.ResponseWriter) {}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		answer(w)
	}))
	defer srv.Close()
	pwned := filepath.Join(e.dir, "pwned")
	hostile := "MAS4H_SLAVE='s1'\nMAS4H_HOST='$(touch " + pwned + ")'\nMAS4H_PORT='22'\nMAS4H_USER='u'\n" +
		"MAS4H_HOST_KEY_1='ssh-ed25519 AAAA'\nMAS4H_FORWARDS='1:localhost:22;touch " + pwned + "'\n"
	set := func(f func(w http.ResponseWriter)) { mu.Lock(); answer = f; mu.Unlock() }
	set(func(w http.ResponseWriter) { fmt.Fprint(w, hostile) })

	out, stderr, code := e.mas4h("", "client-script", "--master", srv.URL, "--insecure-http", "--ssh-client", "dropbear")
	if code != 0 {
		t.Fatalf("client-script: %s", stderr)
	}
	script := filepath.Join(e.dir, "c.sh")
	os.WriteFile(script, []byte(out), 0o755)
	_, k := e.enrol("ap-bad")
	key := k.dropbearKey(t)
	os.Chmod(key, 0o600)
	bin := busyboxPath(t, e)
	// A dbclient that records that it ran.
	ran := filepath.Join(e.dir, "dbclient-ran")
	os.Remove(filepath.Join(bin, "dbclient"))
	os.WriteFile(filepath.Join(bin, "dbclient"), []byte("#!/bin/sh\necho \"$@\" >> "+ran+"\nexit 1\n"), 0o755)
	env := []string{"PATH=" + bin, "MAS4H_KEY=" + key, "MAS4H_STATE=" + filepath.Join(e.dir, "state")}
	sc := e.startDevProc(env, filepath.Join(bin, "sh"), script, "run")
	waitLog := func(msg string, within time.Duration) {
		t.Helper()
		testkit.Eventually(t, within, func() bool { return sc.log.Contains(msg) }, "the script did not say %q:\n%s", msg, sc.log)
	}
	waitLog("not a usable slot", 15*time.Second)
	set(func(w http.ResponseWriter) { w.WriteHeader(403); fmt.Fprint(w, "MAS4H_ERROR='key not accepted'\n") })
	waitLog("the master refuses this key", 30*time.Second)
	time.Sleep(4 * time.Second) // a window for a retry or two more, which must stay quiet
	sc.stop(5 * time.Second)
	log := sc.log.String()
	if _, err := os.Stat(pwned); err == nil {
		t.Fatal("the script ran the master's answer as shell")
	}
	if _, err := os.Stat(ran); err == nil {
		t.Errorf("dbclient ran with a hostile slot: %s", mustRead(t, ran))
	}
	if n := strings.Count(log, "not a usable slot"); n != 1 {
		t.Errorf("hostile answer reported %d times (want once):\n%s", n, log)
	}
	if n := strings.Count(log, "the master refuses this key"); n != 1 {
		t.Errorf("refusal reported %d times (want once):\n%s", n, log)
	}
}

// The rendered script parses under busybox sh and passes shellcheck, in
// every install flavour.
func TestClientScriptLints(t *testing.T) {
	requireE2E(t, "busybox", "shellcheck")
	dir := t.TempDir()
	ca := writeTestCert(t, dir, "127.0.0.1")
	for _, install := range []string{"", "openwrt", "systemd", "launchd", "cron"} {
		for _, client := range []string{"auto", "openssh", "dropbear"} {
			fl := clientScriptFlags{master: "https://master.example:8443", device: "ap-1", install: install, sshClient: client, masterCA: ca.cert}
			if client == "auto" {
				fl = clientScriptFlags{master: "http://master.example:8080", device: "ap-1", install: install, sshClient: client, insecureHTTP: true}
			}
			s, err := fl.render(context.Background(), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			f := filepath.Join(dir, "c.sh")
			os.WriteFile(f, []byte(s), 0o644)
			if out, err := exec.Command("busybox", "sh", "-n", f).CombinedOutput(); err != nil {
				t.Errorf("busybox sh -n (%s, %s): %v: %s", install, client, err, out)
			}
			if out, err := exec.Command("shellcheck", "-s", "sh", f).CombinedOutput(); err != nil {
				t.Errorf("shellcheck (%s, %s): %v:\n%s", install, client, err, out)
			}
		}
	}
}

// `make dist` builds every architecture and lists the eight agents with
// their sizes; the Linux agents are static ELF, the amd64 one runs; the
// macOS agents are Mach-O executables for their CPU (debug/macho and
// file(1) agree) that link only what every macOS has (libSystem and the
// system frameworks Go's crypto/x509 asks for the trust store), nothing
// from Homebrew or another prefix. Running them needs a Mac.
func TestMakeDist(t *testing.T) {
	requireE2E(t, "make", "go", "file")
	dist := t.TempDir()
	cmd := exec.Command("make", "-C", filepath.Join("..", ".."), "dist", "DIST="+dist)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make dist: %v:\n%s", err, out)
	}
	t.Logf("make dist:\n%s", lastLines(string(out), 8))
	agents := []string{"linux-amd64", "linux-arm64", "linux-armv6", "linux-armv7", "linux-mips", "linux-mipsle", "darwin-amd64", "darwin-arm64"}
	listed := regexp.MustCompile(`(?m)^\S+/mas4h-agent-(\S+)\s+(\d+) bytes\s+[\d.]+ MiB$`).FindAllStringSubmatch(string(out), -1)
	var names []string
	for _, m := range listed {
		names = append(names, m[1])
		if fi, err := os.Stat(filepath.Join(dist, "mas4h-agent-"+m[1])); err != nil || strconv.FormatInt(fi.Size(), 10) != m[2] {
			t.Errorf("make dist lists %s with %s bytes: %v", m[1], m[2], err)
		}
	}
	if strings.Join(names, " ") != strings.Join(agents, " ") {
		t.Errorf("make dist lists %q, want %q", names, agents)
	}
	for _, arch := range agents[:6] {
		f := filepath.Join(dist, "mas4h-agent-"+arch)
		ef, err := elf.Open(f)
		if err != nil {
			t.Errorf("%s: %v", arch, err)
			continue
		}
		for _, p := range ef.Progs {
			if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
				t.Errorf("%s is dynamically linked (%s)", f, p.Type)
			}
		}
		ef.Close()
	}
	amd := filepath.Join(dist, "mas4h-agent-linux-amd64")
	if out, err := exec.Command(amd, "--help").CombinedOutput(); err != nil || !strings.Contains(string(out), "Usage: mas4h-agent") {
		t.Errorf("%s --help: %v: %s", amd, err, out)
	}
	if out, err := exec.Command("file", amd).CombinedOutput(); err != nil || !strings.Contains(string(out), "statically linked") {
		t.Errorf("file says: %s (%v)", out, err)
	}
	for _, tc := range []struct {
		arch string
		cpu  macho.Cpu
		file string
	}{
		{"darwin-amd64", macho.CpuAmd64, "Mach-O 64-bit x86_64 executable"},
		{"darwin-arm64", macho.CpuArm64, "Mach-O 64-bit arm64 executable"},
	} {
		f := filepath.Join(dist, "mas4h-agent-"+tc.arch)
		mf, err := macho.Open(f)
		if err != nil {
			t.Errorf("%s: %v", tc.arch, err)
			continue
		}
		if mf.Cpu != tc.cpu || mf.Type != macho.TypeExec {
			t.Errorf("%s is a Mach-O %s %s, want %s executable", f, mf.Cpu, mf.Type, tc.cpu)
		}
		libs, err := mf.ImportedLibraries()
		mf.Close()
		if err != nil || len(libs) == 0 {
			t.Errorf("%s: imported libraries %v: %v", f, libs, err)
		}
		for _, l := range libs {
			if !strings.HasPrefix(l, "/usr/lib/") && !strings.HasPrefix(l, "/System/Library/Frameworks/") {
				t.Errorf("%s links %s, which is not part of macOS", f, l)
			}
		}
		if out, err := exec.Command("file", f).CombinedOutput(); err != nil || !strings.Contains(string(out), tc.file) {
			t.Errorf("file says: %s (%v), want %q", out, err, tc.file)
		}
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}
