package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// Fake is a Runner for unit tests: it runs nothing, records every command
// and answers from a script. The zero value answers every command with
// success and no output, and finds every program in /usr/bin.
type Fake struct {
	// Handle answers the commands no rule of On matches; nil answers
	// success and no output.
	Handle func(c Cmd) ([]byte, error)
	// Paths answers LookPath: a program's path, or "" for one that is not
	// installed. nil finds every program in /usr/bin.
	Paths map[string]string

	mu    sync.Mutex
	rules []rule
	calls []Cmd
	procs []*FakeProcess
}

var _ Runner = (*Fake)(nil)

type rule struct {
	prefix string
	out    []byte
	err    error
}

// On scripts the answer to the commands whose command line (Cmd.String)
// starts with prefix: stdout, and err (use Exit for a program that fails).
// The last matching rule wins.
func (f *Fake) On(prefix, stdout string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = append(f.rules, rule{prefix: prefix, out: []byte(stdout), err: err})
}

// Exit is a program's failure for On and Handle: exit status code and what
// it printed on standard error. The Fake fills in the command line.
func Exit(code int, stderr string) *Error {
	return &Error{Code: code, Stderr: strings.TrimSpace(stderr), Err: fmt.Errorf("exit status %d", code)}
}

// Calls returns the commands run or started so far.
func (f *Fake) Calls() []Cmd {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Cmd(nil), f.calls...)
}

// Commands returns the command lines run or started so far.
func (f *Fake) Commands() []string {
	var s []string
	for _, c := range f.Calls() {
		s = append(s, c.String())
	}
	return s
}

// Processes returns the processes started so far.
func (f *Fake) Processes() []*FakeProcess {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*FakeProcess(nil), f.procs...)
}

func (f *Fake) answer(c Cmd) ([]byte, error) {
	f.mu.Lock()
	f.calls = append(f.calls, c)
	line := c.String()
	var match *rule
	for i := range f.rules {
		if strings.HasPrefix(line, f.rules[i].prefix) {
			match = &f.rules[i]
		}
	}
	handle := f.Handle
	f.mu.Unlock()
	var out []byte
	var err error
	switch {
	case match != nil:
		out, err = match.out, match.err
	case handle != nil:
		out, err = handle(c)
	}
	var e *Error
	if errors.As(err, &e) && e.Argv == nil {
		e2 := *e
		e2.Argv = errArgv(c.Argv)
		err = &e2
	}
	return out, err
}

// Run implements Runner.
func (f *Fake) Run(ctx context.Context, c Cmd) ([]byte, error) {
	if len(c.Argv) == 0 {
		return nil, &Error{Code: -1, Err: errNoArgv}
	}
	if err := ctx.Err(); err != nil {
		return nil, newError(errArgv(c.Argv), -1, nil, err)
	}
	return f.answer(c)
}

// Start implements Runner: a scripted error fails the start, otherwise the
// process runs until FakeProcess.Exit, a SIGTERM or SIGKILL, or the end of
// ctx.
func (f *Fake) Start(ctx context.Context, c Cmd) (Process, error) {
	if len(c.Argv) == 0 {
		return nil, &Error{Code: -1, Err: errNoArgv}
	}
	if _, err := f.answer(c); err != nil {
		return nil, err
	}
	f.mu.Lock()
	p := &FakeProcess{Cmd: c, pid: 1000 + len(f.procs), done: make(chan struct{})}
	f.procs = append(f.procs, p)
	f.mu.Unlock()
	if ctx.Done() != nil {
		go func() {
			select {
			case <-ctx.Done():
				p.Signal(unix.SIGTERM)
			case <-p.done:
			}
		}()
	}
	return p, nil
}

// LookPath implements Runner.
func (f *Fake) LookPath(name string) (string, error) {
	if f.Paths == nil {
		return "/usr/bin/" + name, nil
	}
	if p := f.Paths[name]; p != "" {
		return p, nil
	}
	return "", &exec.Error{Name: name, Err: exec.ErrNotFound}
}

// FakeProcess is a process of a Fake.
type FakeProcess struct {
	Cmd Cmd

	pid     int
	mu      sync.Mutex
	signals []os.Signal
	err     error
	done    chan struct{}
	exited  bool
}

// Pid implements Process.
func (p *FakeProcess) Pid() int { return p.pid }

// Signal implements Process: it records sig; SIGTERM and SIGKILL end the
// process.
func (p *FakeProcess) Signal(sig os.Signal) error {
	p.mu.Lock()
	if p.exited {
		p.mu.Unlock()
		return os.ErrProcessDone
	}
	p.signals = append(p.signals, sig)
	p.mu.Unlock()
	if sig == unix.SIGTERM || sig == unix.SIGKILL {
		p.Exit(&Error{Code: -1, Err: fmt.Errorf("signal: %v", sig)})
	}
	return nil
}

// Signals returns the signals sent to the process.
func (p *FakeProcess) Signals() []os.Signal {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]os.Signal(nil), p.signals...)
}

// Exit ends the process; err (nil for success) is what Wait returns. Only
// the first call counts.
func (p *FakeProcess) Exit(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		return
	}
	var e *Error
	if errors.As(err, &e) && e.Argv == nil {
		e2 := *e
		e2.Argv = errArgv(p.Cmd.Argv)
		err = &e2
	}
	p.exited, p.err = true, err
	close(p.done)
}

// Done implements Process.
func (p *FakeProcess) Done() <-chan struct{} { return p.done }

// Wait implements Process.
func (p *FakeProcess) Wait() error {
	<-p.done
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}
