package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/registry"
)

type sshOpts struct {
	of        operatorFlags
	forward   string
	localPort int
	sshPath   string
	dryRun    bool
}

func newSSHCmd(g *globals) *cobra.Command {
	o := &sshOpts{}
	cmd := &cobra.Command{
		Use:   "ssh [USER@]DEVICE [--forward NAME] [--key FILE] [--master URL[,URL...]] [-- SSH_ARGS...]",
		Short: "Reach a device as an operator, through the slave its tunnel is on",
		Long: `Ask the master where the device is (POST /access, signed with your operator
key: no admin token, no account on any slave host) and run the system's ssh
to the device's own sshd through the slave's sshd, as the slave's operator
user:

  ssh -o ProxyCommand='ssh -W localhost:PORT -p SLAVE_PORT -l mas4h-operator SLAVE …' \
      -o HostKeyAlias=mas4h-DEVICE [-l USER] DEVICE [SSH_ARGS...]

The slave lets your key open the ports of the devices your allow list names
and nothing else: no shell, no command, no -R on the slave.

Your key: --key FILE (an OpenSSH private key without passphrase, or the
public half of a key your ssh-agent holds; mas4h asks no passphrase), else
the first key of your ssh-agent (SSH_AUTH_SOCK), then of ~/.ssh/id_ed25519,
id_ecdsa, id_rsa, that the master knows as an operator's. The same key logs
in to the slave.

Host keys: the slave's come from the master and are pinned in mas4h's own
known_hosts ($XDG_CONFIG_HOME/mas4h/known_hosts, else
~/.config/mas4h/known_hosts), checked strictly. The device's own host key is
checked by ssh as usual, under the name mas4h-DEVICE in your known_hosts,
whichever slave and port its tunnel comes through (the first login asks, as
ssh does). The login user on the device is USER@, or -l in SSH_ARGS, or
ssh's default (yours, or your ~/.ssh/config's). SSH_ARGS (after --) go to
ssh as they are: options, then a command.

With --forward NAME, mas4h forwards a local port to that forward of the
device instead (ssh -N -L 127.0.0.1:LOCAL:localhost:PORT through the slave),
prints the local address (a URL for web forwards) and keeps the forward up
until Ctrl-C.

The master comes from --master or MAS4H_MASTER. Exit status: ssh's own, 1
when the master refuses (unknown device or not on your allow list, device
offline, operator revoked), 2 for a usage error.`,
		Example: `  mas4h ssh pi-kitchen
  mas4h ssh root@pi-kitchen -- uptime
  mas4h ssh pi-kitchen --key ~/.ssh/work_ed25519.pub -- -A
  mas4h ssh nas --forward web          # prints http://127.0.0.1:PORT/`,
		Args: func(cmd *cobra.Command, args []string) error {
			n := cmd.ArgsLenAtDash()
			if !(n == -1 && len(args) == 1 || n == 1) {
				return usagef("mas4h ssh takes one device ([USER@]DEVICE), then -- and ssh's arguments")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			extra := []string{}
			if n := cmd.ArgsLenAtDash(); n >= 0 {
				extra = args[n:]
			}
			return o.run(cmd.Context(), g, args[0], extra)
		},
	}
	f := cmd.Flags()
	o.of.add(f)
	f.StringVar(&o.forward, "forward", "", "forward a local port to this forward of the device (e.g. web) instead of logging in over its ssh forward")
	f.IntVar(&o.localPort, "local-port", 0, "local port for --forward (default: a free one)")
	f.StringVar(&o.sshPath, "ssh", "ssh", "the OpenSSH client to run")
	f.BoolVar(&o.dryRun, "dry-run", false, "ask the master, then print the ssh command instead of running it")
	return cmd
}

func (o *sshOpts) run(ctx context.Context, g *globals, arg string, extra []string) error {
	user, device := "", arg
	if i := strings.LastIndexByte(arg, '@'); i >= 0 {
		user, device = arg[:i], arg[i+1:]
		if user == "" || strings.HasPrefix(user, "-") {
			return usagef("bad user in %q", arg)
		}
	}
	if err := registry.ValidateDeviceName(device); err != nil {
		return usagef("device: %v", err)
	}
	if o.localPort < 0 || o.localPort > 65535 {
		return usagef("--local-port must be 0-65535")
	}
	a, id, kh, err := reach(ctx, &o.of, g, device, o.forward)
	if err != nil {
		return err
	}
	var argv []string
	if o.forward == "" {
		argv = loginArgv(o.sshPath, a, id.file, kh, user, extra)
	} else {
		local := o.localPort
		if local == 0 {
			if local, err = freeLocalPort(); err != nil {
				return err
			}
		}
		argv = forwardArgv(a, id.file, kh, local, extra)
		if !o.dryRun {
			fmt.Fprintf(g.stdout, "%s/%s is at %s (port %d on slave %s); Ctrl-C stops the forward\n",
				a.Device, a.Forward, localURL(a.Forward, local), a.RemotePort, a.Slave)
		}
	}
	if o.dryRun {
		fmt.Fprintln(g.stdout, shellJoin(append([]string{o.sshPath}, argv...)))
		return nil
	}
	return execSSH(o.sshPath, argv)
}
