package main

// One bad device must not lock out its neighbours. Fleets sit behind NAT
// and carrier-grade NAT: every device behind one address shares it, and
// OpenSSH 9.8 and newer penalise an address for what its connections do
// (PerSourcePenalties, on by default). The slave's sshd_config sets its own
// policy there (sshdconfig.PenaltyPolicy). All connections of these tests
// come from 127.0.0.1: the misbehaving device and the healthy one share it.

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/sshd/statedir"
)

// sshBanner connects to port and returns the first line the server sends:
// "SSH-2.0-…" from an sshd that serves this address, or what it says
// instead ("Not allowed at this time" under a penalty), or "" when it
// closes without a word.
func sshBanner(t *testing.T, port int) string {
	t.Helper()
	c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 2*time.Second)
	if err != nil {
		t.Fatalf("connecting to %d: %v", port, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line)
}

// misbehave does, from 127.0.0.1, what a revoked device, an unknown key or
// a broken agent does to sshd at port: 20 logins with a key it refuses,
// then 20 connections that never try to log in (a health check, a client
// that rejects the host key).
func misbehave(t *testing.T, e *env, port int, bad deviceKey) {
	t.Helper()
	for i := 0; i < 20; i++ {
		c := e.startClient("ssh", sshArgs(bad, port, "-N", e2eTunnelUser+"@127.0.0.1")...)
		if code := c.wait(10 * time.Second); code != 255 {
			t.Fatalf("login %d with a refused key: status %d: %s", i+1, code, c.stderr)
		}
	}
	for i := 0; i < 20; i++ {
		c, err := net.DialTimeout("tcp", "127.0.0.1:"+strconv.Itoa(port), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
}

func TestBadNeighbourDoesNotLockOutDevice(t *testing.T) {
	e := newEnv(t)
	f := hostSSHD(t)
	es := startEcho(t)
	dev, good := e.enrol("pi-healthy", "--forward", fwd(es))
	stranger := e.newKey("stranger")
	sp := e.startSlave("s1")

	// The control: an sshd with OpenSSH's own defaults locks the address
	// out for this, where it has penalties at all. Without this, a pass
	// below could mean the misbehaviour never drew a penalty.
	if f.PerSourcePenalties {
		ctl := startDeviceSSHD(t, e, "defaults")
		misbehave(t, e, ctl.port, stranger)
		banner := sshBanner(t, ctl.port)
		if strings.HasPrefix(banner, "SSH-") {
			t.Fatalf("%s with its default PerSourcePenalties still greets 127.0.0.1 (%q): the misbehaviour below proves nothing", f.Version, banner)
		}
		t.Logf("%s with default penalties, after the same misbehaviour, answers %q", f.Version, banner)
	} else {
		t.Logf("%s has no PerSourcePenalties: nothing to lock an address out", f.Version)
	}

	misbehave(t, e, sp.port, stranger)
	start := time.Now()
	if banner := sshBanner(t, sp.port); !strings.HasPrefix(banner, "SSH-") {
		t.Fatalf("the slave's sshd answers the misbehaving address with %q", banner)
	}
	c := e.tunnel(good, sp, fmt.Sprintf("%d:localhost:%d", port(dev), es.port))
	if !waitListen(t, port(dev), c, 5*time.Second) {
		t.Fatalf("the healthy device behind the same address did not get its tunnel within 5s: %s", c.stderr)
	}
	took := time.Since(start)
	if err := roundTrip(port(dev)); err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: healthy device's tunnel up %s after 20 refused logins and 20 bare connections from its address", f.Version, took.Round(time.Millisecond))
	if lines := penalised(t, sp); len(lines) > 0 {
		t.Errorf("the slave's sshd penalised the address:\n%s", strings.Join(lines, "\n"))
	}
}

// penalised returns the lines of a slave's sshd log (LogLevel VERBOSE) that
// say a penalty took effect: one activated, or a connection dropped for one.
// A penalty that costs nothing ("deferred penalty of 0 seconds") is not one.
func penalised(t *testing.T, sp *slaveProc) []string {
	t.Helper()
	b, err := os.ReadFile(statedir.Dir(sp.stateDir).Log())
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "activating") || strings.Contains(l, " active penalty") || strings.Contains(l, "drop connection") {
			out = append(out, l)
		}
	}
	return out
}
