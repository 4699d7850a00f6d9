package bench

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// cpuSample is a process's own CPU ticks at one moment.
type cpuSample struct {
	At    time.Time
	Ticks int64
}

// cpuBurst is a run of CPU use between quiet spells.
type cpuBurst struct {
	Start, End time.Time
	Ticks      int64
}

// findCycles splits samples into bursts of CPU separated by at least gap
// without any, and returns the complete ones (quiet on both sides inside the
// window) of at least minTicks — the daemon's probe cycles, with one-tick
// housekeeping blips left out.
func findCycles(s []cpuSample, gap time.Duration, minTicks int64) []cpuBurst {
	var out []cpuBurst
	if len(s) < 2 {
		return nil
	}
	var cur *cpuBurst
	complete := false
	quietSince := s[0].At
	var lastInc time.Time
	for i := 1; i < len(s); i++ {
		d := s[i].Ticks - s[i-1].Ticks
		switch {
		case d > 0:
			if cur == nil {
				cur = &cpuBurst{Start: s[i-1].At}
				complete = s[i-1].At.Sub(quietSince) >= gap
			}
			cur.End = s[i].At
			cur.Ticks += d
			lastInc = s[i].At
		case cur != nil && s[i].At.Sub(lastInc) >= gap:
			if complete && cur.Ticks >= minTicks {
				out = append(out, *cur)
			}
			if cur.Ticks >= minTicks {
				quietSince = lastInc
			}
			cur = nil
		}
	}
	return out
}

// countMaxStartups counts sshd's log lines for connections it dropped
// because of MaxStartups ("drop connection #N from … past MaxStartups" in
// OpenSSH 9.x, "exceeded MaxStartups" in older ones).
func countMaxStartups(log []byte) int {
	return bytes.Count(log, []byte("past MaxStartups")) + bytes.Count(log, []byte("exceeded MaxStartups"))
}

func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// readFrom returns a file's content from offset on.
func readFrom(path string, offset int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		return nil, err
	}
	return io.ReadAll(f)
}

// killAll sends SIGKILL to every pid at once.
func killAll(pids []int) {
	for _, p := range pids {
		unix.Kill(p, unix.SIGKILL)
	}
}

// OtherTestRuns lists processes that look like test runs (`go test`,
// compiled *.test binaries) other than this one, as "pid cmdline". Reads
// /proc only.
func OtherTestRuns() []string {
	var out []string
	self := os.Getpid()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(b) == 0 {
			continue
		}
		if isTestRun(b) {
			cmd := strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
			if len(cmd) > 80 {
				cmd = cmd[:80] + "…"
			}
			out = append(out, e.Name()+" "+cmd)
		}
	}
	return out
}

// isTestRun tells a test run from its NUL-separated cmdline.
func isTestRun(cmdline []byte) bool {
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	if len(args) == 0 {
		return false
	}
	base := filepath.Base(args[0])
	if strings.HasSuffix(base, ".test") {
		return true
	}
	return base == "go" && len(args) > 1 && args[1] == "test"
}
