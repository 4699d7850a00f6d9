package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/install"
	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/token"
	"github.com/mas4h/mas4h/systemd"
)

type installOpts struct {
	root         string
	bin          string
	args         string
	tunnelUser   string
	operatorUser string
	purge        bool
	// The flags that make up the role's config line.
	master, tokenFile, db, sshListen, publicHost, listen, key string
	// credential is a slave's own credential file to install as tokenFile.
	credential string
	// insecureHTTP: an agent's http:// master, allowed (--insecure-http).
	insecureHTTP bool
}

func newInstallCmd(g *globals) *cobra.Command {
	o := &installOpts{}
	cmd := &cobra.Command{
		Use:   "install master|slave NAME|agent [flags]",
		Short: "Set this host up for a role: users, directories, config, systemd units",
		Long: `Set this host up for a role, as root.

master: the system user mas4h, /var/lib/mas4h/master (its registry and
tokens, owned by mas4h), /etc/mas4h/master.conf and mas4h-master.service.

slave NAME: the tunnel user (mas4h-tunnel, password field '*'), the state dir
/var/lib/mas4h/slave-NAME (root-owned 0755, as sshd demands of the hook's
path), /etc/mas4h/slave-NAME.conf and mas4h-slave@.service (the daemon supervises
the slave's sshd itself);
with --credential FILE (the slave's own credential, from 'mas4h slave add NAME
--token-file-out FILE' on the master), that credential as
/etc/mas4h/slave-NAME.token (or --token-file), root's, mode 0600.

agent: /var/lib/mas4h-agent, /etc/mas4h/agent.conf and mas4h-agent.service.

Without any of the role's flags (or --args) an existing config file is
kept. With them, the config file says what they say: an existing one (the
package's master.conf or agent.conf, or one written by hand) is kept beside
it as NAME.conf.mas4h-old, and the command says so; 'mas4h uninstall' puts
it back. Units a package already provides (in
/lib/systemd/system or /usr/local/lib/systemd/system) are used as they are,
others are written to /etc/systemd/system with ExecStart set to this binary.
When systemd runs the host the unit is enabled (not started: edit the config,
then systemctl start it); otherwise the command says how to start it.

What was created is recorded in /var/lib/mas4h/.install-manifest-ROLE[-NAME];
'mas4h uninstall' removes exactly that.`,
		Example: `  mas4h install master --listen 0.0.0.0:8080
  mas4h install slave s1 --master https://master:8080 --credential ./s1.token --public-host s1.example.net
  mas4h install slave s1 --db /var/lib/mas4h/registry.db --ssh-listen 0.0.0.0:2222
  mas4h install agent --master https://master:8080 --key /etc/mas4h/agent.key`,
		Args: roleArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.config(cmd, args, true)
			if err != nil {
				return err
			}
			if _, err := install.Install(cmd.Context(), c); err != nil {
				return err
			}
			fmt.Fprintln(g.stdout, nextSteps(c))
			return nil
		},
	}
	f := cmd.Flags()
	o.commonFlags(cmd)
	f.StringVar(&o.bin, "bin", "", "the mas4h binary the units run (default: this one, "+install.DefaultBin+" under a package)")
	f.StringVar(&o.args, "args", "", "the whole flag line for the config file (instead of the flags below)")
	f.StringVar(&o.tunnelUser, "tunnel-user", install.DefaultTunnelUser, "slave: the tunnel user to create")
	f.StringVar(&o.operatorUser, "operator-user", "", "slave: the operator user to create, with the tunnel user's uid (default mas4h-operator with the default tunnel user, else TUNNEL_USER-operator)")
	f.StringVar(&o.master, "master", "", "slave, agent: the master's URL, or several masters of one fleet as URL,URL,...")
	f.StringVar(&o.tokenFile, "token-file", "", "slave: where its credential is (default /etc/mas4h/slave-NAME.token with --master)")
	f.StringVar(&o.credential, "credential", "", "slave: its own credential file, from 'mas4h slave add NAME --token-file-out FILE' on the master, to install as --token-file")
	f.StringVar(&o.db, "db", "", "slave: standalone registry file instead of a master")
	f.StringVar(&o.sshListen, "ssh-listen", "", "slave: address its sshd listens on (default 0.0.0.0:2222)")
	f.StringVar(&o.publicHost, "public-host", "", "slave: host name devices are told to dial")
	f.StringVar(&o.listen, "listen", "", "master: address of the API (default 127.0.0.1:8080)")
	f.StringVar(&o.key, "key", "", "agent: the device's private key file (the unit's default: /etc/mas4h/agent.key)")
	f.BoolVar(&o.insecureHTTP, "insecure-http", false, "agent: allow an http:// --master (clear text; the agent warns at every start)")
	return cmd
}

func newUninstallCmd() *cobra.Command {
	o := &installOpts{}
	cmd := &cobra.Command{
		Use:   "uninstall master|slave NAME|agent [--purge]",
		Short: "Undo 'mas4h install': remove what it created, from its manifest",
		Long: `Undo 'mas4h install' for a role: disable and stop its unit (when systemd runs),
and remove the units, config file, directories and users it created, newest
first, as recorded in its manifest. What another installed role still uses
(the slave units and tunnel user while another slave is installed,
/var/lib/mas4h and /etc/mas4h) stays. A slave's detached sshd is stopped.

A config file install replaced (the package's master.conf or agent.conf, or
one made by hand) is put back from NAME.conf.mas4h-old. Without --purge, a
config file edited since install and a state dir the daemon filled (host
keys, cache; the master's registry) are kept, and said so; files in them
that mas4h did not make are named.`,
		Example: `  mas4h uninstall slave s1
  mas4h uninstall master --purge`,
		Args: roleArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := o.config(cmd, args, false)
			if err != nil {
				return err
			}
			c.Purge = o.purge
			return install.Uninstall(cmd.Context(), c)
		},
	}
	o.commonFlags(cmd)
	cmd.Flags().BoolVar(&o.purge, "purge", false, "also remove state the daemons filled and edited config files")
	return cmd
}

func (o *installOpts) commonFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.root, "root", "/", "lay out below this directory instead of / (for tests and images; no systemctl)")
}

// roleArgs: master, agent, or slave NAME.
func roleArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return usagef("%s needs a role: master, slave NAME or agent", cmd.CommandPath())
	}
	switch args[0] {
	case install.RoleMaster, install.RoleAgent:
		if len(args) != 1 {
			return usagef("%s %s takes no further arguments", cmd.CommandPath(), args[0])
		}
	case install.RoleSlave:
		if len(args) != 2 {
			return usagef("%s slave takes the slave's name: %s slave NAME", cmd.CommandPath(), cmd.CommandPath())
		}
	default:
		return usagef("%s: role must be master, slave NAME or agent, not %q", cmd.CommandPath(), args[0])
	}
	return nil
}

func (o *installOpts) config(cmd *cobra.Command, args []string, installing bool) (install.Config, error) {
	c := install.Config{Role: args[0], Root: o.root, Bin: o.bin, TunnelUser: o.tunnelUser, OperatorUser: o.operatorUser, Units: systemd.Units, Out: cmd.OutOrStdout()}
	if len(args) == 2 {
		c.Name = args[1]
	}
	abs, err := filepath.Abs(o.root)
	if err != nil {
		return c, usagef("--root: %v", err)
	}
	c.Root = abs
	if os.Geteuid() != 0 {
		return c, fmt.Errorf("mas4h %s must run as root: it creates users, root-owned directories and units", cmd.Name())
	}
	if c.Root == "/" {
		_, err := os.Stat("/run/systemd/system")
		c.Systemd = err == nil
	}
	if installing {
		if c.Args, err = o.confArgs(c.Role, c.Name); err != nil {
			return c, err
		}
		if o.credential != "" {
			if c.Credential, err = readSlaveCredential(o.credential, c.Name); err != nil {
				return c, err
			}
			c.CredentialFile = o.tokenFile
		}
		if c.Bin == "" {
			if c.Bin, err = o.defaultBin(c); err != nil {
				return c, err
			}
		}
	}
	if err := c.Check(); err != nil {
		return c, usageError{err}
	}
	return c, nil
}

// confArgs assembles the config file's flag line from the role's flags.
func (o *installOpts) confArgs(role, name string) (string, error) {
	if o.args != "" {
		return o.args, nil
	}
	var a []string
	add := func(flag, v string) {
		if v != "" {
			a = append(a, flag, v)
		}
	}
	wrong := func(flags ...string) error {
		for i := 0; i < len(flags); i += 2 {
			if flags[i+1] != "" {
				return usagef("%s is not a flag of role %s", flags[i], role)
			}
		}
		return nil
	}
	if o.master != "" {
		if _, err := client.ParseMasters(o.master); err != nil {
			return "", usagef("--master: %v", err)
		}
	}
	switch role {
	case install.RoleMaster:
		if o.insecureHTTP {
			return "", usagef("--insecure-http is a flag of role agent")
		}
		if err := wrong("--master", o.master, "--token-file", o.tokenFile, "--credential", o.credential, "--db", o.db, "--ssh-listen", o.sshListen, "--public-host", o.publicHost, "--key", o.key); err != nil {
			return "", err
		}
		add("--listen", o.listen)
	case install.RoleSlave:
		if o.insecureHTTP {
			return "", usagef("--insecure-http is a flag of role agent")
		}
		if err := wrong("--listen", o.listen, "--key", o.key); err != nil {
			return "", err
		}
		if o.master != "" && o.db != "" {
			return "", usagef("give either --master or --db, not both")
		}
		if o.credential != "" && o.master == "" {
			return "", usagef("--credential goes with --master (a standalone slave needs none)")
		}
		if o.master == "" && o.db == "" {
			if o.sshListen != "" || o.publicHost != "" || o.tokenFile != "" {
				return "", usagef("a slave's config line needs --master URL or --db PATH (or give the whole line with --args)")
			}
			return "", nil // the skeleton's example line
		}
		add("--master", o.master)
		if o.master != "" && o.tokenFile == "" {
			o.tokenFile = install.SlaveCredentialPath(name)
		}
		if o.credential != "" && !filepath.IsAbs(o.tokenFile) {
			return "", usagef("--token-file must be an absolute path on this host, not %q", o.tokenFile)
		}
		add("--token-file", o.tokenFile)
		add("--db", o.db)
		if o.sshListen == "" {
			o.sshListen = "0.0.0.0:2222"
		}
		add("--ssh-listen", o.sshListen)
		add("--public-host", o.publicHost)
		if o.tunnelUser != install.DefaultTunnelUser {
			add("--tunnel-user", o.tunnelUser)
		}
		if o.operatorUser != "" && o.operatorUser != install.DefaultOperatorUser(o.tunnelUser) {
			add("--operator-user", o.operatorUser)
		}
	case install.RoleAgent:
		if err := wrong("--token-file", o.tokenFile, "--credential", o.credential, "--db", o.db, "--ssh-listen", o.sshListen, "--public-host", o.publicHost, "--listen", o.listen); err != nil {
			return "", err
		}
		if o.master == "" && o.key == "" {
			if o.insecureHTTP {
				return "", usagef("--insecure-http goes with --master http://…")
			}
			return "", nil
		}
		for _, m := range strings.Split(o.master, ",") {
			if m = strings.TrimSpace(m); strings.HasPrefix(m, "http://") && !o.insecureHTTP {
				return "", usagef("--master %s is plain http: the agent refuses it unless --insecure-http says so (give it here too), or use https://", m)
			}
		}
		add("--master", o.master)
		add("--key", o.key)
		if o.insecureHTTP {
			a = append(a, "--insecure-http")
		}
	}
	return strings.Join(a, " "), nil
}

// defaultBin is this binary, unless it sits where the units' ProtectHome or
// PrivateTmp would hide it from the daemon.
func (o *installOpts) defaultBin(c install.Config) (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding this binary: %w", err)
	}
	if r, err := filepath.EvalSymlinks(exe); err == nil {
		exe = r
	}
	if c.Root != "/" {
		return install.DefaultBin, nil
	}
	for _, hidden := range []string{"/home/", "/root/", "/run/user/", "/tmp/", "/var/tmp/"} {
		if strings.HasPrefix(exe, hidden) {
			return "", usagef("this binary is %s, which the units' ProtectHome/PrivateTmp hide from the daemon: "+
				"install it first (make install, or the .deb) and run that one, or pass --bin PATH", exe)
		}
	}
	return exe, nil
}

// nextSteps tells the operator what is left to do.
func nextSteps(c install.Config) string {
	conf := install.ConfPath(c.Role, c.Name)
	unit := map[string]string{install.RoleMaster: "mas4h-master.service", install.RoleSlave: "mas4h-slave@" + c.Name + ".service", install.RoleAgent: "mas4h-agent.service"}[c.Role]
	var b strings.Builder
	fmt.Fprintf(&b, "\nNext: check %s, then ", conf)
	if c.Systemd {
		fmt.Fprintf(&b, "systemctl start %s (systemctl status %s; journalctl -u %s).", unit, unit, unit)
	} else {
		fmt.Fprintf(&b, "start %s under systemd, or by hand: %s %s $%s (flags from %s).", unit, c.Bin, map[string]string{
			install.RoleMaster: "master --db " + install.MasterStateDir + "/registry.db",
			install.RoleSlave:  "slave --name " + c.Name,
			install.RoleAgent:  "agent",
		}[c.Role], install.ConfKey(c.Role), conf)
	}
	switch c.Role {
	case install.RoleMaster:
		fmt.Fprintf(&b, "\nThe master runs as user %s; its admin token appears at first start in %s/admin.token (for mas4h device/slave/status). "+
			"Issue each slave its own credential with: mas4h slave add NAME --token-file-out NAME.token", c.MasterUser, install.MasterStateDir)
	case install.RoleSlave:
		fmt.Fprintf(&b, "\nCheck the host with: mas4h doctor slave %s", c.Name)
	}
	return b.String()
}

// readSlaveCredential reads a credential file to install for slave name,
// refusing another slave's credential or the shared token of older installs.
func readSlaveCredential(path, name string) ([]byte, error) {
	tok, err := token.Load(path)
	if err != nil {
		return nil, err
	}
	n, _, ok := token.ParseSlaveCredential(tok)
	switch {
	case !ok:
		return nil, usagef("--credential %s holds no slave credential (the shared slave token of an older install?); issue slave %s its own: mas4h slave add %s --token-file-out FILE", path, name, name)
	case n != name:
		return nil, usagef("--credential %s is slave %s's, not slave %s's", path, n, name)
	}
	return []byte(tok + "\n"), nil
}
