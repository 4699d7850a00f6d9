package netfilter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/internal/testkit"
)

// guardHost is a host with an IPv4 and an IPv6 filter table in memory, and
// a rule of someone else's in each OUTPUT chain.
func guardHost(t *testing.T, ipv6 bool) (*System, *fakeHost, *fakeHost) {
	proc := t.TempDir()
	if ipv6 {
		if err := os.MkdirAll(filepath.Join(proc, "net"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(proc, "net/if_inet6"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	host := func(rule string) *fakeHost {
		return &fakeHost{st: State{Tables: map[string]*Table{"filter": {Exists: true, Chains: []*Chain{
			{Name: "INPUT", Policy: "ACCEPT"},
			{Name: "OUTPUT", Policy: "ACCEPT", Rules: []string{rule}},
		}}}}}
	}
	v4, v6 := host("-A OUTPUT -o lo -j ACCEPT"), host("-A OUTPUT -d ::1/128 -j ACCEPT")
	return &System{IPT: v4, IPT6: v6, ProcRoot: proc}, v4, v6
}

func guardState(t *testing.T, sys *System, slave string) GuardState {
	t.Helper()
	st, err := ReadGuardState(context.Background(), sys, slave)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func baseGuard() Guard { return Guard{Slave: "paris-1", UID: 998, Lo: 20000, Hi: 29999} }

func TestGuardPlanGolden(t *testing.T) {
	for _, tc := range []struct {
		name string
		ipv6 bool
	}{{"guard", true}, {"guard-no-ipv6", false}} {
		t.Run(tc.name, func(t *testing.T) {
			sys, _, _ := guardHost(t, tc.ipv6)
			p, err := NewGuardPlan(baseGuard(), guardState(t, sys, "paris-1"))
			if err != nil {
				t.Fatal(err)
			}
			testkit.Golden(t, filepath.Join("testdata", "plan-"+tc.name+".golden"), []byte(p.String()))
		})
	}
}

// TestGuardApplyTwiceAndRemove: the jump goes first in OUTPUT, ahead of
// the host's own rules; applying twice is applying once; a new range
// replaces the old jump; another slave's guard and the host's rules are
// never touched; removal gives the host back as it was.
func TestGuardApplyTwiceAndRemove(t *testing.T) {
	ctx := context.Background()
	sys, v4, v6 := guardHost(t, true)
	before4, before6 := dumpFilter(v4.st), dumpFilter(v6.st)
	// Another slave on this host guards its own range.
	other := Guard{Slave: "paris-2", UID: 997, Lo: 40000, Hi: 40999}
	if _, err := ApplyGuard(ctx, sys, other); err != nil {
		t.Fatal(err)
	}
	withOther4, withOther6 := dumpFilter(v4.st), dumpFilter(v6.st)

	g := baseGuard()
	if _, err := ApplyGuard(ctx, sys, g); err != nil {
		t.Fatal(err)
	}
	for name, h := range map[string]*fakeHost{"v4": v4, "v6": v6} {
		out := h.st.Tables["filter"].chain("OUTPUT").Rules
		if len(out) != 3 || !strings.Contains(out[0], "-j MAS4H-LO-paris-1") || !strings.Contains(out[1], "-j MAS4H-LO-paris-2") {
			t.Errorf("%s OUTPUT: %q", name, out)
		}
		if c := h.st.Tables["filter"].chain("MAS4H-LO-paris-1"); c == nil || len(c.Rules) != 3 || !strings.Contains(c.Rules[1], "--uid-owner 998") {
			t.Errorf("%s guard chain: %+v", name, c)
		}
	}
	if p, err := NewGuardPlan(g, guardState(t, sys, g.Slave)); err != nil || len(p.Steps) != 0 {
		t.Fatalf("second plan is not empty (%v):\n%s", err, p)
	}

	g.Lo, g.Hi = 21000, 21999
	p, err := ApplyGuard(ctx, sys, g)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Steps) != 4 || p.Steps[0].Op != OpInsert || p.Steps[1].Op != OpDelete || !strings.Contains(p.Steps[0].String(), "--dport 21000:21999") {
		t.Errorf("a new range is not insert-new-then-delete-old in each family:\n%s", p)
	}

	if _, err := RemoveGuard(ctx, sys, g.Slave); err != nil {
		t.Fatal(err)
	}
	if got := dumpFilter(v4.st); got != withOther4 {
		t.Errorf("v4 after removal:\n%s\nwant:\n%s", got, withOther4)
	}
	if got := dumpFilter(v6.st); got != withOther6 {
		t.Errorf("v6 after removal:\n%s\nwant:\n%s", got, withOther6)
	}
	if p := GuardRemovalPlan(g.Slave, guardState(t, sys, g.Slave)); len(p.Steps) != 0 {
		t.Errorf("removing twice does something:\n%s", p)
	}
	if _, err := RemoveGuard(ctx, sys, other.Slave); err != nil {
		t.Fatal(err)
	}
	if dumpFilter(v4.st) != before4 || dumpFilter(v6.st) != before6 {
		t.Errorf("host not as before:\n%s\n%s", dumpFilter(v4.st), dumpFilter(v6.st))
	}
}

func TestGuardChainName(t *testing.T) {
	if got := GuardChain("paris-1"); got != "MAS4H-LO-paris-1" {
		t.Errorf("GuardChain(paris-1) = %s", got)
	}
	long := strings.Repeat("a", 63)
	a, b := GuardChain(long), GuardChain(long[:62]+"b")
	if len(a) > maxChainName || a == b || !strings.HasPrefix(a, "MAS4H-LO-") {
		t.Errorf("long names: %s, %s", a, b)
	}
}

func TestGuardRefuses(t *testing.T) {
	for _, g := range []Guard{
		{UID: 998, Lo: 1, Hi: 2},
		{Slave: "s", UID: 0, Lo: 1, Hi: 2},
		{Slave: "s", UID: 998, Lo: 0, Hi: 2},
		{Slave: "s", UID: 998, Lo: 3, Hi: 2},
		{Slave: "s", UID: 998, Lo: 3, Hi: 65536},
	} {
		if _, err := NewGuardPlan(g, GuardState{}); !IsConfigError(err) {
			t.Errorf("%+v: err = %v, want a config error", g, err)
		}
	}
}

func dumpFilter(st State) string {
	var b strings.Builder
	for _, c := range st.Tables["filter"].Chains {
		fmt.Fprintf(&b, "%s %s %q\n", c.Name, c.Policy, c.Rules)
	}
	return b.String()
}
