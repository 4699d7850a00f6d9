package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd"
)

type slaveOpts struct {
	name       string
	db         string
	stateDir   string
	sshListen  string
	tunnelUser string
	sshdPath   string
}

func newSlaveCmd(g *globals) *cobra.Command {
	o := &slaveOpts{}
	cmd := &cobra.Command{
		Use:   "slave --name NAME --db PATH [--ssh-listen 0.0.0.0:2222] [--state-dir DIR]",
		Short: "Run a slave: a dedicated, locked-down sshd for device tunnels",
		Long: `Run one bouncer. The slave creates the tunnel user if missing, keeps host keys
and a generated sshd_config in its state dir, runs the system's OpenSSH sshd as
the tunnel user (detached: stopping or restarting this daemon drops no tunnel,
and the next start adopts it), answers sshd's AuthorizedKeysCommand, restarts
sshd if it dies, and ends the sessions of revoked devices.

Standalone mode reads devices from a local registry file (--db).`,
		Example: `  mas4h slave --name s1 --db /var/lib/mas4h/registry.db --ssh-listen 0.0.0.0:2222`,
		Args:    exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := o.config()
			if err != nil {
				return err
			}
			if _, err := os.Stat(o.db); err != nil {
				return fmt.Errorf("registry %s: %w (enrol a device with 'mas4h device add --db %s' first)", o.db, err, o.db)
			}
			log := g.logger()
			st, err := registry.Open(cmd.Context(), o.db)
			if err != nil {
				return err
			}
			defer st.Close()
			slave, err := sshd.NewSlave(cfg, &sshd.LocalSource{Store: st, Log: log.With("component", "registry")}, log)
			if err != nil {
				return usageError{err}
			}
			return slave.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.name, "name", "", "this slave's name (required; [a-z0-9][a-z0-9._-]*)")
	f.StringVar(&o.db, "db", "", "registry file to serve devices from (standalone mode)")
	f.StringVar(&o.stateDir, "state-dir", "", "state dir (default /var/lib/mas4h/slave-NAME)")
	f.StringVar(&o.sshListen, "ssh-listen", "0.0.0.0:2222", "address sshd listens on for devices")
	f.StringVar(&o.tunnelUser, "tunnel-user", "mas4h-tunnel", "unprivileged user sshd runs as and devices log in as")
	f.StringVar(&o.sshdPath, "sshd", "/usr/sbin/sshd", "path of OpenSSH's sshd")
	return cmd
}

func (o *slaveOpts) config() (sshd.SlaveConfig, error) {
	if o.name == "" {
		return sshd.SlaveConfig{}, usagef("--name is required")
	}
	if err := registry.ValidateDeviceName(o.name); err != nil {
		return sshd.SlaveConfig{}, usagef("--name: %v", err)
	}
	if o.db == "" {
		return sshd.SlaveConfig{}, usagef("--db is required (the registry to serve devices from)")
	}
	dir := o.stateDir
	if dir == "" {
		dir = filepath.Join("/var/lib/mas4h", "slave-"+o.name)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return sshd.SlaveConfig{}, usagef("--state-dir: %v", err)
	}
	return sshd.SlaveConfig{
		Name:       o.name,
		StateDir:   abs,
		SSHListen:  o.sshListen,
		TunnelUser: o.tunnelUser,
		SSHDPath:   o.sshdPath,
		ProcRoot:   "/proc",
	}, nil
}
