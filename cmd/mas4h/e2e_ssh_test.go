package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
)

func TestSSHArgv(t *testing.T) {
	r := sshRoute{device: "pi", forward: wire.Forward{Name: "ssh", Target: "localhost:22", RemotePort: 20001}, slave: "s1", host: "s1.example.net", port: 20001}
	got := sshJumpArgv(r, "s1.example.net", "", 0, "", nil)
	want := []string{"-J", "s1.example.net", "-p", "20001", "-o", "HostKeyAlias=mas4h-pi", "localhost"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("jump argv = %q, want %q", got, want)
	}
	got = sshJumpArgv(r, "2001:db8::1", "admin", 2200, "root", []string{"-A", "uptime"})
	want = []string{"-J", "admin@[2001:db8::1]:2200", "-p", "20001", "-o", "HostKeyAlias=mas4h-pi", "-l", "root", "localhost", "-A", "uptime"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("jump argv = %q, want %q", got, want)
	}
	got = sshForwardArgv(r, "s1.example.net", "admin", 2200, 40000, []string{"-v"})
	want = []string{"-N", "-o", "ExitOnForwardFailure=yes", "-L", "127.0.0.1:40000:localhost:20001", "-p", "2200", "-l", "admin", "s1.example.net", "-v"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("forward argv = %q, want %q", got, want)
	}
	for _, c := range []struct {
		f    wire.Forward
		want string
	}{
		{wire.Forward{Target: "192.168.1.10:80"}, "http://127.0.0.1:40000/"},
		{wire.Forward{Target: "localhost:8443"}, "https://127.0.0.1:40000/"},
		{wire.Forward{Target: "localhost:9000", Probe: "http"}, "http://127.0.0.1:40000/"},
		{wire.Forward{Target: "localhost:22"}, "127.0.0.1:40000"},
	} {
		if got := localURL(c.f, 40000); got != c.want {
			t.Errorf("localURL(%+v) = %q, want %q", c.f, got, c.want)
		}
	}
	if got := shellJoin([]string{"ssh", "-o", "ProxyCommand=a b", "it's"}); got != `ssh -o 'ProxyCommand=a b' 'it'\''s'` {
		t.Errorf("shellJoin = %s", got)
	}
}

// operatorSSHConfig is the operator's own ssh setup for the test: their key
// for the admin sshd, and no host-key prompts. `mas4h ssh` passes it
// through (-F also reaches the ProxyJump's ssh).
func operatorSSHConfig(t *testing.T, e *env, admin adminSSHD) string {
	t.Helper()
	path := filepath.Join(e.dir, "operator_ssh_config")
	cfg := fmt.Sprintf("Host *\n  IdentityFile %s\n  IdentitiesOnly yes\n  IdentityAgent none\n  BatchMode yes\n"+
		"  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n  ConnectTimeout 5\n", admin.key.private)
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// An operator reaches a device through the slave that holds its tunnel,
// with the host's admin sshd (a second sshd on loopback here) as the jump
// host: a login over the device's ssh forward, and a local forward to its
// echo service. Unknown, offline and forward-less devices get clear errors.
func TestSSHThroughSlave(t *testing.T) {
	e := newEnv(t, "ssh-keygen")
	admin := startAdminSSHD(t, e)
	es := startEcho(t)
	m := e.startMaster()
	m.startSlave("s1")
	waitSlavesAlive(t, m, 1)
	// The device's own sshd is played by the admin sshd too (root, the
	// operator's key): logging in to it proves the whole path.
	dev, k := m.enrol("pi", fmt.Sprintf("ssh=127.0.0.1:%d,probe=ssh-banner", admin.port), fmt.Sprintf("echo=localhost:%d,probe=ssh-banner", es.port))
	m.enrol("pi-off")
	slot, code, body := m.slot(k)
	if code != 200 {
		t.Fatalf("slot: %d %s", code, body)
	}
	args := []string{"-N"}
	for _, f := range slot.Forwards {
		target := es.port
		if f.Name == "ssh" {
			target = admin.port
		}
		args = append(args, "-R", fmt.Sprintf("%d:localhost:%d", f.RemotePort, target))
	}
	c := e.startClient("ssh", sshArgs(k, slot.Port, append(args, slot.User+"@"+slot.Host)...)...)
	for _, f := range dev.Forwards {
		if !waitListen(t, f.RemotePort, c, 10*time.Second) {
			t.Fatalf("tunnel did not come up: %s", c.stderr)
		}
	}
	waitTunnelCount(t, m, 2, 5*time.Second)
	cfg := operatorSSHConfig(t, e, admin)
	jump := []string{"--master", m.url, "--token-file", m.adminToken, "--jump-user", "root", "--jump-port", strconv.Itoa(admin.port)}

	// Log in over the ssh forward and run a command.
	out, stderr, code := e.mas4h("", append(append([]string{"ssh", "root@pi"}, jump...), "--", "-F", cfg, "echo", "hello-from-pi")...)
	if code != 0 || strings.TrimSpace(out) != "hello-from-pi" {
		t.Fatalf("mas4h ssh root@pi -- echo: exit %d, out %q, err %s", code, out, stderr)
	}
	out, _, code = e.mas4h("", append(append([]string{"ssh", "root@pi", "--dry-run"}, jump...), "--", "-F", cfg)...)
	if code != 0 || !strings.Contains(out, fmt.Sprintf("-J root@127.0.0.1:%d -p %d", admin.port, dev.Forwards[0].RemotePort)) {
		t.Errorf("--dry-run: %q", out)
	}

	// A local forward to the echo service.
	fw := exec.Command(testBin, append(append([]string{"ssh", "pi", "--forward", "echo"}, jump...), "--", "-F", cfg)...)
	stdout, errb := &syncBuffer{}, &syncBuffer{}
	fw.Stdout, fw.Stderr = stdout, errb
	fw.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := fw.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { fw.Wait(); close(done) }()
	t.Cleanup(func() { fw.Process.Kill(); <-done })
	re := regexp.MustCompile(`pi/echo is at 127\.0\.0\.1:(\d+) \(port \d+ on slave s1`)
	var local int
	testkit.Eventually(t, 10*time.Second, func() bool {
		if mm := re.FindStringSubmatch(stdout.String()); mm != nil {
			local, _ = strconv.Atoi(mm[1])
		}
		return local != 0
	}, "mas4h ssh --forward printed no local address: %q %s", stdout, errb)
	testkit.Eventually(t, 10*time.Second, func() bool {
		select {
		case <-done:
			t.Fatalf("the forward's ssh exited: %s", errb)
		default:
		}
		return dialOK(local)
	}, "local port %d never listened: %s", local, errb)
	if err := roundTrip(local); err != nil {
		t.Fatalf("through the local forward: %v", err)
	}
	t.Logf("mas4h ssh --forward: %s", strings.TrimSpace(stdout.String()))

	// Clear errors.
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"ssh", "nope"}, 1, `no device "nope"`},
		{[]string{"ssh", "pi-off"}, 1, "device pi-off is offline: no live tunnel for its ssh forward"},
		{[]string{"ssh", "pi", "--forward", "web"}, 2, `device pi has no forward "web" (its forwards: ssh, echo)`},
		{[]string{"ssh", "pi", "extra"}, 2, "takes one device"},
	} {
		_, stderr, code := e.mas4h("", append(c.args, jump...)...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("mas4h %v: exit %d %q, want %d with %q", c.args, code, stderr, c.code, c.want)
		}
	}
}
