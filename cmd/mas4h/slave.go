package main

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/install"
	"github.com/mas4h/mas4h/names"
	"github.com/mas4h/mas4h/netfilter"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd"
	"github.com/mas4h/mas4h/sshd/reaper"
	"github.com/mas4h/mas4h/sshd/source"
	"github.com/mas4h/mas4h/sshd/sshdconfig"
	"github.com/mas4h/mas4h/sshd/statedir"
)

type slaveOpts struct {
	name       string
	db         string
	master     string
	tokenFile  string
	publicHost string
	capacity   int
	maxPerDev  int
	vip        struct {
		addr, iface, mode, hashSeed, rateLimit string
		node, nodes                            int
	}
	probe struct {
		interval, timeout, keepalive time.Duration
		failures                     int
		newestWins                   string
	}
	stateDir   string
	sshListen  string
	tunnelUser string
	opUser     string
	sshdPath   string
	metrics    string
	debugPprof bool
	keysFile   bool
	guardPorts string
	guardSet   bool // --guard-ports was given
}

func newSlaveCmd(g *globals) *cobra.Command {
	o := &slaveOpts{}
	cmd := &cobra.Command{
		Use:   "slave --name NAME (--master URL[,URL...] --token-file F | --db PATH) [--ssh-listen 0.0.0.0:2222] [--state-dir DIR]",
		Short: "Run a slave: a dedicated, locked-down sshd for device tunnels",
		Long: `Run one bouncer. The slave creates the tunnel user if missing, keeps host keys
and a generated sshd_config in its state dir, runs the system's OpenSSH sshd as
the tunnel user (detached: stopping or restarting this daemon drops no tunnel,
and the next start adopts it), answers sshd's AuthorizedKeysCommand, restarts
sshd if it dies, and ends the sessions of revoked devices.

Under a master (--master, with the slave's own credential in --token-file,
issued on the master by 'mas4h slave add NAME') the slave heartbeats its load,
host keys and live tunnels, validates unknown keys with the master, caches
positive answers (refreshed before they expire), keeps serving cached devices
while the master is down, and ends the sessions of devices the master
revokes. Standalone (--db) it reads devices from a local registry file.

The subcommands below act on the master (with its admin token): they issue
and withdraw slaves' credentials and accept a slave's new host keys.`,
		Example: `  mas4h slave --name s1 --master https://master:8080 --token-file /etc/mas4h/slave-s1.token --public-host s1.example.net
  mas4h slave --name s1 --db /var/lib/mas4h/registry.db --ssh-listen 0.0.0.0:2222`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.guardSet = cmd.Flags().Changed("guard-ports")
			cfg, err := o.config()
			if err != nil {
				return err
			}
			log := g.logger()
			var src source.Source
			if o.master != "" {
				api, shared, err := newSlaveMasterAPI(o.master, o.tokenFile, o.name, log)
				if err != nil {
					return err
				}
				for _, u := range api.Cleartext() {
					log.Warn(cleartextWarning, "master", u)
				}
				if shared {
					log.Warn("--token-file holds no credential of this slave's own (the shared slave token of an older install?); "+
						"the master accepts it only with --allow-shared-slave-token. Ask for this slave's own: mas4h slave add "+o.name, "file", o.tokenFile)
				}
				src = source.NewMaster(api, o.name, nil, log.With("master", o.master))
			} else {
				if registry.IsPostgres(o.db) {
					return usagef("--db: a slave serves a PostgreSQL registry through a master: give --master URL (and --token-file)")
				}
				if err := registry.CheckPath(o.db); err != nil {
					return usagef("--db: %v", err)
				}
				if _, err := os.Stat(o.db); err != nil {
					return fmt.Errorf("registry %s: %w (enrol a device with 'mas4h device add --db %s' first)", o.db, err, o.db)
				}
				st, err := registry.Open(cmd.Context(), o.db)
				if err != nil {
					return err
				}
				defer st.Close()
				go st.KeepEvents(cmd.Context(), registry.DefaultRetention, 0, log) // nobody else prunes it
				src = source.NewLocal(st, o.name, 0, log)
			}
			log.Info("slave starting", "version", version, "slave", o.name, "ssh_listen", cfg.SSHListen, "state_dir", cfg.StateDir,
				"master", o.master, "db", o.db, "metrics_listen", o.metrics,
				"tunnel_user", cfg.TunnelUser, "operator_user", cfg.OperatorUser)
			slave, err := sshd.NewSlave(cfg, src, log)
			if err != nil {
				return usageError{err}
			}
			return slave.Run(cmd.Context())
		},
	}
	cmd.AddCommand(slaveAdminCmds(g)...)
	f := cmd.Flags()
	f.StringVar(&o.name, "name", "", "this slave's name (required; [a-z0-9][a-z0-9._-]*)")
	f.StringVar(&o.master, "master", "", "master URL, e.g. https://master.example.net:8080, or several masters of one fleet as URL,URL,... (tried in a random order, sticking to one that answers and moving on when it does not) (or MAS4H_MASTER)")
	f.StringVar(&o.tokenFile, "token-file", "", "file holding this slave's credential, from 'mas4h slave add NAME' on the master (or MAS4H_TOKEN_FILE)")
	f.StringVar(&o.db, "db", "", "registry file to serve devices from (standalone mode, no master)")
	f.StringVar(&o.publicHost, "public-host", "", "host name or address devices are told to dial (default: the listen address, or this host's name)")
	f.IntVar(&o.capacity, "capacity", 2000, "tunnels this slave is sized for; dispatch balances tunnels/capacity")
	f.IntVar(&o.maxPerDev, "max-sessions-per-device", 2, "sessions one device's key may hold at once (its tunnel and a reconnect); a login beyond is refused (a deny event), and a walk ends any extra session (0: no cap)")
	f.DurationVar(&o.probe.keepalive, "keepalive", sshdconfig.DefaultClientAliveInterval*time.Second, "sshd's ClientAliveInterval: a live client answers a keepalive every two of these when idle, and one silent for four and 2s more is judged at once (each keepalive costs a device about 300 bytes with TCP/IP headers, some 4 MB a day at 3s: raise it for metered links, at the price of slower detection of a frozen client or a dead link)")
	f.DurationVar(&o.probe.interval, "probe-interval", reaper.DefaultInterval, "how often a forwarded port is probed end to end while its session's TCP state looks healthy (each probe is a line in the device's sshd log; a session that looks stale is probed at once; without the TCP view, every min(this, 10s))")
	f.IntVar(&o.probe.failures, "probe-failures", reaper.DefaultFailures, "consecutive failed probes before a session is reaped")
	f.DurationVar(&o.probe.timeout, "probe-timeout", reaper.DefaultTimeout, "time one probe may take")
	f.StringVar(&o.vip.addr, "vip", "", "shared virtual IP this slave serves a share of (with --iface, --node, --nodes)")
	f.StringVar(&o.vip.iface, "iface", "", "interface facing the devices, for --vip")
	f.IntVar(&o.vip.node, "node", 0, "this slave's node number for --vip (1..--nodes)")
	f.IntVar(&o.vip.nodes, "nodes", 0, "how many slaves share --vip (at most 32)")
	f.StringVar(&o.vip.mode, "vip-mode", "auto", "how the VIP is shared: auto, cluster (xt_cluster) or clusterip (kernels < 6.3)")
	f.StringVar(&o.vip.hashSeed, "hash-seed", "", "source-hash seed, the same on every node (default mas4h's)")
	f.StringVar(&o.vip.rateLimit, "rate-limit", "", "limit new SSH connections per source address, e.g. 10/60s (with --vip)")
	f.StringVar(&o.probe.newestWins, "newest-wins", reaper.NewestWinsStale, "when a device reconnects while an older session holds its port: stale (kill it if it fails a probe), always, off")
	f.BoolVar(&o.keysFile, "keys-file", true, "let sshd read active devices whose ports are free from a file the daemon keeps (STATE/authorized_keys) before it runs the hook: a login then costs a file scan instead of two hook runs (--keys-file=false: every login through the hook)")
	f.StringVar(&o.guardPorts, "guard-ports", registry.DefaultPortRange.String(), "TCP ports LO-HI on this host's loopback (127.0.0.0/8, ::1) that only the tunnel user (sshd: devices' forwards, operators' channels) and root (the slave's probes) may connect to: every other local user's connection is reset, by iptables and ip6tables owner rules in the slave's own chain MAS4H-LO-NAME, applied at start and removed at a clean stop: give the master's --port-range; 'none' for hosts that manage their own firewall. The default range is best effort (an error is logged when it cannot be applied, e.g. without CAP_NET_ADMIN); a range given here must apply or the slave does not start")
	f.StringVar(&o.stateDir, "state-dir", "", "state dir (default /var/lib/mas4h/slave-NAME)")
	f.StringVar(&o.sshListen, "ssh-listen", "0.0.0.0:2222", "address sshd listens on for devices")
	f.StringVar(&o.tunnelUser, "tunnel-user", "mas4h-tunnel", "unprivileged user sshd runs as and devices log in as")
	f.StringVar(&o.opUser, "operator-user", "", "user operators log in as to reach devices, a second name for the tunnel user's uid, created if missing (default mas4h-operator with the default tunnel user, else TUNNEL_USER-operator)")
	f.StringVar(&o.sshdPath, "sshd", "/usr/sbin/sshd", "path of OpenSSH's sshd")
	f.StringVar(&o.metrics, "metrics-listen", "", "address serving Prometheus metrics at /metrics, e.g. 127.0.0.1:9642 (default: none)")
	f.BoolVar(&o.debugPprof, "debug-pprof", false, "also serve Go profiles (net/http/pprof) at /debug/pprof/ on --metrics-listen; for profiling only")
	return cmd
}

func (o *slaveOpts) config() (sshd.SlaveConfig, error) {
	if o.name == "" {
		return sshd.SlaveConfig{}, usagef("--name is required")
	}
	if o.opUser == "" {
		o.opUser = install.DefaultOperatorUser(o.tunnelUser)
	}
	if err := names.Slave(o.name); err != nil {
		return sshd.SlaveConfig{}, usagef("--name: %v", err)
	}
	if o.master == "" {
		o.master = os.Getenv("MAS4H_MASTER")
	}
	if o.tokenFile == "" {
		o.tokenFile = os.Getenv("MAS4H_TOKEN_FILE")
	}
	switch {
	case o.master != "" && o.db != "":
		return sshd.SlaveConfig{}, usagef("give either --master (with --token-file) or --db, not both")
	case o.master == "" && o.db == "":
		return sshd.SlaveConfig{}, usagef("give --master URL --token-file F (under a master) or --db PATH (standalone)")
	case o.master != "" && o.tokenFile == "":
		return sshd.SlaveConfig{}, usagef("--master needs --token-file (this slave's credential: mas4h slave add %s --token-file-out FILE, on the master)", o.name)
	}
	if o.capacity < 1 {
		return sshd.SlaveConfig{}, usagef("--capacity must be at least 1")
	}
	if o.maxPerDev < 0 {
		return sshd.SlaveConfig{}, usagef("--max-sessions-per-device must be 0 (no cap) or more")
	}
	if o.probe.interval < 100*time.Millisecond || o.probe.timeout < 10*time.Millisecond || o.probe.failures < 1 {
		return sshd.SlaveConfig{}, usagef("--probe-interval must be at least 100ms, --probe-timeout at least 10ms, --probe-failures at least 1")
	}
	if o.probe.keepalive < time.Second || o.probe.keepalive > time.Hour || o.probe.keepalive%time.Second != 0 {
		return sshd.SlaveConfig{}, usagef("--keepalive must be whole seconds from 1s to 1h, not %s", o.probe.keepalive)
	}
	if o.probe.timeout >= o.probe.interval {
		return sshd.SlaveConfig{}, usagef("--probe-timeout (%s) must be shorter than --probe-interval (%s)", o.probe.timeout, o.probe.interval)
	}
	switch o.probe.newestWins {
	case reaper.NewestWinsStale, reaper.NewestWinsAlways, reaper.NewestWinsOff:
	default:
		return sshd.SlaveConfig{}, usagef("--newest-wins must be stale, always or off, not %q", o.probe.newestWins)
	}
	if o.debugPprof && o.metrics == "" {
		return sshd.SlaveConfig{}, usagef("--debug-pprof serves on --metrics-listen: give both")
	}
	dir := o.stateDir
	if dir == "" {
		dir = statedir.Default(o.name)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return sshd.SlaveConfig{}, usagef("--state-dir: %v", err)
	}
	vip, err := o.vipConfig()
	if err != nil {
		return sshd.SlaveConfig{}, err
	}
	var guard *registry.PortRange
	if o.guardPorts != "none" {
		r, err := registry.ParsePortRange(o.guardPorts)
		if err != nil {
			return sshd.SlaveConfig{}, usagef("--guard-ports: %v (or none)", err)
		}
		guard = &r
	}
	return sshd.SlaveConfig{
		VIP:        vip,
		GuardPorts: guard,
		// An asked-for range is a promise; the default one is best effort.
		GuardRequired: guard != nil && o.guardSet,
		Name:          o.name,
		StateDir:      abs,
		SSHListen:     o.sshListen,
		TunnelUser:    o.tunnelUser,
		OperatorUser:  o.opUser,
		SSHDPath:      o.sshdPath,
		ProcRoot:      "/proc",
		PublicHost:    o.publicHost,
		Capacity:      o.capacity,

		ProbeInterval: o.probe.interval,
		ProbeFailures: o.probe.failures,
		ProbeTimeout:  o.probe.timeout,
		NewestWins:    o.probe.newestWins,
		Keepalive:     o.probe.keepalive,

		MaxSessionsPerDevice: o.maxPerDev,
		KeysFile:             o.keysFile,
		MetricsListen:        o.metrics,
		DebugPprof:           o.debugPprof,
	}, nil
}

// vipConfig checks the --vip group of flags; nil when no VIP is shared.
func (o *slaveOpts) vipConfig() (*netfilter.Config, error) {
	v := o.vip
	if v.addr == "" {
		if v.iface != "" || v.node != 0 || v.nodes != 0 || v.rateLimit != "" {
			return nil, usagef("--iface, --node, --nodes and --rate-limit go with --vip")
		}
		return nil, nil
	}
	addr, err := netfilter.ParseVIP(v.addr)
	if err != nil {
		return nil, usageError{err}
	}
	cfg := &netfilter.Config{VIP: addr, Iface: v.iface, Node: v.node, Nodes: v.nodes,
		Mode: netfilter.Mode(v.mode), HashSeed: netfilter.DefaultHashSeed}
	if v.hashSeed != "" {
		if cfg.HashSeed, err = netfilter.ParseHashSeed(v.hashSeed); err != nil {
			return nil, usageError{err}
		}
	}
	if v.rateLimit != "" {
		if cfg.RateLimit, err = netfilter.ParseRateLimit(v.rateLimit); err != nil {
			return nil, usageError{err}
		}
		_, port, _ := net.SplitHostPort(o.sshListen)
		cfg.SSHPort, _ = strconv.Atoi(port)
	}
	if err := cfg.Validate(); err != nil {
		return nil, usageError{err}
	}
	return cfg, nil
}
