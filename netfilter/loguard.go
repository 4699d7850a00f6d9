package netfilter

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// The loopback guard: a slave's devices bind their leased ports on the
// slave's loopback, where any local process could connect to them. The
// guard lets only the tunnel user's uid (sshd: the forwards' listeners and
// the operators' channels) and root (the slave's probes) open a TCP
// connection to the leased range on lo, and resets everyone else's.

// guardChainPrefix starts the name of each slave's guard chain.
const guardChainPrefix = "MAS4H-LO-"

// maxChainName is the longest chain name iptables takes.
const maxChainName = 28

// Guard is what one slave's loopback guard enforces.
type Guard struct {
	Slave  string // names the chain and tags the rules
	UID    int    // the tunnel user's uid: allowed, with root
	Lo, Hi int    // the guarded TCP port range on lo
}

// GuardChain is the name of slave's guard chain in table filter:
// MAS4H-LO-NAME, or a cut name and a hash when that is too long.
func GuardChain(slave string) string {
	name := guardChainPrefix + slave
	if len(name) <= maxChainName {
		return name
	}
	h := sha256.Sum256([]byte(slave))
	keep := maxChainName - len(guardChainPrefix) - 9
	return guardChainPrefix + slave[:keep] + "-" + hex.EncodeToString(h[:4])
}

// Validate checks g; errors are *ConfigError.
func (g Guard) Validate() error {
	if g.Slave == "" {
		return configErrorf("loopback guard: no slave name")
	}
	if g.UID <= 0 {
		return configErrorf("loopback guard: tunnel uid %d: must be a user other than root", g.UID)
	}
	if g.Lo < 1 || g.Hi > 65535 || g.Lo > g.Hi {
		return configErrorf("loopback guard: port range %d-%d: want 1 <= LO <= HI <= 65535", g.Lo, g.Hi)
	}
	return nil
}

// GuardFamily is one address family's part of the host, as the guard
// sees it.
type GuardFamily struct {
	Output []string // filter/OUTPUT, "-A …" lines
	Chain  []string // the slave's guard chain, "-A …" lines
	Exists bool     // the guard chain exists
}

// GuardState is what NewGuardPlan needs to know about the host.
type GuardState struct {
	V4 GuardFamily
	V6 *GuardFamily // nil: no IPv6 on this host (no ::1 to guard)
}

// guardTag is the comment prefix of every rule of slave's guard.
func guardTag(slave string) string { return commentTag + "lo:" + slave + ":" }

// guardRules are the jump from OUTPUT and the chain's rules for one family.
func guardRules(g Guard, v6 bool) (jump rule, chain []rule) {
	name, role := GuardChain(g.Slave), "lo:"+g.Slave
	dst := "127.0.0.0/8"
	if v6 {
		dst = "::1/128"
	}
	// Only a connection's first packet (SYN without ACK): replies of the
	// listener, which may go to a port in the range, are not owned by a
	// full socket and would otherwise be refused.
	jump = newRule("filter", "OUTPUT", role,
		"-d", dst, "-o", "lo", "-p", "tcp", "-m", "tcp", "--dport", fmt.Sprintf("%d:%d", g.Lo, g.Hi),
		"--tcp-flags", "FIN,SYN,RST,ACK", "SYN", "-j", name)
	chain = []rule{
		newRule("filter", name, role, "-m", "owner", "--uid-owner", "0", "-j", "RETURN"),
		newRule("filter", name, role, "-m", "owner", "--uid-owner", strconv.Itoa(g.UID), "-j", "RETURN"),
		newRule("filter", name, role, "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset"),
	}
	return jump, chain
}

// NewGuardPlan computes what Apply must do so that the host in state st
// has exactly g's guard (and no other guard of g.Slave). It is pure.
func NewGuardPlan(g Guard, st GuardState) (Plan, error) {
	if err := g.Validate(); err != nil {
		return Plan{}, err
	}
	p := Plan{Notes: []string{fmt.Sprintf("loopback guard of slave %s: tcp ports %d-%d on lo only from uid 0 and %d, reset for every other uid",
		g.Slave, g.Lo, g.Hi, g.UID)}}
	p.Steps = append(p.Steps, guardFamilySteps(g, st.V4, false)...)
	if st.V6 != nil {
		p.Steps = append(p.Steps, guardFamilySteps(g, *st.V6, true)...)
	} else {
		p.Notes = append(p.Notes, "no IPv6 on this host: no ::1 to guard")
	}
	return p, nil
}

func guardFamilySteps(g Guard, f GuardFamily, v6 bool) []Step {
	name := GuardChain(g.Slave)
	jump, chain := guardRules(g, v6)
	var steps []Step
	if !f.Exists {
		steps = append(steps, Step{Op: OpNewChain, Table: "filter", Chain: name})
	}
	// The chain is filled before the jump reaches it.
	steps = append(steps, reconcile("filter", name, f.Chain, chain, true)...)
	steps = append(steps, reconcile("filter", "OUTPUT", ownJumps(g.Slave, f.Output), []rule{jump}, false)...)
	return family(steps, v6)
}

// GuardRemovalPlan computes what removes slave's guard from the host in
// state st. It is pure.
func GuardRemovalPlan(slave string, st GuardState) Plan {
	p := Plan{Notes: []string{"removing the loopback guard of slave " + slave}}
	p.Steps = append(p.Steps, guardRemovalSteps(slave, st.V4, false)...)
	if st.V6 != nil {
		p.Steps = append(p.Steps, guardRemovalSteps(slave, *st.V6, true)...)
	}
	return p
}

func guardRemovalSteps(slave string, f GuardFamily, v6 bool) []Step {
	steps := reconcile("filter", "OUTPUT", ownJumps(slave, f.Output), nil, false)
	if f.Exists {
		name := GuardChain(slave)
		steps = append(steps, Step{Op: OpClearChain, Table: "filter", Chain: name}, Step{Op: OpDeleteChain, Table: "filter", Chain: name})
	}
	return family(steps, v6)
}

// ownJumps keeps the OUTPUT rules of slave's guard: other slaves' guards
// and everyone else's rules are not this plan's.
func ownJumps(slave string, output []string) []string {
	var out []string
	for _, l := range output {
		if strings.HasPrefix(commentOf(tokenize(l)), guardTag(slave)) {
			out = append(out, l)
		}
	}
	return out
}

func family(steps []Step, v6 bool) []Step {
	for i := range steps {
		steps[i].V6 = v6
	}
	return steps
}

// ReadGuardState reads slave's guard from the host. It changes nothing.
func ReadGuardState(ctx context.Context, sys *System, slave string) (GuardState, error) {
	var st GuardState
	var err error
	if st.V4, err = readGuardFamily(sys.IPT, "iptables", slave); err != nil {
		return st, err
	}
	if !hasIPv6(sys.ProcRoot) {
		return st, nil
	}
	if sys.IPT6 == nil {
		return st, errors.New("this host has IPv6 but ip6tables was not found: install the iptables package (it guards ::1 too)")
	}
	v6, err := readGuardFamily(sys.IPT6, "ip6tables", slave)
	if err != nil {
		return st, err
	}
	st.V6 = &v6
	return st, ctx.Err()
}

func readGuardFamily(ipt IPTables, prog, slave string) (GuardFamily, error) {
	var f GuardFamily
	out, err := ipt.List("filter", "OUTPUT")
	if err != nil {
		return f, fmt.Errorf("%s: listing chain OUTPUT of table filter: %w", prog, err)
	}
	f.Output = ruleLines(out)
	name := GuardChain(slave)
	chains, err := ipt.ListChains("filter")
	if err != nil {
		return f, fmt.Errorf("%s: listing the chains of table filter: %w", prog, err)
	}
	for _, c := range chains {
		if c != name {
			continue
		}
		f.Exists = true
		lines, err := ipt.List("filter", name)
		if err != nil {
			return f, fmt.Errorf("%s: listing chain %s of table filter: %w", prog, name, err)
		}
		f.Chain = ruleLines(lines)
	}
	return f, nil
}

func ruleLines(lines []string) []string {
	var out []string
	for _, l := range lines {
		if strings.HasPrefix(l, "-A ") {
			out = append(out, l)
		}
	}
	return out
}

// hasIPv6 tells whether the kernel runs IPv6 (ipv6.disable=1 leaves no
// /proc/net/if_inet6, and no ::1).
func hasIPv6(proc string) bool {
	if proc == "" {
		proc = "/proc"
	}
	_, err := os.Stat(filepath.Join(proc, "net/if_inet6"))
	return err == nil
}

// ApplyGuard reads the host and makes slave g.Slave's guard exactly g:
// applying it twice changes nothing. It returns the plan it applied.
func ApplyGuard(ctx context.Context, sys *System, g Guard) (Plan, error) {
	st, err := ReadGuardState(ctx, sys, g.Slave)
	if err != nil {
		return Plan{}, err
	}
	p, err := NewGuardPlan(g, st)
	if err != nil {
		return Plan{}, err
	}
	return p, Apply(ctx, sys, p)
}

// RemoveGuard removes slave's guard: its jumps from OUTPUT and its chain.
func RemoveGuard(ctx context.Context, sys *System, slave string) (Plan, error) {
	st, err := ReadGuardState(ctx, sys, slave)
	if err != nil {
		return Plan{}, err
	}
	p := GuardRemovalPlan(slave, st)
	return p, Apply(ctx, sys, p)
}
