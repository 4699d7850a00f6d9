package netfilter

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/process"
)

// freshState is a host on which nothing has happened: an nf_tables
// iptables with no tables yet, or a legacy one with CLUSTERIP.
func freshState(backend string) State {
	st := State{
		Kernel:  "6.18.44",
		Backend: backend,
		HaveNFT: true,
		Targets: map[string]bool{"MARK": true},
		Matches: map[string]bool{"cluster": true, "hashlimit": true, "comment": true, "conntrack": true, "mark": true},
		Modules: map[string]bool{},
		Iface: &Iface{Name: "eth0", Addrs: []netip.Prefix{netip.MustParsePrefix("198.18.0.11/16")},
			Maddrs: []string{"01:00:5e:00:00:01"}},
		Tables: map[string]*Table{},
	}
	for _, t := range []struct {
		name   string
		chains []string
	}{{"mangle", []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}}, {"filter", []string{"INPUT", "FORWARD", "OUTPUT"}}} {
		tb := &Table{Exists: backend == "legacy"}
		for _, c := range t.chains {
			tb.Chains = append(tb.Chains, &Chain{Name: c, Policy: "ACCEPT"})
		}
		st.Tables[t.name] = tb
	}
	if backend == "legacy" {
		st.Kernel = "5.10.0"
		st.Matches["cluster"] = false
		st.Targets["CLUSTERIP"] = true
	}
	return st
}

func baseConfig() Config {
	return Config{VIP: netip.MustParseAddr("198.18.0.100"), Iface: "eth0", Nodes: 3, Node: 2,
		Mode: ModeAuto, HashSeed: DefaultHashSeed, SSHPort: 2222}
}

func TestPlanGolden(t *testing.T) {
	rl, _ := ParseRateLimit("10/60s")
	cip := freshState("legacy")
	cip.ClusterIPNodes = []int{2}
	for _, tc := range []struct {
		name string
		cfg  func(*Config)
		st   State
	}{
		{"cluster", func(c *Config) {}, freshState("nf_tables")},
		{"cluster-ratelimit-takeover", func(c *Config) { c.RateLimit = rl; c.TakeOver = []int{3} }, freshState("nf_tables")},
		{"clusterip", func(c *Config) { c.Mode = ModeClusterIP; c.RateLimit = rl }, freshState("legacy")},
		{"clusterip-takeover", func(c *Config) { c.TakeOver = []int{1, 3} }, cip},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := baseConfig()
			tc.cfg(&cfg)
			p, err := NewPlan(cfg, tc.st)
			if err != nil {
				t.Fatal(err)
			}
			testkit.Golden(t, filepath.Join("testdata", "plan-"+tc.name+".golden"), []byte(p.String()))
		})
	}
}

func TestPlanErrors(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cfg    func(*Config)
		st     func(*State)
		config bool // a *ConfigError (exit 2)
		want   string
	}{
		{"node past nodes", func(c *Config) { c.Node = 4 }, nil, true, "--node 4: must be between 1 and --nodes (3)"},
		{"node zero", func(c *Config) { c.Node = 0 }, nil, true, "--node 0"},
		{"too many nodes", func(c *Config) { c.Nodes = 33 }, nil, true, "--nodes 33: must be between 1 and 32"},
		{"ipv6 vip", func(c *Config) { c.VIP = netip.MustParseAddr("2001:db8::1") }, nil, true, "only IPv4"},
		{"multicast vip", func(c *Config) { c.VIP = netip.MustParseAddr("224.0.0.5") }, nil, true, "not a unicast address"},
		{"no vip", func(c *Config) { c.VIP = netip.Addr{} }, nil, true, "--vip is required"},
		{"take over self", func(c *Config) { c.TakeOver = []int{2} }, nil, true, "that is this node"},
		{"take over past nodes", func(c *Config) { c.TakeOver = []int{7} }, nil, true, "--take-over 7"},
		{"bad mode", func(c *Config) { c.Mode = "ipvs" }, nil, true, "--mode \"ipvs\""},
		{"rate limit bad port", func(c *Config) { c.RateLimit = &RateLimit{Count: 1, Per: time.Second, Burst: 1}; c.SSHPort = 0 }, nil, true, "--ssh-port 0"},
		{"no interface", nil, func(s *State) { s.Iface = nil }, true, "--iface eth0: no such interface"},
		{"clusterip gone", func(c *Config) { c.Mode = ModeClusterIP }, nil, false, "CLUSTERIP target is not available in kernel 6.18.44 (CLUSTERIP was removed in Linux 6.3): use --mode cluster"},
		{"cluster missing", func(c *Config) { c.Mode = ModeCluster }, func(s *State) { s.Matches["cluster"] = false }, false, "the cluster match (xt_cluster) is not available"},
		{"auto nothing", nil, func(s *State) { s.Matches["cluster"] = false }, false, "neither the cluster match"},
		{"no nft", nil, func(s *State) { s.HaveNFT = false }, false, "install nftables"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, st := baseConfig(), freshState("nf_tables")
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			if tc.st != nil {
				tc.st(&st)
			}
			_, err := NewPlan(cfg, st)
			if err == nil || !strings.Contains(err.Error(), tc.want) || IsConfigError(err) != tc.config {
				t.Fatalf("err = %v (config error %v), want %q (config error %v)", err, IsConfigError(err), tc.want, tc.config)
			}
		})
	}
}

func TestAutoMode(t *testing.T) {
	st := freshState("nf_tables")
	st.Matches["cluster"] = false
	st.Modules["xt_cluster"] = true
	p, err := NewPlan(baseConfig(), st)
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != ModeCluster || p.Steps[0].String() != "modprobe xt_cluster" || !strings.Contains(p.Notes[0], "apply loads it") {
		t.Errorf("mode %s, first step %q, note %q", p.Mode, p.Steps[0], p.Notes[0])
	}
	st = freshState("legacy")
	p, err = NewPlan(baseConfig(), st)
	if err != nil || p.Mode != ModeClusterIP || !strings.Contains(p.Notes[0], "legacy CLUSTERIP") {
		t.Errorf("legacy kernel: mode %s, %v, notes %q", p.Mode, err, p.Notes)
	}
}

func TestParse(t *testing.T) {
	for in, want := range map[string]string{"10/60s": "10/minute", "5/30s": "10/minute", "3/1s": "3/second",
		"1/1h": "1/hour", "7/2h": "84/day", "2/90s": "80/hour"} {
		rl, err := ParseRateLimit(in)
		if err != nil || rl.hashlimitRate() != want || rl.Burst != rl.Count {
			t.Errorf("ParseRateLimit(%q) = %+v, %v; rate %q, want %q", in, rl, err, rl.hashlimitRate(), want)
		}
	}
	for _, bad := range []string{"", "10", "0/60s", "10/0s", "10/500ms", "x/60s", "10/2d", "10/48h"} {
		if _, err := ParseRateLimit(bad); !IsConfigError(err) {
			t.Errorf("ParseRateLimit(%q): %v, want a config error", bad, err)
		}
	}
	if _, err := ParseVIP("198.18.0.300"); !IsConfigError(err) {
		t.Errorf("ParseVIP accepted 198.18.0.300")
	}
	if l, err := ParseNodeList("2, 3"); err != nil || !slices.Equal(l, []int{2, 3}) {
		t.Errorf("ParseNodeList = %v, %v", l, err)
	}
	if s, err := ParseHashSeed("0xdeadbeef"); err != nil || s != 0xdeadbeef {
		t.Errorf("ParseHashSeed = %x, %v", s, err)
	}
	if got := MulticastMAC(netip.MustParseAddr("198.18.0.100")); got != "01:00:5e:12:00:64" {
		t.Errorf("MulticastMAC = %s", got)
	}
	if got := MulticastMAC(netip.MustParseAddr("10.200.1.2")); got != "01:00:5e:48:01:02" {
		t.Errorf("MulticastMAC drops the 24th bit: got %s", got)
	}
}

func TestTakeOver(t *testing.T) {
	for _, tc := range []struct {
		self, nodes int
		alive       []int
		want        []int
	}{
		{1, 3, []int{1, 2, 3}, nil},
		{2, 3, []int{2, 3}, []int{1}},
		{3, 3, []int{2, 3}, nil},
		{1, 3, []int{1, 3}, []int{2}},
		{3, 3, []int{3}, []int{1, 2}},
		{3, 3, nil, []int{1, 2}}, // self counts as alive
		{2, 5, []int{2, 4}, []int{1, 3, 5}},
		{4, 5, []int{2, 4}, nil},
		{6, 5, []int{1}, nil},
	} {
		alive := map[int]bool{}
		for _, a := range tc.alive {
			alive[a] = true
		}
		if got := TakeOver(tc.self, tc.nodes, alive); !slices.Equal(got, tc.want) {
			t.Errorf("TakeOver(%d, %d, %v) = %v, want %v", tc.self, tc.nodes, tc.alive, got, tc.want)
		}
	}
	// Whatever is dead, every bucket is served by exactly one live node.
	for mask := 1; mask < 1<<5; mask++ {
		alive := map[int]bool{}
		for k := 1; k <= 5; k++ {
			alive[k] = mask&(1<<(k-1)) != 0
		}
		served := map[int]int{}
		for k := 1; k <= 5; k++ {
			if !alive[k] {
				continue
			}
			served[k]++
			for _, b := range TakeOver(k, 5, alive) {
				served[b]++
			}
		}
		for b := 1; b <= 5; b++ {
			if served[b] != 1 {
				t.Errorf("alive %v: bucket %d served %d times", alive, b, served[b])
			}
		}
	}
}

// TestBucket pins the hash to what xt_cluster did in the end-to-end test
// on this kernel (60 sources 198.18.1.1-60, 3 nodes, the default seed).
func TestBucket(t *testing.T) {
	c := map[int]int{}
	for i := 1; i <= 60; i++ {
		c[Bucket(netip.AddrFrom4([4]byte{198, 18, 1, byte(i)}), DefaultHashSeed, 3)]++
	}
	if want := map[int]int{1: 15, 2: 29, 3: 16}; !reflect.DeepEqual(c, want) {
		t.Errorf("buckets of 198.18.1.1-60: %v, want %v (as the kernel split them)", c, want)
	}
}

func TestTokenize(t *testing.T) {
	got := tokenize(`-A MAS4H-VIP -m comment --comment "mas4h:owner vip=1.2.3.4 \"x\"" -j DROP`)
	want := []string{"-A", "MAS4H-VIP", "-m", "comment", "--comment", `mas4h:owner vip=1.2.3.4 "x"`, "-j", "DROP"}
	if !slices.Equal(got, want) {
		t.Errorf("tokenize = %q", got)
	}
}

// fakeHost is a host in memory: Apply's steps change its State, so that
// plan → apply → plan again, and removal, can be checked without root.
type fakeHost struct {
	st    State
	calls []string
}

func (f *fakeHost) table(t string) *Table {
	if f.st.Tables[t] == nil {
		f.st.Tables[t] = &Table{}
	}
	return f.st.Tables[t]
}

func (f *fakeHost) chain(t, c string) (*Chain, error) {
	if ch := f.table(t).chain(c); ch != nil {
		return ch, nil
	}
	return nil, fmt.Errorf("no chain %s in %s", c, t)
}

func saveLine(chain string, spec []string) string {
	q := []string{"-A", chain}
	for _, s := range spec {
		if strings.ContainsAny(s, " \"") {
			s = `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
		}
		q = append(q, s)
	}
	return strings.Join(q, " ")
}

func (f *fakeHost) Exists(t, c string, spec ...string) (bool, error) {
	ch, err := f.chain(t, c)
	return err == nil && slices.Contains(ch.Rules, saveLine(c, spec)), nil
}

func (f *fakeHost) Insert(t, c string, pos int, spec ...string) error {
	ch, err := f.chain(t, c)
	if err != nil {
		return err
	}
	if pos < 1 || pos > len(ch.Rules)+1 {
		return fmt.Errorf("index of insertion too big: %d", pos)
	}
	f.table(t).Exists = true
	ch.Rules = slices.Insert(ch.Rules, pos-1, saveLine(c, spec))
	return nil
}

func (f *fakeHost) Append(t, c string, spec ...string) error {
	ch, err := f.chain(t, c)
	if err != nil {
		return err
	}
	return f.Insert(t, c, len(ch.Rules)+1, spec...)
}

func (f *fakeHost) Delete(t, c string, spec ...string) error {
	ch, err := f.chain(t, c)
	if err != nil {
		return err
	}
	i := slices.Index(ch.Rules, saveLine(c, spec))
	if i < 0 {
		return fmt.Errorf("bad rule (does a matching rule exist in that chain?)")
	}
	ch.Rules = slices.Delete(ch.Rules, i, i+1)
	return nil
}

func (f *fakeHost) NewChain(t, c string) error {
	if f.table(t).chain(c) != nil {
		return fmt.Errorf("chain %s exists", c)
	}
	f.table(t).Exists = true
	f.table(t).Chains = append(f.table(t).Chains, &Chain{Name: c})
	return nil
}

func (f *fakeHost) ClearChain(t, c string) error {
	ch, err := f.chain(t, c)
	if err == nil {
		ch.Rules = nil
	}
	return err
}

func (f *fakeHost) DeleteChain(t, c string) error {
	ch, err := f.chain(t, c)
	if err != nil {
		return err
	}
	if len(ch.Rules) > 0 {
		return fmt.Errorf("chain %s not empty", c)
	}
	tb := f.table(t)
	tb.Chains = slices.DeleteFunc(tb.Chains, func(x *Chain) bool { return x == ch })
	return nil
}

func (f *fakeHost) ListChains(t string) ([]string, error) {
	var out []string
	for _, c := range f.table(t).Chains {
		out = append(out, c.Name)
	}
	return out, nil
}

func (f *fakeHost) List(t, c string) ([]string, error) {
	ch, err := f.chain(t, c)
	if err != nil {
		return nil, err
	}
	return ch.Rules, nil
}

func (f *fakeHost) Run(ctx context.Context, c process.Cmd) ([]byte, error) {
	name, args, stdin := c.Argv[0], c.Argv[1:], string(c.Stdin)
	cmd := c.String()
	f.calls = append(f.calls, cmd)
	ifc := f.st.Iface
	switch {
	case name == "ip" && args[0] == "address":
		p := netip.MustParsePrefix(args[2])
		if args[1] == "add" {
			ifc.Addrs = append(ifc.Addrs, p)
		} else {
			ifc.Addrs = slices.DeleteFunc(ifc.Addrs, func(x netip.Prefix) bool { return x == p })
		}
	case name == "ip" && args[0] == "maddress":
		if args[1] == "add" {
			ifc.Maddrs = append(ifc.Maddrs, args[2])
			slices.Sort(ifc.Maddrs)
		} else {
			ifc.Maddrs = slices.DeleteFunc(ifc.Maddrs, func(x string) bool { return x == args[2] })
		}
	case cmd == "nft -f -":
		f.st.ARPTable = strings.TrimPrefix(stdin, "delete table arp mas4h\n")
	case cmd == "nft delete table arp mas4h":
		f.st.ARPTable = ""
	case strings.HasPrefix(cmd, "nft delete table ip "):
		tb := f.table(args[3])
		tb.Exists = false
		for _, c := range tb.Chains {
			if len(c.Rules) > 0 || c.Policy == "" {
				return nil, fmt.Errorf("table %s is not empty", args[3])
			}
		}
	case name == "modprobe":
		f.st.Matches["cluster"] = true
	default:
		return nil, fmt.Errorf("fake host: unexpected %s", cmd)
	}
	return nil, nil
}

func (f *fakeHost) apply(t *testing.T, p Plan) {
	t.Helper()
	if err := Apply(context.Background(), &System{IPT: f, Run: f}, p); err != nil {
		t.Fatalf("%v\nplan:\n%s", err, p)
	}
}

func (f *fakeHost) plan(t *testing.T, cfg Config) Plan {
	t.Helper()
	p, err := NewPlan(cfg, f.st)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestApplyTwiceAndRemove: apply twice is apply once; take-over and hand-back
// touch only the node's own rule; removal gives back the host as it was,
// including a VIP address and a foreign rule that were there before.
func TestApplyTwiceAndRemove(t *testing.T) {
	rl, _ := ParseRateLimit("10/60s")
	for _, tc := range []struct {
		name    string
		prepare func(*State)
	}{
		{"fresh", func(*State) {}},
		{"lived-in", func(s *State) {
			s.Iface.Addrs = append(s.Iface.Addrs, netip.MustParsePrefix("198.18.0.100/32"))
			s.Tables["filter"].Exists = true
			s.Tables["filter"].chain("INPUT").Rules = []string{"-A INPUT -p tcp -m tcp --dport 22 -j ACCEPT"}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := freshState("nf_tables")
			tc.prepare(&before)
			h := &fakeHost{st: freshState("nf_tables")}
			tc.prepare(&h.st)
			cfg := baseConfig()
			cfg.RateLimit = rl
			h.apply(t, h.plan(t, cfg))
			if p := h.plan(t, cfg); len(p.Steps) != 0 {
				t.Fatalf("second plan is not empty:\n%s", p)
			}
			if tc.name == "lived-in" {
				if got := h.st.Tables["filter"].chain("INPUT").Rules; len(got) != 2 || !strings.Contains(got[0], "mas4h:ssh") {
					t.Errorf("the ssh jump is not first in INPUT: %q", got)
				}
			}
			cfg.TakeOver = []int{1}
			p := h.plan(t, cfg)
			if len(p.Steps) != 2 || p.Steps[0].Op != OpInsert || p.Steps[1].Op != OpDelete ||
				!strings.Contains(p.Steps[0].String(), "--cluster-local-nodemask 0x00000003") {
				t.Fatalf("take-over plan is not insert-new-then-delete-old:\n%s", p)
			}
			h.apply(t, p)
			cfg.TakeOver = nil
			h.apply(t, h.plan(t, cfg))
			cfg.RateLimit = nil // turning the limit off removes its rules
			h.apply(t, h.plan(t, cfg))
			if h.st.Tables["filter"].chain(ChainSSH) != nil {
				t.Errorf("%s is still there without --rate-limit", ChainSSH)
			}
			h.apply(t, RemovalPlan(h.st))
			if got, want := dump(h.st), dump(before); got != want {
				t.Errorf("after removal:\n%s\nbefore:\n%s\ncalls: %q", got, want, h.calls)
			}
			if p := RemovalPlan(h.st); len(p.Steps) != 0 {
				t.Errorf("removing twice does something:\n%s", p)
			}
		})
	}
}

// A different VIP on a host where mas4h already shares one is refused.
func TestOtherVIPRefused(t *testing.T) {
	h := &fakeHost{st: freshState("nf_tables")}
	h.apply(t, h.plan(t, baseConfig()))
	cfg := baseConfig()
	cfg.VIP = netip.MustParseAddr("198.18.0.101")
	if _, err := NewPlan(cfg, h.st); err == nil || !strings.Contains(err.Error(), "already shares VIP 198.18.0.100") {
		t.Errorf("err = %v", err)
	}
}

// dump renders what removal must give back.
func dump(st State) string {
	var b strings.Builder
	for _, tb := range []string{"mangle", "filter"} {
		fmt.Fprintf(&b, "table %s exists=%v\n", tb, st.Tables[tb].Exists)
		for _, c := range st.Tables[tb].Chains {
			fmt.Fprintf(&b, "  %s %s %q\n", c.Name, c.Policy, c.Rules)
		}
	}
	fmt.Fprintf(&b, "arp %q\naddrs %v\nmaddrs %v\n", st.ARPTable, st.Iface.Addrs, st.Iface.Maddrs)
	return b.String()
}
