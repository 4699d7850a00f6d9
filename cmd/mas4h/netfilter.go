package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/netfilter"
)

type netfilterOpts struct {
	vip, iface, takeOver, mode, hashSeed, rateLimit string
	nodes, node, sshPort                            int
}

func newNetfilterCmd(g *globals) *cobra.Command {
	o := &netfilterOpts{}
	cmd := &cobra.Command{
		Use:   "netfilter plan|apply|remove --vip IP --iface IF --nodes N --node K",
		Short: "Share one virtual IP between slaves, and rate-limit new SSH connections",
		Long: `Share one virtual IP (VIP) between N slaves with the kernel's netfilter: every
node holds the VIP and answers ARP for it with a multicast MAC derived from it,
so the switch floods the VIP's packets to all nodes, and a hash of the source
address picks the one node that keeps each connection (the cluster match,
xt_cluster; or the legacy CLUSTERIP target on kernels before 6.3). All nodes
must use the same --nodes and --hash-seed.

  plan    prints what apply would do, as shell commands; changes nothing
  apply   applies it; applying twice changes nothing the second time
  remove  removes mas4h's rules, and the address, multicast membership and
          tables that apply added, leaving the host as it was

--take-over K2,K3 adds dead nodes' buckets to this node (the live node with the
lowest number should take them; run apply again without it when they are
back). --rate-limit 10/60s drops new TCP connections to --ssh-port past 10 per
60 seconds from one source address (burst 10).

The switch must flood the cluster MAC to every node's port: turn IGMP snooping
off for the VLAN, or add a static MAC entry for it on those ports.`,
		Example: `  mas4h netfilter plan  --vip 198.18.0.100 --iface eth0 --nodes 3 --node 1
  mas4h netfilter apply --vip 198.18.0.100 --iface eth0 --nodes 3 --node 1 --rate-limit 10/60s --ssh-port 2222
  mas4h netfilter apply --vip 198.18.0.100 --iface eth0 --nodes 3 --node 1 --take-over 2
  mas4h netfilter remove --vip 198.18.0.100 --iface eth0`,
		Args:      exactArgs(1, "plan, apply or remove"),
		ValidArgs: []string{"plan", "apply", "remove"},
		RunE: func(cmd *cobra.Command, args []string) error {
			action := args[0]
			switch action {
			case "plan", "apply", "remove":
			default:
				return usagef("mas4h netfilter: unknown action %q (want plan, apply or remove)", action)
			}
			cfg, err := o.config(cmd, action)
			if err != nil {
				return err
			}
			log := g.logger().With("component", "netfilter")
			sys, err := netfilter.NewSystem(log)
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			var p netfilter.Plan
			switch action {
			case "plan":
				st, err := netfilter.ReadState(ctx, sys, cfg)
				if err != nil {
					return err
				}
				if p, err = netfilter.NewPlan(cfg, st); err != nil {
					return nfErr(err)
				}
			case "apply":
				p, err = netfilter.Reconcile(ctx, sys, cfg)
				if err != nil {
					if len(p.Steps) > 0 {
						fmt.Fprint(g.stdout, p)
					}
					return nfErr(err)
				}
			case "remove":
				p, err = netfilter.Remove(ctx, sys, cfg)
				if err != nil {
					return nfErr(err)
				}
			}
			fmt.Fprint(g.stdout, p)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.vip, "vip", "", "the shared IPv4 address")
	f.StringVar(&o.iface, "iface", "", "the interface facing the clients")
	f.IntVar(&o.nodes, "nodes", 0, "how many nodes share the VIP (1-32)")
	f.IntVar(&o.node, "node", 0, "this node's number (1..nodes)")
	f.StringVar(&o.takeOver, "take-over", "", "dead nodes whose buckets this node serves too, like 2,3")
	f.StringVar(&o.mode, "mode", "auto", "auto, cluster (xt_cluster) or clusterip (legacy CLUSTERIP, kernels before 6.3)")
	f.StringVar(&o.hashSeed, "hash-seed", fmt.Sprintf("0x%08x", netfilter.DefaultHashSeed), "hash seed, the same on every node")
	f.IntVar(&o.sshPort, "ssh-port", 2222, "the slave's SSH port (for --rate-limit)")
	f.StringVar(&o.rateLimit, "rate-limit", "", "new connections to --ssh-port per source address, like 10/60s (default: no limit)")
	return cmd
}

// config turns the flags into a netfilter.Config. remove needs only what
// it is given (mas4h's record on the host says the rest).
func (o *netfilterOpts) config(cmd *cobra.Command, action string) (netfilter.Config, error) {
	cfg := netfilter.Config{Iface: o.iface, Nodes: o.nodes, Node: o.node, Mode: netfilter.Mode(o.mode), SSHPort: o.sshPort}
	var err error
	if o.vip != "" {
		if cfg.VIP, err = netfilter.ParseVIP(o.vip); err != nil {
			return cfg, nfErr(err)
		}
	}
	if action == "remove" {
		return cfg, nil
	}
	for _, name := range []string{"vip", "iface", "nodes", "node"} {
		if !cmd.Flags().Changed(name) {
			return cfg, usagef("mas4h netfilter %s: --%s is required", action, name)
		}
	}
	if cfg.TakeOver, err = netfilter.ParseNodeList(o.takeOver); err != nil {
		return cfg, nfErr(err)
	}
	if cfg.HashSeed, err = netfilter.ParseHashSeed(o.hashSeed); err != nil {
		return cfg, nfErr(err)
	}
	if o.rateLimit != "" {
		if cfg.RateLimit, err = netfilter.ParseRateLimit(o.rateLimit); err != nil {
			return cfg, nfErr(err)
		}
	}
	if err := cfg.Validate(); err != nil {
		return cfg, nfErr(err)
	}
	return cfg, nil
}

// nfErr makes the netfilter package's config errors usage errors (exit 2).
func nfErr(err error) error {
	if netfilter.IsConfigError(err) {
		return usageError{err}
	}
	return err
}
