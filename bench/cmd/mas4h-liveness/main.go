// Command mas4h-liveness measures how a slave judges liveness: seconds until
// a frozen client's port (SIGSTOP), a dead link's (veth down in a network
// namespace) and a broken forward's (its target hangs just after a probe
// passed) are free, and how many lines mas4h leaves per hour in each
// device's own sshd log (real OpenSSH sshds, LogLevel INFO). Run it as root
// from the repository root, once per binary to compare:
//
//	go build -o bin/mas4h ./cmd/mas4h && go run ./bench/cmd/mas4h-liveness
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
	"strings"
	"syscall"
	"time"

	"github.com/mas4h/mas4h/atomicfile"
	"github.com/mas4h/mas4h/bench"
)

func main() {
	os.Exit(run())
}

func run() int {
	var (
		cfg       bench.LivenessConfig
		out, name string
		slaveArgs string
		timeout   time.Duration
	)
	fs := flag.NewFlagSet("mas4h-liveness", flag.ContinueOnError)
	fs.StringVar(&cfg.Bin, "bin", "bin/mas4h", "mas4h binary under test")
	fs.StringVar(&name, "name", "after", "name of this run in the results file")
	fs.StringVar(&slaveArgs, "slave-args", "", "more `mas4h slave` flags, space-separated (none: the default settings)")
	fs.IntVar(&cfg.LogForwards, "log-forwards", 4, "forwards whose device's own sshd log is counted")
	fs.DurationVar(&cfg.LogWindow, "log-window", 15*time.Minute, "how long the device logs are counted")
	fs.DurationVar(&cfg.BrokenLimit, "broken-limit", 11*time.Minute, "bound on finding broken forwarding (0: not measured)")
	fs.IntVar(&cfg.Net, "net", 231, "the dead-link device's veth is on 198.18.NET.0/30")
	fs.StringVar(&cfg.WorkParent, "work-dir", "/var/lib", "where the temporary dir goes; it and every parent must be root-owned and not group/world-writable")
	fs.StringVar(&cfg.TunnelUser, "tunnel-user", "mas4h-bench", "tunnel user (created by the slave, removed afterwards when it did not exist)")
	fs.IntVar(&cfg.SlavePort, "slave-port", 2403, "the slave's sshd port")
	fs.StringVar(&cfg.PortRange, "port-range", "30000-30999", "range devices lease their ports from")
	fs.StringVar(&cfg.SSHD, "sshd", "/usr/sbin/sshd", "OpenSSH sshd")
	fs.StringVar(&cfg.SSH, "ssh", "/usr/bin/ssh", "OpenSSH client")
	fs.StringVar(&out, "out", "bench/results", "directory for liveness-<date>-<name>.json")
	fs.DurationVar(&timeout, "timeout", 30*time.Minute, "limit for the whole run (cleanup comes after it)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if fs.NArg() > 0 || cfg.LogForwards < 0 || cfg.LogWindow <= 0 || cfg.Net < 1 || cfg.Net > 254 {
		fmt.Fprintln(os.Stderr, "mas4h-liveness: -log-forwards >= 0, -log-window > 0, -net 1..254; no arguments")
		return 2
	}
	cfg.SlaveArgs = strings.Fields(slaveArgs)
	var err error
	if cfg.Bin, err = filepath.Abs(cfg.Bin); err != nil {
		fmt.Fprintln(os.Stderr, "mas4h-liveness:", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := bench.RunLiveness(ctx, cfg, log)
	if err != nil {
		fmt.Fprintln(os.Stderr, "mas4h-liveness:", err)
		return 1
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		fmt.Fprintln(os.Stderr, "mas4h-liveness:", err)
		return 1
	}
	path := filepath.Join(out, fmt.Sprintf("liveness-%s-%s.json", res.Date, name))
	if err := atomicfile.Write(path, append(b, '\n'), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "mas4h-liveness:", err)
		return 1
	}
	fmt.Print(bench.LivenessTable([]string{name}, []*bench.LivenessResult{res}))
	fmt.Println("results:", path)
	if len(res.Errors) > 0 {
		fmt.Fprintln(os.Stderr, "mas4h-liveness: errors:", strings.Join(res.Errors, "; "))
		return 1
	}
	return 0
}
