package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/backoff"
	"github.com/mas4h/mas4h/master"
	"github.com/mas4h/mas4h/master/token"
	"github.com/mas4h/mas4h/master/validator"
	"github.com/mas4h/mas4h/registry"
)

type masterOpts struct {
	listen         string
	db             string
	adminTokenFile string
	slaveTokenFile string
	allowShared    bool
	portRange      string
	validator      string
	tlsCert        string
	tlsKey         string
	interval       time.Duration
	cacheTTL       time.Duration
	slotRate       float64
	slotBurst      int
	allowUnsigned  bool     // slot requests without proof of possession
	publicURLs     []string // the URLs slot signatures may name
	events         registry.Retention
}

// masterConfig is what the flags amount to, checked.
type masterConfig struct {
	listen string
	db     string // a SQLite file's absolute path, or a postgres:// URL
	// stateDir holds the token files by default: the SQLite file's
	// directory, or /var/lib/mas4h with PostgreSQL.
	stateDir       string
	adminTokenFile string
	// slaveTokenFile is the shared slave token's file: read (or created)
	// only when allowShared.
	slaveTokenFile string
	allowShared    bool
	api            master.Config // without Store, Logger and tokens
	events         registry.Retention
}

func newMasterCmd(g *globals) *cobra.Command {
	o := &masterOpts{}
	cmd := &cobra.Command{
		Use:   "master [--listen 127.0.0.1:8080] [--db /var/lib/mas4h/registry.db | --db postgres://…] [flags]",
		Short: "Run the master: device registry, slot dispatch and the REST API",
		Long: `Run the master. It holds the registry (devices, keys, port leases, slaves,
tunnels, events) in SQLite, answers devices' slot requests with the least busy
live slave, validates keys for slaves, and serves the REST API under /api/v1.

With --db postgres://USER@HOST/DB the registry is a PostgreSQL database, and
several masters on it serve one fleet: any of them answers any call, a
heartbeat to one is seen by all within a second, and a master that dies loses
nothing (see the README, "High availability"). Keep the password out of the
URL (it shows in ps): put it in ~postgres-style ~/.pgpass or the file
PGPASSFILE names, or PGPASSWORD in the unit's environment. If PostgreSQL does
not answer at start, the master waits for it; while it is down, the API
answers 503 with a Retry-After and slaves serve their cached devices.

The admin token is read from a file (mode 0600), created with a fresh random
token when absent, by default admin.token next to the registry (with
PostgreSQL, in /var/lib/mas4h; every master of a fleet needs the same file).
Give it to 'mas4h device', 'mas4h slave add' and 'mas4h status' (--token-file).

Each slave has its own credential, issued here with 'mas4h slave add NAME
--token-file-out FILE' and given to that slave alone (--token-file); it can
speak only for that slave, and the slave's host keys stay bound to its name
('mas4h slave accept-key NAME' accepts new ones).

Installs from before per-slave credentials shared one slave token
(slave.token next to the registry). --allow-shared-slave-token accepts it
again, for every slave that has no credential of its own, while the slaves
are moved over one by one; then drop the flag (see the README, "Moving
slaves to their own credentials").

Restarting the master drops no tunnel: slaves keep serving their cached devices
and report again when it is back.`,
		Example: `  mas4h master --listen 0.0.0.0:8080 --db /var/lib/mas4h/registry.db
  PGPASSFILE=/etc/mas4h/pgpass mas4h master --listen 0.0.0.0:8080 --db postgres://mas4h@db.example.net/mas4h?sslmode=verify-full
  mas4h master --validator exec:/usr/local/bin/validate-device --tls-cert cert.pem --tls-key key.pem`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := o.config()
			if err != nil {
				return err
			}
			return runMaster(cmd, g, cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address the API listens on")
	f.StringVar(&o.db, "db", "/var/lib/mas4h/registry.db", "registry: a SQLite file (its directory is created if missing) or a PostgreSQL URL, postgres://USER@HOST[:PORT]/DB")
	f.StringVar(&o.adminTokenFile, "admin-token-file", "", "admin token file (default admin.token next to --db, or in /var/lib/mas4h with PostgreSQL; created if absent)")
	f.BoolVar(&o.allowShared, "allow-shared-slave-token", false, "also accept the shared slave token of older installs, for slaves without a credential of their own (for moving over; warns at start)")
	f.StringVar(&o.slaveTokenFile, "slave-token-file", "", "with --allow-shared-slave-token: the shared slave token's file (default slave.token next to --db; created if absent)")
	f.StringVar(&o.portRange, "port-range", registry.DefaultPortRange.String(), "range remote ports are leased from")
	f.StringVar(&o.validator, "validator", "registry", "who accepts keys: registry, exec:/path/to/program, or https://url")
	f.StringVar(&o.tlsCert, "tls-cert", "", "TLS certificate file (PEM); with --tls-key, serve HTTPS")
	f.StringVar(&o.tlsKey, "tls-key", "", "TLS private key file (PEM)")
	f.DurationVar(&o.interval, "heartbeat-interval", master.DefaultHeartbeatInterval, "how often slaves report; 3 missed = dead")
	f.DurationVar(&o.cacheTTL, "cache-ttl", master.DefaultCacheTTL, "how long slaves may serve a validated device from cache")
	f.Float64Var(&o.slotRate, "slot-rate", master.DefaultSlotRate, "slot requests per second per source address (0: no limit)")
	f.IntVar(&o.slotBurst, "slot-burst", master.DefaultSlotBurst, "burst of slot requests per source address")
	f.BoolVar(&o.allowUnsigned, "allow-unsigned-slots", false, "accept slot requests without a signature (dropbear-only devices); their answers carry no LAN targets")
	f.StringSliceVar(&o.publicURLs, "public-url", nil, "URL devices reach the master at (repeatable); slot signatures must name one (default: the TLS certificate's names)")
	f.DurationVar(&o.events.MaxAge, "events-max-age", registry.DefaultEventMaxAge, "events older than this are deleted (0: kept whatever their age)")
	f.Int64Var(&o.events.MaxRows, "events-max-rows", registry.DefaultEventMaxRows, "at most this many of the newest events are kept, about 180 bytes each (0: no limit)")
	return cmd
}

func (o *masterOpts) config() (masterConfig, error) {
	var c masterConfig
	if o.listen == "" {
		return c, usagef("--listen must be HOST:PORT")
	}
	if _, _, err := net.SplitHostPort(o.listen); err != nil {
		return c, usagef("--listen must be HOST:PORT, got %q: %v", o.listen, err)
	}
	if o.db == "" {
		return c, usagef("--db must name the registry file or a postgres:// URL")
	}
	if err := registry.CheckPath(o.db); err != nil {
		return c, usagef("--db: %v", err)
	}
	c.listen = o.listen
	if registry.IsPostgres(o.db) {
		c.db, c.stateDir = o.db, defaultStateDir
	} else {
		db, err := filepath.Abs(o.db)
		if err != nil {
			return c, usagef("--db: %v", err)
		}
		c.db, c.stateDir = db, filepath.Dir(db)
	}
	c.adminTokenFile, c.slaveTokenFile, c.allowShared = o.adminTokenFile, o.slaveTokenFile, o.allowShared
	if c.adminTokenFile == "" {
		c.adminTokenFile = filepath.Join(c.stateDir, "admin.token")
	}
	if c.slaveTokenFile != "" && !c.allowShared {
		return c, usagef("--slave-token-file names the shared slave token, which is accepted only with --allow-shared-slave-token; " +
			"give each slave its own credential (mas4h slave add NAME) instead, or add the flag while moving them over")
	}
	if c.slaveTokenFile == "" {
		c.slaveTokenFile = filepath.Join(c.stateDir, "slave.token")
	}
	if c.allowShared && c.adminTokenFile == c.slaveTokenFile {
		return c, usagef("--admin-token-file and --slave-token-file must be different files")
	}
	pr, err := registry.ParsePortRange(o.portRange)
	if err != nil {
		return c, usagef("--port-range: %v", err)
	}
	v, err := validator.Parse(o.validator, nil)
	if err != nil {
		return c, usagef("--validator: %v", err)
	}
	if ex, ok := v.(*validator.Exec); ok {
		fi, err := os.Stat(ex.Path)
		if err != nil {
			return c, usagef("--validator: %v", err)
		}
		if fi.IsDir() || fi.Mode().Perm()&0o111 == 0 {
			return c, usagef("--validator: %s is not an executable file", ex.Path)
		}
	}
	if (o.tlsCert == "") != (o.tlsKey == "") {
		return c, usagef("--tls-cert and --tls-key go together")
	}
	if o.interval < 100*time.Millisecond {
		return c, usagef("--heartbeat-interval must be at least 100ms, got %s", o.interval)
	}
	if o.cacheTTL < time.Second {
		return c, usagef("--cache-ttl must be at least 1s, got %s", o.cacheTTL)
	}
	if o.slotRate < 0 {
		return c, usagef("--slot-rate must be 0 (no limit) or more, got %g", o.slotRate)
	}
	if o.slotBurst < 1 {
		return c, usagef("--slot-burst must be at least 1, got %d", o.slotBurst)
	}
	if o.events.MaxAge < 0 || o.events.MaxRows < 0 {
		return c, usagef("--events-max-age and --events-max-rows must be 0 (no limit) or more")
	}
	c.events = o.events
	rate := o.slotRate
	if rate == 0 {
		rate = -1 // master.Config: negative disables the limit
	}
	c.api = master.Config{
		PortRange: pr, Validator: v, HeartbeatInterval: o.interval, CacheTTL: o.cacheTTL,
		SlotRate: rate, SlotBurst: o.slotBurst, TLSCertFile: o.tlsCert, TLSKeyFile: o.tlsKey,
		AllowUnsignedSlots: o.allowUnsigned, PublicURLs: o.publicURLs,
	}
	return c, nil
}

func runMaster(cmd *cobra.Command, g *globals, cfg masterConfig) error {
	ctx := cmd.Context()
	log := g.logger().With("component", "master")
	if err := os.MkdirAll(cfg.stateDir, 0o700); err != nil {
		return fmt.Errorf("creating the registry's directory: %w", err)
	}
	if why := registry.PostgresUnverified(cfg.db); why != "" {
		log.Warn(why + "; a man in the middle could read and change the registry (the fleet's keys and leases)")
	}
	if registry.PasswordInURL(cfg.db) {
		log.Warn("the PostgreSQL password is in --db, where ps shows it to every user of this host: put it in a pgpass file (PGPASSFILE) or PGPASSWORD instead")
	}
	adminTok, err := loadToken(g, "admin", cfg.adminTokenFile)
	if err != nil {
		return err
	}
	var slaveTok string
	if cfg.allowShared {
		if slaveTok, err = loadToken(g, "shared slave", cfg.slaveTokenFile); err != nil {
			return err
		}
		if adminTok == slaveTok {
			return fmt.Errorf("%s and %s hold the same token; the admin and slave tokens must differ", cfg.adminTokenFile, cfg.slaveTokenFile)
		}
	} else if _, err := os.Stat(cfg.slaveTokenFile); err == nil {
		log.Warn("the shared slave token of an older install is not accepted: slaves still using it are refused (401). "+
			"Give each its own credential (mas4h slave add NAME --token-file-out FILE, then --token-file FILE on the slave), "+
			"or restart with --allow-shared-slave-token while you move them over", "file", cfg.slaveTokenFile)
	}
	st, err := openRegistry(ctx, log, cfg.db)
	if err != nil {
		return err
	}
	defer st.Close()
	go st.KeepEvents(ctx, cfg.events, 0, log)
	ac := cfg.api
	ac.Store, ac.Logger, ac.AdminToken, ac.SlaveToken = st, g.logger(), adminTok, slaveTok
	srv, err := master.New(ctx, ac)
	if err != nil {
		return err
	}
	defer srv.Close()
	warnEphemeralOverlap(g.stderr, ac.PortRange)
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", cfg.listen, err)
	}
	scheme := "http"
	if ac.TLSCertFile != "" {
		scheme = "https"
	}
	vname := "registry"
	if ac.Validator != nil {
		vname = ac.Validator.String()
	}
	log.Info("master listening", "version", version, "addr", ln.Addr().String(), "url", scheme+"://"+ln.Addr().String(),
		"db", registry.Redact(cfg.db), "validator", vname, "port_range", ac.PortRange.String(), "heartbeat_interval", ac.HeartbeatInterval,
		"events", cfg.events.String())
	err = srv.Serve(ctx, ln)
	log.Info("master stopped")
	return err
}

// loadToken reads or creates a token file and tells the operator where it is.
func loadToken(g *globals, role, path string) (string, error) {
	tok, created, err := token.LoadOrCreate(path)
	if err != nil {
		return "", err
	}
	note := ""
	if created {
		note = " (created)"
	}
	fmt.Fprintf(g.stdout, "%s token file: %s%s\n", role, path, note)
	return strings.TrimSpace(tok), nil
}

// defaultStateDir holds the master's token files when the registry is not
// a file whose directory could.
const defaultStateDir = "/var/lib/mas4h"

// openRegistry opens the registry, waiting for a PostgreSQL server that
// does not answer yet (started after the master, restarting, failing over)
// rather than exiting into a restart loop; any other error ends the start.
func openRegistry(ctx context.Context, log *slog.Logger, location string) (*registry.Store, error) {
	b := backoff.Backoff{Min: time.Second, Max: 10 * time.Second}
	for {
		st, err := registry.Open(ctx, location)
		if err == nil || !registry.Unavailable(err) {
			return st, err
		}
		wait := b.Next()
		log.Warn("the registry's database does not answer; trying again", "err", err, "retry_in", wait.Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (gave up: %v)", err, ctx.Err())
		case <-time.After(wait):
		}
	}
}
