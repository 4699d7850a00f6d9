// Package netfilter shares one virtual IP (VIP) between several slaves and
// limits the rate of new SSH connections, with the kernel's netfilter.
//
// Every node holds the VIP and answers ARP for it with a multicast MAC, so
// the switch floods each packet for the VIP to all nodes; a hash of the
// source address picks the one node that keeps it (the `cluster` match,
// xt_cluster, on current kernels; the CLUSTERIP target on kernels before
// 6.3). A node can take over the buckets of dead nodes (TakeOver computes
// which, deterministically). Rules are computed by a pure function of a
// Config and the host's State (NewPlan), printed by `mas4h netfilter plan`,
// and applied idempotently (Apply); Remove puts the host back as it was
// before the first Apply, using the record Apply keeps in mas4h's own chain.
package netfilter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Mode is how the VIP is shared.
type Mode string

const (
	ModeAuto      Mode = "auto"      // cluster when the kernel has it, else clusterip
	ModeCluster   Mode = "cluster"   // xt_cluster match + multicast MAC (Linux ≥ 2.6.30)
	ModeClusterIP Mode = "clusterip" // legacy CLUSTERIP target (removed in Linux 6.3)
)

// MaxNodes is the most nodes xt_cluster can split between (a 32-bit mask).
const MaxNodes = 32

// DefaultHashSeed is the hash seed every node uses unless told otherwise;
// all nodes of one VIP must use the same seed.
const DefaultHashSeed = 0x6d617334 // "mas4"

// Config is what one node is asked to do. Fill it from flags, check it with
// Validate, and pass it down.
type Config struct {
	VIP      netip.Addr // the shared IPv4 address
	Iface    string     // the interface facing the clients
	Nodes    int        // how many nodes share the VIP, 1..32
	Node     int        // this node's number, 1..Nodes
	TakeOver []int      // dead nodes whose buckets this node serves too
	Mode     Mode       // auto, cluster or clusterip
	HashSeed uint32     // same on every node
	// SSHPort and RateLimit: when RateLimit is set, new TCP connections to
	// SSHPort are limited per source address.
	SSHPort   int
	RateLimit *RateLimit
}

// RateLimit is Count new connections per Per and per source address, with a
// burst of Burst.
type RateLimit struct {
	Count int
	Per   time.Duration
	Burst int
}

// ConfigError is an error in what the node was asked to do (a bad flag, an
// interface that does not exist); nothing was changed.
type ConfigError struct{ Msg string }

func (e *ConfigError) Error() string { return e.Msg }

func configErrorf(format string, args ...any) error {
	return &ConfigError{Msg: fmt.Sprintf(format, args...)}
}

// IsConfigError tells a caller whether err is the caller's to fix.
func IsConfigError(err error) bool {
	var ce *ConfigError
	return errors.As(err, &ce)
}

// ParseVIP parses an IPv4 address usable as a shared VIP.
func ParseVIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, configErrorf("--vip %q is not an IP address", s)
	}
	return a, nil
}

// ParseNodeList parses "2,3" into node numbers.
func ParseNodeList(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, configErrorf("--take-over %q: %q is not a node number", s, f)
		}
		out = append(out, n)
	}
	return out, nil
}

// ParseHashSeed parses a decimal or 0x-hex 32-bit seed.
func ParseHashSeed(s string) (uint32, error) {
	v, err := strconv.ParseUint(strings.TrimSpace(s), 0, 32)
	if err != nil {
		return 0, configErrorf("--hash-seed %q is not a 32-bit number", s)
	}
	return uint32(v), nil
}

// ParseRateLimit parses "10/60s" (10 new connections per 60 seconds per
// source, with a burst of 10).
func ParseRateLimit(s string) (*RateLimit, error) {
	count, per, ok := strings.Cut(strings.TrimSpace(s), "/")
	n, err := strconv.Atoi(count)
	if !ok || err != nil || n < 1 {
		return nil, configErrorf("--rate-limit %q: want COUNT/DURATION, like 10/60s", s)
	}
	d, err := time.ParseDuration(per)
	if err != nil || d < time.Second || d > 24*time.Hour || d%time.Second != 0 {
		return nil, configErrorf("--rate-limit %q: the duration must be whole seconds between 1s and 24h", s)
	}
	if n > 10000 {
		return nil, configErrorf("--rate-limit %q: at most 10000 connections per period", s)
	}
	return &RateLimit{Count: n, Per: d, Burst: n}, nil
}

func (r RateLimit) String() string {
	return fmt.Sprintf("%d/%ds", r.Count, r.Per/time.Second)
}

// hashlimitRate expresses Count/Per in hashlimit's units, exactly: the
// smallest of second, minute, hour, day that gives a whole number.
func (r RateLimit) hashlimitRate() string {
	sec := int64(r.Per / time.Second)
	for _, u := range []struct {
		name string
		secs int64
	}{{"second", 1}, {"minute", 60}, {"hour", 3600}, {"day", 86400}} {
		if int64(r.Count)*u.secs%sec == 0 {
			return fmt.Sprintf("%d/%s", int64(r.Count)*u.secs/sec, u.name)
		}
	}
	// Not reachable for Per ≤ 24h in whole seconds: 86400 is a multiple.
	return fmt.Sprintf("%d/day", int64(r.Count)*86400/sec)
}

// Validate checks the config on its own (the interface is checked against
// the host by NewPlan). Errors are *ConfigError.
func (c *Config) Validate() error {
	if !c.VIP.IsValid() {
		return configErrorf("--vip is required")
	}
	if !c.VIP.Is4() || c.VIP.Is4In6() {
		return configErrorf("--vip %s: only IPv4 VIPs are supported", c.VIP)
	}
	if c.VIP.IsUnspecified() || c.VIP.IsMulticast() || c.VIP.IsLoopback() || c.VIP == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return configErrorf("--vip %s is not a unicast address", c.VIP)
	}
	if c.Iface == "" {
		return configErrorf("--iface is required")
	}
	if len(c.Iface) > 15 || strings.ContainsAny(c.Iface, "/ \t\n\"'") {
		return configErrorf("--iface %q is not an interface name", c.Iface)
	}
	if c.Nodes < 1 || c.Nodes > MaxNodes {
		return configErrorf("--nodes %d: must be between 1 and %d", c.Nodes, MaxNodes)
	}
	if c.Node < 1 || c.Node > c.Nodes {
		return configErrorf("--node %d: must be between 1 and --nodes (%d)", c.Node, c.Nodes)
	}
	seen := map[int]bool{}
	for _, k := range c.TakeOver {
		switch {
		case k < 1 || k > c.Nodes:
			return configErrorf("--take-over %d: must be between 1 and --nodes (%d)", k, c.Nodes)
		case k == c.Node:
			return configErrorf("--take-over %d: that is this node", k)
		case seen[k]:
			return configErrorf("--take-over %d: given twice", k)
		}
		seen[k] = true
	}
	switch c.Mode {
	case "":
		c.Mode = ModeAuto
	case ModeAuto, ModeCluster, ModeClusterIP:
	default:
		return configErrorf("--mode %q: must be auto, cluster or clusterip", c.Mode)
	}
	if c.RateLimit != nil && (c.SSHPort < 1 || c.SSHPort > 65535) {
		return configErrorf("--ssh-port %d: must be between 1 and 65535", c.SSHPort)
	}
	return nil
}

// buckets are the hash buckets this node answers: its own and those it
// took over, sorted.
func (c Config) buckets() []int {
	b := append([]int{c.Node}, c.TakeOver...)
	slices.Sort(b)
	return slices.Compact(b)
}

// nodemask is xt_cluster's --cluster-local-nodemask for buckets (bit k-1 is
// node k).
func nodemask(buckets []int) uint32 {
	var m uint32
	for _, b := range buckets {
		m |= 1 << (b - 1)
	}
	return m
}

// MulticastMAC is the cluster MAC for an IPv4 VIP: 01:00:5e and the low 23
// bits of the address (the mapping of RFC 1112, so the switch treats it as
// an IPv4 multicast group).
func MulticastMAC(vip netip.Addr) string {
	b := vip.As4()
	return fmt.Sprintf("01:00:5e:%02x:%02x:%02x", b[1]&0x7f, b[2], b[3])
}

// TakeOver returns the buckets node self must serve besides its own when
// the nodes in alive are up: the lowest-numbered live node takes every dead
// node's bucket, so each bucket is served by exactly one node as long as
// all live nodes see the same alive map. self always counts as alive; a
// node missing from alive counts as dead. The result is sorted, nil when
// self takes nothing over.
func TakeOver(self, nodes int, alive map[int]bool) []int {
	if self < 1 || self > nodes {
		return nil
	}
	lowest := self
	for k := 1; k < self; k++ {
		if alive[k] {
			lowest = k
			break
		}
	}
	if lowest != self {
		return nil
	}
	var out []int
	for k := 1; k <= nodes; k++ {
		if k != self && !alive[k] {
			out = append(out, k)
		}
	}
	return out
}

// Bucket is the node (1..nodes) whose bucket source src falls in, computed
// as xt_cluster does on this host: jhash_1word of the address (in network
// byte order, read as a native 32-bit word) with the seed, scaled to nodes.
// It tells an operator which node a device lands on.
func Bucket(src netip.Addr, seed uint32, nodes int) int {
	if !src.Is4() || nodes < 1 {
		return 0
	}
	b := src.As4()
	h := jhash1Word(binary.NativeEndian.Uint32(b[:]), seed)
	return int(uint64(h)*uint64(nodes)>>32) + 1 // reciprocal_scale
}

// jhash1Word is the kernel's jhash_1word (Bob Jenkins' lookup3 final mix).
func jhash1Word(a, initval uint32) uint32 {
	iv := initval + 0xdeadbeef + 1<<2
	a, b, c := a+iv, iv, iv
	c ^= b
	c -= bits.RotateLeft32(b, 14)
	a ^= c
	a -= bits.RotateLeft32(c, 11)
	b ^= a
	b -= bits.RotateLeft32(a, 25)
	c ^= b
	c -= bits.RotateLeft32(b, 16)
	a ^= c
	a -= bits.RotateLeft32(c, 4)
	b ^= a
	b -= bits.RotateLeft32(a, 14)
	c ^= b
	c -= bits.RotateLeft32(b, 24)
	return c
}
