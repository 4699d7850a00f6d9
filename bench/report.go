package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mas4h/mas4h/atomicfile"
)

// Result is everything one run measured; written as JSON and as a table.
type Result struct {
	Date    string  `json:"date"`
	Machine Machine `json:"machine"`
	Params  Params  `json:"params"`

	Hook         Latency  `json:"hook_daemon"`
	HookFallback Latency  `json:"hook_cache_fallback"`
	HookSamples  []string `json:"hook_failure_samples,omitempty"`

	Mas4h Side `json:"tunnels_mas4h"`
	Raw   Side `json:"tunnels_raw_sshd"`
	// TimeRatio is mas4h's median setup time over raw sshd's, which is also
	// raw's tunnel rate over mas4h's: 1.10 means mas4h is 10% slower.
	TimeRatio float64 `json:"time_ratio_mas4h_over_raw"`
}

// Machine describes where the numbers came from.
type Machine struct {
	NProc  int    `json:"nproc"`
	Kernel string `json:"kernel"`
	SSHD   string `json:"sshd"`
	Go     string `json:"go"`
}

// Params are the knobs of the run.
type Params struct {
	Devices      int `json:"devices"`
	HookRuns     int `json:"hook_runs"`
	FallbackRuns int `json:"fallback_runs"`
	Rounds       int `json:"rounds"`
	Parallel     int `json:"parallel"`
}

// Side is one sshd's rounds in the tunnel comparison.
type Side struct {
	Rounds        []Storm `json:"rounds"`
	MedianSeconds float64 `json:"median_seconds"`
	TunnelsPerSec float64 `json:"tunnels_per_second"`
	Failures      int     `json:"failures"`
}

func (s *Side) finish(devices int) {
	var secs []float64
	s.Failures = 0
	for _, r := range s.Rounds {
		s.Failures += r.Failures
		if r.Failures == 0 {
			secs = append(secs, r.Seconds)
		}
	}
	s.MedianSeconds = round3(median(secs))
	if s.MedianSeconds > 0 {
		s.TunnelsPerSec = round3(float64(devices) / s.MedianSeconds)
	}
}

// WriteJSON writes r to dir/issue2-<date>.json and returns the path.
func (r *Result) WriteJSON(dir string) (string, error) {
	return writeJSON(dir, "issue2-"+r.Date+".json", r)
}

// RunError is err of a run whose ctx had a limit of timeout, saying when
// the limit or an interruption ended it.
func RunError(ctx context.Context, timeout time.Duration, err error) error {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("run exceeded -timeout %s: %w", timeout, err)
	case errors.Is(ctx.Err(), context.Canceled):
		return fmt.Errorf("interrupted: %w", err)
	}
	return err
}

// writeJSON writes v, indented, to dir/name (creating dir) and returns the
// path.
func writeJSON(dir, name string, v any) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("creating results dir: %w", err)
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return "", err
	}
	path := filepath.Join(dir, name)
	if err := atomicfile.Write(path, append(b, '\n'), 0o644); err != nil {
		return "", fmt.Errorf("writing results: %w", err)
	}
	return path, nil
}

// WriteTable prints r as markdown.
func (r *Result) WriteTable(w io.Writer) {
	m, p := r.Machine, r.Params
	fmt.Fprintf(w, "## mas4h-bench %s\n\n", r.Date)
	fmt.Fprintf(w, "nproc %d · kernel %s · %s · %s\n\n", m.NProc, m.Kernel, m.SSHD, m.Go)

	fmt.Fprintf(w, "### authkeys hook latency (fresh process per call, as the tunnel user; %d enrolled devices)\n\n", p.Devices)
	fmt.Fprintln(w, "| path | runs | failures | p50 ms | p90 ms | p99 ms | max ms |")
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|")
	for _, row := range []struct {
		name string
		l    Latency
	}{{"daemon (unix socket)", r.Hook}, {"fallback (cache.db, daemon stopped)", r.HookFallback}} {
		fmt.Fprintf(w, "| %s | %d | %d | %.2f | %.2f | %.2f | %.2f |\n",
			row.name, row.l.Runs, row.l.Failures, row.l.P50Ms, row.l.P90Ms, row.l.P99Ms, row.l.MaxMs)
	}

	fmt.Fprintf(w, "\n### tunnel setup: %d OpenSSH clients at once (≤%d in handshake), until every leased port listens\n\n", p.Devices, p.Parallel)
	hdr := "| sshd |"
	sep := "|---|"
	for i := 1; i <= p.Rounds; i++ {
		hdr += fmt.Sprintf(" round %d s |", i)
		sep += "---:|"
	}
	fmt.Fprintln(w, hdr+" median s | tunnels/s | per-tunnel p50 ms | per-tunnel p90 ms | failures |")
	fmt.Fprintln(w, sep+"---:|---:|---:|---:|---:|")
	for _, row := range []struct {
		name string
		s    Side
	}{{"mas4h (AuthorizedKeysCommand)", r.Mas4h}, {"raw (AuthorizedKeysFile)", r.Raw}} {
		var cells []string
		var per []float64
		var per90 []float64
		for _, st := range row.s.Rounds {
			if st.Failures > 0 {
				cells = append(cells, fmt.Sprintf("fail %d", st.Failures))
			} else {
				cells = append(cells, fmt.Sprintf("%.3f", st.Seconds))
			}
			per = append(per, st.PerTunnel.P50Ms)
			per90 = append(per90, st.PerTunnel.P90Ms)
		}
		for len(cells) < p.Rounds {
			cells = append(cells, "–")
		}
		fmt.Fprintf(w, "| %s | %s | %.3f | %.1f | %.1f | %.1f | %d |\n", row.name, strings.Join(cells, " | "),
			row.s.MedianSeconds, row.s.TunnelsPerSec, median(per), median(per90), row.s.Failures)
	}
	fmt.Fprintf(w, "\nmas4h / raw median setup time: **%.3f×** (= raw tunnels/s ÷ mas4h tunnels/s; >1 means mas4h is slower)\n", r.TimeRatio)
	for _, s := range r.HookSamples {
		fmt.Fprintf(w, "\nhook failure sample: %s", s)
	}
	fmt.Fprintln(w)
}
