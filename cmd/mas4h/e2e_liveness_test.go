package main

// Liveness at the default settings, end to end: what mas4h leaves in a
// device's own sshd log, and that a frozen client, a dead link and broken
// forwarding end with the port free. Outcomes are asserted with generous
// bounds; how fast each is found is measured by the bench (bench/liveness.go).

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/sshd/sessions"
)

// deviceSSHD is a real OpenSSH sshd standing in for a device's own, the
// target of its forward: LogLevel INFO as Debian's default, its log in a
// file. Nobody logs in: every line after its start is about a connection,
// and mas4h's probes are the only connections it gets.
type deviceSSHD struct {
	port int
	log  string
}

func startDeviceSSHD(t *testing.T, e *env, name string) deviceSSHD {
	t.Helper()
	dir := filepath.Join(e.dir, "device-sshd-"+name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", dir+"/host_key").CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	d := deviceSSHD{port: freePort(t), log: dir + "/sshd.log"}
	cfg := fmt.Sprintf("ListenAddress 127.0.0.1:%d\nHostKey %s/host_key\nPidFile %s/sshd.pid\nLogLevel INFO\nUsePAM no\nAuthorizedKeysFile none\n",
		d.port, dir, dir)
	if err := os.WriteFile(dir+"/sshd_config", []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	os.MkdirAll("/run/sshd", 0o755) // privilege separation dir of a root sshd
	cmd := exec.Command("/usr/sbin/sshd", "-D", "-f", dir+"/sshd_config", "-E", d.log)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		<-done
		if t.Failed() {
			b, _ := os.ReadFile(d.log)
			t.Logf("device sshd %s log:\n%s", name, b)
		}
	})
	// Ready once it says so: a connection to find out would be a line.
	testkit.Eventually(t, 10*time.Second, func() bool {
		select {
		case <-done:
			b, _ := os.ReadFile(d.log)
			t.Fatalf("device sshd %s exited: %s", name, b)
		default:
		}
		b, _ := os.ReadFile(d.log)
		return strings.Contains(string(b), "Server listening on")
	}, "device sshd %s did not start", name)
	return d
}

// lines returns the log's lines about connections (all but sshd's own
// start and stop).
func (d deviceSSHD) lines(t *testing.T) []string {
	t.Helper()
	f, err := os.Open(d.log)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "Server listening on") || strings.HasPrefix(l, "Received signal") || l == "" {
			continue
		}
		out = append(out, l)
	}
	return out
}

// listening reports whether something listens on port, from the socket
// table: without connecting.
func listening(t *testing.T, port int) bool {
	t.Helper()
	ports, err := sessions.ListeningPorts("/proc")
	if err != nil {
		t.Fatal(err)
	}
	return ports[port]
}

// errorLines are those OpenSSH writes at error level for a probe that
// closes without identifying itself.
func errorLines(lines []string) int {
	n := 0
	for _, l := range lines {
		if strings.Contains(l, "kex_exchange_identification") || strings.Contains(l, "error:") {
			n++
		}
	}
	return n
}

// localTunnels asks a slave daemon on this host for its live tunnels.
func localTunnels(t *testing.T, e *env, sp *slaveProc) []wire.Tunnel {
	t.Helper()
	out, stderr, code := e.mas4h("", "tunnels", "--state-dir", sp.stateDir, "-o", "json")
	if code != 0 {
		t.Fatalf("mas4h tunnels: exit %d: %s", code, stderr)
	}
	var ts []wire.Tunnel
	if err := json.Unmarshal([]byte(out), &ts); err != nil {
		t.Fatalf("mas4h tunnels: %v: %s", err, out)
	}
	return ts
}

// At the default settings, mas4h leaves at most one line every 5 minutes
// per forward in the device's own sshd log, at INFO level: it judges
// liveness from the session's TCP state and probes end to end only once in
// 5 minutes (each probe greets sshd, so it logs one INFO line and no
// error). Before, every forward got two lines, one an error, every 10 s.
//
// Wall time: 3 min 30 s of watching plus a few seconds of setup (the
// house's limit for this test is 4 minutes). Three forwards, each to its own
// device sshd, from two devices; each forward's first probe comes at its own
// place in the 5-minute interval, so some are probed in the window and some
// not: a forward the slave reports as probed must have left exactly one
// line, one it does not, none.
func TestDeviceLogQuietAtDefaults(t *testing.T) {
	e := newEnv(t, "ssh-keygen")
	var targets []deviceSSHD
	for i := range 3 {
		targets = append(targets, startDeviceSSHD(t, e, fmt.Sprint(i)))
	}
	fwdTo := func(name string, d deviceSSHD) string {
		return fmt.Sprintf("%s=localhost:%d,probe=ssh-banner", name, d.port)
	}
	devA, kA := e.enrol("pi-quiet-a", "--forward", fwdTo("ssh", targets[0]), "--forward", fwdTo("ssh2", targets[1]))
	devB, kB := e.enrol("pi-quiet-b", "--forward", fwdTo("ssh", targets[2]))
	sp := e.startSlave("s1") // the default settings
	// One session with two forwards, as a device's `ssh -R … -R …` makes.
	cA := e.startClient("ssh", sshArgs(kA, sp.port, "-N",
		"-R", fmt.Sprintf("%d:localhost:%d", devA.Forwards[0].RemotePort, targets[0].port),
		"-R", fmt.Sprintf("%d:localhost:%d", devA.Forwards[1].RemotePort, targets[1].port), e2eTunnelUser+"@127.0.0.1")...)
	cB := e.tunnel(kB, sp, fmt.Sprintf("%d:localhost:%d", port(devB), targets[2].port))
	ports := []int{devA.Forwards[0].RemotePort, devA.Forwards[1].RemotePort, port(devB)}
	// Up once the ports listen: a connection to find out would reach the
	// device's sshd and be a line in its log.
	for i, c := range []*tunnelClient{cA, cA, cB} {
		testkit.Eventually(t, 15*time.Second, func() bool {
			if c.exited() {
				t.Fatalf("tunnel to port %d failed: %s", ports[i], c.stderr)
			}
			return listening(t, ports[i])
		}, "tunnel to port %d did not come up", ports[i])
	}

	window := 3*time.Minute + 30*time.Second
	t.Logf("watching the device logs for %s", window)
	end := time.Now().Add(window)
	for time.Now().Before(end) {
		for i, d := range targets {
			if l := d.lines(t); len(l) > 1 || errorLines(l) > 0 {
				t.Fatalf("forward to port %d: %d lines in its device's sshd log after %s, want at most 1 and no error:\n%s",
					ports[i], len(l), window-time.Until(end).Round(time.Second), strings.Join(l, "\n"))
			}
		}
		for _, c := range []*tunnelClient{cA, cB} {
			if c.exited() {
				t.Fatalf("a healthy tunnel ended: %s\n%s", c.stderr, sp.log)
			}
		}
		time.Sleep(2 * time.Second) // a watch, not a wait: the window is what passes
	}

	// Each forward's line count agrees with what the slave says it probed.
	before := localTunnels(t, e, sp)
	var counts []int
	for _, d := range targets {
		counts = append(counts, len(d.lines(t)))
	}
	after := localTunnels(t, e, sp)
	probedAt := func(ts []wire.Tunnel, port int) *wire.Probe {
		for _, tu := range ts {
			if tu.Port == port {
				return tu.LastProbe
			}
		}
		t.Fatalf("port %d is not a live tunnel: %+v", port, ts)
		return nil
	}
	total := 0
	for i, p := range ports {
		switch {
		case probedAt(before, p) != nil:
			if !testkit.Wait(5*time.Second, func() bool { return len(targets[i].lines(t)) == 1 }) {
				t.Errorf("forward on port %d was probed (%+v) but its device log has %d lines", p, probedAt(before, p), len(targets[i].lines(t)))
			}
		case probedAt(after, p) == nil && counts[i] != 0:
			t.Errorf("forward on port %d was never probed but its device log has %d lines", p, counts[i])
		}
		l := targets[i].lines(t)
		total += len(l)
		if len(l) > 1 || errorLines(l) > 0 {
			t.Errorf("forward on port %d: %d lines, want at most 1 and no error: %q", p, len(l), l)
		}
		t.Logf("forward on port %d: %d line(s) in %s: %q", p, len(l), window, l)
	}
	t.Logf("%d lines from 3 forwards in %s (the old 10 s probes: %d, half of them errors)", total, window, 3*2*int(window/(10*time.Second)))
}

// A frozen client (SIGSTOP: its kernel still acknowledges, nothing answers)
// ends with its port free at the default settings, whether its forward has
// a probe or not (then the TCP state alone judges it), and its next attempt
// binds on the first try.
func TestFrozenClientFreedAtDefaults(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	probed, kp := e.enrol("pi-frozen-probed", "--forward", fwd(es))
	unprobed, ku := e.enrol("pi-frozen-none", "--forward", fmt.Sprintf("ssh=localhost:%d,probe=none", es.port))
	sp := e.startSlave("s1")
	specP := fmt.Sprintf("%d:localhost:%d", port(probed), es.port)
	specU := fmt.Sprintf("%d:localhost:%d", port(unprobed), es.port)
	cp, cu := e.tunnel(kp, sp, specP), e.tunnel(ku, sp, specU)
	for _, c := range []struct {
		port int
		c    *tunnelClient
	}{{port(probed), cp}, {port(unprobed), cu}} {
		if !waitListen(t, c.port, c.c, 15*time.Second) {
			t.Fatalf("tunnel did not come up: %s", c.c.stderr)
		}
	}
	if err := roundTrip(port(probed)); err != nil {
		t.Fatal(err)
	}
	// Both settle into sshd's keepalive rhythm: the slave has seen each
	// session (a walk) before the freeze.
	testkit.Eventually(t, 30*time.Second, func() bool { return len(localTunnels(t, e, sp)) == 2 }, "the slave does not list both tunnels")
	for _, c := range []*tunnelClient{cp, cu} {
		if err := syscall.Kill(c.cmd.Process.Pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		defer syscall.Kill(c.cmd.Process.Pid, syscall.SIGCONT)
	}
	stopped := time.Now()
	for _, p := range []int{port(probed), port(unprobed)} {
		// Polling by connecting also pokes the frozen client (a channel
		// open it never answers), as a user retrying through it would.
		testkit.Eventually(t, 60*time.Second, func() bool { return !dialOK(p) }, "port %d of a frozen client still bound", p)
		t.Logf("frozen client: port %d free %s after SIGSTOP", p, time.Since(stopped).Round(100*time.Millisecond))
	}
	for i, k := range []deviceKey{kp, ku} {
		spec := []string{specP, specU}[i]
		c := e.tunnel(k, sp, spec)
		if !waitListen(t, []int{port(probed), port(unprobed)}[i], c, 15*time.Second) {
			t.Fatalf("reconnect after the reap failed: %s", c.stderr)
		}
	}
	waitEvents(t, e, "pi-frozen-probed", "reap: ")
	waitEvents(t, e, "pi-frozen-none", "reap: ")
}

// A device whose link dies without FIN or RST (its veth goes down) ends
// with its port free at the default settings; its next attempt once the
// link is back binds on the first try.
func TestDeadLinkFreedAtDefaults(t *testing.T) {
	e := newEnv(t, "ip")
	d := newNetnsDevice(t)
	es := startEchoOn(t, d.hostIP)
	dev, k := e.enrol("pi-deadlink", "--forward", fmt.Sprintf("ssh=%s:%d,probe=ssh-banner", d.hostIP, es.port))
	sp := &slaveProc{e: e, host: "0.0.0.0", mode: []string{"--db", e.db}, name: "s1", stateDir: e.dir + "/slave-s1", port: freePort(t)}
	sp.start()
	t.Cleanup(sp.cleanup)
	connect := func() *tunnelClient {
		// No client keepalives: only sshd's and mas4h's view judge it.
		args := append([]string{"netns", "exec", d.ns, "ssh"}, sshArgs(k, sp.port, "-N",
			"-R", fmt.Sprintf("%d:%s:%d", port(dev), d.hostIP, es.port), e2eTunnelUser+"@"+d.hostIP)...)
		return e.startClient("ip", args...)
	}
	c := connect()
	if !waitListen(t, port(dev), c, 15*time.Second) {
		t.Fatalf("tunnel from the namespace did not come up: %s", c.stderr)
	}
	if err := roundTrip(port(dev)); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 30*time.Second, func() bool { return len(localTunnels(t, e, sp)) == 1 }, "the slave does not list the tunnel")
	d.linkDown(t, true)
	down := time.Now()
	testkit.Eventually(t, 60*time.Second, func() bool { return !dialOK(port(dev)) }, "port %d still bound after the link went down", port(dev))
	t.Logf("dead link: port free %s after the link went down", time.Since(down).Round(100*time.Millisecond))
	d.linkDown(t, false)
	c2 := connect()
	if !waitListen(t, port(dev), c2, 15*time.Second) {
		t.Fatalf("first attempt after the link returned failed: %s", c2.stderr)
	}
	if err := roundTrip(port(dev)); err != nil {
		t.Fatal(err)
	}
	waitEvents(t, e, "pi-deadlink", "reap: ")
}

// Forwarding broken while SSH lives: the device's target still accepts but
// stops answering. The session's TCP looks healthy (its client answers
// sshd's keepalives); only the end-to-end probe finds it, and the session
// is ended. The probe interval is shortened to 30 s here so the test takes
// under a minute; at the default 5 minutes the bench measures it.
func TestBrokenForwardingFound(t *testing.T) {
	e := newEnv(t)
	target, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { target.Close() })
	var hung atomic.Bool
	go func() {
		for {
			c, err := target.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if !hung.Load() {
					c.Write([]byte(echoBanner))
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
	tport := target.Addr().(*net.TCPAddr).Port
	dev, k := e.enrol("pi-hung", "--forward", fmt.Sprintf("ssh=localhost:%d,probe=ssh-banner", tport))
	sp := e.startSlaveWith("s1", "--db", e.db, "--probe-interval", "30s")
	c := e.tunnel(k, sp, fmt.Sprintf("%d:localhost:%d", port(dev), tport))
	if !waitListen(t, port(dev), c, 15*time.Second) {
		t.Fatalf("tunnel did not come up: %s", c.stderr)
	}
	testkit.Eventually(t, 30*time.Second, func() bool { return len(localTunnels(t, e, sp)) == 1 }, "the slave does not list the tunnel")
	hung.Store(true) // the device's service hangs; SSH itself stays healthy
	broke := time.Now()
	testkit.Eventually(t, 2*time.Minute, func() bool { return !dialOK(port(dev)) }, "port %d still bound: broken forwarding not found", port(dev))
	t.Logf("broken forwarding found, port free %s after the target hung (probe interval 30 s)", time.Since(broke).Round(100*time.Millisecond))
	waitEvents(t, e, "pi-hung", "reap: ", "failed probes")
	if strings.Contains(eventsFor(t, e, "pi-hung"), "not answering") {
		t.Errorf("a live client was judged by its TCP state: %s", eventsFor(t, e, "pi-hung"))
	}
}
