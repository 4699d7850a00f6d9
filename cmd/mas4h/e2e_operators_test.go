package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// opsFleet is a slave with two devices' tunnels up (lyon-1 labelled
// site=lyon, paris-1 site=paris), each to its own echo server, and an
// operator alice allowed on site=lyon; admin runs mas4h against the
// registry (a master's or the slave's own file).
type opsFleet struct {
	e                   *env
	sp                  *slaveProc
	admin               func(args ...string) (string, string, int)
	esLyon, esParis     *echoServer
	lyonPort, parisPort int
	lyonKey, alice      deviceKey
	tunnelLyon          *tunnelClient
	waitAccess          func(device string) wire.Access // master mode only
}

func (f *opsFleet) must(args ...string) string {
	f.e.t.Helper()
	out, stderr, code := f.admin(args...)
	if code != 0 {
		f.e.t.Fatalf("mas4h %s: exit %d: %s", strings.Join(args, " "), code, stderr)
	}
	return out
}

// masterFleet: a real master, a slave under it, devices tunnelled
// through the slots the master gives.
func masterFleet(t *testing.T) *opsFleet {
	e := newEnv(t)
	m := e.startMaster()
	f := &opsFleet{e: e, admin: m.admin, esLyon: startEcho(t), esParis: startEcho(t), alice: e.newKey("alice")}
	f.sp = m.startSlave("s1")
	_, f.lyonKey = m.enrol("lyon-1", fwd(f.esLyon))
	_, kParis := m.enrol("paris-1", fwd(f.esParis))
	f.must("device", "label", "lyon-1", "site=lyon")
	f.must("device", "label", "paris-1", "site=paris")
	_, f.tunnelLyon, f.lyonPort = m.connect(f.lyonKey, f.esLyon)
	_, _, f.parisPort = m.connect(kParis, f.esParis)
	f.must("operator", "add", "alice", "--key", f.alice.public, "--allow", "site=lyon")
	c, err := client.New(m.url, "")
	if err != nil {
		t.Fatal(err)
	}
	f.waitAccess = func(device string) wire.Access {
		t.Helper()
		var a wire.Access
		var last error
		testkit.Eventually(t, 10*time.Second, func() bool {
			a, last = c.Access(context.Background(), f.alice.signer, device, "")
			return last == nil
		}, "POST /access for %s: %v", device, last)
		return a
	}
	return f
}

// localFleet: a slave on its own registry file (--db).
func localFleet(t *testing.T) *opsFleet {
	e := newEnv(t)
	f := &opsFleet{e: e, esLyon: startEcho(t), esParis: startEcho(t), alice: e.newKey("alice")}
	f.admin = func(args ...string) (string, string, int) { return e.mas4h("", append(args, "--db", e.db)...) }
	lyon, kLyon := e.enrol("lyon-1", "--forward", fwd(f.esLyon), "--label", "site=lyon")
	paris, kParis := e.enrol("paris-1", "--forward", fwd(f.esParis), "--label", "site=paris")
	f.lyonKey, f.lyonPort, f.parisPort = kLyon, port(lyon), port(paris)
	f.must("operator", "add", "alice", "--key", f.alice.public, "--allow", "site=lyon")
	f.sp = e.startSlave("s1")
	f.tunnelLyon = e.upTunnel(kLyon, f.sp, lyon, f.esLyon)
	e.upTunnel(kParis, f.sp, paris, f.esParis)
	return f
}

// ssh runs one OpenSSH client as user with key to the slave, to the end.
func (f *opsFleet) ssh(k deviceKey, user string, args ...string) (string, string, int) {
	f.e.t.Helper()
	// LogLevel INFO (ssh takes an option's first value): sshd's reasons
	// show on stderr.
	all := append([]string{"-o", "LogLevel=INFO"}, sshArgs(k, f.sp.port, append([]string{"-l", user, "127.0.0.1"}, args...)...)...)
	return exitOf(f.e.t, exec.Command("ssh", all...), "")
}

// forward starts `ssh -N -L` as alice to port, checks bytes cross it,
// and holds a connection open through it: the access the slave sees
// (sshd's connection to the device's port lives as long as the channel;
// a walk a second cannot see a channel opened and closed between two).
func (f *opsFleet) forward(p int) (*tunnelClient, net.Conn) {
	t := f.e.t
	t.Helper()
	lp := freePort(t)
	// A refusal is remembered for a few seconds (after a deny, say): a
	// login refused is tried again until then.
	var c *tunnelClient
	for deadline := time.Now().Add(8 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		c = f.e.startClient("ssh", sshArgs(f.alice, f.sp.port, "-N", "-L", fmt.Sprintf("%d:localhost:%d", lp, p), "-l", e2eOperatorUser, "127.0.0.1")...)
		if waitListen(t, lp, c, 10*time.Second) {
			break
		}
		if !strings.Contains(c.stderr.String(), "Permission denied") || time.Now().After(deadline) {
			t.Fatalf("alice's -L to %d did not come up: %s", p, c.stderr)
		}
	}
	if err := roundTrip(lp); err != nil {
		t.Fatalf("alice's -L to the lyon device: %v (%s)", err, c.stderr)
	}
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(lp), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if b, err := bufio.NewReader(conn).ReadString('\n'); err != nil || b != echoBanner {
		t.Fatalf("held connection through alice's -L: %q, %v", b, err)
	}
	conn.SetReadDeadline(time.Time{})
	return c, conn
}

// closed tells whether conn's far end has closed it (within d).
func closed(conn net.Conn, d time.Duration) bool {
	conn.SetReadDeadline(time.Now().Add(d))
	_, err := conn.Read(make([]byte, 1))
	var ne net.Error
	return err != nil && !(errors.As(err, &ne) && ne.Timeout())
}

// events lists alice's operator events.
func (f *opsFleet) events() []wire.Event {
	f.e.t.Helper()
	var evs []wire.Event
	if err := json.Unmarshal([]byte(f.must("events", "--operator", "alice", "-o", "json")), &evs); err != nil {
		f.e.t.Fatal(err)
	}
	return evs
}

// lastEvent is the id of alice's latest event (0: none).
func (f *opsFleet) lastEvent() int64 {
	var id int64
	for _, ev := range f.events() {
		id = max(id, ev.ID)
	}
	return id
}

// waitEvent waits for alice's event of kind about device, newer than
// the event after, and returns it.
func (f *opsFleet) waitEvent(kind, device string, after int64) wire.Event {
	t := f.e.t
	t.Helper()
	var got wire.Event
	testkit.Eventually(t, 15*time.Second, func() bool {
		for _, ev := range f.events() {
			if ev.Kind == kind && ev.Device == device && ev.ID > after {
				got = ev
				return true
			}
		}
		return false
	}, "no %s event of alice for %s: %+v", kind, device, f.events())
	if got.Operator != "alice" || got.Slave != "s1" {
		t.Errorf("%s event: %+v, want operator alice on slave s1", kind, got)
	}
	t.Logf("%s: %s %s at %s: %s", got.Kind, got.Operator, got.Device, got.At.Format(time.RFC3339), got.Detail)
	return got
}

// reach: alice reaches lyon-1's target through the slave with plain ssh
// (-W and -L), and sshd refuses her a channel to paris-1's port (the
// device never sees it); her key as the tunnel user, and the lyon
// device's as the operator user, are refused; so are -R, a shell, a
// command and a pty as the operator user.
func (f *opsFleet) reach(t *testing.T) {
	before := f.esLyon.accepts.Load()
	c := f.e.startClient("ssh", sshArgs(f.alice, f.sp.port, "-W", fmt.Sprintf("localhost:%d", f.lyonPort), "-l", e2eOperatorUser, "127.0.0.1")...)
	testkit.Eventually(t, 10*time.Second, func() bool { return f.esLyon.accepts.Load() > before },
		"alice's -W to lyon-1 (%d) never reached its target: %s", f.lyonPort, c.stderr)
	c2, conn := f.forward(f.lyonPort)
	conn.Close()
	c2.cmd.Process.Kill()

	parisBefore := f.esParis.accepts.Load()
	_, stderr, code := f.ssh(f.alice, e2eOperatorUser, "-W", fmt.Sprintf("localhost:%d", f.parisPort))
	if code != 255 || !strings.Contains(stderr, "open failed") || !strings.Contains(stderr, "administratively prohibited") {
		t.Errorf("alice's -W to paris-1: exit %d, want 255 and sshd's refusal: %s", code, stderr)
	}
	if n := f.esParis.accepts.Load(); n != parisBefore {
		t.Errorf("paris-1's target saw %d connections from a refused channel", n-parisBefore)
	}

	for _, c := range []struct {
		name string
		k    deviceKey
		user string
		args []string
		want string
	}{
		{"operator key as the tunnel user", f.alice, e2eTunnelUser, []string{"-W", fmt.Sprintf("localhost:%d", f.lyonPort)}, "Permission denied (publickey)"},
		{"device key as the operator user", f.lyonKey, e2eOperatorUser, []string{"-W", fmt.Sprintf("localhost:%d", f.lyonPort)}, "Permission denied (publickey)"},
		{"-R as the operator user", f.alice, e2eOperatorUser, []string{"-N", "-R", fmt.Sprintf("%d:localhost:%d", freePort(t), f.esLyon.port)}, "remote port forwarding failed"},
		{"pty as the operator user", f.alice, e2eOperatorUser, []string{"-tt", "id"}, "channel 0: open failed"},
		{"shell as the operator user", f.alice, e2eOperatorUser, nil, "channel 0: open failed"},
		{"command as the operator user", f.alice, e2eOperatorUser, []string{"echo", "ran-it"}, "channel 0: open failed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, stderr, code := f.ssh(c.k, c.user, c.args...)
			if code == 0 || strings.Contains(out, "ran-it") || strings.Contains(out, "uid=") {
				t.Fatalf("exit %d, out %q: not refused: %s", code, out, stderr)
			}
			if c.want != "" && !strings.Contains(stderr, c.want) {
				t.Errorf("stderr lacks %q: %s", c.want, stderr)
			}
			t.Logf("refused (exit %d): %s", code, strings.TrimSpace(stderr+out))
		})
	}
}

// revoke: a live -L session of alice ends once she is revoked; the time
// from the command to the session's end is logged. Her events show the
// access's start and end.
func (f *opsFleet) revoke(t *testing.T) time.Duration {
	after := f.lastEvent()
	c, conn := f.forward(f.lyonPort)
	connect := f.waitEvent(wire.EventOperatorConnect, "lyon-1", after)
	t0 := time.Now()
	f.must("operator", "revoke", "alice")
	if code := c.wait(10 * time.Second); code == -1 {
		t.Fatalf("alice's session outlived her revocation by 10 s")
	}
	took := time.Since(t0)
	if !closed(conn, 2*time.Second) {
		t.Errorf("the connection through alice's -L outlived her session")
	}
	t.Logf("operator revoke -> session ended in %v (heartbeat %v)", took.Round(time.Millisecond), e2eHeartbeat)
	if took > e2eHeartbeat+2*time.Second {
		t.Errorf("the session ended %v after the revocation, want within a heartbeat (%v) and a walk", took, e2eHeartbeat)
	}
	disc := f.waitEvent(wire.EventOperatorDisconnect, "lyon-1", connect.ID)
	if disc.At.Before(connect.At) || !strings.Contains(disc.Detail, "since") || !strings.Contains(disc.Detail, " for ") {
		t.Errorf("disconnect %+v after connect %+v: want the start and the duration", disc, connect)
	}
	if _, stderr, code := f.ssh(f.alice, e2eOperatorUser, "-W", fmt.Sprintf("localhost:%d", f.lyonPort)); code != 255 ||
		!strings.Contains(stderr, "Permission denied (publickey)") {
		t.Errorf("revoked alice logs in: exit %d: %s", code, stderr)
	}
	return took
}

func TestOperatorsThroughSlave(t *testing.T) {
	f := masterFleet(t)
	a := f.waitAccess("lyon-1")
	if a.RemotePort != f.lyonPort || a.User != e2eOperatorUser || a.Slave != "s1" || a.Port != f.sp.port {
		t.Fatalf("access to lyon-1: %+v, want port %d through user %s on s1's sshd (%d)", a, f.lyonPort, e2eOperatorUser, f.sp.port)
	}
	t.Run("reach", f.reach)

	// Narrowing her allow list (deny) ends her live session: its
	// permitopen was fixed at login.
	t.Run("deny", func(t *testing.T) {
		after := f.lastEvent()
		c, conn := f.forward(f.lyonPort)
		connect := f.waitEvent(wire.EventOperatorConnect, "lyon-1", after)
		t0 := time.Now()
		f.must("operator", "deny", "alice", "site=lyon")
		if code := c.wait(10 * time.Second); code == -1 {
			t.Fatal("alice's session outlived the deny by 10 s")
		}
		t.Logf("operator deny -> session ended in %v", time.Since(t0).Round(time.Millisecond))
		if !closed(conn, 2*time.Second) {
			t.Errorf("the connection through alice's -L outlived the deny")
		}
		if disc := f.waitEvent(wire.EventOperatorDisconnect, "lyon-1", connect.ID); disc.At.Before(connect.At) {
			t.Errorf("disconnect %+v before connect %+v", disc, connect)
		}
		// Refused at login (she may reach nothing) or at the channel.
		if _, stderr, code := f.ssh(f.alice, e2eOperatorUser, "-W", fmt.Sprintf("localhost:%d", f.lyonPort)); code != 255 ||
			!strings.Contains(stderr, "open failed") && !strings.Contains(stderr, "Permission denied (publickey)") {
			t.Errorf("after deny, -W to lyon-1: exit %d: %s", code, stderr)
		}
		f.must("operator", "allow", "alice", "site=lyon")
	})
	t.Run("revoke", func(t *testing.T) { f.revoke(t) })
}

// The same on a slave with its own registry file: operators are answered
// from it, their events recorded in it.
func TestOperatorsLocalRegistry(t *testing.T) {
	f := localFleet(t)
	t.Run("reach", f.reach)
	t.Run("revoke", func(t *testing.T) { f.revoke(t) })
}

// Login latency on one slave, operator against device: the time from
// starting ssh to its "Authenticated to" line, N logins each (alternating,
// so that load on the box falls on both alike). An operator's key is
// answered by the hook (the daemon's registry lookup, the grant's
// permitopen lines); a device that is not connected is in the keys file.
// CI runs 3 of each (both paths must authenticate); to measure:
// MAS4H_E2E=1 MAS4H_LOGIN_LATENCY=30 go test ./cmd/mas4h -run '^TestOperatorLoginLatency$' -v
func TestOperatorLoginLatency(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("MAS4H_LOGIN_LATENCY"))
	if n <= 0 {
		n = 3
	}
	f := localFleet(t)
	_, idle := f.e.enrol("idle-1", "--forward", fwd(f.esLyon))
	keysFile := filepath.Join(f.sp.stateDir, "authorized_keys")
	testkit.Eventually(t, 15*time.Second, func() bool {
		b, _ := os.ReadFile(keysFile)
		return strings.Contains(string(b), strings.Fields(registry.AuthorizedKey(idle.pub))[1])
	}, "idle-1 never reached the keys file %s", keysFile)
	login := func(k deviceKey, user string) time.Duration {
		t.Helper()
		args := append([]string{"-o", "LogLevel=VERBOSE"}, sshArgs(k, f.sp.port, "-N", "-l", user, "127.0.0.1")...)
		cmd := exec.Command("ssh", args...)
		stderr, err := cmd.StderrPipe()
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { cmd.Process.Kill(); cmd.Wait() }()
		r := bufio.NewReader(stderr)
		for {
			line, err := r.ReadString('\n')
			if strings.HasPrefix(line, "Authenticated to") {
				return time.Since(start)
			}
			if err != nil {
				t.Fatalf("%s did not authenticate as %s: %v (last: %q)", k.name, user, err, line)
			}
		}
	}
	stats := func(d []time.Duration) string {
		slices.Sort(d)
		at := func(p float64) time.Duration {
			return d[min(len(d)-1, int(p*float64(len(d))))].Round(100 * time.Microsecond)
		}
		return fmt.Sprintf("p50 %v p95 %v min %v max %v", at(0.50), at(0.95), d[0].Round(100*time.Microsecond), d[len(d)-1].Round(100*time.Microsecond))
	}
	login(f.alice, e2eOperatorUser) // warm both paths
	login(idle, e2eTunnelUser)
	var op, dev []time.Duration
	for range n {
		op = append(op, login(f.alice, e2eOperatorUser))
		dev = append(dev, login(idle, e2eTunnelUser))
	}
	t.Logf("operator login (hook), %d: %s", n, stats(op))
	t.Logf("device login (keys file), %d: %s", n, stats(dev))
}
