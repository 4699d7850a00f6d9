package main

// End-to-end tests of `mas4h netfilter`: slave namespaces and a client
// namespace on a bridge (in its own "switch" namespace, multicast snooping
// off), addresses from 198.18.0.0/15 only. The TCP servers and the client
// sockets live in this test process: a goroutine locked to a thread that
// joined the namespace creates them (a socket stays in the namespace it was
// created in). The rules are applied by the real mas4h binary under
// `ip netns exec`.

import (
	"bufio"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/netfilter"
)

const (
	labVIP      = "198.18.0.100"
	labPort     = 7000
	labSources  = 60
	dialTimeout = 1500 * time.Millisecond
)

// vipLab is the network: a switch namespace with bridge br0, slave
// namespaces s1..sN (eth0 198.18.0.1K/16), a client namespace (eth0
// 198.18.0.2/16 and 60 source addresses 198.18.1.1-60/16).
type vipLab struct {
	t       *testing.T
	prefix  string
	sw      string
	slaves  []string
	client  string
	sources []string
	mu      sync.Mutex
	accepts map[string][]string // node → source addresses it accepted, in order
}

func newVIPLab(t *testing.T, nodes int) *vipLab {
	requireE2E(t, "ip", "iptables", "iptables-save", "nft")
	lab := &vipLab{t: t, prefix: fmt.Sprintf("m4nf%d", os.Getpid()%100000), accepts: map[string][]string{}}
	lab.sw = lab.prefix + "-sw"
	lab.client = lab.prefix + "-cl"
	for k := 1; k <= nodes; k++ {
		lab.slaves = append(lab.slaves, fmt.Sprintf("%s-s%d", lab.prefix, k))
	}
	all := append([]string{lab.sw, lab.client}, lab.slaves...)
	for _, ns := range all {
		exec.Command("ip", "netns", "del", ns).Run() // a leftover of a killed run
		lab.ip("netns", "add", ns)
		ns := ns
		t.Cleanup(func() {
			if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
				t.Logf("ip netns del %s: %v: %s", ns, err, out)
			}
		})
		// No IPv6: its addresses and memberships come and go on their own
		// and would blur the before/after comparisons.
		lab.nsSh(ns, "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6")
		lab.ip("-n", ns, "link", "set", "lo", "up")
	}
	lab.ip("-n", lab.sw, "link", "add", "br0", "type", "bridge", "mcast_snooping", "0")
	lab.ip("-n", lab.sw, "link", "set", "br0", "up")
	plug := func(ns, port, addr string) {
		lab.ip("-n", lab.sw, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
		lab.ip("-n", lab.sw, "link", "set", port, "master", "br0", "up")
		lab.ip("-n", ns, "addr", "add", addr, "dev", "eth0")
		lab.ip("-n", ns, "link", "set", "eth0", "up")
	}
	for k, ns := range lab.slaves {
		plug(ns, fmt.Sprintf("p%d", k+1), fmt.Sprintf("198.18.0.%d/16", 11+k))
	}
	plug(lab.client, "pc", "198.18.0.2/16")
	var batch strings.Builder
	for i := 1; i <= labSources; i++ {
		src := fmt.Sprintf("198.18.1.%d", i)
		lab.sources = append(lab.sources, src)
		fmt.Fprintf(&batch, "address add %s/16 dev eth0\n", src)
	}
	cmd := exec.Command("ip", "-n", lab.client, "-batch", "-")
	cmd.Stdin = strings.NewReader(batch.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("adding the client's source addresses: %v: %s", err, out)
	}
	for k, ns := range lab.slaves {
		lab.serve(ns, fmt.Sprintf("s%d", k+1))
	}
	return lab
}

func (lab *vipLab) ip(args ...string) {
	lab.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		lab.t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

func (lab *vipLab) nsSh(ns, script string) string {
	lab.t.Helper()
	out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", script).CombinedOutput()
	if err != nil {
		lab.t.Fatalf("in %s: %s: %v: %s", ns, script, err, out)
	}
	return string(out)
}

// inNetns runs fn on a thread that joined namespace ns. The thread is
// never unlocked, so it dies with the goroutine instead of going back to
// the scheduler in the wrong namespace.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			errc <- err
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("setns %s: %w", ns, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// serve listens on port labPort in ns and answers each connection with the
// node's name, recording the client's address.
func (lab *vipLab) serve(ns, node string) {
	var l net.Listener
	if err := inNetns(ns, func() (err error) {
		l, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", labPort))
		return err
	}); err != nil {
		lab.t.Fatalf("listening in %s: %v", ns, err)
	}
	lab.t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			src, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			lab.mu.Lock()
			lab.accepts[node] = append(lab.accepts[node], src)
			lab.mu.Unlock()
			c.Write([]byte(node + "\n"))
			c.Close()
		}
	}()
}

// dial connects from src to the VIP and returns the node that answered,
// "" when none did.
func (lab *vipLab) dial(src string) string {
	var answer string
	inNetns(lab.client, func() error {
		d := net.Dialer{Timeout: dialTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		c, err := d.Dial("tcp4", net.JoinHostPort(labVIP, strconv.Itoa(labPort)))
		if err != nil {
			return err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		answer = strings.TrimSpace(line)
		return err
	})
	return answer
}

// round connects once from every source, in parallel, and returns who
// answered each; it checks that each answered connection was accepted by
// exactly one node.
func (lab *vipLab) round() map[string]string {
	lab.t.Helper()
	lab.mu.Lock()
	lab.accepts = map[string][]string{}
	lab.mu.Unlock()
	got := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, src := range lab.sources {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := lab.dial(src)
			mu.Lock()
			got[src] = a
			mu.Unlock()
		}()
	}
	wg.Wait() // a server records an accept before it answers: nothing to wait for
	lab.mu.Lock()
	defer lab.mu.Unlock()
	acceptedBy := map[string][]string{}
	for node, srcs := range lab.accepts {
		for _, s := range srcs {
			acceptedBy[s] = append(acceptedBy[s], node)
		}
	}
	for _, src := range lab.sources {
		if got[src] == "" {
			continue
		}
		if nodes := acceptedBy[src]; len(nodes) != 1 || nodes[0] != got[src] {
			lab.t.Errorf("source %s: answered by %q, accepted by %v: want exactly that one node", src, got[src], nodes)
		}
	}
	return got
}

func counts(m map[string]string) map[string]int {
	c := map[string]int{}
	for _, node := range m {
		c[node]++
	}
	return c
}

// mas4hIn runs the mas4h binary in namespace ns.
func mas4hIn(t *testing.T, ns string, args ...string) (string, string, int) {
	t.Helper()
	return exitOf(t, exec.Command("ip", append([]string{"netns", "exec", ns, testBin}, args...)...), "")
}

func (lab *vipLab) apply(k int, extra ...string) string {
	lab.t.Helper()
	args := append([]string{"netfilter", "apply", "--vip", labVIP, "--iface", "eth0",
		"--nodes", strconv.Itoa(len(lab.slaves)), "--node", strconv.Itoa(k), "--log-level", "warn"}, extra...)
	out, stderr, code := mas4hIn(lab.t, lab.slaves[k-1], args...)
	if code != 0 {
		lab.t.Fatalf("mas4h %s on s%d: exit %d: %s%s", strings.Join(args, " "), k, code, out, stderr)
	}
	return out
}

func (lab *vipLab) remove(k int) {
	lab.t.Helper()
	out, stderr, code := mas4hIn(lab.t, lab.slaves[k-1], "netfilter", "remove", "--vip", labVIP, "--iface", "eth0", "--log-level", "warn")
	if code != 0 {
		lab.t.Fatalf("mas4h netfilter remove on s%d: exit %d: %s%s", k, code, out, stderr)
	}
}

var (
	counterRE   = regexp.MustCompile(`\[\d+:\d+\]`)
	nftCounterR = regexp.MustCompile(`counter packets \d+ bytes \d+`)
)

// snapshot is what remove must give back: the rule sets (without counters
// and dates), the addresses and the multicast memberships.
func (lab *vipLab) snapshot(ns string) string {
	lab.t.Helper()
	var b strings.Builder
	for _, script := range []string{"iptables-save", "nft list ruleset", "ip -br address show", "ip maddress show", "ip -d link show dev eth0"} {
		out := lab.nsSh(ns, script)
		var keep []string
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "#") {
				continue
			}
			l = counterRE.ReplaceAllString(l, "[0:0]")
			l = nftCounterR.ReplaceAllString(l, "counter")
			keep = append(keep, l)
		}
		fmt.Fprintf(&b, "== %s\n%s\n", script, strings.Join(keep, "\n"))
	}
	return b.String()
}

func TestNetfilterVIP(t *testing.T) {
	lab := newVIPLab(t, 3)
	before := map[string]string{}
	for _, ns := range lab.slaves {
		before[ns] = lab.snapshot(ns)
	}

	// Bad flags and a mode this kernel lacks change nothing.
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--vip", labVIP, "--iface", "eth0", "--nodes", "3", "--node", "4"}, 2, "--node 4"},
		{[]string{"--vip", labVIP, "--iface", "eth0", "--nodes", "33", "--node", "1"}, 2, "--nodes 33"},
		{[]string{"--vip", "198.18.0.300", "--iface", "eth0", "--nodes", "3", "--node", "1"}, 2, "not an IP address"},
		{[]string{"--vip", labVIP, "--iface", "nosuch0", "--nodes", "3", "--node", "1"}, 2, "no such interface"},
		{[]string{"--vip", labVIP, "--iface", "eth0", "--nodes", "3", "--node", "1", "--mode", "clusterip"}, 1, "removed in Linux 6.3"},
	} {
		out, stderr, code := mas4hIn(t, lab.slaves[0], append([]string{"netfilter", "apply"}, tc.args...)...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("apply %v: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr, tc.code, tc.want)
		}
		if out != "" {
			t.Errorf("apply %v printed steps:\n%s", tc.args, out)
		}
		if tc.code == 1 {
			t.Logf("refused: %s", strings.TrimSpace(stderr))
		}
	}
	if after := lab.snapshot(lab.slaves[0]); after != before[lab.slaves[0]] {
		t.Fatalf("a refused apply changed s1:\nbefore:\n%s\nafter:\n%s", before[lab.slaves[0]], after)
	}

	// plan changes nothing; apply twice is apply once.
	out, stderr, code := mas4hIn(t, lab.slaves[0], "netfilter", "plan", "--vip", labVIP, "--iface", "eth0", "--nodes", "3", "--node", "1")
	if code != 0 || !strings.Contains(out, "mode cluster") {
		t.Fatalf("plan: exit %d: %s%s", code, out, stderr)
	}
	if after := lab.snapshot(lab.slaves[0]); after != before[lab.slaves[0]] {
		t.Fatalf("plan changed s1")
	}
	if got := lab.apply(1); got != out {
		t.Errorf("apply did other than plan said:\nplan:\n%s\napply:\n%s", out, got)
	}
	lab.apply(2)
	lab.apply(3)
	applied := lab.snapshot(lab.slaves[0])
	if again := lab.apply(1); !strings.Contains(again, "nothing to change") {
		t.Errorf("second apply on s1 changed things:\n%s", again)
	}
	if after := lab.snapshot(lab.slaves[0]); after != applied {
		t.Errorf("second apply changed s1:\nonce:\n%s\ntwice:\n%s", applied, after)
	}

	// Every source answered by one node, in a fair split, the same on repeat.
	first := lab.round()
	c := counts(first)
	t.Logf("distribution of %d sources over 3 nodes: s1=%d s2=%d s3=%d", labSources, c["s1"], c["s2"], c["s3"])
	if c[""] > 0 {
		t.Fatalf("%d sources got no answer: %v", c[""], first)
	}
	for _, node := range []string{"s1", "s2", "s3"} {
		if pct := 100 * c[node] / labSources; pct < 15 || pct > 55 {
			t.Errorf("node %s answered %d%% of the sources, want 15-55%%", node, pct)
		}
	}
	for _, src := range lab.sources {
		if want := fmt.Sprintf("s%d", netfilter.Bucket(netip.MustParseAddr(src), netfilter.DefaultHashSeed, 3)); first[src] != want {
			t.Errorf("source %s landed on %s, netfilter.Bucket says %s", src, first[src], want)
		}
	}
	if second := lab.round(); !maps.Equal(first, second) {
		t.Errorf("the same sources landed on other nodes the second time:\nfirst  %v\nsecond %v", first, second)
	}

	// s1's link goes down: its sources fail, the others stay where they were.
	lab.ip("-n", lab.sw, "link", "set", "p1", "down")
	down := lab.round()
	for _, src := range lab.sources {
		want := first[src]
		if want == "s1" {
			want = ""
		}
		if down[src] != want {
			t.Errorf("with s1 down, source %s got %q, want %q", src, down[src], want)
		}
	}
	t.Logf("s1 down: %d sources unanswered", counts(down)[""])

	// The survivors agree that s2 takes s1's bucket; s2 applies it.
	alive := map[int]bool{2: true, 3: true}
	if got := netfilter.TakeOver(3, 3, alive); got != nil {
		t.Fatalf("TakeOver(3) = %v, want nothing", got)
	}
	take := netfilter.TakeOver(2, 3, alive)
	if !slices.Equal(take, []int{1}) {
		t.Fatalf("TakeOver(2) = %v, want [1]", take)
	}
	start := time.Now()
	lab.apply(2, "--take-over", "1")
	t.Logf("take-over applied in %v", time.Since(start).Round(time.Millisecond))
	over := lab.round()
	for _, src := range lab.sources {
		want := first[src]
		if want == "s1" {
			want = "s2"
		}
		if over[src] != want {
			t.Errorf("after take-over, source %s got %q, want %q", src, over[src], want)
		}
	}
	tc := counts(over)
	t.Logf("after take-over: s2=%d s3=%d unanswered=%d", tc["s2"], tc["s3"], tc[""])

	// s1 returns and s2 hands its bucket back: the original split.
	lab.ip("-n", lab.sw, "link", "set", "p1", "up")
	lab.apply(2)
	if back := lab.round(); !maps.Equal(first, back) {
		t.Errorf("after s1 returned, the split is not the original:\nfirst %v\nback  %v", first, back)
	}

	// remove gives back the hosts as they were.
	for k, ns := range lab.slaves {
		lab.remove(k + 1)
		if after := lab.snapshot(ns); after != before[ns] {
			t.Errorf("s%d after remove differs from before apply:\nbefore:\n%s\nafter:\n%s", k+1, before[ns], after)
		}
	}
}

func TestNetfilterRateLimit(t *testing.T) {
	lab := newVIPLab(t, 1)
	before := lab.snapshot(lab.slaves[0])
	lab.apply(1, "--rate-limit", "5/60s", "--ssh-port", strconv.Itoa(labPort))
	applied := lab.snapshot(lab.slaves[0])
	if again := lab.apply(1, "--rate-limit", "5/60s", "--ssh-port", strconv.Itoa(labPort)); !strings.Contains(again, "nothing to change") {
		t.Errorf("second apply changed things:\n%s", again)
	}
	if lab.snapshot(lab.slaves[0]) != applied {
		t.Errorf("second apply changed the host")
	}

	noisy, quiet := lab.sources[0], lab.sources[1]
	var answered []bool
	for i := 0; i < 9; i++ {
		answered = append(answered, lab.dial(noisy) == "s1")
	}
	t.Logf("source %s, 9 connections in a row at 5/60s (burst 5): answered %v", noisy, answered)
	for i, ok := range answered {
		if want := i < 5; ok != want {
			t.Errorf("connection %d from %s: answered=%v, want %v", i+1, noisy, ok, want)
		}
	}
	if lab.dial(quiet) != "s1" {
		t.Errorf("source %s was not answered while %s was being limited", quiet, noisy)
	}
	if lab.dial(noisy) != "" {
		t.Errorf("source %s was answered again within the minute", noisy)
	}

	lab.remove(1)
	if after := lab.snapshot(lab.slaves[0]); after != before {
		t.Errorf("after remove:\n%s\nbefore apply:\n%s", after, before)
	}
}
