package agent

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/mas4h/mas4h/process"
)

// Command is one run of the SSH client.
type Command struct {
	Argv []string
	Env  []string // added to the agent's environment
}

// Result is how a client run ended.
type Result struct {
	Err    error  // the exec error: *exec.ExitError for a non-zero exit
	Stderr string // the last lines the client printed
}

// Process is a running client.
type Process interface {
	Pid() int
	Done() <-chan struct{}
	Wait() Result // after Done is closed
}

// Runner starts clients. Cancelling ctx stops the client (SIGTERM, then
// SIGKILL after a grace period).
type Runner interface {
	Start(ctx context.Context, c Command) (Process, error)
}

// Clock is time for the agent's loop; fakes make backoff testable.
type Clock interface {
	Now() time.Time
	// After fires once d has passed.
	After(d time.Duration) <-chan time.Time
	// Sleep waits d or until ctx ends (then it returns ctx's error).
	Sleep(ctx context.Context, d time.Duration) error
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }
func (realClock) Sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ExecRunner runs clients with process.Exec, in their own session (no
// controlling terminal: neither client may prompt), killed with the agent
// if it dies.
type ExecRunner struct {
	// OnStderr, if set, gets every line the client prints.
	OnStderr func(line string)
}

type execProc struct {
	p    process.Process
	tail *tailWriter
}

func (p *execProc) Pid() int              { return p.p.Pid() }
func (p *execProc) Done() <-chan struct{} { return p.p.Done() }

func (p *execProc) Wait() Result {
	err := p.p.Wait()
	var pe *process.Error
	if errors.As(err, &pe) {
		err = pe.Err // the exit status alone: the agent logs argv apart
	}
	return Result{Err: err, Stderr: p.tail.String()}
}

// Start implements Runner.
func (r ExecRunner) Start(ctx context.Context, c Command) (Process, error) {
	tail := &tailWriter{max: 20, each: r.OnStderr}
	p, err := process.Exec{}.Start(ctx, process.Cmd{Argv: c.Argv, Env: c.Env, Stderr: tail, DieWithParent: true})
	if err != nil {
		return nil, err
	}
	return &execProc{p: p, tail: tail}, nil
}

// tailWriter keeps the last max lines written to it.
type tailWriter struct {
	mu      sync.Mutex
	max     int
	partial []byte
	lines   []string
	each    func(string)
}

func (w *tailWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.partial = append(w.partial, p...)
	for {
		i := strings.IndexByte(string(w.partial), '\n')
		if i < 0 {
			break
		}
		w.add(strings.TrimRight(string(w.partial[:i]), "\r"))
		w.partial = w.partial[i+1:]
	}
	if len(w.partial) > 4096 {
		w.add(string(w.partial))
		w.partial = nil
	}
	return len(p), nil
}

func (w *tailWriter) add(line string) {
	if strings.TrimSpace(line) == "" {
		return
	}
	if w.each != nil {
		w.each(line)
	}
	w.lines = append(w.lines, line)
	if len(w.lines) > w.max {
		w.lines = w.lines[len(w.lines)-w.max:]
	}
}

func (w *tailWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	lines := w.lines
	if len(w.partial) > 0 {
		lines = append(lines[:len(lines):len(lines)], string(w.partial))
	}
	return strings.Join(lines, "\n")
}
