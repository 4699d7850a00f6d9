package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// hookTarget is how to run a slave's installed hook as sshd would.
type hookTarget struct {
	// Argv is the AuthorizedKeysCommand line of the slave's sshd_config,
	// split on blanks, with sshd's %u %f %t %k tokens still in it.
	Argv       []string
	User       string // the tunnel user: %u, and the account it runs as
	UID, GID   int
	MaxFailLog int
}

// hookArgv reads the AuthorizedKeysCommand of an sshd_config, so the
// harness runs whatever hook the slave installed, exactly as sshd does.
func hookArgv(sshdConfig []byte) ([]string, error) {
	sc := bufio.NewScanner(bytes.NewReader(sshdConfig))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 1 && strings.EqualFold(f[0], "AuthorizedKeysCommand") {
			if !strings.HasPrefix(f[1], "/") {
				return nil, fmt.Errorf("AuthorizedKeysCommand %q is not an absolute path", f[1])
			}
			return f[1:], nil
		}
	}
	return nil, errors.New("sshd_config has no AuthorizedKeysCommand line")
}

// argv expands sshd's tokens for one device.
func (t hookTarget) argv(d device) []string {
	out := make([]string, len(t.Argv))
	for i, a := range t.Argv {
		out[i] = strings.NewReplacer("%u", t.User, "%f", d.FP, "%t", d.Type, "%k", d.B64, "%%", "%").Replace(a)
	}
	return out
}

// measureHook runs the hook runs times as a fresh process, as the tunnel user
// with no supplementary groups (as sshd's AuthorizedKeysCommandUser), cycling
// over devs, and times each from fork to exit. A run fails unless it exits 0
// and prints exactly the device's expected line. The Latency also carries
// the mean CPU (user+system) of one run.
func measureHook(ctx context.Context, t hookTarget, devs []device, runs int) (Latency, []string, error) {
	return measureHookEvery(ctx, t, devs, runs, 0, nil)
}

// measureHookEvery is measureHook with a pause between runs, stopping early
// when stop is closed.
func measureHookEvery(ctx context.Context, t hookTarget, devs []device, runs int, pause time.Duration, stop <-chan struct{}) (Latency, []string, error) {
	ds := make([]time.Duration, 0, runs)
	var cpu time.Duration
	failures := 0
	var samples []string
	for i := 0; i < runs; i++ {
		if err := ctx.Err(); err != nil {
			return Latency{}, samples, err
		}
		if stop != nil {
			select {
			case <-stop:
				runs = i
			default:
			}
			if i == runs {
				break
			}
		}
		d := devs[i%len(devs)]
		argv := t.argv(d)
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Dir = "/"
		cmd.Env = []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
		cmd.SysProcAttr = &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: uint32(t.UID), Gid: uint32(t.GID), Groups: []uint32{}},
		}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		start := time.Now()
		err := cmd.Run()
		ds = append(ds, time.Since(start))
		if cmd.ProcessState != nil {
			cpu += cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		}
		if err != nil || stdout.String() != d.Line+"\n" {
			failures++
			if len(samples) < t.MaxFailLog {
				samples = append(samples, d.Name+": "+errString(err)+": "+stdout.String()+stderr.String())
			}
		}
		if pause > 0 {
			time.Sleep(pause)
		}
	}
	l := summarize(ds, failures)
	if len(ds) > 0 {
		l.CPUMeanMs = ms(cpu / time.Duration(len(ds)))
	}
	return l, samples, nil
}

func errString(err error) string {
	if err == nil {
		return "exit 0, wrong output"
	}
	return err.Error()
}
