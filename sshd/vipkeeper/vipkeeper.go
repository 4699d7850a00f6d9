// Package vipkeeper keeps a slave's share of a shared virtual IP applied
// (the netfilter rules of its node), and takes over the buckets of dead
// peers when the master reports them dead.
package vipkeeper

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/netfilter"
)

// Recheck is how often the slave re-applies its VIP rules, so that a
// flush by someone else (an iptables-restore, a firewall reload) is undone.
const Recheck = 30 * time.Second

// Keeper keeps this slave's share of a shared virtual IP applied, and
// takes over the buckets of dead peers when the master reports them dead:
// the live node with the lowest number among the survivors takes each dead
// node's buckets, so every bucket is served by exactly one node; when the
// peer is back, its buckets are handed back.
type Keeper struct {
	cfg       netfilter.Config
	reconcile Reconcile
	report    Reporter
	log       *slog.Logger
	kick      chan struct{}

	mu       sync.Mutex
	takeOver []int
}

// Reconcile makes the host match cfg (netfilter.Reconcile on the system).
type Reconcile func(ctx context.Context, cfg netfilter.Config) (netfilter.Plan, error)

// Reporter records an event for the registry.
type Reporter func(ctx context.Context, kind, device, detail string)

// New keeps cfg applied through reconcile.
func New(cfg netfilter.Config, reconcile Reconcile, report Reporter, log *slog.Logger) *Keeper {
	return &Keeper{cfg: cfg, reconcile: reconcile, report: report,
		log: log.With("component", "vip", "vip", cfg.VIP.String(), "node", cfg.Node), kick: make(chan struct{}, 1)}
}

// System is the real Reconcile: the host's iptables, nft and ip.
func System(sys *netfilter.System) Reconcile {
	return func(ctx context.Context, cfg netfilter.Config) (netfilter.Plan, error) {
		return netfilter.Reconcile(ctx, sys, cfg)
	}
}

// Apply reconciles the host with the current take-over set.
func (v *Keeper) Apply(ctx context.Context) error {
	v.mu.Lock()
	cfg := v.cfg
	cfg.TakeOver = slices.Clone(v.takeOver)
	v.mu.Unlock()
	p, err := v.reconcile(ctx, cfg)
	if err != nil {
		return fmt.Errorf("applying VIP %s rules: %w", cfg.VIP, err)
	}
	if len(p.Steps) > 0 {
		v.log.Info("VIP rules applied", "steps", len(p.Steps), "buckets", append([]int{cfg.Node}, cfg.TakeOver...))
	}
	return nil
}

// Run keeps the rules applied until ctx ends. Rules stay in place when the
// daemon stops: the slave's sshd keeps serving, and so does its share.
func (v *Keeper) Run(ctx context.Context) {
	t := time.NewTicker(Recheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-v.kick:
		}
		if err := v.Apply(ctx); err != nil && ctx.Err() == nil {
			v.log.Error("keeping VIP rules applied", "err", err)
		}
	}
}

// Peers takes the master's view of the other nodes of the VIP. A node the
// master does not know counts as dead (nobody else serves its buckets).
func (v *Keeper) Peers(ctx context.Context, peers []wire.Peer) {
	alive := map[int]bool{v.cfg.Node: true}
	for _, p := range peers {
		if p.Node >= 1 && p.Node <= v.cfg.Nodes && p.Node != v.cfg.Node {
			alive[p.Node] = alive[p.Node] || p.Alive
		}
	}
	next := netfilter.TakeOver(v.cfg.Node, v.cfg.Nodes, alive)
	v.mu.Lock()
	prev := v.takeOver
	changed := !slices.Equal(prev, next)
	v.takeOver = next
	v.mu.Unlock()
	if !changed {
		return
	}
	v.log.Warn("VIP buckets changed hands", "taking_over", next, "was", prev)
	v.report(ctx, "vip", "", fmt.Sprintf("node %d of VIP %s now serves buckets of nodes %v (was %v)", v.cfg.Node, v.cfg.VIP, next, prev))
	select {
	case v.kick <- struct{}{}:
	default:
	}
}
