package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
)

// toolsFleet is a master, one slave under it, devices whose ssh forward
// reaches a real sshd playing the device's own (root, a login key) and an
// operator, alice, allowed on pi-*: the operator's tools run with a home of
// their own and no account on the slave host but the slave's users.
type toolsFleet struct {
	e       *env
	m       *masterProc
	device  adminSSHD // the devices' own sshd
	web     int       // the devices' web target
	tunnels map[string]*tunnelClient
	alice   deviceKey
	home    string
	devKH   string   // the operator's known_hosts, where device host keys go
	devArgs []string // ssh options for the login on the device
}

func newToolsFleet(t *testing.T, tools []string, devices ...string) *toolsFleet {
	e := newEnv(t, append([]string{"ssh-keygen"}, tools...)...)
	f := &toolsFleet{e: e, device: startAdminSSHD(t, e), tunnels: map[string]*tunnelClient{}, home: filepath.Join(e.dir, "home")}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.web = l.Addr().(*net.TCPAddr).Port
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "the device's web ui at %s\n", r.URL.Path)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	f.m = e.startMaster()
	f.m.startSlave("s1")
	waitSlavesAlive(t, f.m, 1)
	for _, name := range devices {
		_, k := f.m.enrol(name, fmt.Sprintf("ssh=127.0.0.1:%d,probe=ssh-banner", f.device.port), fmt.Sprintf("web=127.0.0.1:%d,probe=http", f.web))
		slot, code, body := f.m.slot(k)
		if code != 200 {
			t.Fatalf("slot of %s: %d %s", name, code, body)
		}
		args := []string{"-N"}
		for _, fw := range slot.Forwards {
			target := f.web
			if fw.Name == "ssh" {
				target = f.device.port
			}
			args = append(args, "-R", fmt.Sprintf("%d:localhost:%d", fw.RemotePort, target))
		}
		c := e.startClient("ssh", sshArgs(k, slot.Port, append(args, slot.User+"@"+slot.Host)...)...)
		for _, fw := range slot.Forwards {
			if !waitListen(t, fw.RemotePort, c, 10*time.Second) {
				t.Fatalf("tunnel of %s did not come up: %s", name, c.stderr)
			}
		}
		f.tunnels[name] = c
	}
	waitTunnelCount(t, f.m, 2*len(devices), 10*time.Second)
	f.alice = e.newKey("alice")
	if _, stderr, code := f.m.admin("operator", "add", "alice", "--key", f.alice.public, "--allow", "pi-*"); code != 0 {
		t.Fatalf("operator add: %s", stderr)
	}
	if err := os.MkdirAll(f.home, 0o700); err != nil {
		t.Fatal(err)
	}
	f.devKH = filepath.Join(f.home, "known_hosts")
	f.devArgs = []string{"-o", "UserKnownHostsFile=" + f.devKH, "-o", "StrictHostKeyChecking=accept-new", "-i", f.device.key.private,
		"-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5"}
	return f
}

// env is the operator's environment: their own home and config, no agent
// unless given.
func (f *toolsFleet) env(extra ...string) []string {
	return append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + f.home, "XDG_CONFIG_HOME=" + filepath.Join(f.home, ".config"), "SSH_AUTH_SOCK="}, extra...)
}

// op runs a mas4h command as the operator, against the master.
func (f *toolsFleet) op(env []string, args ...string) (string, string, int) {
	f.e.t.Helper()
	cmd := exec.Command(testBin, append([]string{args[0], "--master", f.m.url}, args[1:]...)...)
	cmd.Env = env
	return exitOf(f.e.t, cmd, "")
}

// sshConfig writes `mas4h ssh-config` for selectors, then the operator's
// own settings for the devices' login, to a file for ssh -F.
func (f *toolsFleet) sshConfig(selectors ...string) string {
	t := f.e.t
	t.Helper()
	args := []string{"ssh-config", "--key", f.alice.private}
	for _, s := range selectors {
		args = append(args, "--selector", s)
	}
	out, stderr, code := f.op(f.env(), args...)
	if code != 0 {
		t.Fatalf("ssh-config: exit %d: %s", code, stderr)
	}
	own := fmt.Sprintf("Host *\n  User root\n  IdentityFile %s\n  IdentitiesOnly yes\n  IdentityAgent none\n  BatchMode yes\n"+
		"  UserKnownHostsFile %s\n  StrictHostKeyChecking accept-new\n  LogLevel ERROR\n  ConnectTimeout 5\n", f.device.key.private, f.devKH)
	path := filepath.Join(f.home, "ssh_config")
	if err := os.WriteFile(path, []byte(out+own), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("ssh-config:\n%s", out)
	return path
}

// knownAs counts the entries of name in a known_hosts file, hashed
// (Debian's ssh_config says HashKnownHosts yes) or not.
func knownAs(t *testing.T, file, name string) int {
	t.Helper()
	out, _ := exec.Command("ssh-keygen", "-F", name, "-f", file).Output()
	return strings.Count(string(out), "# Host "+name+" found")
}

// An operator reaches devices with mas4h ssh, mas4h ssh --forward, and
// plain ssh, scp and rsync through mas4h ssh-config, as the slave's
// operator user: no account on the slave host of their own. Refusals say
// why: unknown or not allowed, offline since when and where, revoked.
func TestOperatorTools(t *testing.T) {
	f := newToolsFleet(t, []string{"scp", "rsync"}, "pi-a", "pi-b")
	f.m.enrol("paris-1") // not on alice's allow list
	e, m := f.e, f.m
	key := []string{"--key", f.alice.private}

	// mas4h ssh runs a command on the device's own sshd, through the
	// slave's operator user.
	out, stderr, code := f.op(f.env(), append(append([]string{"ssh", "root@pi-a"}, key...), append([]string{"--"}, append(f.devArgs, "echo", "hello from", "pi-a")...)...)...)
	if code != 0 || strings.TrimSpace(out) != "hello from pi-a" {
		t.Fatalf("mas4h ssh root@pi-a -- echo: exit %d, out %q, err %s", code, out, stderr)
	}
	out, _, code = f.op(f.env(), append(append([]string{"ssh", "pi-a", "--dry-run"}, key...), "--", "true")...)
	if code != 0 || !strings.Contains(out, "-l "+e2eOperatorUser+" 127.0.0.1") || !strings.Contains(out, "HostKeyAlias=mas4h-pi-a pi-a true") {
		t.Errorf("--dry-run: %q", out)
	}
	kh := filepath.Join(f.home, ".config", "mas4h", "known_hosts")
	slaveLines := regexp.MustCompile(`(?m)^\[127\.0\.0\.1\]:\d+ ssh-`).FindAllString(string(mustRead(t, kh)), -1)
	if fi, err := os.Stat(kh); err != nil || fi.Mode().Perm() != 0o600 || len(slaveLines) == 0 {
		t.Errorf("mas4h's known_hosts: %v %v, %d lines for the slave:\n%s", fi, err, len(slaveLines), mustRead(t, kh))
	}
	if n := knownAs(t, f.devKH, "mas4h-pi-a"); n != 1 {
		t.Errorf("the device's host key is pinned %d times as mas4h-pi-a:\n%s", n, mustRead(t, f.devKH))
	}

	// With the key in an ssh-agent, behind a key the master does not know.
	sock := filepath.Join(e.dir, "agent.sock")
	ag := exec.Command("ssh-agent", "-D", "-a", sock)
	ag.Stdout, ag.Stderr = io.Discard, io.Discard
	if err := ag.Start(); err != nil {
		t.Fatal(err)
	}
	agDone := make(chan struct{})
	go func() { ag.Wait(); close(agDone) }()
	t.Cleanup(func() { ag.Process.Kill(); <-agDone })
	testkit.Eventually(t, 5*time.Second, func() bool { _, err := os.Stat(sock); return err == nil }, "ssh-agent made no socket")
	agentEnv := f.env("SSH_AUTH_SOCK=" + sock)
	for _, k := range []deviceKey{e.newKey("stranger"), f.alice} {
		add := exec.Command("ssh-add", k.private)
		add.Env = agentEnv
		if b, err := add.CombinedOutput(); err != nil {
			t.Fatalf("ssh-add: %v %s", err, b)
		}
	}
	out, stderr, code = f.op(agentEnv, append([]string{"ssh", "root@pi-b", "--"}, append(f.devArgs, "echo", "agent")...)...)
	if code != 0 || strings.TrimSpace(out) != "agent" {
		t.Fatalf("mas4h ssh with the agent: exit %d, out %q, err %s", code, out, stderr)
	}

	// --forward web: a local URL serving the device's web target.
	fw := exec.Command(testBin, append([]string{"ssh", "pi-a", "--forward", "web", "--master", m.url}, key...)...)
	fw.Env = f.env()
	stdout, errb := &syncBuffer{}, &syncBuffer{}
	fw.Stdout, fw.Stderr = stdout, errb
	if err := fw.Start(); err != nil {
		t.Fatal(err)
	}
	fwDone := make(chan struct{})
	go func() { fw.Wait(); close(fwDone) }()
	t.Cleanup(func() { fw.Process.Kill(); <-fwDone })
	re := regexp.MustCompile(`pi-a/web is at (http://127\.0\.0\.1:\d+/) \(port \d+ on slave s1\)`)
	var url string
	testkit.Eventually(t, 10*time.Second, func() bool {
		if mm := re.FindStringSubmatch(stdout.String()); mm != nil {
			url = mm[1]
		}
		return url != ""
	}, "mas4h ssh --forward web printed no URL: %q %s", stdout, errb)
	var body string
	testkit.Eventually(t, 10*time.Second, func() bool {
		select {
		case <-fwDone:
			t.Fatalf("the forward's ssh exited: %s", errb)
		default:
		}
		resp, err := http.Get(url + "status")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		return true
	}, "%s never answered: %s", url, errb)
	if body != "the device's web ui at /status\n" {
		t.Errorf("through %s: %q", url, body)
	}

	// Plain ssh, scp and rsync through the ssh-config block. pi-a's host
	// key, learnt by mas4h ssh as mas4h-pi-a, is the one checked.
	cfg := f.sshConfig("pi-*")
	sshCmd := func(name string, args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.Command(name, args...)
		cmd.Env = f.env()
		return exitOf(t, cmd, "")
	}
	if out, stderr, code := sshCmd("ssh", "-F", cfg, "-o", "StrictHostKeyChecking=yes", "pi-a", "echo", "plain"); code != 0 || strings.TrimSpace(out) != "plain" {
		t.Fatalf("ssh -F ssh-config pi-a: exit %d %q %s", code, out, stderr)
	}
	src := filepath.Join(e.dir, "payload")
	if err := os.WriteFile(src, []byte(strings.Repeat("mas4h operator payload\n", 5000)), 0o644); err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(e.dir, "on-device")
	if err := os.MkdirAll(filepath.Join(dst, "rsync"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := sshCmd("scp", "-F", cfg, src, "pi-b:"+filepath.Join(dst, "scp")); code != 0 {
		t.Fatalf("scp to pi-b: exit %d: %s", code, stderr)
	}
	if _, stderr, code := sshCmd("rsync", "-a", "-e", "ssh -F "+cfg, src, "pi-a:"+filepath.Join(dst, "rsync")+"/"); code != 0 {
		t.Fatalf("rsync to pi-a: exit %d: %s", code, stderr)
	}
	for _, got := range []string{filepath.Join(dst, "scp"), filepath.Join(dst, "rsync", "payload")} {
		if string(mustRead(t, got)) != string(mustRead(t, src)) {
			t.Errorf("%s differs from what was sent", got)
		}
	}
	if a, b, plain := knownAs(t, f.devKH, "mas4h-pi-a"), knownAs(t, f.devKH, "mas4h-pi-b"), knownAs(t, f.devKH, "pi-a"); a != 1 || b != 1 || plain != 0 {
		t.Errorf("device host keys: %d as mas4h-pi-a, %d as mas4h-pi-b, %d as pi-a; want 1, 1, 0", a, b, plain)
	}

	// ssh-config by label needs the admin token, and says so.
	if _, stderr, code := f.op(f.env(), "ssh-config", "--selector", "site=lyon"); code != 2 || !strings.Contains(stderr, "listing the devices of site=lyon needs the master's admin token") {
		t.Errorf("ssh-config by label without token: exit %d: %s", code, stderr)
	}
	if _, stderr, code := m.admin("device", "label", "pi-b", "site=lyon"); code != 0 {
		t.Fatal(stderr)
	}
	out, stderr, code = f.op(f.env(), "ssh-config", "--selector", "site=lyon", "--selector", "x-*", "--token-file", m.adminToken)
	if code != 0 || !strings.Contains(out, "\nHost x-* pi-b\n  Hostname mas4h-%h\n  ProxyCommand "+testBin+" proxy --master "+m.url+" %n\n") {
		t.Errorf("ssh-config by label: exit %d %s\n%s", code, stderr, out)
	}

	// Clear refusals.
	refused := func(what, want string, args ...string) {
		t.Helper()
		_, stderr, code := f.op(f.env(), append(args, key...)...)
		if code != 1 || !strings.Contains(stderr, want) {
			t.Errorf("%s: exit %d %q, want 1 with %q", what, code, stderr, want)
		}
	}
	refused("unknown device", "operator alice may reach no device named nope: it is not enrolled, or not on your allow list", "ssh", "nope")
	refused("device not allowed", "operator alice may reach no device named paris-1: it is not enrolled, or not on your allow list", "ssh", "paris-1")
	refused("proxy to an unknown device", "operator alice may reach no device named nope", "proxy", "nope")
	refused("no such forward", "device pi-a has no forward vnc (it has: ssh, web)", "ssh", "pi-a", "--forward", "vnc")
	f.tunnels["pi-b"].cmd.Process.Kill()
	offline := regexp.MustCompile(`device pi-b is offline since \S+ \(last on slave s1\): its tunnel is down`)
	testkit.Eventually(t, 5*e2eHeartbeat+10*time.Second, func() bool {
		_, stderr, code := f.op(f.env(), append([]string{"ssh", "pi-b", "--dry-run"}, key...)...)
		return code == 1 && offline.MatchString(stderr)
	}, "mas4h ssh pi-b never said it is offline")
	if _, stderr, code := m.admin("operator", "revoke", "alice"); code != 0 {
		t.Fatal(stderr)
	}
	refused("revoked operator", "operator alice is revoked: you may reach no device through the master at "+m.url+"; ask an admin", "ssh", "pi-a")
	if _, stderr, code := f.op(f.env(), "ssh", "pi-a"); code != 2 || !strings.Contains(stderr, "no operator key: pass --key FILE") {
		t.Errorf("no key at all: exit %d %s", code, stderr)
	}
}

// Ansible's ping reaches two devices at once through mas4h ssh-config:
// two `mas4h proxy` at the same time, each pinning its slave's key.
func TestOperatorToolsAnsible(t *testing.T) {
	f := newToolsFleet(t, []string{"ansible"}, "pi-a", "pi-b")
	cfg := f.sshConfig("pi-*")
	cmd := exec.Command("ansible", "all", "-i", "pi-a,pi-b,", "-u", "root", "-m", "ping", "--forks", "2")
	cmd.Env = f.env("ANSIBLE_SSH_ARGS=-F "+cfg, "ANSIBLE_PYTHON_INTERPRETER=/usr/bin/python3", "ANSIBLE_NOCOLOR=1",
		"ANSIBLE_REMOTE_TMP="+filepath.Join(f.e.dir, "ansible-remote"), "ANSIBLE_LOCAL_TEMP="+filepath.Join(f.home, "ansible-local"))
	out, stderr, code := exitOf(t, cmd, "")
	if code != 0 || strings.Count(out, "| SUCCESS") != 2 || strings.Count(out, `"ping": "pong"`) != 2 {
		t.Fatalf("ansible -m ping: exit %d\n%s\n%s", code, out, stderr)
	}
	t.Logf("ansible:\n%s", out)
}
