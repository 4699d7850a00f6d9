// Package process is mas4h's one seam over os/exec: running a system
// program to completion (useradd, systemctl, iptables-restore, `sshd -t`)
// and starting a long-running one in its own session (the slave's sshd, the
// agent's ssh client). Its errors name the program, its arguments and what
// it printed on standard error, so that a failed step explains itself:
//
//	running useradd --system x: exit status 9: useradd: user 'x' already exists
//
// Exec is the real thing and Fake a scripted stand-in for unit tests; a
// caller keeps the subset of Runner it needs as its own interface. The
// package uses only the standard library and golang.org/x/sys/unix, so that
// the static device agent can use it.
package process

import (
	"context"
	"errors"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// Cmd is a program to run and how. Argv[0] is looked up in PATH unless it
// holds a slash.
type Cmd struct {
	Argv []string
	// Env is added to the caller's environment (a later KEY=value wins).
	Env []string
	// Dir is the working directory; "" is the caller's.
	Dir   string
	Stdin []byte
	// Cred, if set, runs the program as this user and group, with no
	// supplementary groups (the caller must be root).
	Cred *Cred
	// AmbientCaps are capabilities the program keeps across the exec and
	// the change of Cred, such as unix.CAP_NET_BIND_SERVICE for an
	// unprivileged sshd that listens on port 22.
	AmbientCaps []uintptr
	// Stderr, if set, also gets the program's standard error as it comes.
	// Never set it for a process that must outlive the caller: its pipe
	// breaks when the caller exits.
	Stderr io.Writer
	// Combined makes Run return standard output and standard error
	// together, in order, for programs that print what is asked on
	// standard error (`ssh -V`, `sshd -V`); Stderr then gets both too.
	Combined bool
	// DieWithParent (Start only) has the kernel send SIGTERM to the process
	// when the caller dies, for a child that must not outlive it (the
	// agent's ssh client); never for sshd, whose tunnels outlive the daemon.
	// The kernel ties it to the thread that forked, so it costs an OS
	// thread for the child's lifetime: not for thousands of children.
	// Outside Linux (macOS has no such signal) the child stays in the
	// caller's process group instead, which launchd ends with its job.
	DieWithParent bool
}

// Cred is a user and group to run as.
type Cred struct {
	UID, GID int
}

// Command is Cmd{Argv: [name, args...]}.
func Command(name string, args ...string) Cmd {
	return Cmd{Argv: append([]string{name}, args...)}
}

// String is the command line, as errors and logs show it.
func (c Cmd) String() string { return quoteArgv(c.Argv) }

// Runner runs programs.
type Runner interface {
	// Run runs c to completion and returns its standard output. A failure
	// is an *Error. Cancelling ctx kills the program.
	Run(ctx context.Context, c Cmd) ([]byte, error)
	// Start starts c in a session of its own (no controlling terminal, out
	// of the caller's process group, so that a signal to the caller's group
	// does not reach it) and returns once it runs. Ending ctx stops it
	// (SIGTERM, then SIGKILL after StopGrace); pass context.Background() or
	// context.WithoutCancel for a process that outlives the caller.
	Start(ctx context.Context, c Cmd) (Process, error)
	// LookPath finds a program in PATH, as exec.LookPath.
	LookPath(name string) (string, error)
}

// Process is a started program.
type Process interface {
	Pid() int
	Signal(sig os.Signal) error
	// Done is closed once the process has exited (and has been reaped).
	Done() <-chan struct{}
	// Wait waits for the process to exit; a failure is an *Error.
	Wait() error
}

// StopGrace is how long a process started by Start has between SIGTERM and
// SIGKILL once its context ends.
const StopGrace = 5 * time.Second

// Error is a program that failed to start or ended in failure.
type Error struct {
	Argv []string
	// Code is the exit status; -1 when the program did not start or a
	// signal ended it.
	Code int
	// Stderr is the end of what it printed on standard error, trimmed.
	Stderr string
	Err    error
}

func (e *Error) Error() string {
	s := "running " + quoteArgv(e.Argv) + ": " + e.Err.Error()
	if e.Stderr != "" {
		s += ": " + e.Stderr
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// ExitCode is err's exit status when it is an *Error, else -1.
func ExitCode(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return -1
}

// quoteArgv joins argv with spaces, quoting an argument that would not
// read back as one word.
func quoteArgv(argv []string) string {
	var b strings.Builder
	for i, a := range argv {
		if i > 0 {
			b.WriteByte(' ')
		}
		if a == "" || strings.ContainsAny(a, " \t\n\"'\\$`") {
			b.WriteString(strconv.Quote(a))
		} else {
			b.WriteString(a)
		}
	}
	return b.String()
}

// maxStderr is how much of a program's standard error an Error keeps: the
// end, where the reason usually is.
const maxStderr = 4 << 10

func trimStderr(b []byte) string {
	if len(b) >= maxStderr { // maybe cut by tail
		b = b[len(b)-maxStderr:]
		if i := strings.IndexByte(string(b), '\n'); i >= 0 && i < len(b)-1 {
			b = b[i+1:]
		}
		return "…" + strings.TrimSpace(string(b))
	}
	return strings.TrimSpace(string(b))
}

func newError(argv []string, code int, stderr []byte, err error) *Error {
	return &Error{Argv: argv, Code: code, Stderr: trimStderr(stderr), Err: err}
}

// errArgv is a copy of argv for an error, safe from the caller's changes.
func errArgv(argv []string) []string { return append([]string(nil), argv...) }

var errNoArgv = errors.New("empty command")
