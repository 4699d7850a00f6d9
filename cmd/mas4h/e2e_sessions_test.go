package main

// Sessions known by their key (issue 13): revoke and rm end every session of
// a key, whatever it holds; a session on another device's port is ended; a
// party with only a device's public key ends nothing; the session cap.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/registry"
)

// reconnect starts k's tunnel as the agent keeps it: a client that fails
// (its forward refused while an older session holds the port) is started
// again after a short pause, until one carries bytes (only a live forward
// does: a frozen session's listener accepts but never answers) or within
// passes. It returns that client, the attempts and the time from the first
// start until the port carried bytes.
func (e *env) reconnect(k deviceKey, sp *slaveProc, dev registry.Device, es *echoServer, within time.Duration) (*tunnelClient, int, time.Duration) {
	e.t.Helper()
	start := time.Now()
	for attempt := 1; time.Since(start) < within; attempt++ {
		c := e.tunnel(k, sp, fmt.Sprintf("%d:localhost:%d", port(dev), es.port))
		for !c.exited() && time.Since(start) < within {
			if quickTrip(port(dev)) == nil {
				return c, attempt, time.Since(start)
			}
			time.Sleep(20 * time.Millisecond)
		}
		time.Sleep(300 * time.Millisecond) // the agent's shortest backoff is 0.1-1 s
	}
	e.t.Fatalf("%s's tunnel not back within %s", k.name, within)
	return nil, 0, 0
}

// controlMaster opens an OpenSSH ControlMaster connection of k that asks
// for no forward (yet), and returns its control socket.
func (e *env) controlMaster(k deviceKey, sp *slaveProc) (*tunnelClient, string) {
	e.t.Helper()
	ctl := filepath.Join(e.dir, k.name+".ctl")
	c := e.startClient("ssh", sshArgs(k, sp.port, "-N", "-M", "-S", ctl, e2eTunnelUser+"@127.0.0.1")...)
	testkit.Eventually(e.t, 10*time.Second, func() bool {
		_, err := os.Stat(ctl)
		return err == nil || c.exited()
	}, "control master of %s did not come up: %s", k.name, c.stderr)
	if c.exited() {
		e.t.Fatalf("control master of %s exited: %s", k.name, c.stderr)
	}
	return c, ctl
}

// forwardThrough asks the control master behind ctl to forward spec.
func forwardThrough(t *testing.T, ctl, spec string) error {
	t.Helper()
	cmd := exec.Command("ssh", "-F", "/dev/null", "-S", ctl, "-O", "forward", "-R", spec, "x")
	_, stderr, code := exitOf(t, cmd, "")
	if code != 0 {
		return fmt.Errorf("ssh -O forward: exit %d: %s", code, strings.TrimSpace(stderr))
	}
	return nil
}

// A revoke ends a session of the device's key that holds no port yet (an
// OpenSSH ControlMaster), so it cannot bind the port afterwards.
func TestRevokeEndsPortlessSessions(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	dev, k := e.enrol("pi-ctl", "--forward", fwd(es))
	sp := e.startSlave("s1")
	master, ctl := e.controlMaster(k, sp)
	waitAuthLogged(t, sp, k)
	if _, stderr, code := e.mas4h("", "device", "revoke", "pi-ctl", "--db", e.db); code != 0 {
		t.Fatal(stderr)
	}
	testkit.Eventually(t, 5*time.Second, master.exited, "the port-less session of a revoked device survived: %s", master.stderr)
	if err := forwardThrough(t, ctl, fmt.Sprintf("%d:localhost:%d", port(dev), es.port)); err == nil || dialOK(port(dev)) {
		t.Fatalf("the revoked device bound its port through its old session (err %v)", err)
	}
	waitEvents(t, e, "pi-ctl", "device revoked")
}

// A removed device's surviving session (the daemon was down at the rm)
// binds the port the registry then leased to another device: the next walk
// ends it, and the port's new device gets its tunnel; `mas4h tunnels` never
// shows the impostor as that device.
func TestImpostorOnReleasedPortIsEnded(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	devA, kA := e.enrol("pi-a", "--forward", fwd(es))
	sp := e.startSlave("s1")
	_, ctl := e.controlMaster(kA, sp)
	waitAuthLogged(t, sp, kA)

	sp.cmd.Process.Signal(syscall.SIGTERM) // the daemon goes down; sshd and the session stay
	<-sp.done
	if _, stderr, code := e.mas4h("", "device", "rm", "pi-a", "--db", e.db); code != 0 {
		t.Fatal(stderr)
	}
	devB, kB := e.enrol("pi-b", "--forward", fwd(es))
	if port(devB) != port(devA) { // leases take the lowest free port: pi-a's, freed by the rm
		t.Fatalf("the registry leased pi-b port %d, not pi-a's freed %d: nothing to steal", port(devB), port(devA))
	}
	if err := forwardThrough(t, ctl, fmt.Sprintf("%d:localhost:%d", port(devB), es.port)); err != nil {
		t.Fatalf("setting up the impostor: %v", err)
	}
	if !dialOK(port(devB)) {
		t.Fatal("the impostor's forward did not bind")
	}
	sp.start() // the daemon is back: its first walk finds the impostor
	testkit.Eventually(t, 15*time.Second, func() bool { return !dialOK(port(devB)) }, "pi-a's session still holds pi-b's port")
	for _, tn := range tunnelsOf(t, sp) {
		if tn == "pi-b" {
			t.Errorf("the impostor was listed as pi-b")
		}
	}
	c, _, took := e.reconnect(kB, sp, devB, es, 15*time.Second)
	t.Logf("pi-b's own tunnel up %s after its first attempt", took.Round(time.Millisecond))
	defer c.cmd.Process.Kill()
	waitEvents(t, e, "pi-b", "is no enrolled device's; it holds port "+strconv.Itoa(port(devB))+", leased to device pi-b")
}

// tunnelsOf lists the devices of the slave's tunnels.
func tunnelsOf(t *testing.T, sp *slaveProc) []string {
	t.Helper()
	out, stderr, code := sp.e.mas4h("", "tunnels", "--state-dir", sp.stateDir, "-o", "json")
	if code != 0 {
		t.Fatalf("mas4h tunnels: %s", stderr)
	}
	var devices []string
	for _, f := range strings.Split(out, `"device":"`)[1:] {
		devices = append(devices, f[:strings.Index(f, `"`)])
	}
	return devices
}

// waitAuthLogged waits until the slave's sshd logged k's authentication,
// from which the daemon knows the session's key.
func waitAuthLogged(t *testing.T, sp *slaveProc, k deviceKey) {
	t.Helper()
	fp := ssh.FingerprintSHA256(k.pub)
	testkit.Eventually(t, 10*time.Second, func() bool {
		b, _ := os.ReadFile(filepath.Join(sp.stateDir, "sshd", "sshd.log"))
		return strings.Contains(string(b), "Accepted publickey for "+e2eTunnelUser) && strings.Contains(string(b), fp)
	}, "sshd did not log %s's authentication", k.name)
}

// querySigner holds only a public key: it lets the client ask sshd whether
// the key would be accepted (the query sshd runs its AuthorizedKeysCommand
// for) and cannot sign.
type querySigner struct{ pub ssh.PublicKey }

func (q querySigner) PublicKey() ssh.PublicKey { return q.pub }
func (q querySigner) Sign(io.Reader, []byte) (*ssh.Signature, error) {
	return nil, errors.New("this party has only the public key")
}

// keyQueries has sshd run the hook for k's public key n times from a
// client that cannot sign: what anyone with the device's .pub file can do.
func keyQueries(t *testing.T, sp *slaveProc, pub ssh.PublicKey, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		cfg := &ssh.ClientConfig{User: e2eTunnelUser, Auth: []ssh.AuthMethod{ssh.PublicKeys(querySigner{pub})},
			HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 5 * time.Second}
		c, err := ssh.Dial("tcp", "127.0.0.1:"+strconv.Itoa(sp.port), cfg)
		if err == nil {
			c.Close()
			t.Fatal("a client without the private key logged in")
		}
	}
}

// A party with only a device's public key ends nothing: its key queries
// reach the hook, under every newest-wins policy, and the device's tunnel —
// healthy but slow to answer (its service speaks after 1 s) — stays up.
func TestKeyQueriesEndNothing(t *testing.T) {
	for _, policy := range []string{"stale", "always"} {
		t.Run(policy, func(t *testing.T) {
			e := newEnv(t)
			slow := startSlowBanner(t, time.Second)
			dev, k := e.enrol("pi-slow", "--forward", fmt.Sprintf("ssh=localhost:%d,probe=ssh-banner", slow))
			sp := e.startProbingSlave("s1", "--newest-wins", policy)
			c := e.tunnel(k, sp, fmt.Sprintf("%d:localhost:%d", port(dev), slow))
			if !waitListen(t, port(dev), c, 10*time.Second) {
				t.Fatalf("tunnel did not come up: %s", c.stderr)
			}
			waitKeysFile(t, sp, dev, false, 5*time.Second) // the queries go through the hook
			keyQueries(t, sp, k.pub, 10)
			if hookCount(sp, "pi-slow") == 0 {
				t.Fatalf("the queries never reached the hook:\n%s", sp.log)
			}
			// Longer than newest-wins' probe of the slow service would take.
			time.Sleep(4 * time.Second)
			if c.exited() || !dialOK(port(dev)) {
				t.Fatalf("the device's tunnel was ended by key queries alone: %s", c.stderr)
			}
			if ev := eventsFor(t, e, "pi-slow"); strings.Contains(ev, "superseded") || strings.Contains(ev, "kill:") {
				t.Errorf("events:\n%s", ev)
			}
		})
	}
}

// startSlowBanner is a device-side service that sends an SSH banner delay
// after each connection, then closes.
func startSlowBanner(t *testing.T, delay time.Duration) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				time.Sleep(delay)
				c.Write([]byte(echoBanner))
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				c.Read(make([]byte, 256))
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port
}

// A device's key holds at most --max-sessions-per-device sessions: one more
// login is refused with a deny event, and the device's tunnel is untouched.
func TestSessionCapRefusesLogins(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	dev, k := e.enrol("pi-cap", "--forward", fwd(es))
	sp := e.startSlaveWith("s1", "--db", e.db, "--max-sessions-per-device", "2")
	tunnel := e.upTunnel(k, sp, dev, es)
	idle := e.startClient("ssh", sshArgs(k, sp.port, "-N", e2eTunnelUser+"@127.0.0.1")...) // a second, port-less
	testkit.Eventually(t, 10*time.Second, func() bool { return authCount(sp, k) >= 2 }, "second session not logged")
	// The third login is refused by the hook (a deny event) or, taken from
	// the keys file before the file could leave the device out, its oldest
	// port-less session is ended at once: either way two sessions remain.
	third := e.startClient("ssh", sshArgs(k, sp.port, "-N", e2eTunnelUser+"@127.0.0.1")...)
	testkit.Eventually(t, 10*time.Second, func() bool { return third.exited() || idle.exited() },
		"a third session of one key: all three still up")
	waitEvents(t, e, "pi-cap", "session cap: device pi-cap has")
	if tunnel.exited() || roundTrip(port(dev)) != nil {
		t.Fatal("the cap ended the device's tunnel")
	}
	// And now a fourth, through the hook (the device has live sessions, so
	// it is out of the keys file): refused.
	testkit.Eventually(t, 5*time.Second, func() bool { return !keysFileHas(sp, k) }, "device still in the keys file")
	fourth := e.startClient("ssh", sshArgs(k, sp.port, "-N", e2eTunnelUser+"@127.0.0.1")...)
	if code := fourth.wait(10 * time.Second); code != 255 {
		t.Fatalf("a login beyond the cap: status %d, want 255", code)
	}
	waitEvents(t, e, "pi-cap", "deny: session cap: device pi-cap has 2 sessions, at most 2")
}

// authCount is how many times sshd logged k's authentication.
func authCount(sp *slaveProc, k deviceKey) int {
	b, _ := os.ReadFile(filepath.Join(sp.stateDir, "sshd", "sshd.log"))
	return strings.Count(string(b), "ssh2: ED25519 "+ssh.FingerprintSHA256(k.pub))
}

// keysFileHas reports whether k is in the slave's keys file.
func keysFileHas(sp *slaveProc, k deviceKey) bool {
	b, _ := os.ReadFile(sp.keysFile())
	return strings.Contains(string(b), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k.pub))))
}

// quickTrip is a round trip through port that gives up after 300 ms: a
// live forward on loopback answers in a few; a frozen one never does.
func quickTrip(port int) error {
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 300*time.Millisecond)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(300 * time.Millisecond))
	buf := make([]byte, len(echoBanner))
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != echoBanner {
		return fmt.Errorf("no banner through port %d: %v", port, err)
	}
	return nil
}

// Under a master that heartbeats every 10 s, a revoke reaches the slave at
// once (its ask for revocations waits on the master): a second login of
// the revoked key right after the revoke is refused, and its live session
// ends, long before the next heartbeat.
func TestMasterRevokeRefusesAtOnce(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	m := e.startMaster("--heartbeat-interval", "10s")
	sp := m.startSlave("s1")
	waitSlavesAlive(t, m, 1)
	_, k := m.enrol("pi-quick", fwd(es))
	slot, c, p := m.connect(k, es)
	time.Sleep(time.Second) // past the slave's first ask: it waits on the master now
	start := time.Now()
	if _, stderr, code := m.admin("device", "revoke", "pi-quick"); code != 0 {
		t.Fatal(stderr)
	}
	testkit.Eventually(t, 15*time.Second, func() bool { return strings.Contains(sp.log.String(), "revocation from the master") },
		"the slave did not hear of the revoke")
	if !strings.Contains(sp.log.String(), "via=feed") {
		t.Errorf("the revoke reached the slave with a heartbeat, not through the feed:\n%s", sp.log)
	}
	heard := time.Since(start)
	second := e.tunnelTo(k, slot, es.port)
	if code := second.wait(10 * time.Second); code != 255 {
		t.Fatalf("a login of the revoked key %s after the revoke: status %d, want 255", time.Since(start).Round(time.Millisecond), code)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return c.exited() && !dialOK(p) }, "the revoked device's session survived")
	t.Logf("the slave heard of the revoke %s after it (heartbeats every 10 s); its session ended %s after it",
		heard.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}
