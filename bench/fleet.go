package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/statedir"
)

// FleetConfig is issue 7's run: the load generator against a mas4h slave
// and the raw-sshd baseline at several fleet sizes, a reconnect storm, the
// hook under load, probe cycles, master dispatch and frozen-client
// detection. Filled and validated in cmd/mas4h-fleet.
type FleetConfig struct {
	Config // binaries, ports, tunnel user, work dir, lease range, Parallel

	Points       []int         // fleet sizes: setup and density at each, both sides
	ReconnectAt  int           // fleet size of the reconnect storm (one of Points; 0: none)
	HookStormAt  int           // fleet size whose mas4h setup storm also times the hook (0: the largest ≤ 2000)
	Window       time.Duration // steady window on mas4h's side: a few 10 s table walks
	RawWindow    time.Duration // steady window on raw's side (no probes)
	Sources      int           // source addresses 127.0.1.1… the devices dial from
	Jitter       float64       // reconnect backoff jitter (the agent's: backoff.DefaultJitter)
	MinBackoff   time.Duration
	MaxBackoff   time.Duration
	SetupTimeout time.Duration
	MetricsPort  int

	Freeze bool

	KeysFile bool // run the slave with its keys file (its default) or --keys-file=false (hook only)

	DispatchDevices  int // 0: no dispatch run
	DispatchSlaves   int
	DispatchClients  int
	DispatchDuration time.Duration
	MasterPort       int
}

// fleetRun holds what one run started; cleanup goes through the embedded
// issue-2 harness's undo list.
type fleetRun struct {
	*harness
	fc        FleetConfig
	fdevs     []device // the load generator's devices
	freezeDev []device // OpenSSH devices for the freeze test (key files)
	sources   []net.IP
	hook      hookTarget
	daemonPid int
	slaveL    int // listener pids
	rawL      int
	slaveLog  string
	rawLog    string
	metrics   string
}

// RunFleet measures everything in FleetConfig and always cleans up, also
// when ctx is cancelled.
func RunFleet(ctx context.Context, fc FleetConfig, log *slog.Logger) (*FleetResult, error) {
	r := &fleetRun{harness: &harness{cfg: fc.Config, log: log}, fc: fc}
	res, err := r.run(ctx)
	r.cleanup()
	return res, err
}

func (r *fleetRun) maxPoint() int { return slices.Max(r.fc.Points) }

func (r *fleetRun) run(ctx context.Context) (*FleetResult, error) {
	res := &FleetResult{Date: time.Now().Format("2006-01-02"), Machine: machine(r.cfg.SSHD),
		Started: time.Now().UTC().Format(time.RFC3339)}
	res.Params = FleetParams{Points: r.fc.Points, ReconnectAt: r.fc.ReconnectAt, Parallel: r.cfg.Parallel,
		Sources: r.fc.Sources, Window: r.fc.Window.String(), Jitter: r.fc.Jitter,
		MinBackoff: r.fc.MinBackoff.String(), MaxBackoff: r.fc.MaxBackoff.String(),
		DispatchDevices: r.fc.DispatchDevices, DispatchSlaves: r.fc.DispatchSlaves, DispatchClients: r.fc.DispatchClients}
	started := time.Now()
	defer func() { res.Seconds = round3(time.Since(started).Seconds()) }()

	if err := r.prepare(ctx, res); err != nil {
		return res, err
	}
	r.cfg.SlaveArgs = append(r.cfg.SlaveArgs, "--keys-file="+strconv.FormatBool(r.fc.KeysFile))
	res.Params.SlaveFlags = append([]string(nil), r.cfg.SlaveArgs...)
	r.cfg.SlaveArgs = append(r.cfg.SlaveArgs, "--metrics-listen", "127.0.0.1:"+strconv.Itoa(r.fc.MetricsPort),
		"--capacity", strconv.Itoa(max(r.maxPoint(), 2000)))
	if err := r.startSlave(ctx); err != nil {
		return res, err
	}
	if err := r.startRaw(ctx); err != nil {
		return res, err
	}
	if err := r.findPids(); err != nil {
		return res, err
	}
	cfgText, err := os.ReadFile(statedir.Dir(r.state).SSHDConfig())
	if err != nil {
		return res, err
	}
	argv, err := hookArgv(cfgText)
	if err != nil {
		return res, err
	}
	r.hook = hookTarget{Argv: argv, User: r.cfg.TunnelUser, UID: r.uid, GID: r.gid, MaxFailLog: 3}
	res.HookCommand = strings.Join(argv, " ")

	// Frozen clients and master dispatch at once: neither touches what the
	// other measures (the freeze is two idle sessions; dispatch is another
	// process on other ports), and the freeze is mostly waiting.
	var wg sync.WaitGroup
	if r.fc.Freeze {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.log.Info("freeze: SIGSTOP two OpenSSH clients, time until their ports are free (up to 2.5 min)")
			port, closeFn, err := bannerServer()
			if err != nil {
				res.Freeze = &Freeze{Error: err.Error()}
				return
			}
			defer closeFn()
			f := runFreeze(ctx, freezeSpec{SSHPath: r.cfg.SSH, Port: r.cfg.SlavePort, User: r.cfg.TunnelUser, TargetPort: port,
				Probed: r.freezeDev[0], Unprobed: r.freezeDev[1], Settle: 2 * time.Second, Limit: 150 * time.Second})
			f.Settings = freezeSettings()
			res.Freeze = &f
			r.log.Info("freeze done", "probe_s", f.ProbeSeconds, "client_alive_s", f.ClientAliveSeconds, "err", f.Error)
		}()
	}
	if r.fc.DispatchDevices > 0 {
		r.log.Info("master dispatch", "devices", r.fc.DispatchDevices, "slaves", r.fc.DispatchSlaves,
			"clients", r.fc.DispatchClients, "for", r.fc.DispatchDuration)
		d, err := runDispatch(ctx, dispatchSpec{Bin: r.cfg.Bin, DB: filepath.Join(r.work, "master.db"), Port: r.fc.MasterPort,
			Slaves: r.fc.DispatchSlaves, Clients: r.fc.DispatchClients, Duration: r.fc.DispatchDuration,
			Devices: r.fdevs[:r.fc.DispatchDevices]}, r.work)
		if err != nil {
			r.log.Warn("dispatch failed", "err", err)
			d.FirstError = err.Error()
		}
		res.Dispatch = &d
		r.log.Info("dispatch done", "slots_per_s", d.PerSecond, "p99_ms", d.Latency.P99Ms, "errors", d.Errors)
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return res, err
	}

	r.log.Info("hook latency, idle (warm cache)", "runs", r.cfg.HookRuns)
	idle, samples, err := measureHook(ctx, r.hook, r.fdevs[:r.maxPoint()], r.cfg.HookRuns)
	if err != nil {
		return res, err
	}
	res.HookIdle = idle
	res.HookSamples = append(res.HookSamples, samples...)

	hookAt := r.fc.HookStormAt
	if hookAt == 0 {
		for _, n := range r.fc.Points {
			if n <= 2000 && n > hookAt {
				hookAt = n
			}
		}
	}
	for _, n := range r.fc.Points {
		p := Point{Tunnels: n}
		for _, side := range []string{"mas4h", "raw"} {
			sr, err := r.point(ctx, side, n, side == "mas4h" && n == hookAt, res)
			if side == "mas4h" {
				p.Mas4h = sr
			} else {
				p.Raw = sr
			}
			if err != nil {
				res.Points = append(res.Points, p)
				return res, fmt.Errorf("%s side at %d tunnels: %w", side, n, err)
			}
		}
		p.finish()
		res.Points = append(res.Points, p)
	}
	return res, nil
}

// prepare checks the host, raises limits, makes the devices and enrols them.
func (r *fleetRun) prepare(ctx context.Context, res *FleetResult) error {
	if os.Geteuid() != 0 {
		return errors.New("mas4h-fleet must run as root: the slave creates its tunnel user and runs sshd as that user")
	}
	for _, p := range []string{r.cfg.Bin, r.cfg.SSHD, r.cfg.SSH} {
		if fi, err := os.Stat(p); err != nil || fi.IsDir() {
			return fmt.Errorf("%s: not an executable file", p)
		}
	}
	for _, p := range []int{r.cfg.SlavePort, r.cfg.RawPort, r.fc.MetricsPort, r.fc.MasterPort} {
		if err := portFree(p); err != nil {
			return err
		}
	}
	if err := checkEphemeralOverlap(r.cfg.PortRange); err != nil {
		return err
	}
	if err := checkRootOwnedParents(r.cfg.WorkParent); err != nil {
		return err
	}
	res.Limits = prepareLimits(r.maxPoint(), r.onCleanup)
	for _, c := range res.Limits.Changes {
		r.log.Info("limit raised", "change", c)
	}
	for _, p := range res.Limits.Problems {
		r.log.Warn("limit", "problem", p)
	}
	needMB := int64(r.maxPoint())*2200/1024 + 1024
	if res.Limits.MemAvailableMB > 0 && res.Limits.MemAvailableMB < needMB {
		return fmt.Errorf("%d tunnels need about %d MB (≈2.2 MB each for sshd and the generator); MemAvailable is %d MB: pick smaller -points",
			r.maxPoint(), needMB, res.Limits.MemAvailableMB)
	}

	work, err := os.MkdirTemp(r.cfg.WorkParent, "mas4h-bench-")
	if err != nil {
		return fmt.Errorf("creating work dir: %w", err)
	}
	r.work = work
	r.onCleanup("removing "+work, func() error { return os.RemoveAll(work) })
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	r.state, r.raw, r.db = filepath.Join(work, "slave"), filepath.Join(work, "raw"), filepath.Join(work, "registry.db")
	keys := filepath.Join(work, "keys")
	if err := os.Mkdir(keys, 0o700); err != nil {
		return err
	}
	for i := 1; i <= r.fc.Sources; i++ {
		r.sources = append(r.sources, net.IPv4(127, 0, 1, byte(i)))
	}

	total := max(r.maxPoint(), r.fc.DispatchDevices)
	r.log.Info("generating and enrolling devices", "n", total, "work", work)
	t0 := time.Now()
	st, err := registry.Open(ctx, r.db)
	if err != nil {
		return err
	}
	defer st.Close()
	pr, err := registry.ParsePortRange(r.cfg.PortRange)
	if err != nil {
		return err
	}
	add := func(d *device, fwd []registry.ForwardSpec) error {
		key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(d.AuthKey))
		if err != nil {
			return err
		}
		dev, err := st.AddDevice(ctx, d.Name, key, fwd, pr)
		if err != nil {
			return err
		}
		for _, f := range dev.Forwards {
			d.Ports = append(d.Ports, f.RemotePort)
		}
		slices.Sort(d.Ports)
		d.Line = expectedLine(d.AuthKey, d.Ports)
		return nil
	}
	for i := 1; i <= total; i++ {
		d, err := newMemDevice(fmt.Sprintf("load-%05d", i))
		if err != nil {
			return err
		}
		if err := add(&d, nil); err != nil {
			return err
		}
		r.fdevs = append(r.fdevs, d)
		if i%2000 == 0 {
			r.log.Info("enrolled", "n", i, "elapsed", time.Since(t0).Round(time.Second))
		}
	}
	if r.fc.Freeze {
		for i, fwd := range [][]registry.ForwardSpec{nil, {{Name: "ssh", Target: "localhost:22", Probe: "none"}}} {
			d, err := newDevice(keys, []string{"freeze-probed", "freeze-unprobed"}[i])
			if err != nil {
				return err
			}
			if err := add(&d, fwd); err != nil {
				return err
			}
			r.freezeDev = append(r.freezeDev, d)
		}
	}
	res.EnrolSeconds = round3(time.Since(t0).Seconds())
	r.log.Info("enrolled", "n", total, "seconds", res.EnrolSeconds)
	var busy int
	for _, d := range append(append([]device{}, r.fdevs...), r.freezeDev...) {
		if portFree(d.Ports[0]) != nil {
			busy++
		}
	}
	if busy > 0 {
		return fmt.Errorf("%d leased ports in %s are busy on 127.0.0.1 (another test?): pick another -port-range", busy, r.cfg.PortRange)
	}
	if err := st.Close(); err != nil {
		return err
	}
	if r.fc.DispatchDevices > 0 {
		if err := copyFile(r.db, filepath.Join(work, "master.db")); err != nil {
			return err
		}
	}
	// startRaw writes h.devs' lines to the baseline's authorized_keys.
	r.devs = append(append([]device{}, r.fdevs[:r.maxPoint()]...), r.freezeDev...)
	return nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func (r *fleetRun) findPids() error {
	var err error
	r.daemonPid = r.slave.cmd.Process.Pid
	if r.slaveL, err = pidFromFile(statedir.Dir(r.state).PidFile(), statedir.Dir(r.state).SSHDConfig()); err != nil {
		return err
	}
	if r.rawL, err = pidFromFile(filepath.Join(r.raw, "sshd.pid"), filepath.Join(r.raw, "sshd_config")); err != nil {
		return err
	}
	r.slaveLog = statedir.Dir(r.state).Log()
	r.rawLog = filepath.Join(r.raw, "sshd.log")
	r.metrics = "http://127.0.0.1:" + strconv.Itoa(r.fc.MetricsPort) + "/metrics"
	return nil
}

// point brings n generated devices up on one side, measures setup, density
// and a steady window, optionally the reconnect storm, and takes them down.
func (r *fleetRun) point(ctx context.Context, side string, n int, timeHook bool, res *FleetResult) (*SidePoint, error) {
	sp := &SidePoint{}
	port, listener, logPath := r.cfg.SlavePort, r.slaveL, r.slaveLog
	if side == "raw" {
		port, listener, logPath = r.cfg.RawPort, r.rawL, r.rawLog
	}
	devs := r.fdevs[:n]
	if left := descendants(listener); len(left) > 0 {
		r.log.Warn("sessions left from before", "side", side, "procs", len(left))
	}
	gen := newFleet(genConfig{Addr: "127.0.0.1:" + strconv.Itoa(port), User: r.cfg.TunnelUser, Sources: r.sources,
		Parallel: r.cfg.Parallel, Reconnect: n == r.fc.ReconnectAt, MinBackoff: r.fc.MinBackoff, MaxBackoff: r.fc.MaxBackoff,
		Jitter: r.fc.Jitter, HandshakeTimeout: 60 * time.Second}, devs)
	defer func() {
		gen.stop()
		ports := make([]int, 0, n)
		for _, d := range devs {
			ports = append(ports, d.Ports[0])
		}
		if err := waitPortsFree(context.WithoutCancel(ctx), ports, 120*time.Second); err != nil {
			r.log.Warn("ports after the round", "err", err)
		}
		waitNoSessions(listener, 60*time.Second)
	}()

	// Setup storm.
	lBefore, _ := readStat(listener)
	dBefore, _ := readStat(r.daemonPid)
	var mBefore promSample
	if side == "mas4h" {
		mBefore, _ = scrape(ctx, r.metrics)
	}
	var hookDone chan struct{}
	stopHook := make(chan struct{})
	if timeHook {
		hookDone = make(chan struct{})
		go func() {
			defer close(hookDone)
			l, samples, err := measureHookEvery(ctx, r.hook, devs, 100000, 20*time.Millisecond, stopHook)
			if err == nil {
				res.HookStorm = &l
				res.HookStormTunnels = n
				res.HookSamples = append(res.HookSamples, samples...)
			}
		}()
	}
	r.log.Info("setup storm", "side", side, "tunnels", n, "parallel", r.cfg.Parallel)
	sctx, cancel := context.WithTimeout(ctx, r.fc.SetupTimeout)
	t0 := time.Now()
	gen.start(ctx)
	last, err := gen.waitUpSince(sctx, t0, n)
	cancel()
	close(stopHook)
	if hookDone != nil {
		<-hookDone
	}
	c := gen.snapshot(true)
	sp.Setup = SetupResult{Attempts: c.Attempts, Failures: c.Failures, FirstError: c.FirstError,
		PerTunnel: summarize(gen.setupLatencies(), 0), Up: gen.Up()}
	if err != nil {
		return sp, fmt.Errorf("setup: %d of %d up after %s: %w (first error: %s)", gen.Up(), n, r.fc.SetupTimeout, err, c.FirstError)
	}
	sp.Setup.Seconds = round3(last.Sub(t0).Seconds())
	sp.Setup.PerSecond = round3(float64(n) / last.Sub(t0).Seconds())
	tree := sampleTree(listener, false)
	dAfter, _ := readStat(r.daemonPid)
	sp.Setup.SSHDCPUSeconds = round3(float64(tree.Ticks-lBefore.All()) / userHZ)
	if side == "mas4h" {
		sp.Setup.DaemonCPUSeconds = round3(float64(dAfter.Own()-dBefore.Own()) / userHZ)
		if mAfter, err := scrape(ctx, r.metrics); err == nil {
			p99 := histQuantile(mBefore, mAfter, "mas4h_hook_duration_seconds", 0.99)
			p50 := histQuantile(mBefore, mAfter, "mas4h_hook_duration_seconds", 0.50)
			if !math.IsNaN(p99) {
				sp.Setup.DaemonHookP50Ms, sp.Setup.DaemonHookP99Ms = round3(p50*1000), round3(p99*1000)
			}
			sp.Setup.DaemonHookCalls = int64(mAfter.delta(mBefore, `mas4h_hook_requests_total{verdict="allow"}`) +
				mAfter.delta(mBefore, `mas4h_hook_requests_total{verdict="deny"}`))
		}
	}
	r.log.Info("setup done", "side", side, "tunnels", n, "seconds", sp.Setup.Seconds, "per_s", sp.Setup.PerSecond,
		"sshd_cpu_s", sp.Setup.SSHDCPUSeconds, "daemon_cpu_s", sp.Setup.DaemonCPUSeconds, "failures", c.Failures)
	_, loop, _ := listeners("/proc")
	for _, d := range devs {
		if loop[d.Ports[0]] {
			sp.Setup.BoundLoopback++
		}
	}

	// Density, once the last sessions have settled.
	time.Sleep(2 * time.Second)
	tree = sampleTree(listener, true)
	sp.Density = DensityResult{SSHDProcs: tree.Procs, SSHDPSSMB: round3(float64(tree.PSSKB) / 1024),
		PSSPerTunnelKB: round3(float64(tree.PSSKB) / float64(n))}
	if side == "mas4h" {
		pss, rss, _ := readPSS(r.daemonPid)
		sp.Density.DaemonPSSMB, sp.Density.DaemonRSSMB = round3(float64(pss)/1024), round3(float64(rss)/1024)
		if tree.PSSKB > 0 {
			sp.Density.MemOverheadPct = round3(100 * float64(pss) / float64(tree.PSSKB))
		}
	}

	// Steady window: sshd's CPU with n idle tunnels (keepalives; on mas4h's
	// side also the probes it answers), the daemon's CPU and its cycles.
	win := r.fc.RawWindow
	if side == "mas4h" {
		win = r.fc.Window
	}
	if win > 0 {
		r.log.Info("steady window", "side", side, "tunnels", n, "for", win)
		sp.Steady = r.steady(ctx, side, listener, n, win)
	}

	if n == r.fc.ReconnectAt {
		rc, err := r.reconnect(ctx, gen, listener, logPath, n)
		sp.Reconnect = rc
		if err != nil {
			return sp, err
		}
	}
	return sp, nil
}

// steady samples the daemon's CPU every 20 ms for win and splits it into
// probe cycles: bursts of CPU separated by a second or more of none.
func (r *fleetRun) steady(ctx context.Context, side string, listener, n int, win time.Duration) *SteadyResult {
	s := &SteadyResult{Seconds: win.Seconds()}
	before := sampleTree(listener, false)
	var mBefore promSample
	if side == "mas4h" {
		mBefore, _ = scrape(ctx, r.metrics)
	}
	var samples []cpuSample
	t := time.NewTicker(20 * time.Millisecond)
	end := time.Now().Add(win)
	for time.Now().Before(end) && ctx.Err() == nil {
		if st, err := readStat(r.daemonPid); err == nil {
			samples = append(samples, cpuSample{At: time.Now(), Ticks: st.Own()})
		}
		<-t.C
	}
	t.Stop()
	after := sampleTree(listener, false)
	s.SSHDCores = round3(float64(ownDelta(before, after)) / userHZ / win.Seconds())
	if side != "mas4h" || len(samples) < 2 {
		return s
	}
	if mAfter, err := scrape(ctx, r.metrics); err == nil && mBefore != nil {
		s.ProbesOK = int64(mAfter.delta(mBefore, `mas4h_probes_total{result="ok"}`))
		s.ProbesFailed = int64(mAfter.delta(mBefore, `mas4h_probes_total{result="fail"}`))
	}
	s.DaemonCores = round3(float64(samples[len(samples)-1].Ticks-samples[0].Ticks) / userHZ / win.Seconds())
	cycles := findCycles(samples, time.Second, 3)
	s.Cycles = len(cycles)
	var walls, cpus []float64
	for _, c := range cycles {
		walls = append(walls, c.End.Sub(c.Start).Seconds())
		cpus = append(cpus, float64(c.Ticks)/userHZ)
	}
	s.CycleWallSeconds = round3(median(walls))
	s.BurstCPUSeconds = round3(median(cpus))
	if s.ProbesOK+s.ProbesFailed > 0 && n > 0 {
		s.ProbedCycles = round3(float64(s.ProbesOK+s.ProbesFailed) / float64(n))
		total := float64(samples[len(samples)-1].Ticks-samples[0].Ticks) / userHZ
		s.CycleCPUSeconds = round3(total / s.ProbedCycles)
	}
	return s
}

// reconnect kills every session of the listener at once (SIGKILL, as a
// slave host's crash would) and times until every device is back.
func (r *fleetRun) reconnect(ctx context.Context, gen *fleet, listener int, logPath string, n int) (*ReconnectResult, error) {
	rc := &ReconnectResult{Tunnels: n}
	logStart, _ := fileSize(logPath)
	gen.snapshot(true)
	pids := descendants(listener)
	rc.KilledProcs = len(pids)
	r.log.Info("reconnect storm: SIGKILL every session", "procs", len(pids), "tunnels", n)
	t0 := time.Now()
	killAll(pids)
	sctx, cancel := context.WithTimeout(ctx, r.fc.SetupTimeout)
	defer cancel()
	last, err := gen.waitUpSince(sctx, t0, n)
	c := gen.snapshot(true)
	rc.Attempts, rc.Failures, rc.FirstError = c.Attempts, c.Failures, c.FirstError
	rc.Refused = c.Failures[failRefused]
	if b, e := readFrom(logPath, logStart); e == nil {
		rc.SSHDMaxStartupsDrops = countMaxStartups(b)
	}
	if err != nil {
		k, _ := gen.upSince(t0)
		return rc, fmt.Errorf("reconnect storm: %d of %d back after %s: %w", k, n, r.fc.SetupTimeout, err)
	}
	rc.Seconds = round3(last.Sub(t0).Seconds())
	r.log.Info("reconnect storm done", "seconds", rc.Seconds, "attempts", rc.Attempts, "refused", rc.Refused,
		"maxstartups_drops", rc.SSHDMaxStartupsDrops)
	return rc, nil
}

func waitNoSessions(listener int, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && len(descendants(listener)) > 0 {
		time.Sleep(100 * time.Millisecond)
	}
}
