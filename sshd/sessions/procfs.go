package sessions

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, 100 on every Linux architecture mas4h runs on.
const clockTicks = 100

// bootTime reads btime from /proc/stat (zero if unreadable).
func bootTime(root string) time.Time {
	b, err := os.ReadFile(filepath.Join(root, "stat"))
	if err != nil {
		return time.Time{}
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				return time.Unix(n, 0)
			}
		}
	}
	return time.Time{}
}

func isSSHDComm(comm string) bool {
	return comm == "sshd" || comm == "sshd-session" || comm == "sshd-auth"
}

func readProcs(root string) (map[int]procInfo, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("reading process table %s: %w", root, err)
	}
	procs := make(map[int]procInfo, len(entries))
	buf := make([]byte, 1024)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readStat(root, pid, buf); ok {
			procs[pid] = p
		}
	}
	return procs, nil
}

// readProc reads one process's stat (uid left -1: see procUID).
func readProc(root string, pid int) (procInfo, bool) {
	return readStat(root, pid, make([]byte, 1024))
}

// readStat reads /proc/PID/stat (uid left -1: see procUID). It reads with
// bare system calls into buf: the table is walked every cycle, and
// os.ReadFile costs twice the calls.
func readStat(root string, pid int, buf []byte) (procInfo, bool) {
	b, ok := readSmall(root+"/"+strconv.Itoa(pid)+"/stat", buf)
	if !ok {
		return procInfo{}, false
	}
	return parseStat(pid, b)
}

// parseStat parses the text of /proc/PID/stat. comm is in parentheses and
// may itself hold spaces or parentheses, so the fields after it are found
// from the last ')'.
func parseStat(pid int, b []byte) (procInfo, bool) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open || end+2 >= len(b) {
		return procInfo{}, false
	}
	p := procInfo{pid: pid, comm: string(b[open+1 : end]), uid: -1}
	// Fields after comm: state ppid pgrp session tty_nr tpgid flags minflt
	// cminflt majflt cmajflt utime stime cutime cstime priority nice
	// num_threads itrealvalue starttime.
	rest, fields := b[end+2:], 0
	for ; fields < 20 && len(rest) > 0; fields++ {
		f := rest
		if sp := bytes.IndexByte(rest, ' '); sp >= 0 {
			f, rest = rest[:sp], rest[sp+1:]
		} else {
			rest = nil
		}
		switch fields {
		case 0:
			if len(f) == 0 {
				return procInfo{}, false
			}
			p.state = f[0]
		case 1:
			p.ppid = atoiBytes(f)
		case 19:
			p.startTick = uint64(atoiBytes(f))
		}
	}
	if fields < 2 {
		return procInfo{}, false
	}
	return p, true
}

// readSmall reads a small /proc file whole into buf (or a bigger buffer
// when buf fills up).
func readSmall(path string, buf []byte) ([]byte, bool) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, false
	}
	defer unix.Close(fd)
	n := 0
	for {
		if n == len(buf) {
			buf = append(buf, make([]byte, len(buf))...)
		}
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, false
		}
		if m == 0 {
			return buf[:n], true
		}
		n += m
	}
}

func atoiBytes(b []byte) int {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return n
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// procUID is the effective uid of a process, from its /proc directory (its
// files belong to root when the process is not dumpable; the directory
// never does), or -1.
func procUID(root string, pid int) int {
	var st unix.Stat_t
	if err := unix.Stat(root+"/"+strconv.Itoa(pid), &st); err != nil {
		return -1
	}
	return int(st.Uid)
}

// started is when the process started, from the boot time.
func (p procInfo) started(boot time.Time) time.Time {
	return boot.Add(time.Duration(p.startTick) * time.Second / clockTicks)
}

// procFDs is what discovery needs of one process's fds: its socket inodes
// and whether it holds the slave's sshd log open.
type procFDs struct {
	sockets  []uint64
	holdsLog bool
}

func scanFDs(root string, pid int, logPath string) procFDs {
	var out procFDs
	for _, l := range readFDLinks(root, pid) {
		if ino, ok := socketInode(l); ok {
			out.sockets = append(out.sockets, ino)
		} else if logPath != "" && l == logPath {
			out.holdsLog = true
		}
	}
	return out
}

func readFDLinks(root string, pid int) []string {
	dir := root + "/" + strconv.Itoa(pid) + "/fd"
	f, err := os.Open(dir)
	if err != nil {
		return nil
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return nil
	}
	links := make([]string, 0, len(names))
	buf := make([]byte, 256)
	for _, name := range names {
		n, err := unix.Readlink(dir+"/"+name, buf)
		if err != nil || n <= 0 {
			continue
		}
		if n == len(buf) { // possibly cut: a long path
			l, err := os.Readlink(dir + "/" + name)
			if err == nil {
				links = append(links, l)
			}
			continue
		}
		links = append(links, string(buf[:n]))
	}
	return links
}

func socketInode(link string) (uint64, bool) {
	if !strings.HasPrefix(link, "socket:[") || !strings.HasSuffix(link, "]") {
		return 0, false
	}
	n, err := strconv.ParseUint(link[len("socket:["):len(link)-1], 10, 64)
	return n, err == nil
}
