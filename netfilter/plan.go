package netfilter

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// mas4h's own chains and table.
const (
	ChainVIP = "MAS4H-VIP" // mangle (cluster) or filter (clusterip), jumped to for packets to the VIP
	ChainSSH = "MAS4H-SSH" // filter, jumped to for new connections to the SSH port
	arpTable = "mas4h"     // nft table (family arp) for the cluster MAC
	// clusterMark is the packet-mark bit for "this node's bucket": one bit
	// outside the ranges kube-proxy, Docker, Cilium and Tailscale use.
	clusterMark = "0x1000000/0x1000000"
	commentTag  = "mas4h:"
	ownerTag    = "mas4h:owner "
)

// Op is what a Step does.
type Op int

const (
	OpNewChain    Op = iota // iptables -N
	OpInsert                // iptables -I CHAIN POS
	OpDelete                // iptables -D CHAIN RULE
	OpClearChain            // iptables -F
	OpDeleteChain           // iptables -X
	OpExec                  // a program (ip, nft, modprobe) with stdin
	OpWrite                 // a write to a /proc file (CLUSTERIP take-over)
)

// Step is one change to the host.
type Step struct {
	Op    Op
	Table string
	Chain string
	Pos   int
	Rule  []string
	Argv  []string // OpExec
	Stdin string   // OpExec
	Path  string   // OpWrite
	Data  string   // OpWrite
	V6    bool     // an ip6tables step (OpNewChain … OpDeleteChain)
}

// String is the step as a shell command.
func (s Step) String() string {
	ipt := "iptables"
	if s.V6 {
		ipt = "ip6tables"
	}
	switch s.Op {
	case OpNewChain:
		return fmt.Sprintf("%s -t %s -N %s", ipt, s.Table, s.Chain)
	case OpInsert:
		return fmt.Sprintf("%s -t %s -I %s %d %s", ipt, s.Table, s.Chain, s.Pos, shellJoin(s.Rule))
	case OpDelete:
		return fmt.Sprintf("%s -t %s -D %s %s", ipt, s.Table, s.Chain, shellJoin(s.Rule))
	case OpClearChain:
		return fmt.Sprintf("%s -t %s -F %s", ipt, s.Table, s.Chain)
	case OpDeleteChain:
		return fmt.Sprintf("%s -t %s -X %s", ipt, s.Table, s.Chain)
	case OpExec:
		if s.Stdin != "" {
			return fmt.Sprintf("%s <<'EOF'\n%sEOF", shellJoin(s.Argv), s.Stdin)
		}
		return shellJoin(s.Argv)
	case OpWrite:
		return fmt.Sprintf("echo %s > %s", shellQuote(s.Data), s.Path)
	}
	return fmt.Sprintf("unknown step %d", s.Op)
}

// Plan is what Apply will do, and why.
type Plan struct {
	Mode  Mode     // the mode chosen (empty for a removal)
	Notes []string // why that mode, which buckets; printed as comments
	Steps []Step
}

// String prints the plan as commented shell: exactly the steps Apply runs.
func (p Plan) String() string {
	var b strings.Builder
	for _, n := range p.Notes {
		fmt.Fprintf(&b, "# %s\n", n)
	}
	if len(p.Steps) == 0 {
		b.WriteString("# nothing to change\n")
	}
	for _, s := range p.Steps {
		b.WriteString(s.String())
		b.WriteString("\n")
	}
	return b.String()
}

// record is what mas4h added to the host, kept as the comment of the first
// rule of MAS4H-VIP so that Remove can undo exactly that and no more.
type record struct {
	VIP   netip.Addr
	Iface string
	Added []string // "addr", "maddr", "table-mangle", "table-filter"
}

func (r record) comment() string {
	added := "-"
	if len(r.Added) > 0 {
		added = strings.Join(r.Added, ",")
	}
	return fmt.Sprintf("%svip=%s iface=%s added=%s", ownerTag, r.VIP, r.Iface, added)
}

func (r record) has(what string) bool { return slices.Contains(r.Added, what) }

func parseRecord(comment string) (record, bool) {
	rest, ok := strings.CutPrefix(comment, ownerTag)
	if !ok {
		return record{}, false
	}
	var r record
	for _, f := range strings.Fields(rest) {
		k, v, _ := strings.Cut(f, "=")
		switch k {
		case "vip":
			r.VIP, _ = netip.ParseAddr(v)
		case "iface":
			r.Iface = v
		case "added":
			if v != "-" {
				r.Added = strings.Split(v, ",")
			}
		}
	}
	return r, r.VIP.IsValid()
}

// rule is one iptables rule mas4h wants, identified by its comment.
type rule struct {
	id   string
	spec []string
}

// newRule appends a comment naming the rule's role and a hash of the rule,
// so that a changed rule is a different rule.
func newRule(table, chain, role string, spec ...string) rule {
	h := sha256.Sum256([]byte(table + " " + chain + " " + strings.Join(spec, " ")))
	id := commentTag + role + ":" + hex.EncodeToString(h[:4])
	return rule{id: id, spec: withComment(spec, id)}
}

// withComment puts the comment before the target, where iptables -S prints it.
func withComment(spec []string, comment string) []string {
	i := slices.Index(spec, "-j")
	if i < 0 {
		i = len(spec)
	}
	out := slices.Clone(spec[:i])
	out = append(out, "-m", "comment", "--comment", comment)
	return append(out, spec[i:]...)
}

// desired is everything mas4h wants on the host; the zero value is
// "nothing" (a removal).
type desired struct {
	mode     Mode
	rec      record
	chains   map[string][]rule // "table/chain" of mas4h's own chains
	jumps    map[string][]rule // "table/chain" of built-in chains
	addr     bool
	maddr    string
	arp      string // nft script for table arp mas4h, "" for none
	arpID    string
	clusterP string // /proc/net/ipt_CLUSTERIP/VIP
	cipNodes []int  // CLUSTERIP local nodes wanted
	cipSelf  int    // the CLUSTERIP rule's --local-node
	modprobe string
}

// builtinHooks are the built-in chains mas4h jumps from.
var builtinHooks = []string{"mangle/PREROUTING", "filter/INPUT"}

// ownChains are the chains mas4h owns.
var ownChains = []string{"mangle/" + ChainVIP, "filter/" + ChainVIP, "filter/" + ChainSSH}

// NewPlan computes what Apply must do to the host in state st for cfg. It
// is pure. Errors about cfg are *ConfigError; a mode the kernel lacks is
// an error too; in both cases nothing has changed.
func NewPlan(cfg Config, st State) (Plan, error) {
	if err := cfg.Validate(); err != nil {
		return Plan{}, err
	}
	if st.Iface == nil {
		return Plan{}, configErrorf("--iface %s: no such interface", cfg.Iface)
	}
	mode, why, modprobe, err := resolveMode(cfg.Mode, st)
	if err != nil {
		return Plan{}, err
	}
	if mode == ModeCluster && !st.HaveNFT {
		return Plan{}, fmt.Errorf("cluster mode answers ARP with nft's arp family, and nft does not run here: install nftables")
	}
	old, oldTable, hasOld := findRecord(st)
	if hasOld && (old.VIP != cfg.VIP || old.Iface != cfg.Iface) {
		return Plan{}, fmt.Errorf("mas4h already shares VIP %s on %s on this host: run 'mas4h netfilter remove --vip %s --iface %s' first", old.VIP, old.Iface, old.VIP, old.Iface)
	}
	vipTable := "mangle"
	if mode == ModeClusterIP {
		vipTable = "filter"
	}
	if hasOld && oldTable != vipTable {
		return Plan{}, fmt.Errorf("mas4h applied the VIP in the other mode here (chain %s in table %s): run 'mas4h netfilter remove' first", ChainVIP, oldTable)
	}

	d := desired{mode: mode, modprobe: modprobe, chains: map[string][]rule{}, jumps: map[string][]rule{}}
	// The record: what mas4h added before, and what this plan adds.
	added := map[string]bool{}
	for _, a := range old.Added {
		added[a] = true
	}
	if !st.Iface.hasAddr(cfg.VIP) {
		added["addr"] = true
	}
	mac := MulticastMAC(cfg.VIP)
	if mode == ModeCluster && !st.Iface.hasMaddr(mac) {
		added["maddr"] = true
	}
	touched := []string{vipTable}
	if cfg.RateLimit != nil {
		touched = append(touched, "filter")
	}
	for _, t := range touched {
		if st.Backend == "nf_tables" && !st.Tables[t].exists() {
			added["table-"+t] = true
		}
	}
	d.rec = record{VIP: cfg.VIP, Iface: cfg.Iface}
	for a := range added {
		d.rec.Added = append(d.rec.Added, a)
	}
	slices.Sort(d.rec.Added)

	vip := cfg.VIP.String() + "/32"
	buckets := cfg.buckets()
	vipKey := vipTable + "/" + ChainVIP
	owner := rule{id: d.rec.comment(), spec: []string{"-m", "comment", "--comment", d.rec.comment()}}
	switch mode {
	case ModeCluster:
		mine := newRule("mangle", ChainVIP, "vip-mine",
			"-m", "cluster", "--cluster-total-nodes", strconv.Itoa(cfg.Nodes),
			"--cluster-local-nodemask", fmt.Sprintf("0x%08x", nodemask(buckets)),
			"--cluster-hash-seed", fmt.Sprintf("0x%08x", cfg.HashSeed),
			"-j", "MARK", "--set-mark", clusterMark)
		drop := newRule("mangle", ChainVIP, "vip-others",
			"-m", "mark", "!", "--mark", clusterMark, "-j", "DROP")
		d.chains[vipKey] = []rule{owner, mine, drop}
		d.jumps["mangle/PREROUTING"] = []rule{newRule("mangle", "PREROUTING", "vip",
			"-d", vip, "-i", cfg.Iface, "-j", ChainVIP)}
		d.maddr = mac
		d.arp, d.arpID = arpScript(cfg.VIP, cfg.Iface, mac)
	case ModeClusterIP:
		cip := newRule("filter", ChainVIP, "vip-clusterip",
			"-d", vip, "-i", cfg.Iface, "-j", "CLUSTERIP", "--new", "--hashmode", "sourceip",
			"--clustermac", mac, "--total-nodes", strconv.Itoa(cfg.Nodes),
			"--local-node", strconv.Itoa(cfg.Node), "--hash-init", strconv.FormatUint(uint64(cfg.HashSeed), 10))
		d.chains[vipKey] = []rule{owner, cip}
		d.jumps["filter/INPUT"] = []rule{newRule("filter", "INPUT", "vip",
			"-d", vip, "-i", cfg.Iface, "-j", ChainVIP)}
		d.clusterP = "/proc/net/ipt_CLUSTERIP/" + cfg.VIP.String()
		d.cipNodes = buckets
		d.cipSelf = cfg.Node
	}
	d.addr = true
	if rl := cfg.RateLimit; rl != nil {
		port := strconv.Itoa(cfg.SSHPort)
		limit := newRule("filter", ChainSSH, "ssh-limit",
			"-m", "hashlimit", "--hashlimit-above", rl.hashlimitRate(), "--hashlimit-burst", strconv.Itoa(rl.Burst),
			"--hashlimit-mode", "srcip", "--hashlimit-name", "mas4h-ssh-"+port,
			// Thousands of devices, many behind CGNAT: room for a million sources.
			"--hashlimit-htable-size", "65536", "--hashlimit-htable-max", "1048576",
			"--hashlimit-htable-expire", strconv.FormatInt(rl.Per.Milliseconds(), 10),
			"-j", "DROP")
		d.chains["filter/"+ChainSSH] = []rule{limit}
		// After the CLUSTERIP jump, so that a node counts only its own share.
		d.jumps["filter/INPUT"] = append(d.jumps["filter/INPUT"], newRule("filter", "INPUT", "ssh",
			"-p", "tcp", "-m", "tcp", "--dport", port, "-m", "conntrack", "--ctstate", "NEW", "-j", ChainSSH))
	}

	p := diff(st, d, old)
	p.Mode = mode
	p.Notes = append([]string{
		fmt.Sprintf("mode %s: %s", mode, why),
		fmt.Sprintf("node %d of %d serves bucket(s) %s of VIP %s on %s (cluster MAC %s, hash seed 0x%08x)",
			cfg.Node, cfg.Nodes, joinInts(buckets), cfg.VIP, cfg.Iface, mac, cfg.HashSeed),
	}, p.Notes...)
	if cfg.RateLimit != nil {
		p.Notes = append(p.Notes, fmt.Sprintf("new connections to tcp port %d: at most %s per source address (burst %d)",
			cfg.SSHPort, cfg.RateLimit, cfg.RateLimit.Burst))
	}
	return p, nil
}

// RemovalPlan computes what Remove must do to undo everything mas4h did on
// the host in state st. It is pure.
func RemovalPlan(st State) Plan {
	old, _, ok := findRecord(st)
	p := diff(st, desired{}, old)
	if ok {
		p.Notes = append([]string{fmt.Sprintf("removing VIP %s on %s (mas4h added: %s)", old.VIP, old.Iface, strings.Join(old.Added, ", "))}, p.Notes...)
	}
	return p
}

func (t *Table) exists() bool { return t != nil && t.Exists }

// resolveMode picks the mode and says why; a mode the kernel lacks is an
// error.
func resolveMode(want Mode, st State) (mode Mode, why, modprobe string, err error) {
	kernel := st.Kernel
	if kernel == "" {
		kernel = "this kernel"
	}
	hasCluster := st.Matches["cluster"]
	loadCluster := !hasCluster && st.Modules["xt_cluster"]
	hasCIP := st.Targets["CLUSTERIP"]
	loadCIP := !hasCIP && st.Modules["ipt_CLUSTERIP"]
	removed := ""
	if kernelAtLeast(st.Kernel, 6, 3) {
		removed = " (CLUSTERIP was removed in Linux 6.3)"
	}
	switch want {
	case ModeAuto, "":
		switch {
		case hasCluster:
			return ModeCluster, "auto: the kernel has the cluster match (xt_cluster in /proc/net/ip_tables_matches)", "", nil
		case loadCluster:
			return ModeCluster, "auto: xt_cluster is not loaded but the kernel has the module; apply loads it", "xt_cluster", nil
		case hasCIP:
			return ModeClusterIP, "auto: no cluster match (xt_cluster) in this kernel; it has the legacy CLUSTERIP target", "", nil
		case loadCIP:
			return ModeClusterIP, "auto: no cluster match (xt_cluster) in this kernel; the legacy CLUSTERIP module will be loaded", "ipt_CLUSTERIP", nil
		}
		return "", "", "", fmt.Errorf("neither the cluster match (xt_cluster) nor the CLUSTERIP target is available in kernel %s: a shared VIP needs one of them", kernel)
	case ModeCluster:
		switch {
		case hasCluster:
			return ModeCluster, "asked for; the kernel has the cluster match (xt_cluster)", "", nil
		case loadCluster:
			return ModeCluster, "asked for; xt_cluster is not loaded but the kernel has the module; apply loads it", "xt_cluster", nil
		}
		return "", "", "", fmt.Errorf("--mode cluster: the cluster match (xt_cluster) is not available in kernel %s (not in /proc/net/ip_tables_matches, no module to load)", kernel)
	case ModeClusterIP:
		switch {
		case hasCIP:
			return ModeClusterIP, "asked for; the kernel has the legacy CLUSTERIP target", "", nil
		case loadCIP:
			return ModeClusterIP, "asked for; the legacy CLUSTERIP module will be loaded", "ipt_CLUSTERIP", nil
		}
		alt := ""
		if hasCluster || loadCluster {
			alt = ": use --mode cluster (xt_cluster), which this kernel has"
		}
		return "", "", "", fmt.Errorf("--mode clusterip: the CLUSTERIP target is not available in kernel %s%s%s", kernel, removed, alt)
	}
	return "", "", "", configErrorf("--mode %q: must be auto, cluster or clusterip", want)
}

func kernelAtLeast(release string, major, minor int) bool {
	var ma, mi int
	if _, err := fmt.Sscanf(release, "%d.%d", &ma, &mi); err != nil {
		return false
	}
	return ma > major || (ma == major && mi >= minor)
}

// findRecord finds the owner record in MAS4H-VIP of either table.
func findRecord(st State) (record, string, bool) {
	for _, t := range []string{"mangle", "filter"} {
		c := st.Tables[t].chain(ChainVIP)
		if c == nil {
			continue
		}
		for _, l := range c.Rules {
			if r, ok := parseRecord(commentOf(tokenize(l))); ok {
				return r, t, true
			}
		}
	}
	return record{}, "", false
}

// arpScript is the nft table that makes ARP for the VIP come from the
// cluster MAC (requests and replies: a client that saw the node's own MAC
// for the VIP even once would send all its traffic to that node), and
// counts ARP frames addressed to the cluster MAC.
func arpScript(vip netip.Addr, iface, mac string) (script, id string) {
	body := fmt.Sprintf(`table arp %[1]s {
	chain output {
		type filter hook output priority filter; policy accept;
		oifname %[2]q arp saddr ip %[3]s arp saddr ether set %[4]s counter comment "%%s"
	}
	chain input {
		type filter hook input priority filter; policy accept;
		iifname %[2]q arp daddr ether %[4]s counter accept comment "%%s"
	}
}
`, arpTable, iface, vip, mac)
	h := sha256.Sum256([]byte(body))
	id = commentTag + "arp:" + hex.EncodeToString(h[:4])
	return fmt.Sprintf(body, id+" cluster MAC", id+" to cluster MAC"), id
}

// diff turns the wanted state into steps, in an order that never leaves
// the VIP answered by two nodes or by a node's own MAC: the address goes
// first on removal and last on apply; rules go in before stale ones go out.
func diff(st State, d desired, old record) Plan {
	var p Plan
	add := func(s Step) { p.Steps = append(p.Steps, s) }
	ifc := st.Iface
	removing := len(d.chains) == 0

	// Removal of the address, the ARP table and the membership first.
	if !d.addr && old.has("addr") && ifc.hasAddr(old.VIP) {
		add(Step{Op: OpExec, Argv: []string{"ip", "address", "del", old.VIP.String() + "/32", "dev", old.Iface}})
	}
	if d.arp == "" && st.ARPTable != "" {
		add(Step{Op: OpExec, Argv: []string{"nft", "delete", "table", "arp", arpTable}})
	}
	if old.VIP.IsValid() && old.has("maddr") && d.maddr == "" && ifc.hasMaddr(MulticastMAC(old.VIP)) {
		add(Step{Op: OpExec, Argv: []string{"ip", "maddress", "del", MulticastMAC(old.VIP), "dev", old.Iface}})
	}
	if d.modprobe != "" {
		add(Step{Op: OpExec, Argv: []string{"modprobe", d.modprobe}})
	}

	// mas4h's own chains, filled before anything jumps to them.
	for _, key := range ownChains {
		want, ok := d.chains[key]
		if !ok {
			continue
		}
		table, chain, _ := strings.Cut(key, "/")
		cur := st.Tables[table].chain(chain)
		if cur == nil {
			add(Step{Op: OpNewChain, Table: table, Chain: chain})
			cur = &Chain{Name: chain}
		}
		p.Steps = append(p.Steps, reconcile(table, chain, cur.Rules, want, true)...)
	}
	// Jumps from the built-in chains: only mas4h's rules are touched.
	for _, key := range builtinHooks {
		table, chain, _ := strings.Cut(key, "/")
		cur := st.Tables[table].chain(chain)
		var rules []string
		if cur != nil {
			for _, l := range cur.Rules {
				if strings.HasPrefix(commentOf(tokenize(l)), commentTag) {
					rules = append(rules, l)
				}
			}
		}
		p.Steps = append(p.Steps, reconcile(table, chain, rules, d.jumps[key], false)...)
	}
	// Stale own chains, now that nothing jumps to them.
	for _, key := range ownChains {
		if _, ok := d.chains[key]; ok {
			continue
		}
		table, chain, _ := strings.Cut(key, "/")
		if st.Tables[table].chain(chain) != nil {
			add(Step{Op: OpClearChain, Table: table, Chain: chain})
			add(Step{Op: OpDeleteChain, Table: table, Chain: chain})
		}
	}

	// ARP, membership, address, CLUSTERIP take-over: the VIP is answered
	// only once the rules decide who answers.
	if d.arp != "" && !strings.Contains(st.ARPTable, d.arpID+" ") {
		script := d.arp
		if st.ARPTable != "" {
			script = "delete table arp " + arpTable + "\n" + script
		}
		add(Step{Op: OpExec, Argv: []string{"nft", "-f", "-"}, Stdin: script})
	}
	if d.maddr != "" && !ifc.hasMaddr(d.maddr) {
		add(Step{Op: OpExec, Argv: []string{"ip", "maddress", "add", d.maddr, "dev", d.rec.Iface}})
	}
	if d.addr && !ifc.hasAddr(d.rec.VIP) {
		add(Step{Op: OpExec, Argv: []string{"ip", "address", "add", d.rec.VIP.String() + "/32", "dev", d.rec.Iface}})
	}
	if d.clusterP != "" {
		cur := st.ClusterIPNodes
		if cur == nil { // the rule creates the config with its --local-node
			cur = []int{d.cipSelf}
		}
		for _, n := range d.cipNodes {
			if !slices.Contains(cur, n) {
				add(Step{Op: OpWrite, Path: d.clusterP, Data: fmt.Sprintf("+%d", n)})
			}
		}
		for _, n := range cur {
			if !slices.Contains(d.cipNodes, n) {
				add(Step{Op: OpWrite, Path: d.clusterP, Data: fmt.Sprintf("-%d", n)})
			}
		}
	}

	// Tables mas4h created (nf_tables), once they are empty again.
	if removing && st.Backend == "nf_tables" {
		for _, t := range tablesOfInterest {
			if old.has("table-"+t) && st.Tables[t].exists() && emptyWithout(st.Tables[t]) {
				add(Step{Op: OpExec, Argv: []string{"nft", "delete", "table", "ip", t}})
			}
		}
	}
	return p
}

// emptyWithout tells whether table t holds nothing but mas4h's rules and
// chains and accepting built-in chains.
func emptyWithout(t *Table) bool {
	for _, c := range t.Chains {
		if strings.HasPrefix(c.Name, "MAS4H-") {
			continue
		}
		if c.Policy != "" && c.Policy != "ACCEPT" {
			return false
		}
		if c.Policy == "" {
			return false // someone else's chain
		}
		for _, l := range c.Rules {
			if !strings.HasPrefix(commentOf(tokenize(l)), commentTag) {
				return false
			}
		}
	}
	return true
}

// reconcile makes a chain's mas4h rules (cur, -S lines) equal want: each
// missing rule is inserted after the wanted rule before it (or at the top),
// then stale ones are deleted, so the new rule works before the old one
// goes. own: the whole chain is mas4h's (rules without a mas4h comment are
// stale too).
func reconcile(table, chain string, cur []string, want []rule, own bool) []Step {
	type entry struct {
		id   string
		spec []string
	}
	var sim []entry
	for _, l := range cur {
		tok := tokenize(l)
		if len(tok) >= 2 && tok[0] == "-A" {
			tok = tok[2:]
		}
		sim = append(sim, entry{id: commentOf(tok), spec: tok})
	}
	index := func(id string) int {
		return slices.IndexFunc(sim, func(e entry) bool { return e.id == id })
	}
	var steps []Step
	for i, w := range want {
		prev := -1
		if i > 0 {
			prev = index(want[i-1].id)
		}
		idx := index(w.id)
		if idx >= 0 && idx > prev {
			continue
		}
		if idx >= 0 { // out of order: take it out, put it back below
			steps = append(steps, Step{Op: OpDelete, Table: table, Chain: chain, Rule: sim[idx].spec})
			sim = slices.Delete(sim, idx, idx+1)
			if i > 0 {
				prev = index(want[i-1].id)
			}
		}
		steps = append(steps, Step{Op: OpInsert, Table: table, Chain: chain, Pos: prev + 2, Rule: w.spec})
		sim = slices.Insert(sim, prev+1, entry(w))
	}
	wanted := map[string]bool{}
	for _, w := range want {
		wanted[w.id] = true
	}
	kept := map[string]bool{}
	for _, e := range sim {
		if wanted[e.id] && !kept[e.id] {
			kept[e.id] = true
			continue
		}
		if !own && !strings.HasPrefix(e.id, commentTag) {
			continue
		}
		steps = append(steps, Step{Op: OpDelete, Table: table, Chain: chain, Rule: e.spec})
	}
	return steps
}

// commentOf returns the value of the first --comment in a tokenized rule.
func commentOf(tok []string) string {
	for i := 0; i+1 < len(tok); i++ {
		if tok[i] == "--comment" {
			return tok[i+1]
		}
	}
	return ""
}

// tokenize splits an `iptables -S` line into arguments, undoing its
// quoting ("…" with \" and \\).
func tokenize(line string) []string {
	var out []string
	var cur strings.Builder
	in, have := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case in && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			in = !in
			have = true
		case !in && (c == ' ' || c == '\t'):
			if have || cur.Len() > 0 {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
		}
	}
	if have || cur.Len() > 0 {
		out = append(out, cur.String())
	}
	return out
}

func shellQuote(s string) string {
	if s != "" && strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:,=+@%", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

func joinInts(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}
