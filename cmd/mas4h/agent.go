package main

import (
	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/agent"
)

func newAgentCmd(g *globals) *cobra.Command {
	var cfg agent.Config
	cmd := &cobra.Command{
		Use:   "agent --master URL --key FILE [--state-dir DIR] [--ssh-client auto|openssh|dropbear]",
		Short: "Keep this device's reverse tunnel up (runs the system's ssh or dbclient)",
		Long: `Keep this device's reverse tunnel up: ask the master for a slot, pin the
slave's host keys in the agent's own known_hosts, and run the system's SSH
client (OpenSSH ssh, or dropbear dbclient) with one -R per forward. When the
client exits, reconnect with jittered backoff (1 s doubling to 60 s, reset
after 60 s up). When the master is down, reconnect to the last slave directly.

The key may be in OpenSSH, PEM or dropbear format; the agent converts it into
its state dir for a client that cannot read it. The same agent is built alone,
static, as mas4h-agent for small devices.`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg.Defaults()
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
	f := cmd.Flags()
	f.StringVar(&cfg.Master, "master", "", "the master's URL, e.g. https://master.example:8080")
	f.StringVar(&cfg.KeyPath, "key", "", "the device's private key (OpenSSH, PEM or dropbear format, mode 0600)")
	f.StringVar(&cfg.StateDir, "state-dir", "/var/lib/mas4h-agent", "where the agent keeps the last slot, known_hosts and converted keys")
	f.StringVar(&cfg.SSHClient, "ssh-client", agent.ClientAuto, "the SSH client to run: auto, openssh or dropbear")
	f.DurationVar(&cfg.Keepalive, "keepalive", 0, "keepalive interval; the client gives up after 3 unanswered (default 10s)")
	f.DurationVar(&cfg.ConnectTimeout, "connect-timeout", 0, "timeout of the master call and of OpenSSH's connect (default 15s)")
	return cmd
}
