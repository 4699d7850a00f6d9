package main

import (
	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/agent"
	"github.com/mas4h/mas4h/cmd/internal/agentflags"
)

func newAgentCmd(g *globals) *cobra.Command {
	var cfg agent.Config
	cmd := &cobra.Command{
		Use:   "agent --master URL[,URL...] --key FILE [--master-ca FILE] [--insecure-http] [--state-dir DIR] [--ssh-client auto|openssh|dropbear]",
		Short: "Keep this device's reverse tunnel up (runs the system's ssh or dbclient)",
		Long: `Keep this device's reverse tunnel up: ask the master for a slot, pin the
slave's host keys in the agent's own known_hosts, and run the system's SSH
client (OpenSSH ssh, or dropbear dbclient) with one -R per forward. When the
client exits, reconnect with jittered backoff (1 s doubling to 60 s, reset
after 60 s up). When the master is down, reconnect to the last slave directly.

Every slot request is signed with the device key (an SSH signature over a
fresh statement, namespace mas4h-slot), so that knowing the public key is not
enough to ask for this device's slot. The master must be https:// (its
certificate checked against the system's roots, or --master-ca FILE);
http:// needs --insecure-http and is warned about at every start.

The key may be in OpenSSH, PEM or dropbear format; the agent converts it into
its state dir for a client that cannot read it. The same agent is built alone,
static, as mas4h-agent for small devices.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.Defaults()
			cfg.Version = version
			if err := cfg.Check(); err != nil {
				return usageError{err}
			}
			a, err := agent.New(cfg, g.logger().With("component", "agent"), agent.Deps{})
			if err != nil {
				return usageError{err}
			}
			return a.Run(cmd.Context())
		},
	}
	agentflags.Add(cmd.Flags(), &cfg)
	return cmd
}
