package main

import (
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/sshd/sshdconfig"
	"github.com/mas4h/mas4h/sshd/statedir"
	"golang.org/x/crypto/ssh"
)

// fwd is a forward to the echo server, probed like an SSH server (it greets
// with an SSH banner); a target port other than 22 has no default probe.
func fwd(es *echoServer) string { return fmt.Sprintf("ssh=localhost:%d,probe=ssh-banner", es.port) }

func TestTunnelComesUpAndCarriesBytes(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	dev, k := e.enrol("pi-kitchen", "--forward", fwd(es))
	sp := e.startSlave("s1")
	p := port(dev)
	// All the ways real clients name the loopback listen address.
	for _, spec := range []string{
		fmt.Sprintf("%d:localhost:%d", p, es.port),
		fmt.Sprintf("127.0.0.1:%d:localhost:%d", p, es.port),
		fmt.Sprintf("localhost:%d:localhost:%d", p, es.port),
	} {
		t.Run(spec, func(t *testing.T) {
			c := e.tunnel(k, sp, spec)
			if !waitListen(t, p, c, 10*time.Second) {
				t.Fatalf("port %d never listened; ssh: %s", p, c.stderr)
			}
			if err := roundTrip(p); err != nil {
				t.Fatalf("bytes through the tunnel: %v", err)
			}
			// Only on loopback: GatewayPorts no.
			if addrs := nonLoopbackAddrs(); len(addrs) > 0 {
				if conn, err := net.DialTimeout("tcp", net.JoinHostPort(addrs[0], strconv.Itoa(p)), time.Second); err == nil {
					conn.Close()
					t.Errorf("forwarded port reachable on %s", addrs[0])
				}
			}
			c.cmd.Process.Kill()
			<-c.done
			waitClosed(t, p)
		})
	}
}

func nonLoopbackAddrs() []string {
	var out []string
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			out = append(out, ipn.IP.String())
		}
	}
	return out
}

func waitClosed(t *testing.T, port int) {
	t.Helper()
	testkit.Eventually(t, 5*time.Second, func() bool { return !dialOK(port) }, "port %d still listening", port)
}

// Each refusal: the client fails (or its forward does), nothing reaches the
// device-side target, and no port is bound that should not be.
func TestRefused(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	devA, kA := e.enrol("dev-a", "--forward", fwd(es))
	// dev-a's port+1 stays unleased: the others lease from the upper half.
	upper := fmt.Sprintf("%d-%d", e.portLo+10, e.portLo+19)
	devB, _ := e.enrol("dev-b", "--forward", fwd(es), "--port-range", upper)
	revoked, kRevoked := e.enrol("dev-revoked", "--forward", fwd(es), "--port-range", upper)
	if _, stderr, code := e.mas4h("", "device", "revoke", "dev-revoked", "--db", e.db); code != 0 {
		t.Fatal(stderr)
	}
	unknown := e.newKey("stranger")
	sp := e.startSlave("s1")
	pA, pB := port(devA), port(devB)

	expectForwardRefused := func(t *testing.T, k deviceKey, listen int) {
		t.Helper()
		c := e.tunnel(k, sp, fmt.Sprintf("%d:localhost:%d", listen, es.port))
		if code := c.wait(10 * time.Second); code == 0 || code == -1 {
			t.Fatalf("ssh did not fail (status %d): %s", code, c.stderr)
		}
		if dialOK(listen) {
			t.Fatalf("port %d is listening", listen)
		}
	}
	t.Run("same device, port+1", func(t *testing.T) {
		if pA+1 == pB || pA+1 == port(revoked) {
			t.Fatal("test setup: port+1 is leased")
		}
		expectForwardRefused(t, kA, pA+1)
	})
	t.Run("another device's port", func(t *testing.T) { expectForwardRefused(t, kA, pB) })
	t.Run("unknown key", func(t *testing.T) { expectForwardRefused(t, unknown, pA) })
	t.Run("revoked key", func(t *testing.T) {
		expectForwardRefused(t, kRevoked, port(revoked))
		if !strings.Contains(sp.log.String(), "device is revoked") {
			t.Errorf("slave did not log the revoked refusal:\n%s", sp.log)
		}
	})
	t.Run("other user with a valid key", func(t *testing.T) {
		for _, u := range []string{"root", "nobody", "mas4h-e2e2"} {
			c := e.startClient("ssh", sshArgs(kA, sp.port, "-N", "-R", fmt.Sprintf("%d:localhost:%d", pA, es.port), u+"@127.0.0.1")...)
			if code := c.wait(10 * time.Second); code != 255 {
				t.Fatalf("login as %s: status %d, want 255: %s", u, code, c.stderr)
			}
			if dialOK(pA) {
				t.Fatalf("port bound after login as %s", u)
			}
		}
	})
	t.Run("local forward -L", func(t *testing.T) {
		lport := freePort(t)
		before := es.accepts.Load()
		c := e.startClient("ssh", sshArgs(kA, sp.port, "-N", "-L", fmt.Sprintf("%d:127.0.0.1:%d", lport, es.port), e2eTunnelUser+"@127.0.0.1")...)
		if !waitListen(t, lport, c, 10*time.Second) {
			return // refused outright is fine too
		}
		if err := roundTrip(lport); err == nil {
			t.Fatal("a local forward carried bytes")
		}
		if es.accepts.Load() != before {
			t.Fatal("the local forward reached the target")
		}
	})
	t.Run("dynamic forward -D", func(t *testing.T) {
		lport := freePort(t)
		before := es.accepts.Load()
		c := e.startClient("ssh", sshArgs(kA, sp.port, "-N", "-D", strconv.Itoa(lport), e2eTunnelUser+"@127.0.0.1")...)
		if !waitListen(t, lport, c, 10*time.Second) {
			return
		}
		if err := socks5Connect(lport, es.port); err == nil {
			t.Fatal("SOCKS connect through the slave succeeded")
		}
		if es.accepts.Load() != before {
			t.Fatal("the dynamic forward reached the target")
		}
	})
	t.Run("unix socket forward", func(t *testing.T) {
		sock := filepath.Join(os.TempDir(), fmt.Sprintf("mas4h-e2e-%d.sock", os.Getpid()))
		defer os.Remove(sock)
		c := e.startClient("ssh", sshArgs(kA, sp.port, "-N", "-R", sock+":localhost:"+strconv.Itoa(es.port), e2eTunnelUser+"@127.0.0.1")...)
		if code := c.wait(10 * time.Second); code == 0 || code == -1 {
			t.Fatalf("ssh did not fail (status %d): %s", code, c.stderr)
		}
		if _, err := os.Stat(sock); err == nil {
			t.Fatal("the unix socket was created")
		}
	})
	t.Run("command", func(t *testing.T) {
		marker := filepath.Join(os.TempDir(), fmt.Sprintf("mas4h-e2e-cmd-%d", os.Getpid()))
		defer os.Remove(marker)
		c := e.startClient("ssh", sshArgs(kA, sp.port, e2eTunnelUser+"@127.0.0.1", "touch "+marker)...)
		if code := c.wait(10 * time.Second); code == 0 || code == -1 {
			t.Fatalf("command: status %d", code)
		}
		if _, err := os.Stat(marker); err == nil {
			t.Fatal("the command ran")
		}
	})
	t.Run("pty", func(t *testing.T) {
		c := e.startClient("ssh", sshArgs(kA, sp.port, "-tt", e2eTunnelUser+"@127.0.0.1")...)
		if code := c.wait(10 * time.Second); code == 0 || code == -1 {
			t.Fatalf("pty session: status %d: %s", code, c.stderr)
		}
	})
	// On OpenSSH >= 9.8 the refused logins above could draw a penalty on
	// 127.0.0.1 (PerSourcePenalties), and every later refusal would then
	// pass because sshd dropped the connection, not because of the
	// directive under test.
	t.Run("no refusal was a penalty", func(t *testing.T) {
		if lines := penalised(t, sp); len(lines) > 0 {
			t.Errorf("sshd penalised the address; the refusals after it prove nothing:\n%s", strings.Join(lines, "\n"))
		}
	})
}

// socks5Connect asks a SOCKS5 proxy on lport for 127.0.0.1:target and
// expects the echo banner back.
func socks5Connect(lport, target int) error {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(lport), 2*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte{5, 1, 0}); err != nil {
		return err
	}
	buf := make([]byte, 64)
	if _, err := c.Read(buf[:2]); err != nil {
		return err
	}
	req := []byte{5, 1, 0, 1, 127, 0, 0, 1, byte(target >> 8), byte(target)}
	if _, err := c.Write(req); err != nil {
		return err
	}
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if n < 2 || buf[1] != 0 {
		return fmt.Errorf("socks reply %v", buf[:n])
	}
	line := make([]byte, len(echoBanner))
	if _, err := c.Read(line); err != nil {
		return err
	}
	if string(line) != echoBanner {
		return fmt.Errorf("got %q", line)
	}
	return nil
}

func TestRevokeKillsLiveSession(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	dev, k := e.enrol("pi-revoke", "--forward", fwd(es))
	sp := e.startSlave("s1")
	c := e.upTunnel(k, sp, dev, es)
	start := time.Now()
	if _, stderr, code := e.mas4h("", "device", "revoke", "pi-revoke", "--db", e.db); code != 0 {
		t.Fatal(stderr)
	}
	if !testkit.Wait(2*time.Second, func() bool { return !dialOK(port(dev)) && c.exited() }) {
		t.Fatalf("session still up %s after revoke (port open: %v, client exited: %v)", time.Since(start), dialOK(port(dev)), c.exited())
	}
	t.Logf("session gone %s after revoke", time.Since(start).Round(time.Millisecond))
	// And the next attempt is refused.
	c2 := e.tunnel(k, sp, fmt.Sprintf("%d:localhost:%d", port(dev), es.port))
	if code := c2.wait(10 * time.Second); code != 255 {
		t.Fatalf("revoked device reconnected (status %d)", code)
	}
}

func TestDropbearClient(t *testing.T) {
	e := newEnv(t, "dbclient", "dropbearconvert")
	es := startEcho(t)
	dev, k := e.enrol("openwrt-1", "--forward", fwd(es))
	sp := e.startSlave("s1")
	c := e.startClient("dbclient", "-y", "-N", "-i", k.dropbearKey(t), "-p", strconv.Itoa(sp.port),
		"-R", fmt.Sprintf("%d:localhost:%d", port(dev), es.port), e2eTunnelUser+"@127.0.0.1")
	if !waitListen(t, port(dev), c, 10*time.Second) {
		t.Fatalf("dbclient tunnel did not come up: %s", c.stderr)
	}
	if err := roundTrip(port(dev)); err != nil {
		t.Fatal(err)
	}
}

// watchTunnel round-trips through port every 100 ms until stop is closed and
// counts failures: "the tunnel stays up the whole time".
func watchTunnel(port int, stop chan struct{}) (failures *atomic.Int64, checks *atomic.Int64, done chan struct{}) {
	failures, checks, done = &atomic.Int64{}, &atomic.Int64{}, make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			checks.Add(1)
			if roundTrip(port) != nil {
				failures.Add(1)
			}
		}
	}()
	return failures, checks, done
}

func TestDaemonKill9KeepsTunnels(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	dev1, k1 := e.enrol("pi-one", "--forward", fwd(es))
	sp := e.startSlave("s1")
	c := e.upTunnel(k1, sp, dev1, es)
	sshdBefore := sp.sshdPid()
	stop := make(chan struct{})
	failures, checks, done := watchTunnel(port(dev1), stop)

	sp.kill9()
	// The tunnel carries bytes with no daemon at all.
	down := checks.Load()
	testkit.Eventually(t, 5*time.Second, func() bool { return checks.Load() >= down+3 }, "no round trips checked while the daemon was down")
	sp.start()
	if !strings.Contains(sp.log.String(), "adopted running sshd") {
		t.Errorf("restarted daemon did not adopt sshd:\n%s", sp.log)
	}
	if sp.sshdPid() != sshdBefore {
		t.Errorf("sshd pid changed %d -> %d", sshdBefore, sp.sshdPid())
	}
	dev2, k2 := e.enrol("pi-two", "--forward", fwd(es))
	sp.waitKnown(t, k2)
	c2 := e.tunnel(k2, sp, fmt.Sprintf("%d:localhost:%d", port(dev2), es.port))
	if !waitListen(t, port(dev2), c2, 10*time.Second) {
		t.Fatalf("second device could not connect after the restart: %s", c2.stderr)
	}
	if err := roundTrip(port(dev2)); err != nil {
		t.Fatal(err)
	}
	close(stop)
	<-done
	if failures.Load() != 0 || checks.Load() < 5 {
		t.Fatalf("tunnel dropped: %d of %d checks failed", failures.Load(), checks.Load())
	}
	if c.exited() {
		t.Fatalf("first client exited: %s", c.stderr)
	}
}

func TestHookAnswersFromCacheWhileDaemonDown(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	dev, k := e.enrol("pi-cache", "--forward", fwd(es))
	sp := e.startSlave("s1")
	sp.kill9()
	c := e.tunnel(k, sp, fmt.Sprintf("%d:localhost:%d", port(dev), es.port))
	if !waitListen(t, port(dev), c, 10*time.Second) {
		t.Fatalf("cached device refused while the daemon is down: %s", c.stderr)
	}
	unknown := e.newKey("stranger")
	c2 := e.tunnel(unknown, sp, fmt.Sprintf("%d:localhost:%d", port(dev)+1, es.port))
	if code := c2.wait(10 * time.Second); code != 255 {
		t.Fatalf("unknown key: status %d", code)
	}
}

func TestSSHDKill9IsRestarted(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	dev, k := e.enrol("pi-one", "--forward", fwd(es))
	sp := e.startSlave("s1")
	e.upTunnel(k, sp, dev, es)
	old := sp.sshdPid()
	killed := time.Now()
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool {
		pid := sp.sshdPid()
		return pid != old && pid != 0 && dialOK(sp.port)
	}, "sshd not back:\n%s", sp.log)
	t.Logf("sshd back %s after kill -9", time.Since(killed).Round(time.Millisecond))
	if err := roundTrip(port(dev)); err != nil {
		t.Fatalf("existing tunnel lost with the listener: %v", err)
	}
	dev2, k2 := e.enrol("pi-two", "--forward", fwd(es))
	sp.waitKnown(t, k2)
	c2 := e.tunnel(k2, sp, fmt.Sprintf("%d:localhost:%d", port(dev2), es.port))
	if !waitListen(t, port(dev2), c2, 10*time.Second) {
		t.Fatalf("new device refused by the restarted sshd: %s", c2.stderr)
	}
	// The orphaned session of the killed listener is still this slave's.
	if _, stderr, code := e.mas4h("", "device", "revoke", "pi-one", "--db", e.db); code != 0 {
		t.Fatal(stderr)
	}
	waitClosed(t, port(dev))
}

// The hook, run exactly as sshd runs it, with hostile arguments: nothing on
// stdout, non-zero exit, no panic.
func TestHookHostileArguments(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	_, k := e.enrol("pi-hook", "--forward", fwd(es))
	sp := e.startSlave("s1")
	keyB64 := base64.StdEncoding.EncodeToString(k.pub.Marshal())
	fp := ssh.FingerprintSHA256(k.pub)
	hook := filepath.Join(statedir.Dir(sp.stateDir).Bin(), "mas4h-authkeys")
	if !strings.Contains(string(mustRead(t, statedir.Dir(sp.stateDir).SSHDConfig())), "AuthorizedKeysCommand "+sshdconfig.ConfigPath(hook)+" --state-dir") {
		t.Fatalf("sshd_config does not run the lean hook %s", hook)
	}
	base := []string{"--state-dir", sp.stateDir, "--"}
	// Sanity: the well-formed call is answered, by the lean hook and by the
	// main binary's authkeys subcommand (the fallback without mas4h-authkeys).
	out, _, code := runAs(t, hook, append(base, e2eTunnelUser, fp, k.pub.Type(), keyB64)...)
	if code != 0 || !strings.Contains(out, "permitlisten=") {
		t.Fatalf("valid call: status %d, output %q", code, out)
	}
	out2, _, code := runAs(t, testBin, append([]string{"authkeys"}, append(base, e2eTunnelUser, fp, k.pub.Type(), keyB64)...)...)
	if code != 0 || out2 != out {
		t.Fatalf("mas4h authkeys: status %d, output %q, want %q", code, out2, out)
	}
	cases := map[string][]string{
		"shell metachars in user": {"$(touch /tmp/pwn);`id`|x", fp, k.pub.Type(), keyB64},
		"other user":              {"root", fp, k.pub.Type(), keyB64},
		"truncated key":           {e2eTunnelUser, fp, k.pub.Type(), keyB64[:len(keyB64)/2]},
		"huge argv":               {e2eTunnelUser, fp, k.pub.Type(), strings.Repeat("A", 100000)},
		"missing args":            {e2eTunnelUser},
		"no args":                 {},
		"help as user":            {"--help", fp, k.pub.Type(), keyB64},
		"flag-like":               {"-x", "--state-dir=/", "-", "--"},
		"wrong fingerprint":       {e2eTunnelUser, "SHA256:AAAA", k.pub.Type(), keyB64},
		"nul-free garbage":        {"\x01\x02", "\xff\xfe", "ssh-ed25519", "AAAAC3NzaC1lZDI1NTE5AAAAI"},
	}
	for name, args := range cases {
		t.Run(name, func(t *testing.T) {
			out, stderr, code := runAs(t, hook, append(base, args...)...)
			if out != "" || code == 0 {
				t.Fatalf("status %d, stdout %q", code, out)
			}
			if strings.Contains(stderr, "panic") || strings.Contains(stderr, "goroutine") {
				t.Fatalf("panicked: %s", stderr)
			}
		})
	}
	t.Run("no state dir", func(t *testing.T) {
		out, _, code := runAs(t, hook, e2eTunnelUser, fp, k.pub.Type(), keyB64)
		if out != "" || code == 0 {
			t.Fatalf("status %d, stdout %q", code, out)
		}
	})
}

// waitKnown waits until the slave's hook, run as sshd runs it, accepts k's
// key: the slave has taken in the device's enrolment.
func (sp *slaveProc) waitKnown(t *testing.T, k deviceKey) {
	t.Helper()
	hook := filepath.Join(statedir.Dir(sp.stateDir).Bin(), "mas4h-authkeys")
	args := []string{"--state-dir", sp.stateDir, "--", e2eTunnelUser, ssh.FingerprintSHA256(k.pub), k.pub.Type(), base64.StdEncoding.EncodeToString(k.pub.Marshal())}
	var out, stderr string
	if !testkit.Wait(10*time.Second, func() bool {
		var code int
		out, stderr, code = runAs(t, hook, args...)
		return code == 0 && strings.Contains(out, "permitlisten=")
	}) {
		t.Fatalf("slave %s does not accept %s: %q %s\n%s", sp.name, k.name, out, stderr, sp.log)
	}
}

// runAs runs the hook as the tunnel user, as sshd's AuthorizedKeysCommandUser.
func runAs(t *testing.T, bin string, args ...string) (string, string, int) {
	t.Helper()
	cmdArgs := append([]string{"--reuid=" + e2eTunnelUser, "--regid=" + e2eTunnelUser, "--init-groups", bin}, args...)
	return newCmd(t, "setpriv", cmdArgs...)()
}

// A daemon restarted with a changed configuration adopts the running sshd and
// reloads it (same pid, SIGHUP): the new listen port works and the live
// tunnel is untouched.
func TestRestartWithNewConfigReloadsSSHD(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	dev, k := e.enrol("pi-reload", "--forward", fwd(es))
	sp := e.startSlave("s1")
	e.upTunnel(k, sp, dev, es)
	pid := sp.sshdPid()
	sp.kill9()
	oldPort := sp.port
	sp.port = freePort(t)
	sp.start()
	if !strings.Contains(sp.log.String(), "reloaded its new config") {
		t.Fatalf("no reload logged:\n%s", sp.log)
	}
	if sp.sshdPid() != pid {
		t.Fatalf("sshd pid changed %d -> %d (restarted instead of reloaded)", pid, sp.sshdPid())
	}
	if dialOK(oldPort) {
		t.Errorf("old listen port %d still accepts", oldPort)
	}
	if err := roundTrip(port(dev)); err != nil {
		t.Fatalf("tunnel lost in the reload: %v", err)
	}
	dev2, k2 := e.enrol("pi-reload-2", "--forward", fwd(es))
	sp.waitKnown(t, k2)
	c2 := e.tunnel(k2, sp, fmt.Sprintf("%d:localhost:%d", port(dev2), es.port))
	if !waitListen(t, port(dev2), c2, 10*time.Second) {
		t.Fatalf("new device on the new port: %s", c2.stderr)
	}
}

// A --sshd that is not OpenSSH's sshd (here /bin/false: it says nothing and
// fails) is refused at start with what to give; the slave starts nothing.
// It once said "sshd -t rejected the generated config (exit status 1): "
// and no more.
func TestSlaveRefusesAnSSHDThatIsNone(t *testing.T) {
	e := newEnv(t)
	e.enrol("pi-kitchen")
	stateDir := filepath.Join(e.dir, "slave-s1")
	_, stderr, code := e.mas4h("", "slave", "--name", "s1", "--db", e.db, "--state-dir", stateDir,
		"--ssh-listen", net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t))), "--tunnel-user", e2eTunnelUser, "--sshd", "/bin/false", "--guard-ports", "none")
	if code == 0 || !strings.Contains(stderr, "asking /bin/false its version") ||
		!strings.Contains(stderr, "--sshd must be OpenSSH's sshd") {
		t.Fatalf("slave with --sshd /bin/false: exit %d:\n%s", code, stderr)
	}
	if b, _ := os.ReadFile(statedir.Dir(stateDir).PidFile()); len(strings.TrimSpace(string(b))) > 0 {
		t.Errorf("sshd's pid file names a process: %q", b)
	}
}
