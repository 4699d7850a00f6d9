package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"syscall"

	"github.com/mas4h/mas4h/agent"
	"github.com/mas4h/mas4h/atomicfile"
	"github.com/mas4h/mas4h/cmd/internal/agentflags"
	"github.com/mas4h/mas4h/launchd"
	"github.com/mas4h/mas4h/process"
)

// The agent's launchd daemon on macOS. The binary goes to a directory of
// its own under /usr/local/libexec, root's: Homebrew, which on Intel Macs
// hands /usr/local/bin, sbin and var to the admin user, neither creates
// nor takes that one, and a daemon run as root must not run a file a user
// can replace. The state dir is macOS's agent.DefaultStateDir, also when
// --print runs elsewhere.
const (
	launchdLabel   = "net.mas4h.agent"
	launchdPlist   = "/Library/LaunchDaemons/" + launchdLabel + ".plist"
	launchdBin     = "/usr/local/libexec/mas4h/mas4h-agent"
	launchdLog     = "/var/log/mas4h-agent.log"
	launchdState   = "/var/db/mas4h-agent"
	defaultKeyPath = "/etc/mas4h/agent.key"
)

// installer lays the daemon out below root ("/" but in tests) and drives
// launchctl through run.
type installer struct {
	root string
	goos string
	self string // the running binary, copied to launchdBin
	run  interface {
		Run(context.Context, process.Cmd) ([]byte, error)
	}
	stdout io.Writer
}

func newInstaller(stdout io.Writer) installer {
	self, _ := os.Executable()
	return installer{root: "/", goos: runtime.GOOS, self: self, run: process.Exec{}, stdout: stdout}
}

func (in installer) path(p string) string { return filepath.Join(in.root, p) }

// notMacOS says what to do instead on a system without launchd.
func (in installer) notMacOS(verb string) error {
	return fmt.Errorf("%s sets up the agent's launchd daemon on macOS; this is %s: on Linux, "+
		"`mas4h install agent` (the mas4h package) or systemd/mas4h-agent.service with this binary as /usr/bin/mas4h-agent "+
		"and /etc/mas4h/agent.conf (see README, Devices); on OpenWrt, the client script (mas4h client-script --install openwrt); "+
		"--print shows the property list on any system", verb, in.goos)
}

// runInstall is `mas4h-agent install`: the agent's flags, checked as the
// agent checks them, become the daemon's ProgramArguments.
func runInstall(ctx context.Context, in installer, args []string, stderr io.Writer) int {
	var cfg agent.Config
	var printOnly bool
	fs := flag.NewFlagSet("mas4h-agent install", flag.ContinueOnError)
	fs.SetOutput(stderr)
	agentflags.Add(fs, &cfg)
	fs.BoolVar(&printOnly, "print", false, "print the property list and change nothing (on any system)")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), `Usage: mas4h-agent install --master URL[,URL...] [--key FILE] [agent flags] [--print]

macOS: copies this binary to %s, writes the launchd daemon
%s (RunAtLoad, KeepAlive; log %s; state
%s) running it with these flags, and starts it with
launchctl bootstrap system. Run again to change the flags; undo with
mas4h-agent uninstall. The key (default %s) must exist, mode 0600:
  sudo mkdir -p /etc/mas4h && sudo ssh-keygen -t ed25519 -N '' -f %[5]s

Flags:
`, launchdBin, launchdPlist, launchdLog, launchdState, defaultKeyPath)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "mas4h-agent install: unexpected arguments: %q\n", fs.Args())
		return 2
	}
	if cfg.KeyPath == "" {
		cfg.KeyPath = defaultKeyPath
	}
	stateSet := false
	program := []string{launchdBin, "--key=" + cfg.KeyPath}
	fs.Visit(func(f *flag.Flag) {
		stateSet = stateSet || f.Name == "state-dir"
		if f.Name != "print" && f.Name != "key" {
			program = append(program, "--"+f.Name+"="+f.Value.String())
		}
	})
	if !stateSet {
		cfg.StateDir = launchdState
		program = append(program, "--state-dir="+launchdState)
	}
	check := cfg
	check.Defaults()
	if err := check.Check(); err != nil {
		fmt.Fprintf(stderr, "mas4h-agent install: %v\n", err)
		return 2
	}
	plist, err := launchd.Plist(launchd.Job{Label: launchdLabel, Program: program, LogPath: launchdLog,
		ThrottleInterval: 5, ExitTimeOut: 15, Comment: "managed by mas4h-agent install: the mas4h device agent (reverse SSH tunnel keeper)"})
	if err != nil {
		fmt.Fprintf(stderr, "mas4h-agent install: %v\n", err)
		return 1
	}
	if printOnly {
		in.stdout.Write(plist)
		return 0
	}
	if in.goos != "darwin" {
		fmt.Fprintf(stderr, "mas4h-agent: %v\n", in.notMacOS("mas4h-agent install"))
		return 1
	}
	if _, err := agent.LoadKey(in.path(cfg.KeyPath)); err != nil {
		fmt.Fprintf(stderr, "mas4h-agent install: %v\n", err)
		return 1
	}
	if err := in.install(ctx, plist); err != nil {
		fmt.Fprintf(stderr, "mas4h-agent install: %v\n", err)
		return 1
	}
	fmt.Fprintf(in.stdout, `installed and started %s (%s)
  status: sudo launchctl print system/%s
  log:    %s
  state:  %s
  enrol the device on the master: mas4h device add NAME --key %s.pub
`, launchdLabel, launchdPlist, launchdLabel, launchdLog, cfg.StateDir, cfg.KeyPath)
	return 0
}

func (in installer) install(ctx context.Context, plist []byte) error {
	self, err := os.ReadFile(in.self)
	if err != nil {
		return fmt.Errorf("reading this binary to install it: %w", err)
	}
	for _, dir := range []string{filepath.Dir(launchdBin), filepath.Dir(launchdPlist)} {
		if err := os.MkdirAll(in.path(dir), 0o755); err != nil {
			return err
		}
		if err := in.rootOwned(dir); err != nil {
			return err
		}
	}
	if err := atomicfile.Write(in.path(launchdBin), self, 0o755); err != nil {
		return fmt.Errorf("installing %s: %w", launchdBin, err)
	}
	// launchd ignores a daemon's plist that is not root's or is writable
	// by others.
	if err := atomicfile.Write(in.path(launchdPlist), plist, 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", launchdPlist, err)
	}
	// A daemon already loaded keeps its old flags until booted out;
	// bootout of one that is not loaded fails, which is fine.
	in.launchctl(ctx, "bootout", "system/"+launchdLabel)
	if err := in.launchctl(ctx, "enable", "system/"+launchdLabel); err != nil {
		return err
	}
	return in.launchctl(ctx, "bootstrap", "system", launchdPlist)
}

func (in installer) launchctl(ctx context.Context, args ...string) error {
	_, err := in.run.Run(ctx, process.Command("launchctl", args...))
	return err
}

// rootOwned refuses dir when it, or a directory above it, is not root's
// or is writable by group or others: whoever could write there could
// replace what the daemon runs as root.
func (in installer) rootOwned(dir string) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(in.path(d))
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || st.Uid != 0 || fi.Mode().Perm()&0o022 != 0 {
			return fmt.Errorf("%s is not root's alone (mode %04o): the daemon would run what a user can replace; fix its owner and mode (chown root %[1]s; chmod go-w %[1]s)", d, fi.Mode().Perm())
		}
		if d == "/" || d == "." {
			return nil
		}
	}
}

// runUninstall is `mas4h-agent uninstall`: it stops the daemon and
// removes its plist and binary, and leaves the key and the state dir.
func runUninstall(ctx context.Context, in installer, args []string, stderr io.Writer) int {
	if len(args) > 0 {
		if args[0] == "-h" || args[0] == "--help" {
			fmt.Fprintf(stderr, "Usage: mas4h-agent uninstall\n\nmacOS: stops the launchd daemon %s and removes %s and %s.\nThe key and %s stay.\n", launchdLabel, launchdPlist, launchdBin, launchdState)
			return 0
		}
		fmt.Fprintf(stderr, "mas4h-agent uninstall: unexpected arguments: %q\n", args)
		return 2
	}
	if in.goos != "darwin" {
		fmt.Fprintf(stderr, "mas4h-agent: %v\n", in.notMacOS("mas4h-agent uninstall"))
		return 1
	}
	in.launchctl(ctx, "bootout", "system/"+launchdLabel)
	for _, p := range []string{launchdPlist, launchdBin} {
		if err := os.Remove(in.path(p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			fmt.Fprintf(stderr, "mas4h-agent uninstall: %v\n", err)
			return 1
		}
	}
	os.Remove(in.path(filepath.Dir(launchdBin)))
	fmt.Fprintf(in.stdout, "stopped %s and removed %s and %s; the key and %s stay (remove them by hand), and so does %s\n",
		launchdLabel, launchdPlist, launchdBin, launchdState, launchdLog)
	return 0
}
