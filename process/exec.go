package process

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Exec is the Runner of production, over os/exec.
type Exec struct{}

var _ Runner = Exec{}

// Run implements Runner.
func (Exec) Run(ctx context.Context, c Cmd) ([]byte, error) {
	if len(c.Argv) == 0 {
		return nil, &Error{Code: -1, Err: errNoArgv}
	}
	cmd, err := c.command(ctx)
	if err != nil {
		return nil, newError(errArgv(c.Argv), -1, nil, err)
	}
	// A program that leaves a child holding its output open (a daemon
	// that forks) must not hang Run.
	cmd.WaitDelay = time.Second
	var out bytes.Buffer
	stderr := &tail{max: maxStderr}
	cmd.Stdout = &out
	cmd.Stderr = stderr
	if c.Stderr != nil {
		cmd.Stderr = io.MultiWriter(stderr, c.Stderr)
	}
	if c.Combined {
		// One writer for both: os/exec then gives the program one pipe,
		// and the output keeps its order.
		w := io.Writer(io.MultiWriter(&out, stderr))
		if c.Stderr != nil {
			w = io.MultiWriter(&out, stderr, c.Stderr)
		}
		cmd.Stdout, cmd.Stderr = w, w
	}
	if err := cmd.Run(); err != nil {
		return out.Bytes(), newError(errArgv(c.Argv), exitCode(err), stderr.bytes(), err)
	}
	return out.Bytes(), nil
}

// Start implements Runner.
func (Exec) Start(ctx context.Context, c Cmd) (Process, error) {
	if len(c.Argv) == 0 {
		return nil, &Error{Code: -1, Err: errNoArgv}
	}
	cmd, err := c.command(ctx)
	if err != nil {
		return nil, newError(errArgv(c.Argv), -1, nil, err)
	}
	lockThread := startAttrs(cmd.SysProcAttr, c.DieWithParent)
	cmd.Cancel = func() error { return cmd.Process.Signal(unix.SIGTERM) }
	cmd.WaitDelay = StopGrace
	if c.Stderr != nil {
		cmd.Stderr = c.Stderr
	}
	p := &execProcess{cmd: cmd, argv: errArgv(c.Argv), done: make(chan struct{})}
	started := make(chan error, 1)
	go func() {
		if lockThread {
			// Linux sends Pdeathsig when the thread that forked the child
			// exits: keep this goroutine on its thread for the child's
			// lifetime.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
		}
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		if err := cmd.Wait(); err != nil {
			p.err = newError(p.argv, exitCode(err), nil, err)
		}
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, newError(p.argv, -1, nil, err)
	}
	return p, nil
}

// LookPath implements Runner.
func (Exec) LookPath(name string) (string, error) { return exec.LookPath(name) }

func (c Cmd) command(ctx context.Context) (*exec.Cmd, error) {
	cmd := exec.CommandContext(ctx, c.Argv[0], c.Argv[1:]...)
	if len(c.Env) > 0 {
		cmd.Env = append(os.Environ(), c.Env...)
	}
	cmd.Dir = c.Dir
	if c.Stdin != nil {
		cmd.Stdin = bytes.NewReader(c.Stdin)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{}
	if c.Cred != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(c.Cred.UID), Gid: uint32(c.Cred.GID), Groups: []uint32{}}
	}
	if err := setAmbientCaps(cmd.SysProcAttr, c.AmbientCaps); err != nil {
		return nil, err
	}
	return cmd, nil
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return -1
}

type execProcess struct {
	cmd  *exec.Cmd
	argv []string
	done chan struct{}
	err  error // set before done is closed
}

func (p *execProcess) Pid() int                   { return p.cmd.Process.Pid }
func (p *execProcess) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }
func (p *execProcess) Done() <-chan struct{}      { return p.done }
func (p *execProcess) Wait() error                { <-p.done; return p.err }

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*t.max {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tail) bytes() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf
}
