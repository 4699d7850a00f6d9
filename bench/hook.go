package bench

import (
	"bytes"
	"context"
	"os/exec"
	"syscall"
	"time"
)

// hookTarget is how to run a slave's installed hook as sshd would.
type hookTarget struct {
	Path       string // <state>/bin/mas4h
	StateDir   string
	User       string // the tunnel user: %u, and the account it runs as
	UID, GID   int
	MaxFailLog int
}

// measureHook runs the hook runs times as a fresh process, as the tunnel user
// with no supplementary groups (as sshd's AuthorizedKeysCommandUser), cycling
// over devs, and times each from fork to exit. A run fails unless it exits 0
// and prints exactly the device's expected line.
func measureHook(ctx context.Context, t hookTarget, devs []device, runs int) (Latency, []string, error) {
	ds := make([]time.Duration, 0, runs)
	failures := 0
	var samples []string
	for i := 0; i < runs; i++ {
		if err := ctx.Err(); err != nil {
			return Latency{}, samples, err
		}
		d := devs[i%len(devs)]
		cmd := exec.CommandContext(ctx, t.Path, "authkeys", "--state-dir", t.StateDir, "--", t.User, d.FP, d.Type, d.B64)
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
		if err != nil || stdout.String() != d.Line+"\n" {
			failures++
			if len(samples) < t.MaxFailLog {
				samples = append(samples, d.Name+": "+errString(err)+": "+stdout.String()+stderr.String())
			}
		}
	}
	return summarize(ds, failures), samples, nil
}

func errString(err error) string {
	if err == nil {
		return "exit 0, wrong output"
	}
	return err.Error()
}
