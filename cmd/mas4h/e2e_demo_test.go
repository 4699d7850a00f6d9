package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
)

// The README's first command: scripts/demo.sh (what `make demo` runs)
// brings up a master, a slave and a device whose rendered client script
// gets a signed slot and carries the device's web page through its real
// tunnel; `stop` ends what it started. Here on free ports, in a state dir
// of its own, as the e2e tunnel user. (Signed slot requests once broke the
// demo with nothing to tell.)
func TestDemoScript(t *testing.T) {
	requireE2E(t, "busybox", "curl", "ssh-keygen")
	e := newEnv(t)
	t.Chdir(filepath.Join("..", ".."))
	dir := filepath.Join(e.dir, "demo")
	env := append(os.Environ(), "MAS4H_DEMO_DIR="+dir, "MAS4H_DEMO_BIN="+testBin, "MAS4H_DEMO_TUNNEL_USER="+e2eTunnelUser, "MAS4H_DEMO_GUARD_PORTS=none", // the host's firewall stays as it is
		"MAS4H_DEMO_MASTER_PORT="+strconv.Itoa(freePort(t)), "MAS4H_DEMO_SSH_PORT="+strconv.Itoa(freePort(t)),
		"MAS4H_DEMO_WEB_PORT="+strconv.Itoa(freePort(t)))
	run := func(arg string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "bash", filepath.Join("scripts", "demo.sh"), arg)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	t.Cleanup(func() {
		if out, err := run("stop"); err != nil {
			t.Errorf("demo stop: %v\n%s", err, out)
		}
	})
	out, err := run("start")
	if err != nil {
		t.Fatalf("demo start: %v\n%s", err, out)
	}
	for _, want := range []string{"hello from demo-pi, through a mas4h reverse tunnel", "devices: 1 total, 1 active, 0 revoked, 1 online"} {
		if !strings.Contains(out, want) {
			t.Errorf("the demo's output lacks %q:\n%s", want, out)
		}
	}
	if t.Failed() {
		return
	}
	pid, err := os.ReadFile(filepath.Join(dir, "device-client.pid"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := run("stop"); err != nil || !strings.Contains(out, "demo stopped") {
		t.Fatalf("demo stop: %v\n%s", err, out)
	}
	p, _ := strconv.Atoi(strings.TrimSpace(string(pid)))
	if p <= 0 {
		t.Fatalf("device-client.pid holds %q", pid)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return syscall.Kill(p, 0) != nil }, "the device client %d still runs after demo stop", p)
}
