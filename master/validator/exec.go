package validator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/registry"
)

// DefaultExecTimeout bounds one run of an exec validator.
const DefaultExecTimeout = 2 * time.Second

// maxOutput bounds what is read of a validator's stdout and stderr.
const maxOutput = 64 << 10

// Exec runs a program per key: the key in authorized_keys form ("type
// base64") and a newline on stdin, MAS4H_FINGERPRINT in its environment, no
// shell. Exit status 0 with a JSON object holding a non-empty "device_key" on
// stdout accepts; anything else (non-zero exit, bad JSON, no device_key, or
// running past Timeout) refuses. On timeout the program's whole process group
// is killed, so a script's children do not linger either.
type Exec struct {
	Path    string
	Timeout time.Duration // 0: DefaultExecTimeout
}

func (e *Exec) String() string { return "exec validator" }

// Validate implements Validator.
func (e *Exec) Validate(ctx context.Context, key ssh.PublicKey) (string, map[string]any, error) {
	timeout := e.Timeout
	if timeout <= 0 {
		timeout = DefaultExecTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	cmd := exec.CommandContext(ctx, e.Path)
	cmd.Stdin = strings.NewReader(registry.AuthorizedKey(key) + "\n")
	cmd.Env = append(os.Environ(), "MAS4H_FINGERPRINT="+registry.Fingerprint(key))
	var stdout, stderr capBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &unix.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// The negative pid names the process group Setpgid gave it.
		return unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
	}
	// A grandchild that inherited stdout would keep Wait waiting for EOF.
	cmd.WaitDelay = 200 * time.Millisecond

	err := cmd.Run()
	if ctx.Err() != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return "", nil, fmt.Errorf("%s %s: no answer within %s: %w", e, e.Path, timeout, ErrDenied)
		}
		return "", nil, fmt.Errorf("%s %s: %w", e, e.Path, ctx.Err())
	}
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 200 {
			msg = msg[:200] + "…"
		}
		if msg != "" {
			return "", nil, fmt.Errorf("%s %s: %w (stderr: %s): %w", e, e.Path, err, msg, ErrDenied)
		}
		return "", nil, fmt.Errorf("%s %s: %w: %w", e, e.Path, err, ErrDenied)
	}
	if stdout.truncated {
		return "", nil, fmt.Errorf("%s %s: more than %d bytes on stdout: %w", e, e.Path, maxOutput, ErrDenied)
	}
	var a answer
	if err := json.Unmarshal(stdout.Bytes(), &a); err != nil {
		return "", nil, fmt.Errorf("%s %s: stdout is not a JSON object: %w", e, e.Path, ErrDenied)
	}
	k, extra, err := a.deviceKey()
	if err != nil {
		return "", nil, fmt.Errorf("%s %s: %w", e, e.Path, err)
	}
	return k, extra, nil
}

// capBuffer keeps the first maxOutput bytes written and drops the rest
// (without failing the writer, which would only make the program die of
// SIGPIPE and hide its exit status). It does not embed bytes.Buffer, whose
// ReadFrom io.Copy would use instead of Write, bypassing the cap.
type capBuffer struct {
	buf       bytes.Buffer
	truncated bool
}

func (b *capBuffer) Write(p []byte) (int, error) {
	if room := maxOutput - b.buf.Len(); room < len(p) {
		b.truncated = true
		if room > 0 {
			b.buf.Write(p[:room])
		}
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *capBuffer) Bytes() []byte  { return b.buf.Bytes() }
func (b *capBuffer) String() string { return b.buf.String() }
