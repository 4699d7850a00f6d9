// Command mas4h-sim is issue 17's cluster simulation: 50 fake slaves and
// 100,000 simulated devices against real `mas4h master` processes on one
// registry (SQLite, or PostgreSQL shared by 1 to 3 masters). It measures
// the masters' and the database's CPU, slot latency at a steady rate,
// heartbeat latency with full tunnel lists, how evenly dispatch spreads
// the fleet, and the re-dispatch storm after a slave dies; it prints a
// markdown table and writes bench/results/issue17-<date>-<config>.json.
// From the repository root:
//
//	go build -o bin/mas4h ./cmd/mas4h && go run ./bench/cmd/mas4h-sim -db sqlite
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/mas4h/mas4h/bench"
)

func main() {
	os.Exit(run())
}

func run() int {
	var (
		cfg     bench.SimConfig
		out     string
		timeout time.Duration
		short   bool
	)
	fs := flag.NewFlagSet("mas4h-sim", flag.ContinueOnError)
	fs.StringVar(&cfg.Bin, "bin", "bin/mas4h", "mas4h binary under test")
	fs.StringVar(&cfg.DB, "db", "sqlite", "registry: sqlite (one master) or postgres (a throwaway cluster, -masters share it)")
	fs.IntVar(&cfg.Masters, "masters", 1, "masters sharing the registry (postgres: 1 to 3)")
	fs.IntVar(&cfg.Slaves, "slaves", 50, "fake slaves")
	fs.IntVar(&cfg.Devices, "devices", 100000, "simulated devices")
	fs.StringVar(&cfg.PortRange, "port-range", "1024-65535", "range devices lease their one port each from")
	fs.BoolVar(&cfg.Beyond, "beyond", true, "write the devices the port range cannot hold with plain SQL, on ports above 65535 (the registry refuses them)")
	fs.Float64Var(&cfg.Rate, "rate", 500, "steady slot requests per second")
	fs.DurationVar(&cfg.Duration, "duration", 60*time.Second, "steady window")
	fs.DurationVar(&cfg.Warmup, "warmup", 10*time.Second, "wait between the fleet coming up and the window (at least 1.5 heartbeat intervals)")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", 5*time.Second, "the masters' --heartbeat-interval (the default's); slaves beat this often, dead after 3 missed")
	fs.IntVar(&cfg.FillParallel, "fill-parallel", 32, "slot requests in flight while the fleet comes up")
	fs.IntVar(&cfg.MaxInFlight, "max-inflight", 512, "steady slot requests in flight at most; a request due beyond that is counted late and not sent")
	fs.BoolVar(&cfg.Storm, "storm", true, "kill a slave after the window and time its devices' re-dispatch")
	fs.DurationVar(&cfg.StormTimeout, "storm-timeout", 5*time.Minute, "bound on the storm")
	fs.StringVar(&cfg.WorkParent, "work-dir", "", "where the temporary dir goes (default: the system's)")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "device keys and the request order derive from it")
	fs.BoolVar(&short, "short", false, "short mode: -devices 10000 -duration 10s -warmup 5s (unless given)")
	fs.StringVar(&out, "out", "bench/results", "directory for issue17-<date>-<config>.json (empty: none)")
	fs.DurationVar(&timeout, "timeout", 60*time.Minute, "limit for the whole run (cleanup comes after it)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "mas4h-sim: no arguments")
		return 2
	}
	if short {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["devices"] {
			cfg.Devices = 10000
		}
		if !set["duration"] {
			cfg.Duration = 10 * time.Second
		}
		if !set["warmup"] {
			cfg.Warmup = 5 * time.Second
		}
	}
	var err error
	if cfg.Bin, err = filepath.Abs(cfg.Bin); err != nil {
		fmt.Fprintln(os.Stderr, "mas4h-sim:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := bench.RunSim(ctx, cfg, log)
	if res != nil && res.Setup.SlavesRegistered > 0 {
		res.WriteTable(os.Stdout)
		if out != "" {
			path, werr := res.WriteJSON(out)
			if werr != nil {
				fmt.Fprintln(os.Stderr, "mas4h-sim:", werr)
				return 1
			}
			fmt.Println("\nresults:", path)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mas4h-sim:", bench.RunError(ctx, timeout, err))
		return 1
	}
	return 0
}
