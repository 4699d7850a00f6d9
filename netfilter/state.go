package netfilter

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/coreos/go-iptables/iptables"
	"github.com/mas4h/mas4h/process"
)

// IPTables is the part of go-iptables this package uses; *iptables.IPTables
// has it, unit tests use a fake.
type IPTables interface {
	Exists(table, chain string, rulespec ...string) (bool, error)
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	Delete(table, chain string, rulespec ...string) error
	NewChain(table, chain string) error
	ClearChain(table, chain string) error
	DeleteChain(table, chain string) error
	ListChains(table string) ([]string, error)
	List(table, chain string) ([]string, error)
}

// Runner runs a program (ip, nft, modprobe, iptables -V) and returns its
// stdout: process.Exec on a real host.
type Runner interface {
	Run(ctx context.Context, c process.Cmd) ([]byte, error)
}

// System is the host: iptables, a program runner, and where /proc and the
// kernel modules are (relocatable for tests).
type System struct {
	IPT         IPTables
	IPT6        IPTables // ip6tables (the loopback guard); nil when not found
	Run         Runner
	ProcRoot    string // default /proc
	ModulesRoot string // default /lib/modules
	Log         *slog.Logger
}

// NewSystem returns the real host, through go-iptables and os/exec.
func NewSystem(log *slog.Logger) (*System, error) {
	ipt, err := iptables.New()
	if err != nil {
		return nil, fmt.Errorf("finding iptables: %w (install the iptables package)", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sys := &System{IPT: ipt, Run: process.Exec{}, ProcRoot: "/proc", ModulesRoot: "/lib/modules", Log: log}
	if ipt6, err := iptables.NewWithProtocol(iptables.ProtocolIPv6); err == nil {
		sys.IPT6 = ipt6
	}
	return sys, nil
}

// State is what NewPlan needs to know about the host. ReadState fills it;
// unit tests write it by hand.
type State struct {
	Kernel  string          // kernel release, for messages
	Backend string          // iptables backend: "nf_tables" or "legacy"
	HaveNFT bool            // the nft program runs (cluster mode needs it for ARP)
	Targets map[string]bool // /proc/net/ip_tables_targets
	Matches map[string]bool // /proc/net/ip_tables_matches
	Modules map[string]bool // modules modprobe could load (modules.dep, modules.builtin)
	Iface   *Iface          // nil: no such interface
	Tables  map[string]*Table
	// ARPTable is `nft list table arp mas4h`, "" when there is none.
	ARPTable string
	// ClusterIPNodes are the local nodes of the VIP's CLUSTERIP config
	// (/proc/net/ipt_CLUSTERIP/VIP), nil when there is none.
	ClusterIPNodes []int
}

// Iface is the client-facing interface.
type Iface struct {
	Name   string
	Addrs  []netip.Prefix
	Maddrs []string // link-layer multicast addresses joined globally (ip maddr add)
}

// Table is one iptables table.
type Table struct {
	Exists bool // false: the nf_tables table does not exist (yet)
	Chains []*Chain
}

// Chain is one chain of a table, as `iptables -S` prints it.
type Chain struct {
	Name   string
	Policy string   // built-in chains only
	Rules  []string // "-A CHAIN …" lines
}

func (t *Table) chain(name string) *Chain {
	if t == nil {
		return nil
	}
	for _, c := range t.Chains {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// tablesOfInterest are the tables mas4h's rules live in.
var tablesOfInterest = []string{"mangle", "filter"}

// ReadState reads what NewPlan needs from the host. It changes nothing.
func ReadState(ctx context.Context, sys *System, cfg Config) (State, error) {
	st := State{Tables: map[string]*Table{}}
	proc := sys.ProcRoot
	if proc == "" {
		proc = "/proc"
	}
	modRoot := sys.ModulesRoot
	if modRoot == "" {
		modRoot = "/lib/modules"
	}
	if b, err := os.ReadFile(filepath.Join(proc, "sys/kernel/osrelease")); err == nil {
		st.Kernel = strings.TrimSpace(string(b))
	}
	var err error
	if st.Targets, err = readNameList(filepath.Join(proc, "net/ip_tables_targets")); err != nil {
		return st, err
	}
	if st.Matches, err = readNameList(filepath.Join(proc, "net/ip_tables_matches")); err != nil {
		return st, err
	}
	st.Modules = readModules(filepath.Join(modRoot, st.Kernel))

	out, err := sys.Run.Run(ctx, process.Command("iptables", "-V"))
	if err != nil {
		return st, err
	}
	st.Backend = "legacy"
	if strings.Contains(string(out), "nf_tables") {
		st.Backend = "nf_tables"
	}

	if st.Iface, err = readIface(cfg.Iface, filepath.Join(proc, "net/dev_mcast")); err != nil {
		return st, err
	}

	if _, err := sys.Run.Run(ctx, process.Command("nft", "--version")); err == nil {
		st.HaveNFT = true
	} else if st.Backend == "nf_tables" {
		return st, fmt.Errorf("iptables uses nf_tables but nft does not run (%w): install nftables", err)
	}

	legacyTables, _ := readNameList(filepath.Join(proc, "net/ip_tables_names"))
	for _, name := range tablesOfInterest {
		t := &Table{}
		if st.Backend == "nf_tables" {
			_, err := sys.Run.Run(ctx, process.Command("nft", "list", "table", "ip", name))
			switch {
			case err == nil:
				t.Exists = true
			case process.ExitCode(err) > 0: // no such table
			default:
				return st, fmt.Errorf("checking for the nf_tables table ip %s: %w (is nftables installed?)", name, err)
			}
		} else {
			t.Exists = legacyTables[name]
		}
		chains, err := sys.IPT.ListChains(name)
		if err != nil {
			return st, fmt.Errorf("listing the chains of table %s: %w", name, err)
		}
		for _, c := range chains {
			lines, err := sys.IPT.List(name, c)
			if err != nil {
				return st, fmt.Errorf("listing chain %s of table %s: %w", c, name, err)
			}
			ch := &Chain{Name: c}
			for _, l := range lines {
				switch {
				case strings.HasPrefix(l, "-P "):
					if f := strings.Fields(l); len(f) == 3 {
						ch.Policy = f[2]
					}
				case strings.HasPrefix(l, "-A "):
					ch.Rules = append(ch.Rules, l)
				}
			}
			t.Chains = append(t.Chains, ch)
		}
		st.Tables[name] = t
	}

	if st.HaveNFT {
		if out, err := sys.Run.Run(ctx, process.Command("nft", "list", "table", "arp", arpTable)); err == nil {
			st.ARPTable = string(out)
		} else if process.ExitCode(err) <= 0 {
			return st, fmt.Errorf("checking for the nft table arp %s: %w", arpTable, err)
		}
	}

	if cfg.VIP.IsValid() {
		if b, err := os.ReadFile(filepath.Join(proc, "net/ipt_CLUSTERIP", cfg.VIP.String())); err == nil {
			st.ClusterIPNodes = []int{}
			for _, f := range strings.FieldsFunc(string(b), func(r rune) bool { return r == ',' || r == ' ' || r == '\n' }) {
				if n, err := strconv.Atoi(f); err == nil {
					st.ClusterIPNodes = append(st.ClusterIPNodes, n)
				}
			}
		}
	}
	return st, nil
}

// readNameList reads a /proc/net/ip_tables_* file: one name a line,
// repeated per family.
func readNameList(path string) (map[string]bool, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]bool{}, nil // ip_tables not loaded: nothing registered yet
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	m := map[string]bool{}
	for _, f := range strings.Fields(string(b)) {
		m[f] = true
	}
	return m, nil
}

// readModules lists the module names modprobe knows for this kernel.
func readModules(dir string) map[string]bool {
	m := map[string]bool{}
	for _, f := range []string{"modules.dep", "modules.builtin"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			path, _, _ := strings.Cut(sc.Text(), ":")
			base := filepath.Base(path)
			if i := strings.Index(base, ".ko"); i > 0 {
				m[strings.ReplaceAll(base[:i], "-", "_")] = true
			}
		}
	}
	return m
}

// readIface reads the interface's addresses and its global link-layer
// multicast memberships (/proc/net/dev_mcast). nil when it does not exist.
func readIface(name, devMcast string) (*Iface, error) {
	if name == "" {
		return nil, nil
	}
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return nil, nil
	}
	out := &Iface{Name: name}
	addrs, err := ifc.Addrs()
	if err != nil {
		return nil, fmt.Errorf("reading the addresses of %s: %w", name, err)
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			out.Addrs = append(out.Addrs, p)
		}
	}
	b, err := os.ReadFile(devMcast)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("reading %s: %w", devMcast, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		// ifindex name users global-users address
		if len(f) != 5 || f[1] != name || f[3] == "0" || len(f[4]) != 12 {
			continue
		}
		var mac []string
		for i := 0; i < 12; i += 2 {
			mac = append(mac, f[4][i:i+2])
		}
		out.Maddrs = append(out.Maddrs, strings.Join(mac, ":"))
	}
	slices.Sort(out.Maddrs)
	return out, nil
}

func (i *Iface) hasAddr(a netip.Addr) bool {
	if i == nil {
		return false
	}
	for _, p := range i.Addrs {
		if p.Addr() == a {
			return true
		}
	}
	return false
}

func (i *Iface) hasMaddr(mac string) bool {
	return i != nil && slices.Contains(i.Maddrs, mac)
}
