package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/registry"
)

type sshConfigOpts struct {
	of        operatorFlags
	tokenFile string
	selectors []string
	mas4hPath string
}

func newSSHConfigCmd(g *globals) *cobra.Command {
	o := &sshConfigOpts{}
	cmd := &cobra.Command{
		Use:   "ssh-config [--selector SEL]... [--master URL[,URL...]] [--key FILE] [--token-file FILE]",
		Short: "Print an ssh_config block so plain ssh, scp, rsync and Ansible reach devices",
		Long: `Print an ssh_config block that sends ssh to devices through 'mas4h proxy':

  Host pi-*
    Hostname mas4h-%h
    ProxyCommand /usr/bin/mas4h proxy --master URL %n

Append it to ~/.ssh/config (or Include it) and plain 'ssh pi-kitchen', scp,
'rsync -e ssh' and Ansible reach the devices as you, the operator. ProxyCommand
gets %n, the name as typed; Hostname mas4h-%h makes ssh check the device's
host key under the name mas4h-DEVICE, the alias 'mas4h ssh' uses, so both
share what your known_hosts learnt. User is left to you (ssh's -l, User in
your config, ansible_user).

A --selector that is a device name glob with * and ? (pi-*) becomes a Host
pattern as it is: no admin token needed. A label selector (site=lyon), a glob
with [ ], or no selector at all needs the list of the devices, which only the
admin token may read (GET /devices): pass --token-file FILE or set
MAS4H_TOKEN_FILE; the block then names each device. Whether you may reach a
device is the master's call at each connection, not this block's.

The master comes from --master or MAS4H_MASTER and goes into the
ProxyCommand, as does --key.`,
		Example: `  mas4h ssh-config --selector 'pi-*' --selector 'lyon-*' >> ~/.ssh/config
  mas4h ssh-config --selector site=lyon --token-file admin.token > ~/.ssh/mas4h.conf
  ansible all -i 'pi-kitchen,pi-hall,' -m ping     # with the block in ~/.ssh/config`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.run(cmd.Context(), g)
		},
	}
	f := cmd.Flags()
	o.of.add(f)
	f.StringArrayVar(&o.selectors, "selector", nil, "devices to cover: a name glob (pi-*) or, with the admin token, a label KEY=VALUE; repeat for more")
	f.StringVar(&o.tokenFile, "token-file", "", "the master's admin token file, to list devices by label (default $MAS4H_TOKEN_FILE)")
	f.StringVar(&o.mas4hPath, "mas4h", "", "the mas4h the ProxyCommand runs (default: this one's absolute path)")
	return cmd
}

func (o *sshConfigOpts) run(ctx context.Context, g *globals) error {
	masterURL, err := o.of.url()
	if err != nil {
		return err
	}
	sels, err := registry.ParseSelectors(o.selectors)
	if err != nil {
		return usagef("--selector: %v", err)
	}
	patterns, listed := sshPatterns(sels)
	if len(sels) == 0 || len(listed) > 0 {
		tf := o.tokenFile
		if tf == "" {
			tf = os.Getenv("MAS4H_TOKEN_FILE")
		}
		what := "all devices"
		if len(listed) > 0 {
			what = "the devices of " + strings.Join(listed, ", ")
		}
		if tf == "" {
			return usagef("listing %s needs the master's admin token (--token-file FILE or MAS4H_TOKEN_FILE); without it, give device name globs with * and ? (--selector 'pi-*')", what)
		}
		mf := masterFlags{master: masterURL, tokenFile: tf}
		c, err := mf.client(g)
		if err != nil {
			return err
		}
		devs, err := c.DevicesMatching(ctx, listed...)
		if err != nil {
			return fmt.Errorf("listing %s: %w", what, err)
		}
		for _, d := range devs {
			if !slices.Contains(patterns, d.Name) {
				patterns = append(patterns, d.Name)
			}
		}
		if len(patterns) == 0 {
			return fmt.Errorf("no device matches %s on the master at %s", what, masterURL)
		}
	}
	self := o.mas4hPath
	if self == "" {
		if self, err = os.Executable(); err != nil {
			return fmt.Errorf("finding mas4h's own path for the ProxyCommand (pass --mas4h PATH): %w", err)
		}
	}
	if !filepath.IsAbs(self) {
		return usagef("--mas4h must be an absolute path (ssh runs the ProxyCommand from anywhere), got %q", self)
	}
	proxy := []string{self, "proxy", "--master", masterURL}
	if o.of.key != "" {
		key, err := filepath.Abs(o.of.key)
		if err != nil {
			return err
		}
		proxy = append(proxy, "--key", key)
	}
	_, err = fmt.Fprint(g.stdout, renderSSHConfig(masterURL, patterns, proxy))
	return err
}

// sshPatterns splits selectors into ssh_config Host patterns (name globs
// with * and ?, which ssh matches the same way) and those that need the
// device list (labels, globs with [ ]).
func sshPatterns(sels []registry.Selector) (patterns, listed []string) {
	for _, s := range sels {
		if s.Key == "" && !strings.ContainsAny(s.Glob, "[]") {
			patterns = append(patterns, s.Glob)
		} else {
			listed = append(listed, s.String())
		}
	}
	return patterns, listed
}

// hostsPerLine keeps Host lines short: a large fleet gets several blocks.
const hostsPerLine = 16

// renderSSHConfig is the ssh_config block for patterns: ProxyCommand gets
// the name as typed (%n); Hostname makes the host key's name mas4h-NAME,
// the alias 'mas4h ssh' checks it under.
func renderSSHConfig(masterURL string, patterns []string, proxy []string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# mas4h ssh-config: devices of the master at %s, reached as an operator\n", masterURL)
	fmt.Fprintf(&b, "# through their slave (mas4h proxy); their host keys are known as mas4h-NAME.\n")
	cmd := strings.ReplaceAll(shellJoin(proxy), "%", "%%") + " %n"
	for chunk := range slices.Chunk(patterns, hostsPerLine) {
		fmt.Fprintf(&b, "Host %s\n  Hostname %s%%h\n  ProxyCommand %s\n", strings.Join(chunk, " "), deviceHostKeyAlias(""), cmd)
	}
	return b.String()
}
