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
	"github.com/mas4h/mas4h/sshd/statedir/nofollow"
)

// stopSlaveSSHD ends the detached sshd a slave left running from stateDir
// (only an sshd started with that state dir's config) and its sessions, so
// that purging the state dir and the tunnel user leaves nothing behind.
func stopSlaveSSHD(procRoot, stateDir string) (int, bool) {
	// The pid file is the tunnel user's to write: read without following
	// a link, and believed only for an sshd started with this config.
	pid, err := nofollow.ReadPid(statedir.Dir(stateDir).PidFile())
	if err != nil {
		return 0, false
	}
	cmdline, ok := sessions.Cmdline(procRoot, pid)
	if !ok || !bytes.Contains(cmdline, []byte(statedir.Dir(stateDir).SSHDConfig())) {
		return 0, false
	}
	if exe, err := os.Readlink(filepath.Join(procRoot, strconv.Itoa(pid), "exe")); err != nil || filepath.Base(strings.TrimSuffix(exe, " (deleted)")) != "sshd" {
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
