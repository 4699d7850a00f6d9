package bench

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mas4h/mas4h/sshd/sessions"
	"golang.org/x/sys/unix"
)

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool { return sessions.Alive("/proc", pid) }

// descendants lists every process below pid, deepest last, from /proc.
func descendants(pid int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := map[int][]int{}
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 2 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		children[ppid] = append(children[ppid], p)
	}
	var out []int
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// pidFromFile reads an sshd pid file and returns the pid only when that
// process is alive and was started with configPath, so a stale pid file can
// never make the harness signal an unrelated process.
func pidFromFile(pidPath, configPath string) (int, error) {
	b, err := os.ReadFile(pidPath)
	if err != nil {
		return 0, err
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, fmt.Errorf("pid file %s: bad pid %q", pidPath, b)
	}
	cmdline, ok := sessions.Cmdline("/proc", pid)
	if !ok || !alive(pid) {
		return 0, fmt.Errorf("pid %d from %s is not running", pid, pidPath)
	}
	if !bytes.Contains(cmdline, []byte(configPath)) {
		return 0, fmt.Errorf("pid %d from %s is not an sshd started with %s", pid, pidPath, configPath)
	}
	return pid, nil
}

// stopSSHD ends the sshd whose pid file is pidPath and its session children,
// which a listener's death alone would leave running.
func stopSSHD(pidPath, configPath string, timeout time.Duration) error {
	pid, err := pidFromFile(pidPath, configPath)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return err
	}
	pids := append([]int{pid}, descendants(pid)...)
	for _, p := range pids {
		unix.Kill(p, unix.SIGTERM)
	}
	return waitGone(pids, timeout)
}

// waitGone waits for pids to exit, then SIGKILLs what is left.
func waitGone(pids []int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		left := 0
		for _, p := range pids {
			if alive(p) {
				left++
			}
		}
		if left == 0 {
			return nil
		}
		time.Sleep(20 * time.Millisecond)
	}
	var stuck []string
	for _, p := range pids {
		if alive(p) {
			unix.Kill(p, unix.SIGKILL)
			stuck = append(stuck, strconv.Itoa(p))
		}
	}
	if len(stuck) > 0 {
		return fmt.Errorf("pids %s ignored SIGTERM for %s; killed", strings.Join(stuck, ","), timeout)
	}
	return nil
}

// child is a process the harness started and reaps itself.
type child struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

func startChild(cmd *exec.Cmd) (*child, error) {
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", strings.Join(cmd.Args, " "), err)
	}
	c := &child{cmd: cmd, done: make(chan struct{})}
	go func() { c.err = cmd.Wait(); close(c.done) }()
	return c, nil
}

// stop sends sig, waits up to timeout, then SIGKILLs.
func (c *child) stop(sig unix.Signal, timeout time.Duration) {
	select {
	case <-c.done:
		return
	default:
	}
	c.cmd.Process.Signal(sig)
	select {
	case <-c.done:
	case <-time.After(timeout):
		c.cmd.Process.Kill()
		<-c.done
	}
}

func (c *child) exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// tailLen is how much of a log an error message quotes: its end.
const tailLen = 1500

// tail returns the end of a log file, for error messages.
func tail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return "(no log)"
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > tailLen {
		f.Seek(fi.Size()-tailLen, 0)
	}
	b := make([]byte, tailLen)
	k, _ := f.Read(b)
	return strings.TrimSpace(string(b[:k]))
}
