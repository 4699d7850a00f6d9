// Command mas4h-agent is `mas4h agent` alone: the device-side keeper of a
// reverse tunnel, built with CGO_ENABLED=0 into one binary for Linux
// devices (amd64, arm64, arm, mips; static) and Macs (amd64, arm64). It
// links no SQLite, gin or cobra, so it stays small; its flags are those of
// `mas4h agent`. On macOS `mas4h-agent install` sets up its launchd daemon.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime"

	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/agent"
	"github.com/mas4h/mas4h/cmd/internal/agentflags"
)

// version is set at build time: -ldflags "-X main.version=...".
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "install":
			return runInstall(ctx, newInstaller(stdout), args[1:], stderr)
		case "uninstall":
			return runUninstall(ctx, newInstaller(stdout), args[1:], stderr)
		}
	}
	var cfg agent.Config
	var logFormat, logLevel string
	var showVersion bool
	fs := flag.NewFlagSet("mas4h-agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	agentflags.Add(fs, &cfg)
	fs.StringVar(&logFormat, "log-format", "text", "log `format`: text or json")
	fs.StringVar(&logLevel, "log-level", "info", "log `level`: debug, info, warn, error")
	fs.BoolVar(&showVersion, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: mas4h-agent --master URL[,URL...] --key FILE [--master-ca FILE] [--insecure-http] [--state-dir DIR] [--ssh-client auto|openssh|dropbear]
       mas4h-agent install --master URL [--key FILE] [flags] [--print]   (macOS: the launchd daemon)
       mas4h-agent uninstall                                             (macOS)

Keeps this device's reverse SSH tunnel up: asks the mas4h master for a slot,
signing the request with the device key, pins the slave's host keys, runs
the system's ssh or dbclient with one -R per forward, and reconnects with
jittered backoff (1 s doubling to 60 s). Several masters of one fleet
(--master URL,URL,...) are tried in a random order, the next when one does
not answer or answers 5xx. When no master answers it reconnects to the last
slave directly. The master must be https://
(--insecure-http allows http://, with a warning at every start).

Flags:
`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if showVersion {
		fmt.Fprintf(stdout, "mas4h-agent %s (%s, %s/%s)\n", version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	}
	usage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "mas4h-agent: "+format+"\nRun 'mas4h-agent --help' for usage.\n", a...)
		return 2
	}
	if fs.NArg() > 0 {
		return usage("unexpected arguments: %q", fs.Args())
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(logLevel)); err != nil {
		return usage("--log-level must be debug, info, warn or error, not %q", logLevel)
	}
	opts := &slog.HandlerOptions{Level: lvl}
	var log *slog.Logger
	switch logFormat {
	case "text":
		log = slog.New(slog.NewTextHandler(stderr, opts))
	case "json":
		log = slog.New(slog.NewJSONHandler(stderr, opts))
	default:
		return usage("--log-format must be text or json, not %q", logFormat)
	}
	cfg.Defaults()
	cfg.UserAgent = "mas4h-agent/" + version
	cfg.Version = version
	if err := cfg.Check(); err != nil {
		return usage("%v", err)
	}
	a, err := agent.New(cfg, log, agent.Deps{})
	if err != nil {
		return usage("%v", err)
	}
	if err := a.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "mas4h-agent: %v\n", err)
		return 1
	}
	return 0
}
