package netfilter

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/mas4h/mas4h/process"
)

// Apply runs the plan's steps in order and stops at the first failure.
// Applying the plan of a host that already matches it does nothing (the
// plan is empty), so apply twice is apply once.
func Apply(ctx context.Context, sys *System, p Plan) error {
	for _, s := range p.Steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if sys.Log != nil {
			sys.Log.Info("netfilter", "step", s.String())
		}
		if err := applyStep(ctx, sys, s); err != nil {
			return fmt.Errorf("applying %q: %w", firstLine(s.String()), err)
		}
	}
	return nil
}

func applyStep(ctx context.Context, sys *System, s Step) error {
	ipt := sys.IPT
	if s.V6 {
		if ipt = sys.IPT6; ipt == nil {
			return errors.New("ip6tables was not found: install the iptables package")
		}
	}
	switch s.Op {
	case OpNewChain:
		return ipt.NewChain(s.Table, s.Chain)
	case OpInsert:
		return ipt.Insert(s.Table, s.Chain, s.Pos, s.Rule...)
	case OpDelete:
		return ipt.Delete(s.Table, s.Chain, s.Rule...)
	case OpClearChain:
		return ipt.ClearChain(s.Table, s.Chain)
	case OpDeleteChain:
		return ipt.DeleteChain(s.Table, s.Chain)
	case OpExec:
		c := process.Cmd{Argv: s.Argv}
		if s.Stdin != "" {
			c.Stdin = []byte(s.Stdin)
		}
		_, err := sys.Run.Run(ctx, c)
		return err
	case OpWrite:
		path := s.Path
		if rel, ok := strings.CutPrefix(path, "/proc/"); ok && sys.ProcRoot != "" {
			path = filepath.Join(sys.ProcRoot, rel)
		}
		return os.WriteFile(path, []byte(s.Data+"\n"), 0o600)
	}
	return fmt.Errorf("unknown step %d", s.Op)
}

// Reconcile reads the host, plans for cfg and applies: what the slave calls
// to keep its rules applied (after a peer died or came back, with
// cfg.TakeOver from TakeOver). It returns the plan it applied.
func Reconcile(ctx context.Context, sys *System, cfg Config) (Plan, error) {
	st, err := ReadState(ctx, sys, cfg)
	if err != nil {
		return Plan{}, err
	}
	p, err := NewPlan(cfg, st)
	if err != nil {
		return Plan{}, err
	}
	return p, Apply(ctx, sys, p)
}

// PlanRemoval reads the host and plans the removal of everything mas4h
// added. When vip or iface are set they must match what mas4h manages.
func PlanRemoval(ctx context.Context, sys *System, cfg Config) (Plan, error) {
	st, err := ReadState(ctx, sys, cfg)
	if err != nil {
		return Plan{}, err
	}
	if old, _, ok := findRecord(st); ok {
		if (cfg.VIP.IsValid() && old.VIP != cfg.VIP) || (cfg.Iface != "" && old.Iface != cfg.Iface) {
			return Plan{}, fmt.Errorf("mas4h shares VIP %s on %s on this host, not %s on %s: nothing removed", old.VIP, old.Iface, cfg.VIP, cfg.Iface)
		}
		if cfg.Iface == "" || !cfg.VIP.IsValid() {
			// Read the interface the record names.
			cfg.VIP, cfg.Iface = old.VIP, old.Iface
			if st, err = ReadState(ctx, sys, cfg); err != nil {
				return Plan{}, err
			}
		}
	}
	return RemovalPlan(st), nil
}

// Remove undoes everything mas4h added: its rules and chains, the ARP
// table, and the address, membership and tables it recorded as added.
func Remove(ctx context.Context, sys *System, cfg Config) (Plan, error) {
	p, err := PlanRemoval(ctx, sys, cfg)
	if err != nil {
		return p, err
	}
	return p, Apply(ctx, sys, p)
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}
