package main

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
)

// Fast probing for the reaper tests: a stale tunnel must be gone within
// interval × (failures + 1) + 5 s.
var fastProbe = []string{"--probe-interval", "1s", "--probe-failures", "2", "--probe-timeout", "800ms"}

func reapLimit() time.Duration { return 1*time.Second*3 + 5*time.Second }

func (e *env) startProbingSlave(name string, extra ...string) *slaveProc {
	return e.startSlaveWith(name, append([]string{"--db", e.db}, extra...)...)
}

// waitReaped waits until port is free and returns how long it took.
func waitReaped(t *testing.T, port int, since time.Time, limit time.Duration) time.Duration {
	t.Helper()
	if !testkit.Wait(limit-time.Since(since), func() bool { return !dialOK(port) }) {
		t.Fatalf("port %d still bound %s later", port, time.Since(since).Round(time.Millisecond))
	}
	return time.Since(since)
}

// waitProbed waits until the slave's own view of its tunnels has the one on
// port probed healthy at or after after.
func waitProbed(t *testing.T, e *env, sp *slaveProc, port int, after time.Time) {
	t.Helper()
	var out string
	if !testkit.Wait(10*time.Second, func() bool {
		out, _, _ = e.mas4h("", "tunnels", "--state-dir", sp.stateDir, "-o", "json")
		var tunnels []wire.Tunnel
		json.Unmarshal([]byte(out), &tunnels)
		for _, tu := range tunnels {
			if tu.Port == port && tu.LastProbe != nil && tu.LastProbe.OK && !tu.LastProbe.At.Before(after) {
				return true
			}
		}
		return false
	}) {
		t.Fatalf("slave %s has no healthy probe of port %d since %s: %s", sp.name, port, after.Format(time.StampMilli), out)
	}
}

func eventsFor(t *testing.T, e *env, device string) string {
	t.Helper()
	b, err := exec.Command("sqlite3", e.db, fmt.Sprintf("SELECT kind || ': ' || detail FROM events WHERE device = '%s' ORDER BY id", device)).CombinedOutput()
	if err != nil {
		t.Fatalf("reading events: %v: %s", err, b)
	}
	return string(b)
}

// waitEvents waits until the device's events contain every one of want
// (events are written just after the port is freed).
func waitEvents(t *testing.T, e *env, device string, want ...string) {
	t.Helper()
	var ev, missing string
	if !testkit.Wait(5*time.Second, func() bool {
		ev, missing = eventsFor(t, e, device), ""
		for _, w := range want {
			if !strings.Contains(ev, w) {
				missing = w
			}
		}
		return missing == ""
	}) {
		t.Fatalf("events of %s lack %q:\n%s", device, missing, ev)
	}
}

func TestFrozenClientIsReaped(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	dev, k := e.enrol("pi-frozen", "--forward", fwd(es))
	sp := e.startProbingSlave("s1", fastProbe...)
	spec := fmt.Sprintf("%d:localhost:%d", port(dev), es.port)
	c := e.tunnel(k, sp, spec)
	if !waitListen(t, port(dev), c, 10*time.Second) {
		t.Fatalf("tunnel did not come up: %s", c.stderr)
	}
	waitProbed(t, e, sp, port(dev), time.Time{}) // healthy before it freezes
	if err := syscall.Kill(c.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	took := waitReaped(t, port(dev), stopped, reapLimit())
	t.Logf("frozen client reaped, port free %s after SIGSTOP (limit %s)", took.Round(time.Millisecond), reapLimit())
	syscall.Kill(c.cmd.Process.Pid, syscall.SIGCONT)
	// The device's next attempt binds on the first try.
	c2 := e.tunnel(k, sp, spec)
	if !waitListen(t, port(dev), c2, 10*time.Second) {
		t.Fatalf("reconnect after the reap failed: %s", c2.stderr)
	}
	waitEvents(t, e, "pi-frozen", "reap: ", "failed probes")
}

func TestBrokenForwardIsReaped(t *testing.T) {
	e := newEnv(t)
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tport := target.Addr().(*net.TCPAddr).Port
	go func() {
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(echoBanner))
			go func() { time.Sleep(2 * time.Second); c.Close() }()
		}
	}()
	dev, k := e.enrol("pi-broken", "--forward", fmt.Sprintf("ssh=localhost:%d,probe=ssh-banner", tport))
	sp := e.startProbingSlave("s1", fastProbe...)
	c := e.tunnel(k, sp, fmt.Sprintf("%d:localhost:%d", port(dev), tport))
	if !waitListen(t, port(dev), c, 10*time.Second) {
		t.Fatalf("tunnel did not come up: %s", c.stderr)
	}
	waitProbed(t, e, sp, port(dev), time.Time{})
	target.Close() // the device's service dies; SSH itself stays healthy
	broke := time.Now()
	took := waitReaped(t, port(dev), broke, reapLimit())
	t.Logf("broken forward reaped %s after the target died", took.Round(time.Millisecond))
	waitEvents(t, e, "pi-broken", "probe: ", "reap: ", "closed without a byte")
}

func TestNewestWins(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	dev, k := e.enrol("pi-newest", "--forward", fwd(es))
	// A slow reaper, so that only newest-wins can free the port in time.
	sp := e.startProbingSlave("s1", "--probe-interval", "60s", "--probe-timeout", "2s")
	spec := fmt.Sprintf("%d:localhost:%d", port(dev), es.port)
	old := e.tunnel(k, sp, spec)
	if !waitListen(t, port(dev), old, 10*time.Second) {
		t.Fatalf("tunnel did not come up: %s", old.stderr)
	}
	syscall.Kill(old.cmd.Process.Pid, syscall.SIGSTOP)
	defer syscall.Kill(old.cmd.Process.Pid, syscall.SIGCONT)

	// The device comes back while its frozen session holds the port: once
	// the new session has authenticated, newest-wins judges the old one
	// (its probe fails) and ends it; the device, retrying as the agent
	// does, binds its port.
	_, attempts, took := e.reconnect(k, sp, dev, es, 20*time.Second)
	t.Logf("new session carries bytes %s after the device's first attempt (%d attempts); the frozen one was superseded",
		took.Round(time.Millisecond), attempts)
	waitEvents(t, e, "pi-newest", "superseded")
}

func TestNewestWinsLeavesHealthySessionAlone(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	dev, k := e.enrol("pi-healthy", "--forward", fwd(es))
	sp := e.startProbingSlave("s1", "--probe-interval", "60s")
	spec := fmt.Sprintf("%d:localhost:%d", port(dev), es.port)
	old := e.tunnel(k, sp, spec)
	if !waitListen(t, port(dev), old, 10*time.Second) {
		t.Fatalf("tunnel did not come up: %s", old.stderr)
	}
	waitKeysFile(t, sp, dev, false, 5*time.Second) // its next login goes through the hook
	second := e.tunnel(k, sp, spec)
	if code := second.wait(10 * time.Second); code != 255 {
		t.Fatalf("second client of a healthy device: status %d, want 255 (remote port forwarding failed)", code)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return strings.Contains(sp.log.String(), "older session still healthy") },
		"newest-wins did not judge the second login:\n%s", sp.log)
	if old.exited() {
		t.Fatalf("the healthy older session was killed: %s", old.stderr)
	}
	if err := roundTrip(port(dev)); err != nil {
		t.Fatal(err)
	}
}

// A healthy tunnel is never reaped over a soak at a 1 s probe interval,
// including one whose target answers slowly (within the timeout). The soak
// is 2 minutes (MAS4H_SOAK=10m for a longer one, 20 s with -short). A probe
// may miss its timeout once on a busy 2-core box; what must never happen is
// the second failure in a row that ends a session.
func TestHealthyTunnelsAreNeverReaped(t *testing.T) {
	soak := 2 * time.Minute
	if v := os.Getenv("MAS4H_SOAK"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("MAS4H_SOAK: %v", err)
		}
		soak = d
	} else if testing.Short() {
		soak = 20 * time.Second
	}
	e := newEnv(t)
	es := startEcho(t)
	slow, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { slow.Close() })
	go func() {
		for {
			c, err := slow.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				time.Sleep(600 * time.Millisecond) // slow, but inside the 1 s timeout
				c.Write([]byte(echoBanner))
				time.Sleep(time.Second)
			}()
		}
	}()
	sport := slow.Addr().(*net.TCPAddr).Port
	fastDev, kf := e.enrol("pi-fast", "--forward", fwd(es))
	slowDev, ks := e.enrol("pi-slow", "--forward", fmt.Sprintf("ssh=localhost:%d,probe=ssh-banner", sport))
	sp := e.startProbingSlave("s1", "--probe-interval", "1s", "--probe-failures", "2", "--probe-timeout", "900ms")
	cf := e.tunnel(kf, sp, fmt.Sprintf("%d:localhost:%d", port(fastDev), es.port))
	cs := e.tunnel(ks, sp, fmt.Sprintf("%d:localhost:%d", port(slowDev), sport))
	if !waitListen(t, port(fastDev), cf, 10*time.Second) || !waitListen(t, port(slowDev), cs, 10*time.Second) {
		t.Fatalf("tunnels did not come up: %s %s", cf.stderr, cs.stderr)
	}
	t.Logf("soaking for %s", soak)
	select { // the soak is the test: no condition ends it early but a failure
	case <-cf.done:
	case <-cs.done:
	case <-time.After(soak):
	}
	if cf.exited() || cs.exited() {
		t.Fatalf("a healthy tunnel was ended: fast %v slow %v\n%s", cf.exited(), cs.exited(), sp.log)
	}
	for _, d := range []string{"pi-fast", "pi-slow"} {
		if ev := eventsFor(t, e, d); strings.Contains(ev, "reap") || strings.Contains(ev, "kill") {
			t.Errorf("%s: %s", d, ev)
		}
	}
	if n := strings.Count(sp.log.String(), "probe failing"); n != 0 {
		t.Logf("%d probes missed their timeout once and passed again (a busy box)", n)
	}
}

// Discovery and reaping touch only this slave's sessions: not a second
// slave's (same tunnel user), not the host's own sshd.
func TestReaperTouchesOnlyItsOwnSessions(t *testing.T) {
	e := newEnv(t, "ssh-keygen")
	es := startEcho(t)
	devA, kA := e.enrol("pi-a", "--forward", fwd(es))
	devB, kB := e.enrol("pi-b", "--forward", fwd(es))
	s1 := e.startProbingSlave("s1", fastProbe...)
	s2 := e.startProbingSlave("s2", fastProbe...)
	cA := e.tunnel(kA, s1, fmt.Sprintf("%d:localhost:%d", port(devA), es.port))
	cB := e.tunnel(kB, s2, fmt.Sprintf("%d:localhost:%d", port(devB), es.port))
	if !waitListen(t, port(devA), cA, 10*time.Second) || !waitListen(t, port(devB), cB, 10*time.Second) {
		t.Fatal("tunnels did not come up")
	}
	// The host's admin sshd (root, its own config) with a session holding a
	// port that no probe would accept.
	admin := startAdminSSHD(t, e)
	dead := freePortBlock(t, 1)
	cAdmin := e.startClient("ssh", sshArgs(admin.key, admin.port, "-N", "-R", fmt.Sprintf("%d:127.0.0.1:1", dead), "root@127.0.0.1")...)
	if !waitListen(t, dead, cAdmin, 10*time.Second) {
		t.Fatalf("admin session did not come up: %s", cAdmin.stderr)
	}
	// s2's device freezes: s2 reaps it; s1 must not see or touch it.
	syscall.Kill(cB.cmd.Process.Pid, syscall.SIGSTOP)
	defer syscall.Kill(cB.cmd.Process.Pid, syscall.SIGCONT)
	waitReaped(t, port(devB), time.Now(), reapLimit())
	// s1 runs a whole probe cycle after the reap: had it seen pi-b's
	// session, it would have judged it by now.
	waitProbed(t, e, s1, port(devA), time.Now())
	if cA.exited() || cAdmin.exited() {
		t.Fatalf("a session that was not stale was ended: s1's %v, admin's %v", cA.exited(), cAdmin.exited())
	}
	if !dialOK(dead) {
		t.Fatal("the admin session's port was freed")
	}
	if strings.Contains(s1.log.String(), "pi-b") {
		t.Errorf("s1 saw s2's device:\n%s", s1.log)
	}
	if !strings.Contains(s2.log.String(), "pi-b") {
		t.Errorf("s2 did not reap its own device:\n%s", s2.log)
	}
}

type adminSSHD struct {
	port int
	key  deviceKey
}

// startAdminSSHD runs an sshd as root on loopback, standing in for the
// host's own admin sshd (or a device's own sshd), with a root login key
// and sftp for scp.
func startAdminSSHD(t *testing.T, e *env) adminSSHD {
	t.Helper()
	dir := e.dir + "/admin-sshd"
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir+"/host_key").CombinedOutput(); err != nil {
		t.Fatalf("%v %s", err, out)
	}
	k := e.newKey("admin")
	if err := os.WriteFile(dir+"/authorized_keys", mustRead(t, k.public), 0o600); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	cfg := fmt.Sprintf("ListenAddress 127.0.0.1:%d\nHostKey %s/host_key\nPidFile %s/sshd.pid\nAuthorizedKeysFile %s/authorized_keys\n"+
		"PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\nStrictModes no\nAllowTcpForwarding yes\n"+
		"Subsystem sftp internal-sftp\n", port, dir, dir, dir)
	if err := os.WriteFile(dir+"/sshd_config", []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll("/run/sshd", 0o755) // privilege separation dir for a root sshd
	cmd := exec.Command("/usr/sbin/sshd", "-D", "-f", dir+"/sshd_config", "-E", dir+"/sshd.log")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		<-done
	})
	if !testkit.Wait(5*time.Second, func() bool { return dialOK(port) }) {
		b, _ := os.ReadFile(dir + "/sshd.log")
		t.Fatalf("admin sshd did not start: %s", b)
	}
	return adminSSHD{port: port, key: k}
}

func TestTunnelsView(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	m := e.startMaster()
	sp := m.e.startSlaveWith("s1", "--master", m.url, "--token-file", m.slaveToken, "--public-host", "127.0.0.1",
		"--probe-interval", "1s", "--probe-timeout", "500ms")
	waitSlavesAlive(t, m, 1)
	_, k := m.enrol("pi-view", fwd(es))
	_, _, p := m.connect(k, es)
	check := func(what string, list func() (string, int)) {
		t.Helper()
		var out string
		var code int
		if !testkit.Wait(3*e2eHeartbeat+3*time.Second, func() bool {
			out, code = list()
			var tunnels []wire.Tunnel
			if code != 0 || json.Unmarshal([]byte(out), &tunnels) != nil || len(tunnels) != 1 {
				return false
			}
			tu := tunnels[0]
			return tu.Device == "pi-view" && tu.Forward == "ssh" && tu.Slave == "s1" && tu.Port == p &&
				strings.HasPrefix(tu.Remote, "127.0.0.1:") && !tu.Since.IsZero() && tu.LastProbe != nil && tu.LastProbe.OK
		}) {
			t.Fatalf("%s: tunnels %s (exit %d)", what, out, code)
		}
	}
	check("local slave", func() (string, int) {
		out, _, code := e.mas4h("", "tunnels", "--state-dir", sp.stateDir, "-o", "json")
		return out, code
	})
	check("master", func() (string, int) {
		out, _, code := m.admin("tunnels", "-o", "json")
		return out, code
	})
	out, _, code := m.admin("tunnels")
	if code != 0 || !strings.Contains(out, "pi-view") || !strings.Contains(out, "ok ") {
		t.Errorf("table output: %s", out)
	}
}

// netnsDevice is a device in its own network namespace, linked to this host
// by a veth pair on 198.18.N.0/30 (never routed anywhere).
type netnsDevice struct {
	ns, hostIf, devIf string
	hostIP, devIP     string
}

func newNetnsDevice(t *testing.T) netnsDevice {
	t.Helper()
	n := os.Getpid()%200 + 20
	d := netnsDevice{ns: fmt.Sprintf("mas4h-e2e-%d", os.Getpid()), hostIf: fmt.Sprintf("m4h%d", n), devIf: fmt.Sprintf("m4d%d", n),
		hostIP: fmt.Sprintf("198.18.%d.1", n), devIP: fmt.Sprintf("198.18.%d.2", n)}
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	exec.Command("ip", "netns", "del", d.ns).Run() // left over from a killed run
	ip("netns", "add", d.ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", d.ns).Run() })
	ip("link", "add", d.hostIf, "type", "veth", "peer", "name", d.devIf, "netns", d.ns)
	t.Cleanup(func() { exec.Command("ip", "link", "del", d.hostIf).Run() })
	ip("addr", "add", d.hostIP+"/30", "dev", d.hostIf)
	ip("link", "set", d.hostIf, "up")
	ip("-n", d.ns, "addr", "add", d.devIP+"/30", "dev", d.devIf)
	ip("-n", d.ns, "link", "set", d.devIf, "up")
	ip("-n", d.ns, "link", "set", "lo", "up")
	return d
}

func (d netnsDevice) linkDown(t *testing.T, down bool) {
	state := "up"
	if down {
		state = "down"
	}
	if out, err := exec.Command("ip", "-n", d.ns, "link", "set", d.devIf, state).CombinedOutput(); err != nil {
		t.Fatalf("link %s: %v: %s", state, err, out)
	}
}

// A device whose link dies without FIN or RST is reaped like a frozen one,
// and its next attempt after the link returns binds on the first try.
func TestLinkDownIsReaped(t *testing.T) {
	e := newEnv(t, "ip")
	d := newNetnsDevice(t)
	es := startEchoOn(t, d.hostIP)
	dev, k := e.enrol("pi-netns", "--forward", fmt.Sprintf("ssh=%s:%d,probe=ssh-banner", d.hostIP, es.port))
	sp := &slaveProc{e: e, host: "0.0.0.0", mode: append([]string{"--db", e.db}, fastProbe...), name: "s1",
		stateDir: e.dir + "/slave-s1", port: freePort(t)}
	sp.start()
	t.Cleanup(sp.cleanup)
	connect := func() *tunnelClient {
		args := append([]string{"netns", "exec", d.ns, "ssh"}, sshArgs(k, sp.port, "-N", "-o", "ServerAliveInterval=60",
			"-R", fmt.Sprintf("%d:%s:%d", port(dev), d.hostIP, es.port), e2eTunnelUser+"@"+d.hostIP)...)
		return e.startClient("ip", args...)
	}
	c := connect()
	if !waitListen(t, port(dev), c, 10*time.Second) {
		t.Fatalf("tunnel from the namespace did not come up: %s", c.stderr)
	}
	if err := roundTrip(port(dev)); err != nil {
		t.Fatal(err)
	}
	waitProbed(t, e, sp, port(dev), time.Time{})
	d.linkDown(t, true)
	down := time.Now()
	took := waitReaped(t, port(dev), down, reapLimit())
	t.Logf("link-down device reaped, port free %s after the link went down (limit %s)", took.Round(time.Millisecond), reapLimit())
	d.linkDown(t, false)
	c2 := connect()
	if !waitListen(t, port(dev), c2, 10*time.Second) {
		t.Fatalf("first attempt after the link returned failed: %s", c2.stderr)
	}
	if err := roundTrip(port(dev)); err != nil {
		t.Fatal(err)
	}
}
