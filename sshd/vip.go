package sshd

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

// vipRecheck is how often the slave re-applies its VIP rules, so that a
// flush by someone else (an iptables-restore, a firewall reload) is undone.
const vipRecheck = 30 * time.Second

// vipKeeper keeps this slave's share of a shared virtual IP applied, and
// takes over the buckets of dead peers when the master reports them dead:
// the live node with the lowest number among the survivors takes each dead
// node's buckets, so every bucket is served by exactly one node; when the
// peer is back, its buckets are handed back.
type vipKeeper struct {
	cfg  netfilter.Config
	sys  *netfilter.System
	log  *slog.Logger
	src  Source
	kick chan struct{}

	mu       sync.Mutex
	takeOver []int
}

func newVIPKeeper(cfg netfilter.Config, sys *netfilter.System, src Source, log *slog.Logger) *vipKeeper {
	return &vipKeeper{cfg: cfg, sys: sys, src: src, log: log.With("component", "vip", "vip", cfg.VIP.String(), "node", cfg.Node),
		kick: make(chan struct{}, 1)}
}

// apply reconciles the host with the current take-over set.
func (v *vipKeeper) apply(ctx context.Context) error {
	v.mu.Lock()
	cfg := v.cfg
	cfg.TakeOver = slices.Clone(v.takeOver)
	v.mu.Unlock()
	p, err := netfilter.Reconcile(ctx, v.sys, cfg)
	if err != nil {
		return fmt.Errorf("applying VIP %s rules: %w", cfg.VIP, err)
	}
	if len(p.Steps) > 0 {
		v.log.Info("VIP rules applied", "steps", len(p.Steps), "buckets", append([]int{cfg.Node}, cfg.TakeOver...))
	}
	return nil
}

// run keeps the rules applied until ctx ends. Rules stay in place when the
// daemon stops: the slave's sshd keeps serving, and so does its share.
func (v *vipKeeper) run(ctx context.Context) {
	t := time.NewTicker(vipRecheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-v.kick:
		}
		if err := v.apply(ctx); err != nil && ctx.Err() == nil {
			v.log.Error("keeping VIP rules applied", "err", err)
		}
	}
}

// peers takes the master's view of the other nodes of the VIP. A node the
// master does not know counts as dead (nobody else serves its buckets).
func (v *vipKeeper) peers(ctx context.Context, peers []wire.Peer) {
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
	v.src.Report(ctx, "vip", "", fmt.Sprintf("node %d of VIP %s now serves buckets of nodes %v (was %v)", v.cfg.Node, v.cfg.VIP, next, prev))
	select {
	case v.kick <- struct{}{}:
	default:
	}
}
