package install

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/sshd/sessions"
	"github.com/mas4h/mas4h/sshd/statedir"
)

// stopSlaveSSHD ends the detached sshd a slave left running from stateDir
// (only an sshd started with that state dir's config) and its sessions, so
// that purging the state dir and the tunnel user leaves nothing behind.
func stopSlaveSSHD(procRoot, stateDir string) (int, bool) {
	b, err := os.ReadFile(statedir.Dir(stateDir).PidFile())
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return 0, false
	}
	cmdline, ok := sessions.Cmdline(procRoot, pid)
	if !ok || !bytes.Contains(cmdline, []byte(statedir.Dir(stateDir).SSHDConfig())) {
		return 0, false
	}
	for _, child := range children(procRoot, pid) {
		unix.Kill(child, unix.SIGTERM)
	}
	unix.Kill(pid, unix.SIGTERM)
	for i := 0; i < 40 && sessions.Alive(procRoot, pid); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	return pid, true
}

// children lists the processes whose parent is pid (sshd's sessions).
func children(procRoot string, pid int) []int {
	entries, _ := os.ReadDir(procRoot)
	var out []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(procRoot, e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		i := bytes.LastIndexByte(stat, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(stat[i+1:]))
		if len(f) >= 2 && f[1] == strconv.Itoa(pid) {
			out = append(out, p)
		}
	}
	return out
}
