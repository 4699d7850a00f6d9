package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/doctor"
	"github.com/mas4h/mas4h/install"
)

type doctorOpts struct {
	output     string
	root       string
	stateDir   string
	master     string
	tunnelUser string
	sshListen  string
	listen     string
	db         string
	key        string
}

func newDoctorCmd(g *globals) *cobra.Command {
	o := &doctorOpts{}
	cmd := &cobra.Command{
		Use:   "doctor [master|slave [NAME]|agent] [flags]",
		Short: "Check that this host can run a role, and say how to fix what is wrong",
		Long: `Check what a role needs and print each check as ok, warn or fail, with the fix.

slave: OpenSSH's sshd (7.8 or newer, for permitlisten), the tunnel user and its
password field (not '!'-locked), the hook's path (every directory root-owned
and not group/world-writable, or sshd refuses the hook), the ssh listen port,
iptables and the cluster match (for the shared VIP only: a warning), and with a
master its reachability and the clock skew.

master: the listen port, the registry directory and the token files' modes.

agent: an SSH client (ssh or dbclient), the key, the master and the clock skew.

Defaults come from the role's config file in /etc/mas4h (e.g. slave-NAME.conf)
and the daemons' defaults; flags override them. Without a role, every role
set up here is checked (by its install manifest or its state: the master's
registry, slave state dirs, the agent's state dir; all three when none is). Exit status 1 when any
check fails.`,
		Example: `  mas4h doctor slave s1
  mas4h doctor slave --state-dir /srv/mas4h/slave-s1 --master https://master:8080
  mas4h doctor agent --master https://master:8080 --key /etc/mas4h/agent.key -o json`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			switch {
			case args[0] == install.RoleSlave && len(args) <= 2:
			case (args[0] == install.RoleMaster || args[0] == install.RoleAgent) && len(args) == 1:
			default:
				return usagef("%s takes master, slave [NAME] or agent", cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			out, err := parseOutput(o.output)
			if err != nil {
				return err
			}
			var cfgs []doctor.Config
			if len(args) == 0 {
				cfgs = o.detect()
			} else {
				name := ""
				if len(args) == 2 {
					name = args[1]
				}
				cfgs = []doctor.Config{o.config(args[0], name)}
			}
			var results []doctor.Result
			for _, c := range cfgs {
				results = append(results, doctor.Run(cmd.Context(), c)...)
			}
			if out == "json" {
				if err := writeJSON(g.stdout, results); err != nil {
					return err
				}
			} else {
				printDoctor(g, results)
			}
			if doctor.Failed(results) {
				return exitError{exitFail}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.output, "output", "o", "table", "output: table or json")
	f.StringVar(&o.root, "root", "/", "file system root to check (for /etc and the state dirs)")
	f.StringVar(&o.stateDir, "state-dir", "", "slave: state dir (default /var/lib/mas4h/slave-NAME)")
	f.StringVar(&o.master, "master", "", "slave, agent: the master's URL, or several as URL,URL,... (each one's reachability and clock skew)")
	f.StringVar(&o.tunnelUser, "tunnel-user", "", "slave: tunnel user (default mas4h-tunnel)")
	f.StringVar(&o.sshListen, "ssh-listen", "", "slave: sshd's listen address (default 0.0.0.0:2222)")
	f.StringVar(&o.listen, "listen", "", "master: the API's listen address (default 127.0.0.1:8080)")
	f.StringVar(&o.db, "db", "", "master: registry file")
	f.StringVar(&o.key, "key", "", "agent: the device's private key")
	return cmd
}

// config fills a role's checks from its config file, then from the flags.
func (o *doctorOpts) config(role, name string) doctor.Config {
	c := doctor.Config{Role: role, Name: name, Root: o.root}
	args, _ := install.ConfArgs(o.root, role, name)
	from := func(dst *string, flag, override string) {
		if v, ok := install.FlagValue(args, flag); ok {
			*dst = v
		}
		if override != "" {
			*dst = override
		}
	}
	switch role {
	case install.RoleSlave:
		from(&c.Master, "--master", o.master)
		from(&c.StateDir, "--state-dir", o.stateDir)
		from(&c.TunnelUser, "--tunnel-user", o.tunnelUser)
		from(&c.SSHListen, "--ssh-listen", o.sshListen)
		from(&c.SSHDPath, "--sshd", "")
	case install.RoleMaster:
		if args != nil {
			c.DB = filepath.Join(install.MasterStateDir, "registry.db") // what the unit passes
		}
		from(&c.Listen, "--listen", o.listen)
		from(&c.DB, "--db", o.db)
	case install.RoleAgent:
		from(&c.Master, "--master", o.master)
		from(&c.KeyPath, "--key", o.key)
	}
	if c.Master == "" {
		c.Master = os.Getenv("MAS4H_MASTER")
	}
	return c
}

// detect finds the roles installed here: config files in /etc/mas4h and
// slave state dirs.
func (o *doctorOpts) detect() []doctor.Config {
	var cfgs []doctor.Config
	exists := func(p string) bool { _, err := os.Stat(filepath.Join(o.root, p)); return err == nil }
	// The package ships master.conf and agent.conf everywhere: a role counts
	// as installed by its manifest or its state.
	if exists(install.ManifestPath(install.RoleMaster, "")) || exists(install.MasterStateDir+"/registry.db") {
		cfgs = append(cfgs, o.config(install.RoleMaster, ""))
	}
	names := map[string]bool{}
	confs, _ := filepath.Glob(filepath.Join(o.root, install.ConfDir, "slave-*.conf"))
	for _, p := range confs {
		names[strings.TrimSuffix(strings.TrimPrefix(filepath.Base(p), "slave-"), ".conf")] = true
	}
	dirs, _ := filepath.Glob(filepath.Join(o.root, install.StateRoot, "slave-*"))
	for _, p := range dirs {
		names[strings.TrimPrefix(filepath.Base(p), "slave-")] = true
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	for _, n := range sorted {
		cfgs = append(cfgs, o.config(install.RoleSlave, n))
	}
	if exists(install.ManifestPath(install.RoleAgent, "")) || exists(install.AgentStateDir) {
		cfgs = append(cfgs, o.config(install.RoleAgent, ""))
	}
	if len(cfgs) == 0 {
		for _, r := range []string{install.RoleMaster, install.RoleSlave, install.RoleAgent} {
			cfgs = append(cfgs, o.config(r, ""))
		}
	}
	return cfgs
}

func printDoctor(g *globals, results []doctor.Result) {
	rows := [][]string{{"STATUS", "ROLE", "CHECK", "DETAIL"}}
	for _, r := range results {
		st := string(r.Status)
		if r.Status == doctor.Fail {
			st = "FAIL"
		}
		rows = append(rows, []string{st, r.Role, r.Check, r.Detail})
		if r.Fix != "" {
			rows = append(rows, []string{"", "", "", "fix: " + r.Fix})
		}
	}
	writeTable(g.stdout, rows)
	fails, warns := 0, 0
	for _, r := range results {
		switch r.Status {
		case doctor.Fail:
			fails++
		case doctor.Warn:
			warns++
		}
	}
	fmt.Fprintf(g.stdout, "\n%d checks: %d failed, %d warnings\n", len(results), fails, warns)
}
