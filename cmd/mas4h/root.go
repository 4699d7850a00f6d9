package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// Exit statuses of DESIGN.md: 0 success, 1 operational failure, 2 usage error.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// usageError marks errors in how mas4h was called (exit status 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// exitError carries a specific exit status without a message (the hook's
// denial is silent towards sshd).
type exitError struct{ code int }

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// globals are the persistent flags every subcommand shares.
type globals struct {
	logFormat string
	logLevel  string
	stdout    io.Writer
	stderr    io.Writer
}

func (g *globals) logger() *slog.Logger {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
		lvl = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: lvl}
	if g.logFormat == "json" {
		return slog.New(slog.NewJSONHandler(g.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(g.stderr, opts))
}

func newRootCmd(g *globals) *cobra.Command {
	root := &cobra.Command{
		Use:   "mas4h",
		Short: "Reverse SSH tunnels for device fleets, on the system's OpenSSH",
		Long: `mas4h connects fleets of remote devices to bouncer servers ("slaves") through
reverse SSH tunnels (ssh -R). Each slave runs a dedicated, locked-down OpenSSH
sshd whose AuthorizedKeysCommand is "mas4h authkeys"; each device gets exactly
its leased ports on the slave's loopback and nothing else.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, args []string) error {
			if g.logFormat != "text" && g.logFormat != "json" {
				return usagef("--log-format must be text or json, not %q", g.logFormat)
			}
			var lvl slog.Level
			if err := lvl.UnmarshalText([]byte(g.logLevel)); err != nil {
				return usagef("--log-level must be debug, info, warn or error, not %q", g.logLevel)
			}
			return nil
		},
	}
	root.SetOut(g.stdout)
	root.SetErr(g.stderr)
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "text", "log format: text or json")
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		newVersionCmd(g),
		newDeviceCmd(g), newOperatorCmd(g), newEventsCmd(g),
		newSlaveCmd(g),
		newAuthkeysCmd(g),
		newMasterCmd(g), newStatusCmd(g),
		newTunnelsCmd(g),
		newNetfilterCmd(g),
		newAgentCmd(g), newClientScriptCmd(g),
		newSSHCmd(g),
		newProxyCmd(g),
		newSSHConfigCmd(g),
		newInstallCmd(g), newUninstallCmd(), newDoctorCmd(g), newManCmd(g),
	)
	return root
}

func run(ctx context.Context, args []string) int {
	g := &globals{stdout: os.Stdout, stderr: os.Stderr}
	root := newRootCmd(g)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	var ee exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	fmt.Fprintf(g.stderr, "mas4h: %s\n", err)
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		fmt.Fprintln(g.stderr, "Run 'mas4h --help' for usage.")
		return exitUsage
	}
	return exitFail
}

// isCobraUsage recognises cobra's own argument errors, which are plain errors.
func isCobraUsage(err error) bool {
	msg := err.Error()
	for _, p := range []string{"unknown command", "accepts ", "requires at least", "requires exactly", "unknown flag", "unknown shorthand", "required flag"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

// exactArgs is cobra.ExactArgs reporting a usage error.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return usagef("%s takes %s (got %d arguments)", cmd.CommandPath(), names, len(args))
		}
		return nil
	}
}
