// Package hookclient is the lean half of sshd's AuthorizedKeysCommand, the
// whole of the mas4h-authkeys binary: it checks sshd's arguments cheaply,
// asks the slave daemon over its unix socket and prints the daemon's lines.
// sshd starts it as a fresh process twice per authentication, so its start-up
// is part of every login: it imports no net (netpoller set-up), no
// encoding/json (reflection), no key parsing and no cgo, each measured to add
// to every run. The daemon parses the key in full before it answers; the
// checks here only keep garbage off the socket.
//
// When the daemon cannot answer (no socket, refused, timed out, malformed
// reply) the hook replaces itself, by exec, with the full binary next to it
// running `mas4h authkeys --cache-only`, which answers from the daemon's
// SQLite cache within what is left of the budget.
package hookclient

import (
	"errors"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mas4h/mas4h/sshd/statedir"
)

// The hook must answer sshd within 2 s whatever the daemon does. The daemon
// gets most of that; the cache fallback keeps CacheReserve.
const (
	TotalBudget  = 1900 * time.Millisecond
	CacheReserve = 300 * time.Millisecond // socket budget 1.6 s: room for newest-wins, a probe and a kill
	MaxArg       = 16 << 10               // an RSA-16384 key is ~2.8 KB of base64
	maxReply     = 1 << 20
)

// FullBinary is the name of the full mas4h binary the slave installs next to
// the hook, which the hook execs to answer from the cache.
const FullBinary = "mas4h"

// CommandLine is the hook's command line, as sshd_config gives it:
//
//	[--state-dir DIR] [--cache-only] [--budget-ms N] [--] USER FINGERPRINT KEYTYPE KEY
//
// Its arguments come from a remote party (the user name, the key), so there
// is no flag parser to fool: flags come first, "--" or the first non-flag
// ends them, and nothing after that is read as a flag.
type CommandLine struct {
	StateDir  string
	CacheOnly bool          // skip the daemon (the fallback's own run)
	Budget    time.Duration // time to answer in; TotalBudget unless --budget-ms
	Args      []string      // sshd's %u %f %t %k, unchecked
}

// ParseCommandLine parses the hook's arguments (without the program name).
func ParseCommandLine(args []string) (CommandLine, error) {
	cl := CommandLine{Budget: TotalBudget}
	for len(args) > 0 {
		switch a := args[0]; {
		case a == "--":
			args = args[1:]
			return cl.finish(args)
		case a == "--state-dir" && len(args) > 1:
			cl.StateDir, args = args[1], args[2:]
		case strings.HasPrefix(a, "--state-dir="):
			cl.StateDir, args = strings.TrimPrefix(a, "--state-dir="), args[1:]
		case a == "--cache-only":
			cl.CacheOnly, args = true, args[1:]
		case a == "--budget-ms" && len(args) > 1:
			ms, err := strconv.Atoi(args[1])
			if err != nil || ms < 1 {
				return cl, errors.New("--budget-ms wants a positive number of milliseconds")
			}
			cl.Budget, args = min(time.Duration(ms)*time.Millisecond, TotalBudget), args[2:]
		default:
			return cl.finish(args)
		}
	}
	return cl.finish(nil)
}

func (cl CommandLine) finish(rest []string) (CommandLine, error) {
	cl.Args = rest
	if !strings.HasPrefix(cl.StateDir, "/") {
		return cl, errors.New("the hook needs an absolute --state-dir")
	}
	return cl, nil
}

// Process is what the hook needs from its process; main fills it in.
type Process struct {
	Start      time.Time // the budget counts from here
	Stdout     io.Writer
	Executable func() (string, error) // os.Executable: the fallback is FullBinary next to it
	Exec       func(argv []string) error
}

// Run is the mas4h-authkeys binary: it returns the exit status, 0 when it
// printed the device's lines, 1 (with no output) on any refusal or failure.
// When the daemon cannot answer, Run calls p.Exec with the cache fallback's
// command line; in production that replaces the process, and Run returns
// (1) only when it failed.
func Run(p Process, args []string) int {
	cl, err := ParseCommandLine(args)
	if err != nil || cl.CacheOnly {
		return 1 // only the full binary has a cache reader
	}
	req, err := CheckArgs(cl.Args)
	if err != nil {
		return 1
	}
	deadline := p.Start.Add(cl.Budget)
	if reply, err := Ask(statedir.Dir(cl.StateDir).Socket(), req, deadline.Add(-CacheReserve)); err == nil {
		if err := WriteLines(p.Stdout, reply); err != nil {
			return 1
		}
		return 0
	}
	left := time.Until(deadline).Milliseconds()
	if left < 1 {
		return 1
	}
	self, err := p.Executable()
	if err != nil || !filepath.IsAbs(self) {
		return 1
	}
	p.Exec([]string{
		filepath.Join(filepath.Dir(self), FullBinary), "authkeys", "--cache-only",
		"--budget-ms", strconv.FormatInt(left, 10), "--state-dir", cl.StateDir,
		"--", req.User, req.Fingerprint, req.KeyType, req.Key,
	})
	return 1
}

// ErrDenied is a reply that gives sshd no key.
var ErrDenied = errors.New("the daemon gave no key")

// WriteLines prints an allowing reply's authorized_keys lines for sshd, in
// one write. A refusal, or a line that would smuggle in another line, is
// ErrDenied and prints nothing.
func WriteLines(w io.Writer, r Reply) error {
	if !r.Allow || len(r.Lines) == 0 {
		return ErrDenied
	}
	n := 0
	for _, l := range r.Lines {
		if strings.ContainsAny(l, "\n\r\x00") {
			return ErrDenied
		}
		n += len(l) + 1
	}
	b := make([]byte, 0, n)
	for _, l := range r.Lines {
		b = append(append(b, l...), '\n')
	}
	_, err := w.Write(b)
	return err
}
