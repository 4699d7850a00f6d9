// Command mas4h-fleet is issue 7's benchmark: a Go load generator playing
// N devices against a mas4h slave and against the same sshd reading a plain
// authorized_keys file, at several fleet sizes. It measures setup rate,
// memory per tunnel, the hook under load, probe cycles, a reconnect storm,
// master dispatch and frozen-client detection, prints a markdown table and
// writes the numbers as JSON. Run it as root from the repository root:
//
//	go build -o bin/mas4h ./cmd/mas4h && go run ./bench/cmd/mas4h-fleet -preset short
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/backoff"
	"github.com/mas4h/mas4h/bench"
)

func main() {
	os.Exit(run())
}

type preset struct {
	points                     string
	reconnectAt                int
	window, rawWindow          time.Duration
	hookRuns                   int
	dispatchDevices, dClients  int
	dispatchDuration, deadline time.Duration
}

var presets = map[string]preset{
	// make bench: under 5 minutes.
	"short": {"200,500", 500, 11 * time.Second, 3 * time.Second, 300, 1000, 32, 8 * time.Second, 10 * time.Minute},
	// make bench-full: issue 7's sizes (add 10000 with -points when memory allows).
	"full": {"500,1000,2000,5000", 2000, 31 * time.Second, 10 * time.Second, 1000, 10000, 64, 30 * time.Second, 90 * time.Minute},
}

func run() int {
	var (
		fc        bench.FleetConfig
		name      string
		points    string
		out       string
		timeout   time.Duration
		waitIdle  time.Duration
		render    string
		labelFlag string
	)
	fs := flag.NewFlagSet("mas4h-fleet", flag.ContinueOnError)
	fs.StringVar(&name, "preset", "short", "short (make bench, < 5 min) or full (make bench-full); other flags override it")
	fs.StringVar(&points, "points", "", "fleet sizes, comma-separated (preset: short 200,500; full 500,1000,2000,5000)")
	fs.IntVar(&fc.ReconnectAt, "reconnect-at", -1, "fleet size of the reconnect storm, one of -points (0: none)")
	fs.StringVar(&fc.Bin, "bin", "bin/mas4h", "mas4h binary under test")
	fs.IntVar(&fc.Parallel, "parallel", 64, "devices in their first handshake at once during setup")
	fs.DurationVar(&fc.Window, "window", 0, "steady window on mas4h's side (a few 10 s table walks)")
	fs.DurationVar(&fc.RawWindow, "raw-window", 0, "steady window on raw sshd's side")
	fs.IntVar(&fc.Sources, "sources", 8, "source addresses 127.0.1.1… the devices dial from")
	fs.Float64Var(&fc.Jitter, "jitter", backoff.DefaultJitter, fmt.Sprintf("reconnect backoff jitter: each delay cut by up to this share (the agent's: %.1f)", backoff.DefaultJitter))
	fs.DurationVar(&fc.MinBackoff, "min-backoff", time.Second, "first reconnect delay (the agent's)")
	fs.DurationVar(&fc.MaxBackoff, "max-backoff", time.Minute, "longest reconnect delay (the agent's)")
	fs.DurationVar(&fc.SetupTimeout, "setup-timeout", 5*time.Minute, "limit for one setup storm or reconnect storm")
	fs.IntVar(&fc.HookRuns, "hook-runs", 0, "idle hook runs")
	fs.BoolVar(&fc.KeysFile, "keys-file", true, "run the slave with its keys file, its default (sshd reads known, disconnected devices from a file before the hook); -keys-file=false: every login through the hook")
	fs.BoolVar(&fc.Freeze, "freeze", true, "time detection of frozen OpenSSH clients (about 75 s, while dispatch runs)")
	fs.IntVar(&fc.DispatchDevices, "dispatch-devices", -1, "devices in the master's registry for the dispatch run (0: no dispatch run)")
	fs.IntVar(&fc.DispatchSlaves, "dispatch-slaves", 10, "fake slaves heartbeating to the master")
	fs.IntVar(&fc.DispatchClients, "dispatch-clients", 0, "concurrent HTTP clients asking for slots")
	fs.DurationVar(&fc.DispatchDuration, "dispatch-duration", 0, "how long the dispatch load runs")
	fs.StringVar(&fc.PortRange, "port-range", "10000-20999", "lease range (below the ephemeral range and the e2e tests' 21000-31999)")
	fs.IntVar(&fc.SlavePort, "slave-port", 2401, "mas4h slave's sshd port on 127.0.0.1")
	fs.IntVar(&fc.RawPort, "raw-port", 2402, "baseline sshd port on 127.0.0.1")
	fs.IntVar(&fc.MetricsPort, "metrics-port", 2403, "slave's --metrics-listen port on 127.0.0.1")
	fs.IntVar(&fc.MasterPort, "master-port", 2404, "master's port on 127.0.0.1 for the dispatch run")
	fs.StringVar(&fc.WorkParent, "work-dir", "/var/lib", "where the temporary state dir goes (root-owned all the way up)")
	fs.StringVar(&fc.TunnelUser, "tunnel-user", "mas4h-bench", "tunnel user (created by the slave, removed afterwards when it did not exist)")
	fs.StringVar(&fc.SSHD, "sshd", "/usr/sbin/sshd", "OpenSSH sshd (both sides)")
	fs.StringVar(&fc.SSH, "ssh", "/usr/bin/ssh", "OpenSSH client (frozen-client test)")
	fs.StringVar(&out, "out", "bench/results", "directory for issue7-<date>-<preset>.json")
	fs.DurationVar(&timeout, "timeout", 0, "limit for the whole run (preset: short 10m, full 90m)")
	fs.DurationVar(&waitIdle, "wait-idle", 15*time.Minute, "wait up to this long for other test runs (go test, *.test) to finish first")
	fs.StringVar(&labelFlag, "label", "", "name part of the JSON file (default: the preset, plus -hookonly with -keys-file=false)")
	fs.StringVar(&render, "render", "", "print the table of an earlier run's JSON file and exit (runs nothing)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if render != "" {
		b, err := os.ReadFile(render)
		var res bench.FleetResult
		if err == nil {
			err = json.Unmarshal(b, &res)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "mas4h-fleet: -render:", err)
			return 1
		}
		res.WriteTable(os.Stdout)
		return 0
	}
	label := name // of the JSON file
	if !fc.KeysFile {
		label += "-hookonly"
	}
	if labelFlag != "" {
		label = labelFlag
	}
	p, ok := presets[name]
	if !ok || fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "mas4h-fleet: -preset is short or full; no arguments")
		return 2
	}
	if points == "" {
		points = p.points
	}
	for _, s := range strings.Split(points, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			fmt.Fprintf(os.Stderr, "mas4h-fleet: -points %q: want positive integers\n", points)
			return 2
		}
		fc.Points = append(fc.Points, n)
	}
	// Negative (-reconnect-at, -dispatch-devices) or zero (-hook-runs,
	// -dispatch-clients) means the preset's value.
	if fc.ReconnectAt < 0 {
		fc.ReconnectAt = p.reconnectAt
	}
	if fc.DispatchDevices < 0 {
		fc.DispatchDevices = p.dispatchDevices
	}
	if fc.HookRuns == 0 {
		fc.HookRuns = p.hookRuns
	}
	if fc.DispatchClients == 0 {
		fc.DispatchClients = p.dClients
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{{&fc.Window, p.window}, {&fc.RawWindow, p.rawWindow}, {&fc.DispatchDuration, p.dispatchDuration}, {&timeout, p.deadline}} {
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if fc.ReconnectAt > 0 {
		found := false
		for _, n := range fc.Points {
			found = found || n == fc.ReconnectAt
		}
		if !found {
			fc.Points = append(fc.Points, fc.ReconnectAt)
		}
	}
	if fc.Parallel < 1 || fc.Sources < 0 || fc.Sources > 254 || fc.Jitter < 0 || fc.Jitter > 1 || fc.HookRuns < 1 {
		fmt.Fprintln(os.Stderr, "mas4h-fleet: -parallel and -hook-runs must be positive, -sources 0..254, -jitter 0..1")
		return 2
	}
	var err error
	if fc.Bin, err = filepath.Abs(fc.Bin); err != nil {
		fmt.Fprintln(os.Stderr, "mas4h-fleet:", err)
		return 2
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	defer stop()
	note := waitForIdle(ctx, waitIdle, log)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	res, err := bench.RunFleet(ctx, fc, log)
	if res != nil && note != "" {
		res.Notes = append(res.Notes, note)
	}
	if err != nil {
		err = bench.RunError(ctx, timeout, err)
		fmt.Fprintln(os.Stderr, "mas4h-fleet:", err)
		if res != nil && len(res.Points) > 0 {
			res.Notes = append(res.Notes, "INCOMPLETE: "+err.Error())
			res.WriteTable(os.Stdout)
			if path, err := res.WriteJSON(out, label+"-incomplete"); err == nil {
				fmt.Fprintf(os.Stderr, "wrote %s\n", path)
			}
		}
		return 1
	}
	res.WriteTable(os.Stdout)
	path, err := res.WriteJSON(out, label)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mas4h-fleet:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "wrote %s\n", path)
	return 0
}

// waitForIdle waits (up to limit) while other test runs are active on this
// shared machine, so that neither side's timings disturb the other's. It
// only reads /proc; it never signals anything.
func waitForIdle(ctx context.Context, limit time.Duration, log *slog.Logger) string {
	deadline := time.Now().Add(limit)
	for {
		busy := bench.OtherTestRuns()
		if len(busy) == 0 {
			return ""
		}
		if time.Now().After(deadline) {
			return fmt.Sprintf("other test runs were active during this run (%s): timings may be noisier", strings.Join(busy, "; "))
		}
		log.Info("other test runs are active; waiting", "procs", strings.Join(busy, "; "))
		select {
		case <-ctx.Done():
			return ""
		case <-time.After(time.Minute):
		}
	}
}
