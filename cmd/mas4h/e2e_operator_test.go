package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// A device's key never logs in as the operator user: not through the keys
// file (which sshd reads for every user, and whose device lines have no
// permitopen: as the operator such a line would open every loopback port
// PermitOpen allows), not through the hook.
func TestOperatorUserRefusesDeviceKeys(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	devA, kA := e.enrol("dev-a", "--forward", fwd(es))
	devB, kB := e.enrol("dev-b", "--forward", fwd(es))
	sp := e.startSlave("s1")
	// dev-b's tunnel up: its port listens, dev-a stays in the keys file.
	e.upTunnel(kB, sp, devB, es)
	for _, c := range []struct {
		name string
		args []string
	}{
		{"-W to another device's port", []string{"-W", fmt.Sprintf("localhost:%d", port(devB))}},
		{"-W to its own port", []string{"-W", fmt.Sprintf("127.0.0.1:%d", port(devA))}},
		{"-N -R", []string{"-N", "-R", fmt.Sprintf("%d:localhost:%d", port(devA), es.port)}},
		{"shell", []string{"-tt", "true"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := sshArgs(kA, sp.port, append([]string{"-l", e2eOperatorUser}, c.args...)...)
			args = append(args[:len(args)-len(c.args)], append([]string{"127.0.0.1"}, c.args...)...)
			cl := e.startClient("ssh", args...)
			if code := cl.wait(10 * time.Second); code != 255 {
				t.Fatalf("status %d, want 255 (refused): %s", code, cl.stderr)
			}
			if !strings.Contains(cl.stderr.String(), "Permission denied (publickey)") {
				t.Errorf("not refused at login: %s", cl.stderr)
			}
		})
	}
}
