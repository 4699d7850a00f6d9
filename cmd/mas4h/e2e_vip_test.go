package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/netfilter"
)

// A slave sharing a VIP keeps its rules applied and, when the master reports
// the other node of the VIP dead, takes over its buckets; when the peer is
// back it hands them back. The slave runs in its own network namespace so
// its iptables rules stay there.
func TestSlaveTakesOverDeadPeersBuckets(t *testing.T) {
	e := newEnv(t, "ip", "iptables-save")
	d := newNetnsDevice(t) // the slave's namespace, linked to this host
	vip := strings.TrimSuffix(d.devIP, ".2") + ".10"

	m := &masterProc{e: e, url: fmt.Sprintf("http://%s:%d", d.hostIP, freePort(t)),
		db: e.dir + "/master.db", adminToken: e.dir + "/admin.token", slaveToken: e.dir + "/slave.token"}
	m.start()
	t.Cleanup(m.stop)

	// The peer, node 2: heartbeats by hand while alive is set.
	var peerAlive atomic.Bool
	peerAlive.Store(true)
	stop := make(chan struct{})
	peerDone := make(chan struct{})
	tok := strings.TrimSpace(string(mustRead(t, m.slaveToken)))
	go func() {
		defer close(peerDone)
		hb := wire.Heartbeat{Host: "198.18.200.2", Port: 2222, User: e2eTunnelUser, Capacity: 100,
			Tunnels: []wire.Tunnel{}, VIP: vip, Node: 2}
		body, _ := json.Marshal(hb)
		for {
			select {
			case <-stop:
				return
			case <-time.After(300 * time.Millisecond):
			}
			if !peerAlive.Load() {
				continue
			}
			req, _ := http.NewRequest("POST", m.url+"/api/v1/slaves/s2/heartbeat", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
	}()
	t.Cleanup(func() { close(stop); <-peerDone })
	waitSlavesAlive(t, m, 1)

	sp := &slaveProc{e: e, name: "s1", host: "0.0.0.0", stateDir: e.dir + "/slave-s1", port: freePort(t),
		wrap: []string{"ip", "netns", "exec", d.ns},
		mode: []string{"--master", m.url, "--token-file", m.slaveToken, "--public-host", d.devIP,
			"--vip", vip, "--iface", d.devIf, "--node", "1", "--nodes", "2"}}
	sp.start()
	t.Cleanup(sp.cleanup)

	mask := func() string {
		out, err := exec.Command("ip", "netns", "exec", d.ns, "iptables-save", "-t", "mangle").CombinedOutput()
		if err != nil {
			t.Fatalf("iptables-save in %s: %v: %s", d.ns, err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if i := strings.Index(l, "--cluster-local-nodemask "); i >= 0 {
				return strings.Fields(l[i:])[1]
			}
		}
		return ""
	}
	waitMask := func(want string, within time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		var got string
		if !testkit.Wait(within, func() bool { got = mask(); return got == want }) {
			t.Fatalf("nodemask %q after %s, want %s\n%s", got, within, want, sp.log)
		}
		return time.Since(start)
	}
	waitMask("0x00000001", 5*time.Second) // its own bucket only, the peer is alive

	// Devices reach the slave's sshd through the VIP. This host's address
	// on the link hashes to one bucket: it is answered only while that
	// bucket is this node's (its own, or taken over).
	if out, err := exec.Command("ip", "route", "add", vip+"/32", "dev", d.hostIf).CombinedOutput(); err != nil {
		t.Fatalf("route to the VIP: %v: %s", err, out)
	}
	bucket := netfilter.Bucket(netip.MustParseAddr(d.hostIP), netfilter.DefaultHashSeed, 2)
	reach := func() bool {
		c, err := net.DialTimeout("tcp", net.JoinHostPort(vip, strconv.Itoa(sp.port)), 1500*time.Millisecond)
		if err != nil {
			return false
		}
		defer c.Close()
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		banner := make([]byte, 4)
		_, err = io.ReadFull(c, banner)
		return err == nil && string(banner) == "SSH-"
	}
	t.Logf("this host's %s hashes to bucket %d of 2", d.hostIP, bucket)
	if got := reach(); got != (bucket == 1) {
		t.Fatalf("source %s is in bucket %d; sshd through the VIP answered: %v", d.hostIP, bucket, got)
	}
	es := startEchoOn(t, d.hostIP)
	_, k := m.enrol("pi-vip", fwd(es))

	peerAlive.Store(false)
	took := waitMask("0x00000003", 3*e2eHeartbeat+5*time.Second)
	t.Logf("peer's buckets taken over %s after its last heartbeat (master declares death after 3 × %s)", took.Round(time.Millisecond), e2eHeartbeat)
	// Now this node serves both buckets: a device tunnel through the VIP
	// comes up whatever its bucket.
	if !reach() {
		t.Fatal("sshd not reachable through the VIP after the take-over")
	}
	c := e.startClient("ssh", sshArgs(k, sp.port, "-N", "-o", "ServerAliveInterval=5",
		"-R", fmt.Sprintf("%d:%s:%d", e.portLo, d.hostIP, es.port), e2eTunnelUser+"@"+vip)...)
	var out string
	if !testkit.Wait(3*e2eHeartbeat+5*time.Second, func() bool {
		out, _, _ = m.admin("tunnels", "-o", "json")
		return strings.Contains(out, `"pi-vip"`) || c.exited()
	}) || c.exited() {
		t.Fatalf("tunnel through the VIP not listed (client exited: %v): %s %s", c.exited(), out, c.stderr)
	}
	peerAlive.Store(true)
	took = waitMask("0x00000001", 5*time.Second)
	t.Logf("buckets handed back %s after the peer returned", took.Round(time.Millisecond))
	if !strings.Contains(sp.log.String(), "VIP buckets changed hands") {
		t.Errorf("no take-over logged:\n%s", sp.log)
	}
	if _, err := os.Stat("/proc/net/ip_tables_names"); err == nil {
		if out, _ := exec.Command("iptables-save", "-t", "mangle").CombinedOutput(); strings.Contains(string(out), vip) {
			t.Errorf("the host's own mangle table got the namespace's rules:\n%s", out)
		}
	}
}
