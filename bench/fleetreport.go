package bench

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// FleetResult is everything one issue-7 run measured; written as JSON and
// as markdown.
type FleetResult struct {
	Date         string      `json:"date"`
	Started      string      `json:"started"`
	Seconds      float64     `json:"seconds"`
	Machine      Machine     `json:"machine"`
	Params       FleetParams `json:"params"`
	Limits       Limits      `json:"limits"`
	EnrolSeconds float64     `json:"enrol_seconds"`
	HookCommand  string      `json:"hook_command"`

	HookIdle         Latency  `json:"hook_idle"`
	HookStorm        *Latency `json:"hook_during_setup_storm,omitempty"`
	HookStormTunnels int      `json:"hook_storm_tunnels,omitempty"`
	HookSamples      []string `json:"hook_failure_samples,omitempty"`

	Points   []Point   `json:"points"`
	Freeze   *Freeze   `json:"freeze,omitempty"`
	Dispatch *Dispatch `json:"dispatch,omitempty"`
	Notes    []string  `json:"notes,omitempty"`
}

// FleetParams are the knobs of the run.
type FleetParams struct {
	Points          []int   `json:"points"`
	ReconnectAt     int     `json:"reconnect_at"`
	Parallel        int     `json:"parallel"`
	Sources         int     `json:"sources"`
	Window          string  `json:"window"`
	Jitter          float64 `json:"jitter"`
	MinBackoff      string  `json:"min_backoff"`
	MaxBackoff      string  `json:"max_backoff"`
	DispatchDevices int     `json:"dispatch_devices"`
	DispatchSlaves  int     `json:"dispatch_slaves"`
	DispatchClients int     `json:"dispatch_clients"`
	// SlaveFlags are the `mas4h slave` flags chosen for the run (--keys-file).
	SlaveFlags []string `json:"slave_flags,omitempty"`
}

// Point is one fleet size on both sides.
type Point struct {
	Tunnels int        `json:"tunnels"`
	Mas4h   *SidePoint `json:"mas4h"`
	Raw     *SidePoint `json:"raw_sshd"`
	// RateRatio is mas4h's setup rate over raw's (goal ≥ 0.9).
	RateRatio float64 `json:"rate_ratio"`
	// Setup CPU per tunnel: sshd (sessions, pre-auth children, hook runs)
	// plus, for mas4h, the daemon; and mas4h's extra as a share of raw's.
	CPUPerTunnelMsMas4h float64 `json:"setup_cpu_ms_per_tunnel_mas4h"`
	CPUPerTunnelMsRaw   float64 `json:"setup_cpu_ms_per_tunnel_raw"`
	CPUOverheadPct      float64 `json:"setup_cpu_overhead_pct"`
	// Memory: mas4h's sshd tree plus daemon PSS over raw's sshd tree.
	MemOverheadPct float64 `json:"mem_overhead_pct"`
}

func (p *Point) finish() {
	if p.Mas4h == nil || p.Raw == nil || p.Tunnels == 0 {
		return
	}
	m, r := p.Mas4h, p.Raw
	if r.Setup.PerSecond > 0 {
		p.RateRatio = round3(m.Setup.PerSecond / r.Setup.PerSecond)
	}
	n := float64(p.Tunnels)
	p.CPUPerTunnelMsMas4h = round3((m.Setup.SSHDCPUSeconds + m.Setup.DaemonCPUSeconds) * 1000 / n)
	p.CPUPerTunnelMsRaw = round3(r.Setup.SSHDCPUSeconds * 1000 / n)
	if p.CPUPerTunnelMsRaw > 0 {
		p.CPUOverheadPct = round3(100 * (p.CPUPerTunnelMsMas4h - p.CPUPerTunnelMsRaw) / p.CPUPerTunnelMsRaw)
	}
	if r.Density.SSHDPSSMB > 0 {
		p.MemOverheadPct = round3(100 * (m.Density.SSHDPSSMB + m.Density.DaemonPSSMB - r.Density.SSHDPSSMB) / r.Density.SSHDPSSMB)
	}
}

// SidePoint is one side (mas4h or raw sshd) at one fleet size.
type SidePoint struct {
	Setup     SetupResult      `json:"setup"`
	Density   DensityResult    `json:"density"`
	Steady    *SteadyResult    `json:"steady,omitempty"`
	Reconnect *ReconnectResult `json:"reconnect,omitempty"`
}

// SetupResult is one setup storm: every device connecting, at most
// Parallel in their handshake, until every forward is bound.
type SetupResult struct {
	Seconds       float64          `json:"seconds"`
	PerSecond     float64          `json:"tunnels_per_second"`
	Up            int              `json:"up"`
	BoundLoopback int              `json:"bound_on_127_0_0_1"`
	Attempts      int64            `json:"attempts"`
	Failures      map[string]int64 `json:"failures,omitempty"`
	FirstError    string           `json:"first_error,omitempty"`
	PerTunnel     Latency          `json:"per_tunnel"`
	// CPU of the storm: sshd's listener and session tree (own plus reaped
	// children: pre-auth processes and hook runs) and the slave daemon.
	SSHDCPUSeconds   float64 `json:"sshd_cpu_seconds"`
	DaemonCPUSeconds float64 `json:"daemon_cpu_seconds,omitempty"`
	// The daemon's own view of the hook (its hook_duration_seconds
	// histogram over the storm): time to decide, socket to answer.
	DaemonHookCalls int64   `json:"daemon_hook_calls,omitempty"`
	DaemonHookP50Ms float64 `json:"daemon_hook_p50_ms,omitempty"`
	DaemonHookP99Ms float64 `json:"daemon_hook_p99_ms,omitempty"`
}

// DensityResult is memory with every tunnel up.
type DensityResult struct {
	SSHDProcs      int     `json:"sshd_procs"`
	SSHDPSSMB      float64 `json:"sshd_pss_mb"`
	PSSPerTunnelKB float64 `json:"sshd_pss_per_tunnel_kb"`
	DaemonPSSMB    float64 `json:"daemon_pss_mb,omitempty"`
	DaemonRSSMB    float64 `json:"daemon_rss_mb,omitempty"`
	MemOverheadPct float64 `json:"daemon_pss_pct_of_sshd,omitempty"`
}

// SteadyResult is a window with every tunnel up and nothing connecting.
type SteadyResult struct {
	Seconds      float64 `json:"seconds"`
	SSHDCores    float64 `json:"sshd_cores"`
	DaemonCores  float64 `json:"daemon_cores,omitempty"`
	ProbesOK     int64   `json:"probes_ok,omitempty"`
	ProbesFailed int64   `json:"probes_failed,omitempty"`
	// ProbedCycles is probes / tunnels: how many full cycles the window held.
	ProbedCycles float64 `json:"probed_cycles,omitempty"`
	// CycleCPUSeconds is the daemon's CPU over the window / ProbedCycles.
	CycleCPUSeconds float64 `json:"cycle_cpu_seconds,omitempty"`
	// Cycles, CycleWallSeconds: bursts of the daemon's CPU (sampled every
	// 20 ms) with quiet on both sides; median length of one.
	Cycles           int     `json:"cpu_bursts,omitempty"`
	CycleWallSeconds float64 `json:"cycle_wall_seconds,omitempty"`
	BurstCPUSeconds  float64 `json:"burst_cpu_seconds,omitempty"`
}

// ReconnectResult is every session killed at once and the fleet's way back.
type ReconnectResult struct {
	Tunnels              int              `json:"tunnels"`
	KilledProcs          int              `json:"killed_procs"`
	Seconds              float64          `json:"seconds"`
	Attempts             int64            `json:"attempts"`
	Refused              int64            `json:"refused"`
	Failures             map[string]int64 `json:"failures,omitempty"`
	SSHDMaxStartupsDrops int              `json:"sshd_maxstartups_drops"`
	FirstError           string           `json:"first_error,omitempty"`
}

// WriteJSON writes r to dir/issue7-<date>-<label>.json and returns the path.
func (r *FleetResult) WriteJSON(dir, label string) (string, error) {
	return writeJSON(dir, "issue7-"+r.Date+"-"+label+".json", r)
}

func f1(x float64) string { return fmt.Sprintf("%.1f", x) }

// cores prints a CPU share; /proc counts each process's time in 10 ms
// ticks, so thousands of nearly idle sessions can add up to nothing.
func cores(x float64) string {
	if x == 0 {
		return "< 0.001"
	}
	return fmt.Sprintf("%.3f", x)
}
func f2(x float64) string { return fmt.Sprintf("%.2f", x) }

func failStr(m map[string]int64) string {
	if len(m) == 0 {
		return "0"
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var parts []string
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", m[k], k))
	}
	return strings.Join(parts, ", ")
}

// WriteTable prints r as markdown, raw sshd beside every mas4h figure.
func (r *FleetResult) WriteTable(w io.Writer) {
	m := r.Machine
	fmt.Fprintf(w, "## mas4h-fleet %s\n\n", r.Date)
	fmt.Fprintf(w, "nproc %d · kernel %s · %s · %s · %d MB RAM · run took %.0f s\n\n", m.NProc, m.Kernel, m.SSHD, m.Go, r.Limits.MemTotalMB, r.Seconds)
	fmt.Fprintf(w, "Load generator: one Go process (golang.org/x/crypto/ssh), one ed25519 key and lease per device, `tcpip-forward` on `localhost:PORT`, "+
		"forwarded connections answered with an SSH banner; %d source addresses (127.0.1.x); ≤ %d handshakes in flight during setup. "+
		"raw = the same sshd binary and sshd_config with the same keys and options in an AuthorizedKeysFile.\n\n", r.Params.Sources, r.Params.Parallel)
	if len(r.Params.SlaveFlags) > 0 {
		fmt.Fprintf(w, "mas4h slave run with `%s`.\n\n", strings.Join(r.Params.SlaveFlags, " "))
	} else {
		fmt.Fprintln(w, "mas4h slave run with its defaults (every authentication runs the hook).")
		fmt.Fprintln(w)
	}

	fmt.Fprintln(w, "### 1. Setup: every device connecting, until every forward is bound")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| tunnels | mas4h s | raw s | mas4h tunnels/s | raw tunnels/s | rate ratio (goal ≥ 0.9) | per-tunnel p50 / p99 ms mas4h | raw | failed attempts mas4h | raw |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, p := range r.Points {
		if p.Mas4h == nil || p.Raw == nil {
			continue
		}
		a, b := p.Mas4h.Setup, p.Raw.Setup
		fmt.Fprintf(w, "| %d | %.2f | %.2f | %.1f | %.1f | **%.3f** | %.0f / %.0f | %.0f / %.0f | %s | %s |\n", p.Tunnels,
			a.Seconds, b.Seconds, a.PerSecond, b.PerSecond, p.RateRatio, a.PerTunnel.P50Ms, a.PerTunnel.P99Ms,
			b.PerTunnel.P50Ms, b.PerTunnel.P99Ms, failStr(a.Failures), failStr(b.Failures))
	}

	fmt.Fprintln(w)
	fmt.Fprintln(w, "### 2. Density and cost: every tunnel up")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| tunnels | sshd PSS/tunnel KB mas4h | raw | daemon PSS / RSS MB | memory overhead % | setup CPU ms/tunnel mas4h (sshd + hook + daemon) | raw | CPU overhead % (goal ≤ 5) | idle sshd cores mas4h (answers probes) | raw | daemon cores |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, p := range r.Points {
		if p.Mas4h == nil || p.Raw == nil {
			continue
		}
		a, b := p.Mas4h, p.Raw
		var sa, sb, da string = "–", "–", "–"
		if a.Steady != nil {
			sa, da = cores(a.Steady.SSHDCores), cores(a.Steady.DaemonCores)
		}
		if b.Steady != nil {
			sb = cores(b.Steady.SSHDCores)
		}
		fmt.Fprintf(w, "| %d | %.0f | %.0f | %s / %s | %s | %s | %s | **%s** | %s | %s | %s |\n", p.Tunnels,
			a.Density.PSSPerTunnelKB, b.Density.PSSPerTunnelKB, f1(a.Density.DaemonPSSMB), f1(a.Density.DaemonRSSMB),
			f2(p.MemOverheadPct), f1(p.CPUPerTunnelMsMas4h), f1(p.CPUPerTunnelMsRaw), f1(p.CPUOverheadPct), sa, sb, da)
	}

	fmt.Fprintln(w)
	fmt.Fprintln(w, "### 3. authkeys hook latency (fork to exit, as the tunnel user, as sshd runs it; warm cache)")
	fmt.Fprintln(w)
	fmt.Fprintf(w, "hook: `%s`\n\n", r.HookCommand)
	fmt.Fprintln(w, "| when | runs | failures | p50 ms | p90 ms | p99 ms (goal ≤ 5) | max ms | CPU ms/run | daemon-side p50 / p99 ms |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
	row := func(name string, l Latency, daemon string) {
		fmt.Fprintf(w, "| %s | %d | %d | %.2f | %.2f | **%.2f** | %.2f | %.2f | %s |\n", name, l.Runs, l.Failures, l.P50Ms, l.P90Ms, l.P99Ms, l.MaxMs, l.CPUMeanMs, daemon)
	}
	row("idle", r.HookIdle, "–")
	if r.HookStorm != nil {
		daemon := "–"
		for _, p := range r.Points {
			if p.Tunnels == r.HookStormTunnels && p.Mas4h != nil {
				daemon = fmt.Sprintf("%.2f / %.2f (%d calls)", p.Mas4h.Setup.DaemonHookP50Ms, p.Mas4h.Setup.DaemonHookP99Ms, p.Mas4h.Setup.DaemonHookCalls)
			}
		}
		row(fmt.Sprintf("during the %d-device setup storm", r.HookStormTunnels), *r.HookStorm, daemon)
	}
	fmt.Fprintln(w, "\nraw sshd runs no hook (it reads the file); its cost is in the setup rows above.")

	fmt.Fprintln(w)
	fmt.Fprintln(w, "### 4. Liveness in steady state: every tunnel up and idle (mas4h; raw sshd has none)")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "The daemon reads every session's TCP state each second, walks the process and socket tables every 10 s,")
	fmt.Fprintln(w, "and probes a healthy forward once in --probe-interval (runs before 2026-12: every tunnel every 10 s).")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| tunnels | window s | daemon CPU s per 10 s (goal ≤ 1 at 5,000) | daemon cores | probes ok / failed | sshd cores (keepalives, probes) | raw sshd cores (keepalives) |")
	fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|")
	for _, p := range r.Points {
		if p.Mas4h == nil || p.Mas4h.Steady == nil {
			continue
		}
		s := p.Mas4h.Steady
		raw := "–"
		if p.Raw != nil && p.Raw.Steady != nil {
			raw = cores(p.Raw.Steady.SSHDCores)
		}
		fmt.Fprintf(w, "| %d | %.0f | **%.3f** | %s | %d / %d | %s | %s |\n", p.Tunnels, s.Seconds, s.DaemonCores*10,
			cores(s.DaemonCores), s.ProbesOK, s.ProbesFailed, cores(s.SSHDCores), raw)
	}

	fmt.Fprintln(w)
	fmt.Fprintln(w, "### 5. Reconnect storm: every session SIGKILLed at once, devices back with the agent's backoff")
	fmt.Fprintln(w)
	fmt.Fprintf(w, "backoff %s doubling to %s, each delay cut by up to %.0f%% at random.\n\n", r.Params.MinBackoff, r.Params.MaxBackoff, r.Params.Jitter*100)
	fmt.Fprintln(w, "| side | tunnels | all back s (goal ≤ 60) | attempts | refused before banner (generator) | sshd \"past MaxStartups\" drops | failures |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---|")
	for _, p := range r.Points {
		for _, s := range []struct {
			name string
			sp   *SidePoint
		}{{"mas4h", p.Mas4h}, {"raw", p.Raw}} {
			if s.sp == nil || s.sp.Reconnect == nil {
				continue
			}
			rc := s.sp.Reconnect
			fmt.Fprintf(w, "| %s | %d | **%.2f** | %d | %d | %d | %s |\n", s.name, rc.Tunnels, rc.Seconds, rc.Attempts, rc.Refused,
				rc.SSHDMaxStartupsDrops, failStr(rc.Failures))
		}
	}

	if d := r.Dispatch; d != nil {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "### 6. Master dispatch: POST /api/v1/slots over HTTP on loopback (no raw-sshd analogue)")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| devices | slaves | clients | seconds | slots/s | p50 ms | p99 ms | max ms | errors | master CPU cores |")
		fmt.Fprintln(w, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
		fmt.Fprintf(w, "| %d | %d | %d | %.1f | **%.0f** | %.2f | **%.2f** | %.2f | %d | %.2f |\n", d.Devices, d.Slaves, d.Clients, d.Seconds,
			d.PerSecond, d.Latency.P50Ms, d.Latency.P99Ms, d.Latency.MaxMs, d.Errors, d.MasterCPU)
		if d.FirstError != "" {
			fmt.Fprintf(w, "\nfirst error: %s\n", d.FirstError)
		}
	}

	if f := r.Freeze; f != nil {
		fmt.Fprintln(w)
		fmt.Fprintln(w, "### 7. Frozen client (SIGSTOP of `ssh -N -R`): time until its leased port is free, default settings")
		fmt.Fprintln(w)
		fmt.Fprintln(w, "| detection | seconds |")
		fmt.Fprintln(w, "|---|---:|")
		fmt.Fprintf(w, "| the default forward (ssh-banner probe) | **%.1f** |\n", f.ProbeSeconds)
		fmt.Fprintf(w, "| a forward with probe=none (TCP state alone; before 2026-12, OpenSSH's ClientAlive) | %.1f |\n", f.ClientAliveSeconds)
		fmt.Fprintf(w, "\n%s\n", f.Settings)
		if f.Error != "" {
			fmt.Fprintf(w, "\nerror: %s\n", f.Error)
		}
	}

	l := r.Limits
	fmt.Fprintln(w)
	fmt.Fprintf(w, "Limits: MemAvailable %d MB at start · pid_max %d · nofile %d · nproc %d · somaxconn %d (sshd's own listen backlog is 128) · ephemeral ports %s\n",
		l.MemAvailableMB, l.PidMax, l.NoFile, l.NProc, l.Somaxconn, l.EphemeralPorts)
	for _, c := range l.Changes {
		fmt.Fprintf(w, "- raised: %s\n", c)
	}
	for _, p := range l.Problems {
		fmt.Fprintf(w, "- NOT raised: %s\n", p)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "- %s\n", n)
	}
	for _, s := range r.HookSamples {
		fmt.Fprintf(w, "\nhook failure sample: %s\n", s)
	}
}
