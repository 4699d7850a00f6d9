package bench

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/backoff"
	"github.com/mas4h/mas4h/internal/pgcluster"
	"github.com/mas4h/mas4h/master/token"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// SimConfig is one run of the cluster simulation (cmd/mas4h-sim): Slaves
// fake slaves and Devices simulated devices against Masters real `mas4h
// master` processes sharing one registry.
type SimConfig struct {
	Bin               string        // mas4h binary
	DB                string        // "sqlite" or "postgres"
	Masters           int           // masters sharing the registry (1 with sqlite)
	Slaves            int           // fake slaves
	Devices           int           // simulated devices
	PortRange         string        // where devices lease their one port each
	Beyond            bool          // write devices the port range cannot hold with plain SQL
	Rate              float64       // steady slot requests per second
	Duration          time.Duration // steady window
	Warmup            time.Duration // before the window, after the fill
	HeartbeatInterval time.Duration // the masters' --heartbeat-interval, which slaves follow
	FillParallel      int           // slot requests in flight while every device gets its first slot
	MaxInFlight       int           // bound on steady requests in flight; beyond it a request is counted late
	Storm             bool          // kill a slave and time its devices' re-dispatch
	StormTimeout      time.Duration // after the kill
	WorkParent        string        // where the temporary dir goes ("" for the system's)
	Seed              uint64        // device keys derive from it
}

func (c SimConfig) check() error {
	switch {
	case c.DB != "sqlite" && c.DB != "postgres":
		return fmt.Errorf("-db must be sqlite or postgres, got %q", c.DB)
	case c.Masters < 1 || c.DB == "sqlite" && c.Masters != 1:
		return errors.New("-masters must be 1 with sqlite (several masters share a PostgreSQL database)")
	case c.Slaves < 2:
		return errors.New("-slaves must be at least 2 (the storm moves a slave's devices to the others)")
	case c.Devices < c.Slaves:
		return errors.New("-devices must be at least -slaves")
	case c.Rate <= 0 || c.Duration <= 0 || c.HeartbeatInterval < 100*time.Millisecond:
		return errors.New("-rate and -duration must be positive, -heartbeat-interval at least 100ms")
	case c.FillParallel < 1 || c.MaxInFlight < 1:
		return errors.New("-fill-parallel and -max-inflight must be at least 1")
	}
	_, err := registry.ParsePortRange(c.PortRange)
	return err
}

// SimResult is what one simulation measured; written as JSON and a table.
type SimResult struct {
	Date    string    `json:"date"`
	Config  string    `json:"config"` // sqlite, postgres-1, postgres-2, …
	Machine Machine   `json:"machine"`
	Params  SimConfig `json:"params"`
	Setup   SimSetup  `json:"setup"`

	Masters []SimMaster `json:"masters"`
	// DBCPU is the PostgreSQL cluster's CPU over the window in cores
	// (postmaster and every backend, reaped ones included); nil with
	// SQLite, which runs inside the master.
	DBCPU *float64 `json:"db_cpu_cores,omitempty"`
	// DBBytes is the database on disk after the run: the SQLite file with
	// its -wal and -shm, or pg_database_size.
	DBBytes    int64   `json:"db_bytes"`
	HarnessCPU float64 `json:"harness_cpu_cores"` // this process over the window

	Slots      SimSlots      `json:"slots"`
	Heartbeats SimHeartbeats `json:"heartbeats"`
	Spread     Spread        `json:"spread_after_window"`
	Storm      *SimStorm     `json:"storm,omitempty"`
	Notes      []string      `json:"notes,omitempty"`
}

// SimSetup is how long getting there took (not the measured figure).
type SimSetup struct {
	KeysSeconds       float64 `json:"keys_seconds"`
	EnrolSeconds      float64 `json:"enrol_seconds"`
	ViaRegistry       int     `json:"enrolled_via_registry"`
	BeyondPortRange   int     `json:"written_beyond_port_range"`
	FillSeconds       float64 `json:"fill_seconds"` // every device's first slot
	FillSlotsPerSec   float64 `json:"fill_slots_per_second"`
	FillRetries       int     `json:"fill_retries"`
	FillFirstError    string  `json:"fill_first_error,omitempty"`
	SlavesRegistered  int     `json:"slaves_registered"`
	TunnelsPerSlave   float64 `json:"tunnels_per_slave"`
	HeartbeatBodyKB   float64 `json:"heartbeat_body_kb_mean"`
	HeartbeatInterval float64 `json:"heartbeat_interval_seconds"`
}

// SimMaster is one master process over the window.
type SimMaster struct {
	URL      string  `json:"url"`
	PID      int     `json:"pid"`
	CPUCores float64 `json:"cpu_cores"`
	RSSMB    float64 `json:"rss_mb"`
	// Slaves is how many slaves heartbeat to this master; Granted its
	// grants over the whole run (fill, window, storm), GrantedPeerSlaves
	// those of slaves whose heartbeats it never receives (they beat to
	// another master: it knows them only from the shared registry).
	Slaves            int   `json:"slaves_heartbeating_here"`
	Granted           int64 `json:"granted"`
	GrantedPeerSlaves int64 `json:"granted_peer_slaves"`
}

// SimSlots is the steady window's slot requests.
type SimSlots struct {
	TargetRate   float64 `json:"target_per_second"`
	AchievedRate float64 `json:"granted_per_second"`
	Seconds      float64 `json:"seconds"`
	Latency      Latency `json:"latency"`
	Late         int     `json:"late"` // not sent: MaxInFlight requests were still waiting
	Moved        int     `json:"moved"`
	FirstError   string  `json:"first_error,omitempty"`
}

// SimHeartbeats is the steady window's heartbeats.
type SimHeartbeats struct {
	Latency    Latency `json:"latency"`
	PerSecond  float64 `json:"per_second"`
	FirstError string  `json:"first_error,omitempty"`
}

// SimStorm is the re-dispatch after one slave stops beating.
type SimStorm struct {
	Slave            string  `json:"slave"`
	Devices          int     `json:"devices"`
	DeadAfterSeconds float64 `json:"dead_after_seconds"` // DeadAfter × interval: when the master may declare it
	// DeclaredSeconds: when its master's GET /slaves first showed it dead.
	DeclaredSeconds float64 `json:"declared_dead_seconds"`
	FirstSeconds    float64 `json:"first_redispatched_seconds"`
	AllSeconds      float64 `json:"all_redispatched_seconds"` // 0 when not every device made it
	Redispatched    int     `json:"redispatched"`
	Requests        int     `json:"requests"`
	ToDeadSlave     int     `json:"granted_the_dead_slave"` // before it was declared dead: the device's connect fails, it backs off
	Unavailable     int     `json:"unavailable_503"`
	OtherErrors     int     `json:"other_errors"`
	FirstError      string  `json:"first_error,omitempty"`
	Latency         Latency `json:"latency"`
	Spread          Spread  `json:"spread_after"` // over the live slaves
}

// simRun is one simulation's state, and what cleanup undoes.
type simRun struct {
	cfg     SimConfig
	log     *slog.Logger
	work    string
	dbArg   string // what --db gets: a file or a postgres:// URL
	pg      *pgcluster.Cluster
	masters []*child
	urls    []string
	admin   string
	phase   atomic.Value // string
}

// RunSim runs the simulation; everything it starts (masters, the
// PostgreSQL cluster, its temporary dir) is stopped and removed before it
// returns, also when ctx ends (SIGINT, -timeout).
func RunSim(ctx context.Context, cfg SimConfig, log *slog.Logger) (*SimResult, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	r := &simRun{cfg: cfg, log: log}
	r.phase.Store("setup")
	res := &SimResult{Date: time.Now().Format("2006-01-02"), Params: cfg, Machine: machine("/usr/sbin/sshd")}
	res.Config = cfg.DB
	if cfg.DB == "postgres" {
		res.Config = fmt.Sprintf("postgres-%d", cfg.Masters)
	}
	defer r.cleanup()
	err := r.run(ctx, res)
	return res, err
}

func (r *simRun) cleanup() {
	for _, m := range r.masters {
		m.stop(unix.SIGTERM, 15*time.Second)
	}
	if r.pg != nil {
		r.pg.Destroy()
	}
	if r.work != "" {
		os.RemoveAll(r.work)
	}
}

func (r *simRun) run(ctx context.Context, res *SimResult) error {
	cfg := r.cfg
	var err error
	if r.work, err = os.MkdirTemp(cfg.WorkParent, "mas4h-sim-"); err != nil {
		return err
	}
	if cfg.DB == "postgres" {
		// As root the cluster runs as postgres, which must get through.
		if err := os.Chmod(r.work, 0o711); err != nil {
			return err
		}
		if r.pg, err = pgcluster.Start(ctx, r.work, true); err != nil {
			return fmt.Errorf("starting PostgreSQL: %w", err)
		}
		if r.dbArg, err = r.pg.NewDatabase(ctx, "mas4h_sim"); err != nil {
			return err
		}
	} else {
		r.dbArg = filepath.Join(r.work, "registry.db")
	}

	// Keys, enrolment, slave credentials: straight into the registry.
	t0 := time.Now()
	devs, err := simKeys(cfg.Seed, cfg.Devices)
	if err != nil {
		return err
	}
	res.Setup.KeysSeconds = round3(time.Since(t0).Seconds())
	r.log.Info("device keys derived", "devices", len(devs), "took", time.Since(t0).Round(time.Millisecond))
	slaveNames := make([]string, cfg.Slaves)
	for i := range slaveNames {
		slaveNames[i] = fmt.Sprintf("sim-s%02d", i)
	}
	creds, err := r.enrol(ctx, devs, slaveNames, res)
	if err != nil {
		return err
	}

	if err := r.startMasters(ctx); err != nil {
		return err
	}
	fleet := newSimFleet(devs, slaveNames, creds, r.urls, max(cfg.MaxInFlight, cfg.FillParallel))
	interval := cfg.HeartbeatInterval
	res.Setup.HeartbeatInterval = interval.Seconds()

	// Every slave registers, then beats every interval, spread over it.
	for s := range fleet.slaves {
		if err := fleet.beat(ctx, s, "setup"); err != nil {
			return fmt.Errorf("first heartbeat: %w", err)
		}
	}
	res.Setup.SlavesRegistered = cfg.Slaves
	beatCtx, stopBeats := context.WithCancel(ctx)
	defer stopBeats()
	slaveStop := make([]context.CancelFunc, cfg.Slaves)
	var beats sync.WaitGroup
	phase := func() string { return r.phase.Load().(string) }
	for s := range fleet.slaves {
		sctx, cancel := context.WithCancel(beatCtx)
		slaveStop[s] = cancel
		beats.Add(1)
		go func() {
			defer beats.Done()
			fleet.beatLoop(sctx, s, interval, time.Duration(s)*interval/time.Duration(cfg.Slaves), phase)
		}()
	}
	defer beats.Wait()
	defer stopBeats()

	// Every device asks for its first slot: the fleet comes up.
	r.phase.Store("fill")
	if err := r.fill(ctx, fleet, res); err != nil {
		return err
	}
	counts := fleet.counts()
	res.Setup.TunnelsPerSlave = round3(float64(cfg.Devices) / float64(cfg.Slaves))
	r.log.Info("fleet up", "took", res.Setup.FillSeconds, "per_slave", spreadOf(counts, nil))

	// Warm-up: every slave reports its full list at least once.
	r.phase.Store("warmup")
	if err := sleepCtx(ctx, max(cfg.Warmup, interval+interval/2)); err != nil {
		return err
	}

	r.phase.Store("steady")
	if err := r.steady(ctx, fleet, res); err != nil {
		return err
	}
	r.phase.Store("after")
	res.Spread = spreadOf(fleet.counts(), nil)
	fleet.mu.Lock()
	if b := fleet.beats["steady"]; b != nil {
		res.Heartbeats.Latency = summarize(b.lat, b.fails)
		res.Heartbeats.PerSecond = round3(float64(len(b.lat)+b.fails) / res.Slots.Seconds)
		res.Heartbeats.FirstError = b.first
	}
	var sum int
	for _, n := range fleet.bytes {
		sum += n
	}
	if len(fleet.bytes) > 0 {
		res.Setup.HeartbeatBodyKB = round3(float64(sum) / float64(len(fleet.bytes)) / 1024)
	}
	fleet.mu.Unlock()

	if cfg.Storm {
		r.phase.Store("storm")
		st, err := r.storm(ctx, fleet, 0, slaveStop[0])
		res.Storm = st
		if err != nil {
			return err
		}
	}
	r.phase.Store("done")
	stopBeats()
	beats.Wait()
	for i := range res.Masters {
		for _, sl := range fleet.slaves {
			if sl.Master == i {
				res.Masters[i].Slaves++
			}
		}
		own, peer := fleet.grants[i][0].Load(), fleet.grants[i][1].Load()
		res.Masters[i].Granted, res.Masters[i].GrantedPeerSlaves = own+peer, peer
	}
	res.DBBytes = r.dbSize(ctx)
	return nil
}

// enrol writes the devices and the slaves' credentials.
func (r *simRun) enrol(ctx context.Context, devs []simDevice, slaves []string, res *SimResult) ([]string, error) {
	st, err := registry.Open(ctx, r.dbArg)
	if err != nil {
		return nil, fmt.Errorf("opening the registry: %w", err)
	}
	defer st.Close()
	pr, _ := registry.ParsePortRange(r.cfg.PortRange)
	n := min(len(devs), pr.Size())
	if n < len(devs) && !r.cfg.Beyond {
		return nil, simEnrol(ctx, st, devs, pr, nil) // its error says why
	}
	t0 := time.Now()
	err = simEnrol(ctx, st, devs[:n], pr, func(done int) {
		r.log.Info("enrolling", "done", done, "of", n, "elapsed", time.Since(t0).Round(time.Second))
	})
	if err != nil {
		return nil, err
	}
	res.Setup.ViaRegistry = n
	if n < len(devs) {
		if err := simEnrolBeyond(ctx, st, devs[n:], 65536, r.cfg.DB == "postgres"); err != nil {
			return nil, err
		}
		res.Setup.BeyondPortRange = len(devs) - n
		res.Notes = append(res.Notes, fmt.Sprintf("the registry leases each forward a port unique in the whole registry, so it holds at most %d one-forward devices "+
			"in port range %s (64512 in 1024-65535, the widest); the other %d devices were written with plain SQL on ports above 65535 (-beyond), which no real registry can hold",
			pr.Size(), pr, len(devs)-n))
	}
	res.Setup.EnrolSeconds = round3(time.Since(t0).Seconds())
	r.log.Info("enrolled", "devices", len(devs), "via_registry", n, "took", time.Since(t0).Round(time.Millisecond))
	return simSlaveCredentials(ctx, st, slaves)
}

// startMasters starts the masters on free loopback ports, each with
// --public-url its own URL (so slot signatures are checked against it),
// no per-address slot rate limit (every simulated device comes from
// 127.0.0.1), and the configured heartbeat interval.
func (r *simRun) startMasters(ctx context.Context) error {
	adminTok := filepath.Join(r.work, "admin.token")
	tok, _, err := token.LoadOrCreate(adminTok)
	if err != nil {
		return err
	}
	r.admin = strings.TrimSpace(tok)
	for i := range r.cfg.Masters {
		port, err := freeLoopbackPort()
		if err != nil {
			return err
		}
		url := "http://127.0.0.1:" + strconv.Itoa(port)
		logPath := filepath.Join(r.work, fmt.Sprintf("master%d.log", i))
		logf, err := os.Create(logPath)
		if err != nil {
			return err
		}
		cmd := exec.Command(r.cfg.Bin, "master", "--listen", "127.0.0.1:"+strconv.Itoa(port), "--db", r.dbArg,
			"--admin-token-file", adminTok, "--public-url", url, "--slot-rate", "0",
			"--heartbeat-interval", r.cfg.HeartbeatInterval.String(), "--log-level", "warn")
		cmd.Stdout, cmd.Stderr = logf, logf
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: unix.SIGTERM}
		m, err := startChild(cmd)
		logf.Close()
		if err != nil {
			return err
		}
		r.masters = append(r.masters, m)
		r.urls = append(r.urls, url)
		if err := waitHealthy(ctx, m, url, logPath); err != nil {
			return err
		}
		r.log.Info("master up", "url", url, "pid", m.cmd.Process.Pid)
	}
	return nil
}

func waitHealthy(ctx context.Context, m *child, url, logPath string) error {
	deadline := time.Now().Add(60 * time.Second)
	for {
		if m.exited() {
			return fmt.Errorf("the master exited at start (%v): %s", m.err, tail(logPath))
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+wire.APIPrefix+"/healthz", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the master at %s did not answer /healthz within 60s: %s", url, tail(logPath))
		}
		if err := sleepCtx(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// fill has every device ask for its first slot, FillParallel at a time,
// device i from master i mod Masters; a refused request is retried after
// a second (the fill is setup, not a measured figure).
func (r *simRun) fill(ctx context.Context, fleet *simFleet, res *SimResult) error {
	var next, retries, up atomic.Int64
	var mu sync.Mutex
	var firstErr string
	var wg sync.WaitGroup
	t0 := time.Now()
	for range r.cfg.FillParallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				d := int(next.Add(1) - 1)
				if d >= len(fleet.devs) {
					return
				}
				for attempt := 0; ctx.Err() == nil; attempt++ {
					a := fleet.slot(ctx, d, (d+attempt)%len(fleet.masters))
					if a.Err == nil {
						fleet.place(d, a.Slave, time.Now())
						up.Add(1)
						break
					}
					retries.Add(1)
					mu.Lock()
					if firstErr == "" {
						firstErr = a.Err.Error()
					}
					mu.Unlock()
					sleepCtx(ctx, time.Second)
				}
				if n := d + 1; n%20000 == 0 {
					r.log.Info("fleet coming up", "devices", n, "elapsed", time.Since(t0).Round(time.Second))
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	if err := ctx.Err(); err != nil {
		res.Notes = append(res.Notes, fmt.Sprintf("cut off while the fleet came up: %d of %d devices had their first slot after %.0f s (%.0f slots/s)",
			up.Load(), len(fleet.devs), el.Seconds(), float64(up.Load())/el.Seconds()))
		return err
	}
	res.Setup.FillSeconds = round3(el.Seconds())
	res.Setup.FillSlotsPerSec = round3(float64(len(fleet.devs)) / el.Seconds())
	res.Setup.FillRetries = int(retries.Load())
	res.Setup.FillFirstError = firstErr
	return nil
}

// steady sends slot requests at Rate for Duration, open loop (each at its
// scheduled time, whatever the answers before it), for devices picked at
// random, round-robin over the masters; and samples CPU around it.
func (r *simRun) steady(ctx context.Context, fleet *simFleet, res *SimResult) error {
	cfg := r.cfg
	rng := rand.New(rand.NewPCG(cfg.Seed, 17))
	sem := make(chan struct{}, cfg.MaxInFlight)
	var (
		mu    sync.Mutex
		slots latencyBucket
		moved int
		wg    sync.WaitGroup
	)
	cpu0 := r.sampleCPU()
	t0 := time.Now()
	n := int(cfg.Rate * cfg.Duration.Seconds())
	late := 0
	for k := range n {
		at := t0.Add(time.Duration(float64(k) / cfg.Rate * float64(time.Second)))
		if err := sleepCtx(ctx, time.Until(at)); err != nil {
			return err
		}
		select {
		case sem <- struct{}{}:
		default:
			late++
			continue
		}
		d, m := rng.IntN(len(fleet.devs)), k%len(fleet.masters)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			a := fleet.slot(ctx, d, m)
			mu.Lock()
			defer mu.Unlock()
			slots.add(a.Latency, a.Err)
			if a.Err == nil {
				fleet.mu.Lock()
				was := fleet.on[d]
				fleet.mu.Unlock()
				if was != a.Slave {
					moved++
					fleet.place(d, a.Slave, time.Now())
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(t0)
	cpu1 := r.sampleCPU()
	res.Slots = SimSlots{TargetRate: cfg.Rate, Seconds: round3(el.Seconds()), Latency: summarize(slots.lat, slots.fails),
		AchievedRate: round3(float64(len(slots.lat)) / el.Seconds()), Late: late, Moved: moved, FirstError: slots.first}
	r.cpuFigures(cpu0, cpu1, el, res)
	return ctx.Err()
}

// cpuSample is the CPU ticks of the masters, the database and this
// process at one moment.
type simCPU struct {
	masters []procTimes
	db      int64
	self    procTimes
}

func (r *simRun) sampleCPU() simCPU {
	var s simCPU
	for _, m := range r.masters {
		t, _ := readStat(m.cmd.Process.Pid)
		s.masters = append(s.masters, t)
	}
	if pid := r.postmaster(); pid > 0 {
		s.db = sampleTree(pid, false).Ticks
	}
	s.self, _ = readStat(os.Getpid())
	return s
}

func (r *simRun) cpuFigures(a, b simCPU, el time.Duration, res *SimResult) {
	cores := func(ticks int64) float64 { return round3(float64(ticks) / userHZ / el.Seconds()) }
	for i, m := range r.masters {
		sm := SimMaster{URL: r.urls[i], PID: m.cmd.Process.Pid, CPUCores: cores(b.masters[i].Own() - a.masters[i].Own())}
		if _, rss, err := readPSS(sm.PID); err == nil {
			sm.RSSMB = round3(float64(rss) / 1024)
		}
		res.Masters = append(res.Masters, sm)
	}
	if r.pg != nil {
		c := cores(b.db - a.db)
		res.DBCPU = &c
	}
	res.HarnessCPU = cores(b.self.Own() - a.self.Own())
}

// postmaster is the PostgreSQL server's pid (first line of its pid file),
// 0 without one.
func (r *simRun) postmaster() int {
	if r.pg == nil {
		return 0
	}
	b, err := os.ReadFile(filepath.Join(r.pg.Dir, "data", "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(line))
	return pid
}

// dbSize is the registry's size on disk now.
func (r *simRun) dbSize(ctx context.Context) int64 {
	if r.pg == nil {
		var n int64
		for _, suffix := range []string{"", "-wal", "-shm"} {
			if fi, err := os.Stat(r.dbArg + suffix); err == nil {
				n += fi.Size()
			}
		}
		return n
	}
	db, err := sql.Open("pgx", r.dbArg)
	if err != nil {
		return -1
	}
	defer db.Close()
	var n int64
	if err := db.QueryRowContext(ctx, `SELECT pg_database_size(current_database())`).Scan(&n); err != nil {
		return -1
	}
	return n
}

// storm stops slave victim's heartbeats (stop) and has each device that
// had its tunnel there ask for a slot again, as the agent does: on a 503
// it waits the longer of its backoff and Retry-After; when granted the
// dead slave (the master has not declared it dead yet) its connection
// fails and it waits its backoff; it is done once granted another slave.
func (r *simRun) storm(ctx context.Context, fleet *simFleet, victim int, stop context.CancelFunc) (*SimStorm, error) {
	devs := fleet.devicesOn(victim)
	st := &SimStorm{Slave: fleet.slaves[victim].Name, Devices: len(devs),
		DeadAfterSeconds: round3((registry.DeadAfter * r.cfg.HeartbeatInterval).Seconds())}
	sctx, cancel := context.WithTimeout(ctx, r.cfg.StormTimeout)
	defer cancel()
	stop()
	t0 := time.Now()
	// When the victim's master declares it dead.
	declared := make(chan float64, 1)
	go func() {
		for sctx.Err() == nil {
			if alive, ok := r.slaveAlive(sctx, fleet.slaves[victim].Master, fleet.slaves[victim].Name); ok && !alive {
				declared <- time.Since(t0).Seconds()
				return
			}
			sleepCtx(sctx, 100*time.Millisecond)
		}
	}()
	var (
		mu   sync.Mutex
		lat  latencyBucket
		done []time.Duration
		wg   sync.WaitGroup
	)
	for _, d := range devs {
		fleet.place(d, -1, t0) // its tunnel died with the slave
		wg.Add(1)
		go func() {
			defer wg.Done()
			var bo backoff.Backoff // the agent's: 1 s doubling to 60 s, cut by up to 90%
			for attempt := 0; sctx.Err() == nil; attempt++ {
				a := fleet.slot(sctx, d, (d+attempt)%len(fleet.masters))
				if sctx.Err() != nil {
					return
				}
				mu.Lock()
				st.Requests++
				lat.add(a.Latency, a.Err)
				wait := bo.Next()
				switch {
				case a.Err == nil && a.Slave != victim:
					done = append(done, time.Since(t0))
					mu.Unlock()
					fleet.place(d, a.Slave, time.Now())
					return
				case a.Err == nil:
					st.ToDeadSlave++
				case a.Status == http.StatusServiceUnavailable:
					st.Unavailable++
					wait = max(wait, a.RetryAfter)
				default:
					st.OtherErrors++
				}
				mu.Unlock()
				sleepCtx(sctx, wait)
			}
		}()
	}
	wg.Wait()
	select {
	case s := <-declared:
		st.DeclaredSeconds = round3(s)
	default:
	}
	st.Redispatched = len(done)
	st.Latency = summarize(lat.lat, lat.fails)
	st.FirstError = lat.first
	if len(done) > 0 {
		first, last := done[0], done[0]
		for _, d := range done {
			first, last = min(first, d), max(last, d)
		}
		st.FirstSeconds = round3(first.Seconds())
		if len(done) == len(devs) {
			st.AllSeconds = round3(last.Seconds())
		}
	}
	st.Spread = spreadOf(fleet.counts(), map[int]bool{victim: true})
	if ctx.Err() != nil {
		return st, ctx.Err()
	}
	if len(done) < len(devs) {
		return st, fmt.Errorf("storm: %d of %d devices of %s re-dispatched within -storm-timeout %s (first error: %s)",
			len(done), len(devs), st.Slave, r.cfg.StormTimeout, st.FirstError)
	}
	return st, nil
}

// slaveAlive asks master m's GET /slaves whether slave name is alive.
func (r *simRun) slaveAlive(ctx context.Context, m int, name string) (alive, ok bool) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.urls[m]+wire.APIPrefix+"/slaves", nil)
	if err != nil {
		return false, false
	}
	req.Header.Set("Authorization", "Bearer "+r.admin)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return false, false
	}
	defer resp.Body.Close()
	var slaves []wire.Slave
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&slaves) != nil {
		return false, false
	}
	for _, s := range slaves {
		if s.Name == name {
			return s.Alive, true
		}
	}
	return false, false
}
