package main

// End-to-end test of several masters behind one VIP: two "master hosts"
// (network namespaces) run `mas4h master` on one PostgreSQL and share the
// VIP with `mas4h netfilter`; a client namespace talks to the VIP. All of
// them hang off a bridge in a "switch" namespace (multicast snooping off),
// and this host is plugged into it too: PostgreSQL listens on the host's
// address there. Addresses are from 198.19.0.0/16; nothing is routed out.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/pgcluster"
	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/netfilter"
	"github.com/mas4h/mas4h/registry"
)

const mvPort = 8080 // the masters' port, the same in every namespace

// masterLab is the network: switch namespace with br0; master namespaces
// m1..mN (eth0 NET.1K/24); a client namespace (eth0 NET.2/24 and source
// addresses chosen so that each node's bucket has some); this host on
// NET.1/24.
type masterLab struct {
	t       *testing.T
	net     string // "198.19.X."
	sw      string
	client  string
	masters []string
	hostIf  string
	hostIP  string
	vip     string
	sources []string
}

func newMasterLab(t *testing.T, nodes int) *masterLab {
	t.Helper()
	id := os.Getpid() % 100000
	prefix := fmt.Sprintf("m4mv%d", id)
	lab := &masterLab{t: t, net: fmt.Sprintf("198.19.%d.", os.Getpid()%200+20), sw: prefix + "-sw", client: prefix + "-cl", hostIf: prefix}
	lab.hostIP, lab.vip = lab.net+"1", lab.net+"100"
	for k := 1; k <= nodes; k++ {
		lab.masters = append(lab.masters, fmt.Sprintf("%s-m%d", prefix, k))
	}
	exec.Command("ip", "link", "del", lab.hostIf).Run() // a leftover of a killed run
	for _, ns := range append([]string{lab.sw, lab.client}, lab.masters...) {
		exec.Command("ip", "netns", "del", ns).Run()
		lab.ip("netns", "add", ns)
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Logf("ip netns del %s: %v: %s", ns, err, out)
			}
		})
		lab.ip("-n", ns, "link", "set", "lo", "up")
	}
	lab.ip("-n", lab.sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	lab.ip("-n", lab.sw, "link", "set", "br0", "up")
	plug := func(ns, port, addr string) {
		lab.ip("-n", lab.sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
		lab.ip("-n", lab.sw, "link", "set", port, "master", "br0", "up")
		lab.ip("-n", ns, "addr", "add", addr+"/24", "dev", "eth0")
		lab.ip("-n", ns, "link", "set", "eth0", "up")
	}
	for k, ns := range lab.masters {
		plug(ns, fmt.Sprintf("p%d", k+1), lab.masterIP(k+1))
	}
	plug(lab.client, "pc", lab.net+"2")
	// This host's leg: a veth whose other end is on the bridge.
	lab.ip("link", "add", lab.hostIf, "type", "veth", "peer", "name", "ph", "netns", lab.sw)
	t.Cleanup(func() { exec.Command("ip", "link", "del", lab.hostIf).Run() })
	lab.ip("-n", lab.sw, "link", "set", "ph", "master", "br0", "up")
	lab.ip("addr", "add", lab.hostIP+"/24", "dev", lab.hostIf)
	lab.ip("link", "set", lab.hostIf, "up")
	// xt_cluster hashes the source address only: client addresses, three
	// in each node's bucket.
	per := map[int]int{}
	for i := 101; i < 250 && len(lab.sources) < 3*nodes; i++ {
		src := lab.net + strconv.Itoa(i)
		if b := lab.bucket(src); per[b] < 3 {
			per[b]++
			lab.sources = append(lab.sources, src)
			lab.ip("-n", lab.client, "addr", "add", src+"/24", "dev", "eth0")
		}
	}
	return lab
}

func (lab *masterLab) masterIP(k int) string { return lab.net + strconv.Itoa(10+k) }

func (lab *masterLab) bucket(src string) int {
	return netfilter.Bucket(netip.MustParseAddr(src), netfilter.DefaultHashSeed, len(lab.masters))
}

func (lab *masterLab) ip(args ...string) {
	lab.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		lab.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// netfilter runs `mas4h netfilter ACTION` for the VIP on node k.
func (lab *masterLab) netfilter(k int, action string, extra ...string) {
	lab.t.Helper()
	args := []string{"netfilter", action, "--vip", lab.vip, "--iface", "eth0", "--log-level", "warn"}
	if action != "remove" {
		args = append(args, "--nodes", strconv.Itoa(len(lab.masters)), "--node", strconv.Itoa(k))
	}
	args = append(args, extra...)
	if out, stderr, code := mas4hIn(lab.t, lab.masters[k-1], args...); code != 0 {
		lab.t.Errorf("mas4h %s on node %d: exit %d: %s%s", strings.Join(args, " "), k, code, out, stderr)
	}
}

// call makes one HTTP request to the VIP from source address src in the
// client namespace, on a connection of its own, and returns the status
// and body.
func (lab *masterLab) call(src, method, path, token string, body []byte) (int, string, error) {
	var code int
	var text string
	err := inNetns(lab.client, func() error {
		d := net.Dialer{Timeout: dialTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		addr := net.JoinHostPort(lab.vip, strconv.Itoa(mvPort))
		c, err := d.Dial("tcp4", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		req, err := http.NewRequest(method, "http://"+addr+path, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Close = true
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		if err := req.Write(c); err != nil {
			return err
		}
		resp, err := http.ReadResponse(bufio.NewReader(c), req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		code, text = resp.StatusCode, string(b)
		return err
	})
	return code, text, err
}

// served counts the requests from src that master m logged.
func served(m *masterProc, src string) int {
	n := 0
	for _, l := range strings.Split(m.log.String(), "\n") {
		if strings.Contains(l, " msg=request ") && strings.HasSuffix(l, " remote="+src) {
			n++
		}
	}
	return n
}

// Two masters on one PostgreSQL behind a VIP shared with `mas4h netfilter`:
// clients from every source address reach the fleet through the VIP, each
// source always the master its bucket names. When master 1 is killed (its
// host stays up), node 2 takes its bucket over and node 1 leaves the VIP
// (both are needed: node 1's kernel resets the connections it still
// takes); then every client is answered again, by master 2, which still
// knows the device enrolled through master 1 and enrols new ones through
// the VIP. Restarted, master 1 gets its bucket back.
func TestMastersBehindAVIP(t *testing.T) {
	e := newEnv(t, "ip", "iptables", "iptables-save", "nft")
	lab := newMasterLab(t, 2)

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pg, err := pgcluster.StartOn(ctx, "", false, []netip.Prefix{netip.MustParsePrefix(lab.hostIP + "/24")})
	if err != nil {
		t.Fatalf("starting PostgreSQL (Debian: apt-get install postgresql): %v", err)
	}
	t.Cleanup(pg.Destroy)
	local, err := pg.NewDatabase(ctx, "mas4h")
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(local)
	db := pg.URLAt(lab.hostIP, strings.TrimPrefix(u.Path, "/"))

	var masters []*masterProc
	for k, ns := range lab.masters {
		m := &masterProc{e: e, url: fmt.Sprintf("http://%s:%d", lab.masterIP(k+1), mvPort), listen: fmt.Sprintf("0.0.0.0:%d", mvPort),
			db: db, adminToken: filepath.Join(e.dir, "admin.token"), wrap: []string{"ip", "netns", "exec", ns},
			extra: []string{"--log-level", "debug"}}
		m.start()
		t.Cleanup(m.stop)
		masters = append(masters, m)
	}
	for k := range lab.masters {
		lab.netfilter(k+1, "apply")
		t.Cleanup(func() { lab.netfilter(k+1, "remove") })
	}
	vipURL := fmt.Sprintf("http://%s:%d", lab.vip, mvPort)
	tok := strings.TrimSpace(string(mustRead(t, masters[0].adminToken)))

	// round asks every source for healthz and the status (admin token),
	// and checks which master answered: the one its bucket names, or
	// want's if set.
	round := func(when string, want *masterProc) {
		t.Helper()
		for _, src := range lab.sources {
			m := want
			if m == nil {
				m = masters[lab.bucket(src)-1]
			}
			before := served(m, src)
			for _, path := range []string{"/api/v1/healthz", "/api/v1/status"} {
				code, body, err := lab.call(src, "GET", path, tok, nil)
				if err != nil || code != http.StatusOK {
					t.Fatalf("%s: GET %s%s from %s: %d %v %s", when, vipURL, path, src, code, err, body)
				}
			}
			// The log line is written once the answer is: wait for it.
			testkit.Eventually(t, 5*time.Second, func() bool { return served(m, src) >= before+2 },
				"%s: requests from %s (bucket %d) not logged by %s", when, src, lab.bucket(src), m.url)
		}
	}
	round("through the VIP", nil)
	var per []string
	for k, m := range masters {
		n := 0
		for _, src := range lab.sources {
			n += served(m, src)
		}
		per = append(per, fmt.Sprintf("master %d: %d", k+1, n))
		if n == 0 {
			t.Errorf("master %d got no request through the VIP", k+1)
		}
	}
	t.Logf("requests from %d sources through %s: %s", len(lab.sources), lab.vip, strings.Join(per, ", "))

	// The admin CLI through the VIP, from the client's own address.
	if out, stderr, code := mas4hIn(t, lab.client, "status", "--master", vipURL, "--token-file", masters[0].adminToken); code != 0 {
		t.Fatalf("mas4h status --master %s in the client namespace: exit %d: %s%s", vipURL, code, out, stderr)
	}

	// A device enrolled through the VIP by master 1, the one about to die.
	var src1, src2 string
	for _, src := range lab.sources {
		if lab.bucket(src) == 1 {
			src1 = src
		} else {
			src2 = src
		}
	}
	k1 := e.newKey("pi-1")
	body, _ := json.Marshal(wire.AddDeviceRequest{Name: "pi-1", PublicKey: registry.AuthorizedKey(k1.pub)})
	if code, out, err := lab.call(src1, "POST", wire.APIPrefix+"/devices", tok, body); err != nil || code != http.StatusCreated {
		t.Fatalf("enrolling pi-1 through the VIP from %s: %d %v %s", src1, code, err, out)
	}

	masters[0].kill9()
	killed := time.Now()
	// Node 1's host is up, its master is not: its kernel still takes its
	// bucket, and refuses the connections.
	_, _, err1 := lab.call(src1, "GET", "/api/v1/healthz", "", nil)
	if err1 == nil {
		t.Fatalf("source %s (node 1's bucket) answered with master 1 dead", src1)
	}
	if code, _, err := lab.call(src2, "GET", "/api/v1/healthz", "", nil); err != nil || code != http.StatusOK {
		t.Fatalf("source %s (node 2's bucket) with master 1 dead: %d %v", src2, code, err)
	}
	t.Logf("with master 1 dead, node 1's bucket sees: %v", err1)

	// Node 2 takes node 1's bucket over. That is not enough while node 1
	// still holds the VIP: both nodes take those connections, and node 1's
	// kernel resets them.
	lab.netfilter(2, "apply", "--take-over", "1")
	t.Logf("take-over applied %s after the kill", time.Since(killed).Round(time.Millisecond))
	failed := 0
	for range 10 {
		if _, _, err := lab.call(src1, "GET", "/api/v1/healthz", "", nil); err != nil {
			failed++
			err1 = err
		}
	}
	t.Logf("taken over, node 1 still in the VIP: %d of 10 connections from %s failed (%v)", failed, src1, err1)
	if failed == 0 {
		t.Errorf("with node 1 still in the VIP, no connection from its bucket failed: the docs say they do")
	}
	// The operator (or a watchdog on node 1) takes node 1 out of the VIP.
	lab.netfilter(1, "remove")
	t.Logf("node 1 out of the VIP %s after the kill", time.Since(killed).Round(time.Millisecond))
	round("after the take-over", masters[1])

	// Enrolment through the VIP works, and master 2 has both devices.
	k2 := e.newKey("pi-2")
	if out, stderr, code := mas4hIn(t, lab.client, "device", "add", "pi-2", "--key", k2.public,
		"--master", vipURL, "--token-file", masters[0].adminToken); code != 0 {
		t.Fatalf("device add through the VIP after the take-over: exit %d: %s%s", code, out, stderr)
	}
	out, stderr, code := masters[1].admin("device", "list", "-o", "json")
	if code != 0 {
		t.Fatalf("device list through master 2: exit %d: %s", code, stderr)
	}
	var listed []wire.Device
	if err := json.Unmarshal([]byte(out), &listed); err != nil {
		t.Fatalf("device list output: %v: %s", err, out)
	}
	names := map[string]bool{}
	for _, d := range listed {
		names[d.Name] = true
	}
	if !names["pi-1"] || !names["pi-2"] || len(listed) != 2 {
		t.Errorf("master 2 lists %v, want pi-1 (enrolled through master 1) and pi-2", names)
	}

	// Master 1 is back: node 2 hands the bucket back first, then node 1
	// joins again (never both holding it at once), and each source is
	// answered by its own master again, master 1 knowing pi-2.
	masters[0].start()
	lab.netfilter(2, "apply")
	lab.netfilter(1, "apply")
	round("after the hand-back", nil)
	if _, stderr, code := masters[0].admin("device", "show", "pi-2"); code != 0 {
		t.Errorf("device show pi-2 through the restarted master 1: exit %d: %s", code, stderr)
	}
}
