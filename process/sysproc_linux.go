package process

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// startAttrs sets how Start detaches a process: a session of its own, and
// for dieWithParent the kernel's parent-death signal, which Linux ties to
// the forking thread (lockThread: keep that thread for the child's life).
func startAttrs(attr *syscall.SysProcAttr, dieWithParent bool) (lockThread bool) {
	attr.Setsid = true
	if dieWithParent {
		attr.Pdeathsig = unix.SIGTERM
		return true
	}
	return false
}

func setAmbientCaps(attr *syscall.SysProcAttr, caps []uintptr) error {
	attr.AmbientCaps = caps
	return nil
}
