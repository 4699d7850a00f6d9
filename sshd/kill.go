package sshd

import (
	"errors"
	"syscall"
	"time"
)

// processAlive is kill(pid, 0) that does not count zombies: a dead sshd whose
// parent (often init, after the daemon was killed) has not reaped it yet must
// be treated as dead, or it would never be restarted.
func processAlive(procRoot string, pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	p, ok := readProc(procRoot, pid)
	return ok && p.state != 'Z' && p.state != 'X'
}

// terminate ends a session: SIGTERM to every process of it, SIGKILL to those
// still alive after grace. It returns once all are gone or the second grace
// period ran out.
func terminate(procRoot string, s Session, grace time.Duration) {
	signalAll := func(sig syscall.Signal) {
		for _, pid := range s.PIDs {
			syscall.Kill(pid, sig)
		}
	}
	allGone := func(within time.Duration) bool {
		deadline := time.Now().Add(within)
		for {
			alive := false
			for _, pid := range s.PIDs {
				if processAlive(procRoot, pid) {
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
	signalAll(syscall.SIGTERM)
	if allGone(grace) {
		return
	}
	signalAll(syscall.SIGKILL)
	allGone(grace)
}
