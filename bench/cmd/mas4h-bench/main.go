// Command mas4h-bench measures the mas4h authkeys hook's latency and compares
// a reconnect storm of OpenSSH clients through a mas4h slave with the same
// sshd reading a plain authorized_keys file. It prints a markdown table and
// writes the numbers as JSON. Run it as root from the repository root:
//
//	go build -o bin/mas4h ./cmd/mas4h && go run ./bench/cmd/mas4h-bench
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/bench"
)

func main() {
	os.Exit(run())
}

func run() int {
	var (
		cfg     bench.Config
		out     string
		timeout time.Duration
	)
	fs := flag.NewFlagSet("mas4h-bench", flag.ContinueOnError)
	fs.StringVar(&cfg.Bin, "bin", "bin/mas4h", "mas4h binary under test")
	fs.IntVar(&cfg.Devices, "n", 50, "devices (ed25519 keys, one tunnel each)")
	fs.IntVar(&cfg.HookRuns, "hook-runs", 1000, "hook invocations through the slave daemon")
	fs.IntVar(&cfg.FallbackRuns, "fallback-runs", 200, "hook invocations answered from the cache with the daemon stopped")
	fs.IntVar(&cfg.Rounds, "rounds", 3, "storm rounds per side, alternating mas4h and raw")
	fs.IntVar(&cfg.Parallel, "parallel", 16, "ssh clients in their handshake at once")
	fs.DurationVar(&cfg.RoundTimeout, "round-timeout", 60*time.Second, "limit for one storm round")
	fs.StringVar(&out, "out", "bench/results", "directory for issue2-<date>.json")
	fs.DurationVar(&timeout, "timeout", 10*time.Minute, "limit for the whole run (cleanup comes after it)")
	fs.StringVar(&cfg.WorkParent, "work-dir", "/var/lib", "where the temporary state dir goes; it and every parent must be root-owned and not group/world-writable")
	fs.StringVar(&cfg.TunnelUser, "tunnel-user", "mas4h-bench", "tunnel user (created by the slave, removed afterwards when it did not exist)")
	fs.IntVar(&cfg.SlavePort, "slave-port", 2401, "mas4h slave's sshd port on 127.0.0.1")
	fs.IntVar(&cfg.RawPort, "raw-port", 2402, "baseline sshd port on 127.0.0.1")
	fs.StringVar(&cfg.PortRange, "port-range", "30000-30999", "range devices lease their ports from (outside the ephemeral port range)")
	fs.StringVar(&cfg.SSHD, "sshd", "/usr/sbin/sshd", "OpenSSH sshd (both sides)")
	fs.StringVar(&cfg.SSH, "ssh", "/usr/bin/ssh", "OpenSSH client")
	keysFile := fs.Bool("keys-file", false, "run the slave with its keys file (its default); off, every login goes through the hook, which is what this harness compares with raw sshd")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 || cfg.Devices < 1 || cfg.HookRuns < 1 || cfg.FallbackRuns < 1 || cfg.Rounds < 1 || cfg.Parallel < 1 {
		fmt.Fprintln(os.Stderr, "mas4h-bench: -n, -hook-runs, -fallback-runs, -rounds and -parallel must be positive; no arguments")
		return 2
	}
	cfg.SlaveArgs = append(cfg.SlaveArgs, "--keys-file="+strconv.FormatBool(*keysFile))
	var err error
	if cfg.Bin, err = filepath.Abs(cfg.Bin); err != nil {
		fmt.Fprintln(os.Stderr, "mas4h-bench:", err)
		return 2
	}

	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	res, err := bench.Run(ctx, cfg, log)
	if err != nil {
		err = bench.RunError(ctx, timeout, err)
		fmt.Fprintln(os.Stderr, "mas4h-bench:", err)
		return 1
	}
	res.WriteTable(os.Stdout)
	path, err := res.WriteJSON(out)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mas4h-bench:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "wrote %s\n", path)
	return 0
}
