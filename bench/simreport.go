package bench

import (
	"fmt"
	"io"
	"strings"
)

// WriteJSON writes r to dir/issue17-<date>-<config>.json and returns the
// path.
func (r *SimResult) WriteJSON(dir string) (string, error) {
	return writeJSON(dir, "issue17-"+r.Date+"-"+r.Config+".json", r)
}

// WriteTable prints r as markdown.
func (r *SimResult) WriteTable(w io.Writer) {
	p, s := r.Params, r.Setup
	fmt.Fprintf(w, "## mas4h-sim %s, %s: %d devices, %d slaves, %d master(s)\n\n", r.Date, r.Config, p.Devices, p.Slaves, p.Masters)
	fmt.Fprintf(w, "nproc %d · kernel %s · %s · heartbeat interval %s · heartbeat body %.0f KB (%.0f tunnels/slave)\n\n",
		r.Machine.NProc, r.Machine.Kernel, r.Machine.Go, p.HeartbeatInterval, s.HeartbeatBodyKB, s.TunnelsPerSlave)
	fmt.Fprintln(w, "| figure | value |")
	fmt.Fprintln(w, "|---|---:|")
	row := func(name, format string, args ...any) {
		fmt.Fprintf(w, "| %s | "+format+" |\n", append([]any{name}, args...)...)
	}
	var total float64
	for i, m := range r.Masters {
		row(fmt.Sprintf("master %d CPU, cores (RSS MB)", i+1), "%.3f (%.0f)", m.CPUCores, m.RSSMB)
		total += m.CPUCores
	}
	if len(r.Masters) > 1 {
		row("masters' CPU, total cores", "%.3f", total)
		for i, m := range r.Masters {
			row(fmt.Sprintf("master %d grants (whole run) / of them to the %d slaves that beat to other masters", i+1, p.Slaves-m.Slaves),
				"%d / %d", m.Granted, m.GrantedPeerSlaves)
		}
	}
	switch {
	case r.DBCPU != nil:
		row("PostgreSQL CPU, cores", "%.3f", *r.DBCPU)
	case p.DB == "postgres":
		row("PostgreSQL CPU, cores", "not measured (the run ended before the window)")
	default:
		row("database CPU", "n/a (SQLite, inside the master)")
	}
	row("database on disk, MB", "%.1f", float64(r.DBBytes)/(1<<20))
	row("harness CPU (this process), cores", "%.3f", r.HarnessCPU)
	sl := r.Slots
	row(fmt.Sprintf("slot requests: target/granted per s over %.0f s", sl.Seconds), "%.0f / %.1f", sl.TargetRate, sl.AchievedRate)
	row("slot latency p50 / p99 / max, ms", "%.2f / %.2f / %.2f", sl.Latency.P50Ms, sl.Latency.P99Ms, sl.Latency.MaxMs)
	row("slot failures / late (not sent: in-flight bound)", "%d / %d", sl.Latency.Failures, sl.Late)
	row("slot grants that moved the device", "%d", sl.Moved)
	hb := r.Heartbeats
	row(fmt.Sprintf("heartbeats per s (%d in the window)", hb.Latency.Runs), "%.2f", hb.PerSecond)
	row("heartbeat latency p50 / p99 / max, ms", "%.2f / %.2f / %.2f", hb.Latency.P50Ms, hb.Latency.P99Ms, hb.Latency.MaxMs)
	row("heartbeat failures", "%d", hb.Latency.Failures)
	sp := r.Spread
	row("tunnels per slave after the window: min / max / stddev", "%d / %d / %.1f (mean %.1f)", sp.Min, sp.Max, sp.Stddev, sp.Mean)
	if st := r.Storm; st != nil {
		all := "not all"
		if st.AllSeconds > 0 {
			all = fmt.Sprintf("%.2f", st.AllSeconds)
		}
		row(fmt.Sprintf("storm: %s's %d devices re-dispatched, s after the kill", st.Slave, st.Devices), "%s (first %.2f)", all, st.FirstSeconds)
		row("storm: slave declared dead at, s (DeadAfter × interval)", "%.2f (%.0f)", st.DeclaredSeconds, st.DeadAfterSeconds)
		row("storm: requests / granted the dead slave / 503 / other errors", "%d / %d / %d / %d", st.Requests, st.ToDeadSlave, st.Unavailable, st.OtherErrors)
		row("storm: slot latency p50 / p99, ms", "%.2f / %.2f", st.Latency.P50Ms, st.Latency.P99Ms)
		row("storm: tunnels per live slave after: min / max / stddev", "%d / %d / %.1f", st.Spread.Min, st.Spread.Max, st.Spread.Stddev)
	}
	fmt.Fprintf(w, "\nsetup: keys %.1f s; enrolment %.1f s (%d through registry.EnrolDevice, %d beyond the port range by SQL); "+
		"fleet up (every device's first slot, %d in flight) %.1f s = %.0f slots/s, %d retries\n",
		s.KeysSeconds, s.EnrolSeconds, s.ViaRegistry, s.BeyondPortRange, p.FillParallel, s.FillSeconds, s.FillSlotsPerSec, s.FillRetries)
	for _, e := range []string{sl.FirstError, hb.FirstError, s.FillFirstError} {
		if e != "" {
			fmt.Fprintf(w, "\nfirst error: %s\n", e)
		}
	}
	if len(r.Notes) > 0 {
		fmt.Fprintf(w, "\nnote: %s\n", strings.Join(r.Notes, "\n\nnote: "))
	}
}
