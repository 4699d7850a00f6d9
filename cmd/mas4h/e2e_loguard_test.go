package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/netfilter"
)

// The slave's loopback guard, in a network namespace of the test's own (the
// host's firewall is never touched): with a device's tunnel up, a local user
// that is neither root nor the tunnel user is reset on the device's leased
// port (127.0.0.1 and ::1) but not on a port outside the range; root and an
// operator (through sshd, the tunnel uid) carry bytes; the slave's probes
// (root) keep passing; a restart after kill -9 does not duplicate the
// rules; a clean stop removes them. The default range is best effort: under
// the unit's capabilities (no CAP_NET_ADMIN) the slave logs and serves.
func TestSlaveGuardsLoopbackPorts(t *testing.T) {
	e := newEnv(t, "ip", "iptables", "ip6tables", "setpriv", "bash")
	ns := fmt.Sprintf("m4lg%d", os.Getpid()%100000)
	exec.Command("ip", "netns", "del", ns).Run() // a leftover of a killed run
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", ns, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Logf("ip netns del %s: %v: %s", ns, err, out)
		}
	})
	if out, err := exec.Command("ip", "-n", ns, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up in %s: %v: %s", ns, err, out)
	}
	in := func(args ...string) []string { return append([]string{"netns", "exec", ns}, args...) }
	rules := func(prog string) string {
		out, err := exec.Command("ip", in(prog, "-S")...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s -S in %s: %v: %s", prog, ns, err, out)
		}
		return string(out)
	}
	// nobody connects with bash's /dev/tcp: "" when it connected, else
	// bash's complaint.
	asNobody := func(host string, port int) string {
		out, err := exec.Command("ip", in("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
			"bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", host, port))...).CombinedOutput()
		if err == nil {
			return ""
		}
		return strings.TrimSpace(string(out)) + " (" + err.Error() + ")"
	}
	asRoot := func(host string, port int) error {
		return inNetns(ns, func() error {
			c, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(port)), 2*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
	}

	var es *echoServer // the device's target, in the namespace
	if err := inNetns(ns, func() error { es = startEcho(t); return nil }); err != nil {
		t.Fatal(err)
	}
	dev, k := e.enrol("pi-guard", "--forward", fwd(es), "--label", "site=guard")
	alice := e.newKey("alice")
	if _, stderr, code := e.mas4h("", "operator", "add", "alice", "--key", alice.public, "--allow", "site=guard", "--db", e.db); code != 0 {
		t.Fatalf("operator add: exit %d: %s", code, stderr)
	}
	p := port(dev)
	sp := &slaveProc{e: e, name: "s1", stateDir: e.dir + "/slave-s1", port: freePort(t),
		wrap: []string{"ip", "netns", "exec", ns}, guard: fmt.Sprintf("%d-%d", e.portLo, e.portLo+19),
		mode: []string{"--db", e.db, "--probe-interval", "1s", "--probe-timeout", "500ms"}}
	sp.start()
	t.Cleanup(sp.cleanup)
	chain := netfilter.GuardChain("s1")
	for _, prog := range []string{"iptables", "ip6tables"} {
		if r := rules(prog); strings.Count(r, "-j "+chain) != 1 || !strings.Contains(r, "--reject-with tcp-reset") {
			t.Fatalf("%s after start:\n%s", prog, r)
		}
	}

	c := e.startClient("ip", in(append([]string{"ssh"}, sshArgs(k, sp.port, "-N", "-R",
		fmt.Sprintf("%d:localhost:%d", p, es.port), e2eTunnelUser+"@127.0.0.1")...)...)...)
	testkit.Eventually(t, 10*time.Second, func() bool { return asRoot("127.0.0.1", p) == nil || c.exited() },
		"the tunnel of pi-guard did not come up: %s", c.stderr)
	if c.exited() {
		t.Fatalf("the tunnel of pi-guard exited: %s", c.stderr)
	}

	// Root (an admin on the host, the slave's probes) carries bytes.
	if err := inNetns(ns, func() error { return roundTrip(p) }); err != nil {
		t.Fatalf("root through the device's port: %v", err)
	}
	// Another local user is reset, on both loopbacks; outside the range
	// it connects, so the refusal is the guard's.
	if got := asNobody("127.0.0.1", es.port); got != "" {
		t.Fatalf("nobody to the echo server's own port %d (not guarded): %s", es.port, got)
	}
	before := es.accepts.Load()
	if got := asNobody("127.0.0.1", p); !strings.Contains(got, "Connection refused") {
		t.Errorf("nobody to 127.0.0.1:%d: %q, want connection refused", p, got)
	}
	if asRoot("::1", p) == nil {
		if got := asNobody("::1", p); !strings.Contains(got, "Connection refused") {
			t.Errorf("nobody to [::1]:%d: %q, want connection refused", p, got)
		}
	} else {
		t.Logf("sshd bound no [::1]:%d; the ip6tables rules are checked above", p)
	}

	// An operator, whose channel sshd (the tunnel uid) opens, carries bytes.
	var out, stderr string
	var code int
	for deadline := time.Now().Add(8 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		out, stderr, code = exitOf(t, exec.Command("ip", in(append([]string{"ssh"}, sshArgs(alice, sp.port,
			"-l", e2eOperatorUser, "-W", fmt.Sprintf("127.0.0.1:%d", p), "127.0.0.1")...)...)...), "ping\n")
		if code == 0 || time.Now().After(deadline) {
			break
		}
	}
	if code != 0 || out != echoBanner+"ping\n" {
		t.Fatalf("alice's -W to the device: exit %d, out %q, stderr %s", code, out, stderr)
	}

	// The probes (root, ssh-banner through the tunnel) keep passing.
	afterOps := es.accepts.Load()
	time.Sleep(4 * time.Second) // four probe intervals: what is asserted is that nothing happens
	if n := es.accepts.Load() - afterOps; n < 2 {
		t.Errorf("%d probes reached the device in 4 probe intervals", n)
	}
	if sp.log.Contains("probe failing") || sp.log.Contains("tunnel down") || c.exited() {
		t.Errorf("the tunnel did not stay up (client exited: %v):\n%s", c.exited(), sp.log)
	}
	if es.accepts.Load() < before {
		t.Fatal("accept counter went back")
	}

	// A restart after kill -9 (rules left in place) does not duplicate them.
	sp.kill9()
	sp.start()
	for _, prog := range []string{"iptables", "ip6tables"} {
		if r := rules(prog); strings.Count(r, "-j "+chain) != 1 || strings.Count(r, "--uid-owner 0") != 1 {
			t.Errorf("%s after a restart:\n%s", prog, r)
		}
	}
	if got := asNobody("127.0.0.1", p); !strings.Contains(got, "Connection refused") {
		t.Errorf("nobody after the restart: %q", got)
	}

	// A clean stop removes the guard (sshd and the tunnel stay up).
	sp.cmd.Process.Signal(os.Interrupt)
	select {
	case <-sp.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("the slave did not stop:\n%s", sp.log)
	}
	for _, prog := range []string{"iptables", "ip6tables"} {
		if r := rules(prog); strings.Contains(r, "MAS4H-LO") {
			t.Errorf("%s after a clean stop:\n%s", prog, r)
		}
	}
	if !sp.log.Contains("loopback guard removed") {
		t.Errorf("no removal logged:\n%s", sp.log)
	}

	// The default range is best effort: a slave under its unit's
	// capabilities (no CAP_NET_ADMIN) says so and serves.
	caps := &slaveProc{e: e, name: "s2", stateDir: e.dir + "/slave-s2", port: freePort(t), guard: "default",
		wrap: []string{"ip", "netns", "exec", ns, "setpriv", "--bounding-set", unitCaps(t, "mas4h-slave@.service"), "--no-new-privs", "--"},
		mode: []string{"--db", e.db}}
	caps.start()
	t.Cleanup(caps.cleanup)
	if !caps.log.Contains("loopback guard not applied") {
		t.Errorf("no error for the guard it could not apply:\n%s", caps.log)
	}
	if r := rules("iptables"); strings.Contains(r, "MAS4H-LO") {
		t.Errorf("iptables under the unit's capabilities:\n%s", r)
	}
}
