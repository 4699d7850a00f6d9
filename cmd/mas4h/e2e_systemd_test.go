package main

// The package under a real systemd: `make test-systemd` builds the .deb,
// boots a Debian 12 root (mmdebstrap, cached like the Debian 13 one) with
// systemd as PID 1 in systemd-nspawn (--private-network: its own loopback,
// nothing leaves it), and does inside what an operator does: install the
// package, `mas4h install master`, `install slave s1` with its own
// credential, `install agent --master URL`, enrol the device, and checks
// that its real OpenSSH tunnel survives every lifecycle event the units
// promise, that the journal says what each daemon runs with and no secret,
// the units' systemd-analyze security scores, a reboot, and that `dpkg
// --purge` leaves the container as it was before the package.
//
// On these machines there is no systemd on the host: nspawn runs with
// --register=no --keep-unit, and the test enters the container with
// nsenter on its PID 1 (no machinectl).

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// systemdPackages make a root that boots: systemd and D-Bus, the OpenSSH
// server (the slave's sshd, and the device's own sshd its tunnel leads
// to) and client (the agent's ssh), and what the checks use.
var systemdPackages = []string{"systemd", "systemd-sysv", "dbus", "openssh-server", "openssh-client",
	"iproute2", "sqlite3", "curl", "ca-certificates"}

// systemdSelectEnv selects TestPackagedSystemd (make test-systemd sets it):
// it takes a few minutes, so `make test` leaves it to its own target.
const systemdSelectEnv = "MAS4H_SYSTEMD_TEST"

func TestPackagedSystemd(t *testing.T) {
	if os.Getenv(systemdSelectEnv) == "" {
		t.Skipf("run by make test-systemd (%s=1)", systemdSelectEnv)
	}
	if r := os.Getenv(insideRootEnv); r != "" {
		t.Skipf("inside the %s root", r)
	}
	requireE2E(t, "mmdebstrap", "systemd-nspawn", "nsenter", "dpkg-deb", "cp")
	start := time.Now()
	out, err := exec.Command(filepath.Join(opsRepo, "packaging/build-deb.sh"), "0.0.1+systemd", t.TempDir()).CombinedOutput()
	if err != nil {
		t.Fatalf("build-deb.sh: %v\n%s", err, out)
	}
	deb := lastLine(string(out))
	t.Logf("built %s in %s", deb, time.Since(start).Round(time.Second))
	base := cachedRoot(t, "debian12-systemd", "bookworm", systemdPackages)

	// The two cgroup layouts nspawn offers on this host: pure v2 (as on a
	// stock Debian 12 host), and its default here.
	layouts := []struct{ name, env string }{
		{"unified", "SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1"},
		{"default", ""},
	}
	for _, l := range layouts {
		if sel := os.Getenv("MAS4H_SYSTEMD_LAYOUTS"); sel != "" && !strings.Contains(sel, l.name) {
			continue
		}
		t.Run(l.name, func(t *testing.T) {
			start := time.Now()
			packagedSystemd(t, base, deb, l.env)
			t.Logf("layout %s: %s", l.name, time.Since(start).Round(time.Second))
		})
	}
}

// container is a booted copy of a root.
type container struct {
	t      *testing.T
	root   string
	env    string
	log    string
	nspawn *exec.Cmd
	done   chan error
	leader int // its PID 1, on the host
}

func (c *container) boot() {
	t := c.t
	t.Helper()
	logf, err := os.OpenFile(c.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("systemd-nspawn", "-D", c.root, "--boot", "--register=no", "--keep-unit",
		"--private-network", "--console=read-only")
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "SYSTEMD_NSPAWN_") {
			cmd.Env = append(cmd.Env, e)
		}
	}
	if c.env != "" {
		cmd.Env = append(cmd.Env, c.env)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	c.nspawn, c.done, c.leader = cmd, make(chan error, 1), 0
	go func() { c.done <- cmd.Wait(); logf.Close() }()
	deadline := time.Now().Add(60 * time.Second)
	for c.leader == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("the container's systemd did not start:\n%s", lastLines(string(mustRead(t, c.log)), 30))
		}
		select {
		case err := <-c.done:
			c.done <- err
			t.Fatalf("systemd-nspawn exited (%v):\n%s", err, lastLines(string(mustRead(t, c.log)), 30))
		case <-time.After(200 * time.Millisecond):
		}
		c.leader = leaderOf(cmd.Process.Pid)
	}
	// systemctl answers once PID 1 has its private socket up.
	c.waitFor(60*time.Second, "the container's systemd answering", "test -S /run/systemd/private")
	out, err := c.run(90*time.Second, "systemctl is-system-running --wait")
	if s := strings.TrimSpace(out); s != "running" {
		failed, _ := c.run(10*time.Second, "systemctl --failed --no-legend; journalctl -b -p warning --no-pager | tail -n 30")
		t.Logf("the container booted %q (%v):\n%s", s, err, failed)
		if s != "degraded" {
			t.Fatalf("the container did not boot")
		}
	}
}

// leaderOf finds nspawn's child running systemd: the container's PID 1.
func leaderOf(nspawn int) int {
	for _, c := range childPids(nspawn) {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", c)); err == nil && strings.TrimSpace(string(b)) == "systemd" {
			return c
		}
	}
	return 0
}

// run runs a shell script inside, with a clean environment.
func (c *container) run(timeout time.Duration, script string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", "-t", strconv.Itoa(c.leader), "-a",
		"/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LANG=C.UTF-8",
		"MAS4H_MASTER=http://127.0.0.1:8080", "MAS4H_TOKEN_FILE=/var/lib/mas4h/master/admin.token",
		"/bin/sh", "-c", script)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// must runs a script inside and fails the test if it fails.
func (c *container) must(script string) string {
	c.t.Helper()
	out, err := c.run(3*time.Minute, script)
	if err != nil {
		c.t.Fatalf("in the container: %s: %v\n%s", script, err, out)
	}
	return out
}

// waitFor runs script inside until it succeeds.
func (c *container) waitFor(timeout time.Duration, what, script string) time.Duration {
	c.t.Helper()
	start := time.Now()
	var out string
	var err error
	for time.Since(start) < timeout {
		if out, err = c.run(30*time.Second, script); err == nil {
			return time.Since(start)
		}
		time.Sleep(300 * time.Millisecond)
	}
	// What the units said, so that a failure here tells why.
	units, _ := c.run(30*time.Second, "systemctl --no-pager --all list-units 'mas4h*'; journalctl --no-pager -n 60 -u 'mas4h*'")
	c.t.Fatalf("after %s: %s (%s: %v)\n%s\nthe units and their journal:\n%s", timeout, what, script, err, out, units)
	return 0
}

// stop powers the container off (or kills it) and waits for nspawn.
func (c *container) stop() {
	if c.nspawn == nil {
		return
	}
	if c.leader != 0 {
		c.run(10*time.Second, "systemctl poweroff --no-block")
	}
	select {
	case <-c.done:
	case <-time.After(45 * time.Second):
		c.nspawn.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(15 * time.Second):
			if c.leader != 0 {
				syscall.Kill(c.leader, syscall.SIGKILL)
			}
			c.nspawn.Process.Kill()
			<-c.done
		}
	}
	c.nspawn = nil
}

// snapshot is what purge must leave as it found: the files of /etc and
// /var/lib (path, owner, mode; dpkg's, apt's and systemd's own records
// aside), the accounts, and the enabled units.
func (c *container) snapshot() string {
	return c.must(`set -e
find /etc /var/lib -xdev \( -path /var/lib/dpkg -o -path /var/lib/apt -o -path /var/lib/systemd -o -path /etc/ld.so.cache \) -prune -o -printf '%p %u:%g %m\n' | sort
echo '# accounts'; cut -d: -f1 /etc/passwd | sort; cut -d: -f1 /etc/group | sort
echo '# enabled'; systemctl list-unit-files --state=enabled --no-legend | awk '{print $1}' | sort
`)
}

// purgeLeaves are the differences purge may leave, each documented: the
// shadow tools' backups of the account files (written by useradd and
// userdel, as for any package that adds a user), and the device key the
// test made by hand in /etc/mas4h is removed by the test itself.
var purgeLeaves = regexp.MustCompile(`^[<>] /etc/(passwd|group|shadow|gshadow|subuid|subgid)- `)

// tunnelPids says which processes carry the device's tunnel: the session
// (sshd listening on the device's port) and the slave's sshd listener.
func (c *container) tunnelPids(port int) (session, listener string) {
	c.t.Helper()
	out := c.must(fmt.Sprintf(`ss -Htlnp 'sport = :%d' | grep -o 'pid=[0-9]*' | sort -u | head -n 1; cat /var/lib/mas4h/slave-s1/sshd/sshd.pid`, port))
	f := strings.Fields(out)
	if len(f) != 2 {
		c.t.Fatalf("tunnel pids: %q", out)
	}
	return strings.TrimPrefix(f[0], "pid="), f[1]
}

// tunnelUp: the device's port on the slave's loopback leads to the
// device's sshd.
func tunnelCheck(port int) string {
	return fmt.Sprintf(`timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/%d && head -c 8 <&3' | grep -q SSH-2.0-`, port)
}

func packagedSystemd(t *testing.T, base, deb, env string) {
	work, err := os.MkdirTemp("/var/tmp", "mas4h-systemd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(work) })
	c := &container{t: t, root: filepath.Join(work, "root"), env: env, log: filepath.Join(work, "console.log")}
	if out, err := exec.Command("cp", "-a", base, c.root).CombinedOutput(); err != nil {
		t.Fatalf("copying the root: %v\n%s", err, out)
	}
	if out, err := exec.Command("cp", deb, filepath.Join(c.root, "root/mas4h.deb")).CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Cleanup(c.stop)
	c.boot()
	t.Logf("booted: %s", strings.TrimSpace(c.must("systemd --version | head -n 1; ssh -V 2>&1; stat -fc %T /sys/fs/cgroup")))
	before := c.snapshot()

	// The package, and the three roles as the README says.
	c.must("DEBIAN_FRONTEND=noninteractive dpkg -i /root/mas4h.deb")
	out := c.must("mas4h install master --args '--listen 127.0.0.1:8080 --public-url http://127.0.0.1:8080'")
	if !strings.Contains(out, "replaced /etc/mas4h/master.conf with the flags given; the old one is kept as /etc/mas4h/master.conf.mas4h-old") {
		t.Errorf("install master over the package's master.conf did not say it replaced it:\n%s", out)
	}
	c.must("systemctl start mas4h-master")
	c.waitFor(30*time.Second, "the master's admin token", "test -s /var/lib/mas4h/master/admin.token && mas4h status >/dev/null")
	c.must("mas4h slave add s1 --token-file-out /root/s1.token")
	out = c.must("mas4h install slave s1 --master http://127.0.0.1:8080 --credential /root/s1.token --ssh-listen 127.0.0.1:2222 --public-host 127.0.0.1")
	if !strings.Contains(out, "enabled mas4h-slave@s1.service") {
		t.Errorf("install slave s1:\n%s", out)
	}
	c.must("systemctl start mas4h-slave@s1")
	c.waitFor(60*time.Second, "slave s1 alive", `mas4h status -o json | grep -q '"alive": *true'`)

	out = c.must("mas4h install agent --master http://127.0.0.1:8080 --insecure-http")
	if !strings.Contains(out, "replaced /etc/mas4h/agent.conf with the flags given") {
		t.Errorf("install agent --master did not replace the package's agent.conf:\n%s", out)
	}
	// Its first start, before the device has a key, says what to do.
	c.must("systemctl start mas4h-agent")
	c.waitFor(30*time.Second, "the agent saying its key is missing",
		`journalctl -u mas4h-agent -o cat | grep -F 'key file /etc/mas4h/agent.key: does not exist; create one with'`)
	c.must("ssh-keygen -q -t ed25519 -N '' -f /etc/mas4h/agent.key && mas4h device add dev1 --key /etc/mas4h/agent.key.pub")
	portOut := c.must(`mas4h device show dev1 -o json | grep -o '"remote_port": *[0-9]*' | grep -o '[0-9]*$'`)
	port, err := strconv.Atoi(strings.TrimSpace(portOut))
	if err != nil {
		t.Fatalf("dev1's port: %q", portOut)
	}
	up := c.waitFor(90*time.Second, "the agent's tunnel up", tunnelCheck(port))
	t.Logf("the agent's tunnel came up %s after enrolment", up.Round(100*time.Millisecond))
	session, listener := c.tunnelPids(port)

	same := func(event string) {
		t.Helper()
		c.waitFor(30*time.Second, "the tunnel after "+event, tunnelCheck(port))
		s, _ := c.tunnelPids(port)
		if s != session {
			t.Errorf("after %s the tunnel's session is pid %s, was %s: it dropped", event, s, session)
			session = s
		}
	}
	c.must("systemctl restart mas4h-slave@s1")
	c.waitFor(30*time.Second, "the slave back", "systemctl is-active mas4h-slave@s1")
	same("systemctl restart mas4h-slave@s1")
	if _, l := c.tunnelPids(port); l != listener {
		t.Errorf("restarting the slave changed its sshd (pid %s, was %s)", l, listener)
	}
	c.must("systemctl restart mas4h-master")
	c.waitFor(30*time.Second, "the master back", "mas4h status >/dev/null")
	same("systemctl restart mas4h-master")

	// SIGKILL of sshd: the daemon starts another within a second.
	c.must("kill -KILL " + listener)
	c.waitFor(30*time.Second, "a new sshd", fmt.Sprintf(`p=$(cat /var/lib/mas4h/slave-s1/sshd/sshd.pid) && [ "$p" != %s ] && kill -0 "$p"`, listener))
	same("SIGKILL of sshd")
	_, listener = c.tunnelPids(port)

	// SIGKILL of the slave daemon: systemd restarts it, it adopts the
	// running sshd, starts no second one, and does not loop.
	c.must(`kill -KILL "$(systemctl show -p MainPID --value mas4h-slave@s1)"`)
	c.waitFor(30*time.Second, "the slave daemon restarted by systemd", `[ "$(systemctl show -p NRestarts --value mas4h-slave@s1)" -ge 1 ] && systemctl is-active mas4h-slave@s1`)
	c.waitFor(30*time.Second, "the restarted daemon adopting sshd", `[ "$(journalctl -u mas4h-slave@s1 -o cat | grep -c 'adopted running sshd')" -ge 2 ]`)
	same("SIGKILL of the slave daemon")
	time.Sleep(6 * time.Second) // a crash loop (RestartSec=2s) would show within this
	out = c.must(`systemctl show -p NRestarts -p ActiveState --value mas4h-slave@s1; ss -Htlnp 'sport = :2222' | grep -o 'pid=[0-9]*' | sort -u | wc -l; cat /var/lib/mas4h/slave-s1/sshd/sshd.pid`)
	if f := strings.Fields(out); len(f) != 4 || f[0] != "1" || f[1] != "active" || f[2] != "1" || f[3] != listener {
		t.Errorf("after the daemon's SIGKILL: NRestarts, state, sshd listeners on :2222, sshd pid = %q; want 1 active 1 %s", f, listener)
	}

	// The journal: each start says its version, where it listens and where
	// its state is, and no secret.
	for unit, keys := range map[string][]string{
		"mas4h-master":   {"master listening", "version=0.0.1+systemd", "addr=127.0.0.1:8080", "db=/var/lib/mas4h/master/registry.db"},
		"mas4h-slave@s1": {"slave starting", "version=0.0.1+systemd", "ssh_listen=127.0.0.1:2222", "state_dir=/var/lib/mas4h/slave-s1"},
		"mas4h-agent":    {"agent started", "version=0.0.1+systemd", "master=http://127.0.0.1:8080", "state_dir=/var/lib/mas4h-agent"},
	} {
		j := c.must("journalctl -u " + unit + " -o cat")
		for _, k := range keys {
			if !strings.Contains(j, k) {
				t.Errorf("the journal of %s lacks %q:\n%s", unit, k, lastLines(j, 20))
			}
		}
	}
	secrets := c.must(`cat /var/lib/mas4h/master/admin.token /etc/mas4h/slave-s1.token; sed -n 2p /etc/mas4h/agent.key`)
	journal := c.must("journalctl -b -o cat --no-pager")
	for _, s := range strings.Fields(secrets) {
		if len(s) >= 16 && strings.Contains(journal, s) {
			t.Errorf("a secret is in the journal: %.6s…", s)
		}
	}

	// systemd-analyze security: the slave must stay at its 3.1, the master
	// and the agent at 2.0 or below.
	for unit, most := range map[string]float64{"mas4h-slave@s1.service": 3.1, "mas4h-master.service": 2.0, "mas4h-agent.service": 2.0} {
		out := c.must("systemd-analyze security --no-pager " + unit + " | tail -n 1")
		m := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindStringSubmatch(out)
		if m == nil {
			t.Errorf("systemd-analyze security %s: %q", unit, out)
			continue
		}
		score, _ := strconv.ParseFloat(m[1], 64)
		t.Logf("systemd-analyze security %s: %.1f", unit, score)
		if score > most {
			t.Errorf("systemd-analyze security %s: %.1f, more than %.1f", unit, score, most)
		}
	}
	// Limits, as they come out in this container: LimitNOFILE=65536 is
	// clamped to the VM's nr_open-bounded hard limit when the host's is
	// lower (20,000 on these VMs), and a container cannot write TasksMax's
	// pids.max on a cgroup v1 host. Logged, not faked; on a bare-metal
	// Debian 12 host both hold as written.
	t.Logf("limits in the container: %s", strings.Join(strings.Fields(c.must(
		`systemctl show -p LimitNOFILE -p TasksMax mas4h-slave@s1; grep 'Max open files' /proc/$(systemctl show -p MainPID --value mas4h-slave@s1)/limits`)), " "))

	// Reboot: every enabled unit comes back, and the agent's tunnel.
	c.run(10*time.Second, "systemctl reboot --no-block")
	select {
	case err := <-c.done:
		t.Logf("the container rebooted (systemd-nspawn: %v)", err)
	case <-time.After(60 * time.Second):
		t.Fatalf("the container did not go down for its reboot")
	}
	c.nspawn = nil
	start := time.Now()
	c.boot()
	c.must("systemctl is-active mas4h-master mas4h-slave@s1 mas4h-agent")
	c.waitFor(90*time.Second, "the agent's tunnel after the reboot", tunnelCheck(port))
	t.Logf("after the reboot: units active and the tunnel up %s after boot began", time.Since(start).Round(100*time.Millisecond))

	// mas4h uninstall under systemd: the slave's unit disabled (no link
	// left), its sshd and sessions ended, its config and credential gone;
	// the agent's: the package's agent.conf put back.
	out = c.must("mas4h uninstall slave s1 2>&1")
	c.must(`! ls /etc/systemd/system/*.wants/mas4h-slave@s1.service 2>/dev/null && ! test -e /etc/mas4h/slave-s1.conf && ! test -e /etc/mas4h/slave-s1.token && ! systemctl is-active mas4h-slave@s1`)
	if left := c.must(`ps -eo pid,args --no-headers | grep '[s]lave-s1/sshd_config' || true`); strings.TrimSpace(left) != "" {
		t.Errorf("uninstall slave s1 left its sshd running:\n%s\n%s", left, out)
	}
	out = c.must("mas4h uninstall agent 2>&1")
	if !strings.Contains(out, "put back /etc/mas4h/agent.conf") {
		t.Errorf("uninstall agent did not put the package's agent.conf back:\n%s", out)
	}
	c.must(`grep -q master.example.net /etc/mas4h/agent.conf && ! test -e /etc/mas4h/agent.conf.mas4h-old && ! ls /etc/systemd/system/*.wants/mas4h-agent.service 2>/dev/null`)

	// Purge (the master still installed): the container as before the package, but for what the
	// operator made by hand, which purge names.
	out = c.must("DEBIAN_FRONTEND=noninteractive dpkg --purge mas4h 2>&1")
	if !strings.Contains(out, "kept /etc/mas4h: it holds files mas4h did not make: agent.key agent.key.pub") {
		t.Errorf("purge did not name the hand-made key it kept:\n%s", out)
	}
	if left := c.must("ps -eo user:20,pid,args --no-headers | grep -E '[s]lave-s1/sshd_config|[m]as4h (master|slave|agent)|[m]as4h-agent --' || true"); strings.TrimSpace(left) != "" {
		t.Errorf("processes left after purge:\n%s", left)
	}
	c.must("rm /etc/mas4h/agent.key /etc/mas4h/agent.key.pub /root/s1.token /root/mas4h.deb && rmdir /etc/mas4h")
	after := c.snapshot()
	var diff, documented []string
	for _, l := range lineDiff(before, after) {
		if purgeLeaves.MatchString(l) {
			documented = append(documented, l)
		} else {
			diff = append(diff, l)
		}
	}
	t.Logf("dpkg --purge said:\n%s\ndifferences allowed (documented): %q", strings.TrimSpace(out), documented)
	if len(diff) > 0 {
		t.Errorf("after purge the container differs from before the package:\n%s", strings.Join(diff, "\n"))
	}
}

// lineDiff lists the lines only in a ("< ") or only in b ("> ").
func lineDiff(a, b string) []string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out []string
	for l, n := range count {
		switch {
		case n > 0:
			out = append(out, "< "+l)
		case n < 0:
			out = append(out, "> "+l)
		}
	}
	return out
}
