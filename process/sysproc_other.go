//go:build !linux

package process

import (
	"errors"
	"syscall"
)

// startAttrs sets how Start detaches a process. Outside Linux (the device
// agent on macOS) there is no parent-death signal: a dieWithParent child
// stays in the caller's process group instead of a session of its own, so
// that launchd, which ends a job's whole process group when the job's main
// process exits (launchd.plist(5), AbandonProcessGroup), takes it along; a
// terminal's ^C reaches both too. A caller killed with SIGKILL outside
// launchd leaves it running until its connection ends.
func startAttrs(attr *syscall.SysProcAttr, dieWithParent bool) (lockThread bool) {
	if !dieWithParent {
		attr.Setsid = true
	}
	return false
}

func setAmbientCaps(_ *syscall.SysProcAttr, caps []uintptr) error {
	if len(caps) > 0 {
		return errors.New("ambient capabilities are Linux-only")
	}
	return nil
}
