package main

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/registry"
)

type proxyOpts struct {
	of      operatorFlags
	forward string
	sshPath string
}

func newProxyCmd(g *globals) *cobra.Command {
	o := &proxyOpts{}
	cmd := &cobra.Command{
		Use:   "proxy DEVICE [--forward NAME] [--key FILE] [--master URL[,URL...]]",
		Short: "A ProxyCommand: stdin and stdout to a device's forward, through its slave",
		Long: `Ask the master where the device's forward is (as 'mas4h ssh' does, with your
operator key), pin the slave's host key in mas4h's known_hosts, and become

  ssh -W localhost:PORT -p SLAVE_PORT -o BatchMode=yes -l mas4h-operator SLAVE

so that what ssh (or scp, rsync, Ansible) writes to stdin reaches the
device's forward (ssh by default) and its answers come out on stdout. Use it
as a ProxyCommand: 'mas4h ssh-config' writes the ssh_config block.

mas4h runs the system's ssh rather than speaking SSH itself: your ssh-agent,
hardware keys and ~/.ssh/config (a bastion in front of the slaves, say) work
as they do for any ssh. Errors go to stderr; the exit status is not 0 when
the master refuses or the slave cannot be reached.`,
		Example: `  ssh -o ProxyCommand='mas4h proxy %n' -o HostKeyAlias=mas4h-pi-kitchen pi-kitchen
  mas4h ssh-config --selector 'pi-*' >> ~/.ssh/config`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usagef("mas4h proxy takes one device")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), g, args[0])
		},
	}
	f := cmd.Flags()
	o.of.add(f)
	f.StringVar(&o.forward, "forward", "", "the device's forward to reach (default ssh)")
	f.StringVar(&o.sshPath, "ssh", "ssh", "the OpenSSH client to run")
	return cmd
}

func (o *proxyOpts) run(ctx context.Context, g *globals, device string) error {
	if err := registry.ValidateDeviceName(device); err != nil {
		return usagef("device: %v", err)
	}
	a, id, kh, err := reach(ctx, &o.of, g, device, o.forward)
	if err != nil {
		return err
	}
	return execSSH(o.sshPath, proxyArgv(a, id.file, kh))
}
