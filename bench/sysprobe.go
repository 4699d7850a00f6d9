package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// userHZ is the kernel's clock tick for /proc/PID/stat times (USER_HZ);
// 100 on every Linux architecture the fleet runs on.
const userHZ = 100

// procTimes is a process's CPU from /proc/PID/stat, in clock ticks: its own
// (utime, stime) and that of its children it has waited for (cutime,
// cstime) — for an sshd session, the pre-auth child and every
// AuthorizedKeysCommand run.
type procTimes struct {
	UTime, STime, CUTime, CSTime int64
	RSSPages                     int64
}

// Own is the process's own CPU in ticks.
func (t procTimes) Own() int64 { return t.UTime + t.STime }

// All is own plus reaped children, in ticks.
func (t procTimes) All() int64 { return t.UTime + t.STime + t.CUTime + t.CSTime }

// parseStat parses the content of /proc/PID/stat.
func parseStat(b []byte) (procTimes, error) {
	// comm may hold spaces and parens; fields after the last ')' start at
	// field 3 (state).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procTimes{}, fmt.Errorf("stat: no ')' in %q", b)
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is field 3; utime is field 14 → f[11]; rss is field 24 → f[21].
	if len(f) < 22 {
		return procTimes{}, fmt.Errorf("stat: %d fields after comm", len(f))
	}
	var t procTimes
	var err error
	for _, p := range []struct {
		dst *int64
		idx int
	}{{&t.UTime, 11}, {&t.STime, 12}, {&t.CUTime, 13}, {&t.CSTime, 14}, {&t.RSSPages, 21}} {
		if *p.dst, err = strconv.ParseInt(f[p.idx], 10, 64); err != nil {
			return procTimes{}, fmt.Errorf("stat field %d: %w", p.idx+3, err)
		}
	}
	return t, nil
}

func readStat(pid int) (procTimes, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procTimes{}, err
	}
	return parseStat(b)
}

// parseSmapsRollup returns the Pss and Rss lines of /proc/PID/smaps_rollup,
// in kB.
func parseSmapsRollup(b []byte) (pssKB, rssKB int64, err error) {
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		var dst *int64
		switch f[0] {
		case "Pss:":
			dst = &pssKB
		case "Rss:":
			dst = &rssKB
		default:
			continue
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("smaps_rollup %s: %w", f[0], err)
		}
		*dst = v
		found++
	}
	if found < 2 {
		return 0, 0, fmt.Errorf("smaps_rollup: no Pss/Rss lines")
	}
	return pssKB, rssKB, nil
}

func readPSS(pid int) (pssKB, rssKB int64, err error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "smaps_rollup"))
	if err != nil {
		return 0, 0, err
	}
	return parseSmapsRollup(b)
}

// treeUsage is what a process tree (an sshd listener and its sessions)
// holds at one moment.
type treeUsage struct {
	Procs  int
	PSSKB  int64
	RSSKB  int64
	Ticks  int64         // own + reaped children, summed over the tree
	PerPID map[int]int64 // own ticks per pid, for deltas over a window
}

// sampleTree reads every process of pid's tree (pid included). With mem it
// also reads smaps_rollup, which is slow at thousands of processes.
func sampleTree(pid int, mem bool) treeUsage {
	u := treeUsage{PerPID: map[int]int64{}}
	for _, p := range append([]int{pid}, descendants(pid)...) {
		t, err := readStat(p)
		if err != nil {
			continue // exited meanwhile
		}
		u.Procs++
		u.Ticks += t.All()
		u.PerPID[p] = t.Own()
		if mem {
			if pss, rss, err := readPSS(p); err == nil {
				u.PSSKB += pss
				u.RSSKB += rss
			}
		}
	}
	return u
}

// ownDelta is the CPU the processes alive in both samples spent between
// them, in ticks (processes that came or went in between are left out).
func ownDelta(before, after treeUsage) int64 {
	var d int64
	for pid, a := range after.PerPID {
		if b, ok := before.PerPID[pid]; ok && a >= b {
			d += a - b
		}
	}
	return d
}

// memInfo returns MemTotal and MemAvailable in kB from /proc/meminfo text.
func parseMemInfo(b []byte) (totalKB, availKB int64) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "MemTotal:":
			totalKB = v
		case "MemAvailable:":
			availKB = v
		}
	}
	return totalKB, availKB
}

// Limits is what the host allows, checked before a run, and what the
// harness changed (and restored afterwards).
type Limits struct {
	MemTotalMB     int64    `json:"mem_total_mb"`
	MemAvailableMB int64    `json:"mem_available_mb"`
	PidMax         int      `json:"pid_max"`
	ThreadsMax     int      `json:"threads_max"`
	Somaxconn      int      `json:"somaxconn"`
	NoFile         uint64   `json:"nofile"`
	NProc          uint64   `json:"nproc"`
	EphemeralPorts string   `json:"ephemeral_ports"`
	Changes        []string `json:"changes,omitempty"`
	Problems       []string `json:"problems,omitempty"`
}

func readIntFile(path string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	v, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return v
}

// sysctlSet writes a /proc/sys value and returns a function restoring the
// old one.
func sysctlSet(path string, v int) (restore func() error, err error) {
	old, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, []byte(strconv.Itoa(v)), 0o644); err != nil {
		return nil, err
	}
	return func() error { return os.WriteFile(path, bytes.TrimSpace(old), 0o644) }, nil
}

// raiseRlimit raises this process's soft (and if need be hard) limit of
// resource to want, noting the change or why it could not, and returns the
// limit in force; 0 when it cannot be read.
func (l *Limits) raiseRlimit(resource int, want uint64, what, name string) uint64 {
	var rl unix.Rlimit
	if err := unix.Getrlimit(resource, &rl); err != nil {
		return 0
	}
	if rl.Cur >= want {
		return rl.Cur
	}
	old := rl
	rl.Cur, rl.Max = want, max(rl.Max, want)
	if err := unix.Setrlimit(resource, &rl); err != nil {
		l.Problems = append(l.Problems, fmt.Sprintf("%s %d < %d needed, cannot raise: %v", what, old.Cur, want, err))
		return old.Cur
	}
	l.Changes = append(l.Changes, fmt.Sprintf("%s %d → %d", name, old.Cur, rl.Cur))
	return rl.Cur
}

// prepareLimits checks what maxTunnels tunnels (two sshd processes each,
// one socket each in this process) need and raises what it may: its own
// open-file and process limits (inherited by the slave daemon and the
// sshds it starts) and kernel.pid_max. Each sysctl it changes is restored by
// onCleanup.
func prepareLimits(maxTunnels int, onCleanup func(string, func() error)) Limits {
	var l Limits
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		t, a := parseMemInfo(b)
		l.MemTotalMB, l.MemAvailableMB = t/1024, a/1024
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		l.EphemeralPorts = strings.Join(strings.Fields(string(b)), "-")
	}
	l.Somaxconn = readIntFile("/proc/sys/net/core/somaxconn")
	l.ThreadsMax = readIntFile("/proc/sys/kernel/threads-max")

	l.NoFile = l.raiseRlimit(unix.RLIMIT_NOFILE, uint64(maxTunnels*2+4096),
		"open files", "RLIMIT_NOFILE of the harness (inherited by the slave and sshd)")
	// sshd runs as the tunnel user: every session's two processes count
	// against that user's RLIMIT_NPROC, inherited from here.
	l.NProc = l.raiseRlimit(unix.RLIMIT_NPROC, uint64(maxTunnels*3+2048), "max user processes", "RLIMIT_NPROC")
	// Every tunnel is two sshd processes; leave room for the rest of the box.
	l.PidMax = readIntFile("/proc/sys/kernel/pid_max")
	if need := maxTunnels*2 + 8192; l.PidMax > 0 && l.PidMax < need {
		want := 65536
		for want < need {
			want *= 2
		}
		restore, err := sysctlSet("/proc/sys/kernel/pid_max", want)
		if err != nil {
			l.Problems = append(l.Problems, fmt.Sprintf("kernel.pid_max %d < %d needed, cannot raise: %v", l.PidMax, need, err))
		} else {
			l.Changes = append(l.Changes, fmt.Sprintf("kernel.pid_max %d → %d (restored afterwards)", l.PidMax, want))
			onCleanup("restoring kernel.pid_max", restore)
			l.PidMax = want
		}
	}
	if need := maxTunnels*2 + 8192; l.ThreadsMax > 0 && l.ThreadsMax < need {
		l.Problems = append(l.Problems, fmt.Sprintf("kernel.threads-max %d < %d needed", l.ThreadsMax, need))
	}
	return l
}
