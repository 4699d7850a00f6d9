package supervisor

import (
	"os/exec"
	"syscall"
)

// Detached is the real Starter.
type Detached struct{}

// Start implements Starter.
func (Detached) Start(argv []string, uid, gid int, lowPort bool) (int, <-chan error, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Setsid:     true,
		Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
	}
	if lowPort {
		cmd.SysProcAttr.AmbientCaps = []uintptr{10} // CAP_NET_BIND_SERVICE
	}
	if err := cmd.Start(); err != nil {
		return 0, nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // reaps it while this daemon lives
	return cmd.Process.Pid, exited, nil
}
