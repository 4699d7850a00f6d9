package sessions

import (
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// Alive reports whether pid is a live process under procRoot: its stat
// reads and it is not a zombie. A dead sshd whose parent (often init, after
// the daemon was killed) has not reaped it yet is dead, or it would never
// be restarted.
func Alive(procRoot string, pid int) bool {
	if pid <= 0 {
		return false
	}
	p, ok := readProc(procRoot, pid)
	return ok && p.state != 'Z' && p.state != 'X'
}

// StartTick is when pid started, in clock ticks after boot: with the pid,
// what tells a process from a later one that reused its number.
func StartTick(procRoot string, pid int) (uint64, bool) {
	p, ok := readProc(procRoot, pid)
	return p.startTick, ok
}

// Cmdline is a process's argv, NUL-separated, as /proc shows it.
func Cmdline(procRoot string, pid int) ([]byte, bool) {
	b, ok := readSmall(procRoot+"/"+strconv.Itoa(pid)+"/cmdline", make([]byte, 512))
	return b, ok
}

// Terminate ends a session: SIGTERM to every process of it, SIGKILL to
// those still alive after grace. It returns once all are gone or the second
// grace period ran out. A process whose start time is no longer the one
// discovery saw has ended already; its pid is left alone.
func Terminate(procRoot string, s Session, grace time.Duration) {
	signalAll := func(sig unix.Signal) {
		for _, pid := range s.PIDs {
			_ = unix.Kill(pid, sig) // an error means it is gone already
		}
	}
	allGone := func(within time.Duration) bool {
		deadline := time.Now().Add(within)
		for {
			alive := false
			for _, pid := range s.PIDs {
				if Alive(procRoot, pid) {
					alive = true
					break
				}
			}
			if !alive {
				return true
			}
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if s.StartTick != 0 {
		if t, ok := StartTick(procRoot, s.MonitorPID); !ok || t != s.StartTick {
			return // that session is gone; the pid may be another process's now
		}
	}
	signalAll(unix.SIGTERM)
	if allGone(grace) {
		return
	}
	signalAll(unix.SIGKILL)
	allGone(grace)
}
