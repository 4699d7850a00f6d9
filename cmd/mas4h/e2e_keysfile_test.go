package main

import (
	"fmt"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/sshdconfig"
	"github.com/mas4h/mas4h/sshd/statedir"
)

// keysFile is the slave's keys file (sshd's AuthorizedKeysFile).
func (sp *slaveProc) keysFile() string { return statedir.Dir(sp.stateDir).KeysFile() }

// waitKeysFile waits until dev's key is (or is no longer) in the slave's
// keys file and returns how long that took.
func waitKeysFile(t *testing.T, sp *slaveProc, dev registry.Device, present bool, within time.Duration) time.Duration {
	t.Helper()
	return waitKey(t, sp, dev.Name, dev.PublicKey, present, within)
}

func waitKey(t *testing.T, sp *slaveProc, name, key string, present bool, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var data []byte
	if !testkit.Wait(within, func() bool {
		var err error
		if data, err = os.ReadFile(sp.keysFile()); err != nil {
			t.Fatal(err)
		}
		return strings.Contains(string(data), key) == present
	}) {
		t.Fatalf("%s's key still %s the keys file after %s:\n%s", name, map[bool]string{true: "missing from", false: "in"}[present], within, data)
	}
	return time.Since(start)
}

// hookAsked reports whether the daemon decided an authentication of device.
func hookAsked(sp *slaveProc, device string) bool { return hookCount(sp, device) > 0 }

// hookCount is how many authentications of device the daemon decided.
func hookCount(sp *slaveProc, device string) int {
	n := 0
	for _, l := range strings.Split(sp.log.String(), "\n") {
		if strings.Contains(l, "msg=auth ") && strings.Contains(l, "device="+device+" ") {
			n++
		}
	}
	return n
}

// By default sshd reads the keys file before it runs the hook: a
// known, disconnected device logs in from the file without the hook; once
// its port is held it leaves the file, so its next login goes through the
// hook and newest-wins; it comes back when the port is free. A revoked
// device leaves the file at once.
func TestKeysFileFastPath(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	devA, kA := e.enrol("pi-file-a", "--forward", fwd(es))
	devB, kB := e.enrol("pi-file-b", "--forward", fwd(es))
	sp := e.startProbingSlave("s1", fastProbe...)

	fi, err := os.Stat(sp.keysFile())
	if err != nil {
		t.Fatal(err)
	}
	u, err := user.Lookup(e2eTunnelUser)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o640 || st.Uid != 0 || strconv.Itoa(int(st.Gid)) != u.Gid {
		t.Errorf("keys file is %v %d:%d, want -rw-r----- root:%s", fi.Mode().Perm(), st.Uid, st.Gid, u.Gid)
	}
	if !strings.Contains(string(mustRead(t, statedir.Dir(sp.stateDir).SSHDConfig())), "\nAuthorizedKeysFile "+sshdconfig.ConfigPath(sp.keysFile())+"\n") {
		t.Error("sshd_config does not name the keys file")
	}
	waitKeysFile(t, sp, devA, true, time.Second)
	waitKeysFile(t, sp, devB, true, time.Second)

	c := e.tunnel(kA, sp, fmt.Sprintf("%d:localhost:%d", port(devA), es.port))
	if !waitListen(t, port(devA), c, 10*time.Second) {
		t.Fatalf("tunnel did not come up: %s", c.stderr)
	}
	if err := roundTrip(port(devA)); err != nil {
		t.Fatal(err)
	}
	if hookAsked(sp, "pi-file-a") {
		t.Errorf("the hook was asked about pi-file-a; sshd should have found it in the keys file:\n%s", sp.log)
	}
	took := waitKeysFile(t, sp, devA, false, 3*time.Second)
	t.Logf("pi-file-a left the keys file %s after its tunnel came up", took.Round(time.Millisecond))

	// A revoked device leaves the file and is refused (by the hook, now).
	start := time.Now()
	if _, stderr, code := e.mas4h("", "device", "revoke", "pi-file-b", "--db", e.db); code != 0 {
		t.Fatal(stderr)
	}
	waitKeysFile(t, sp, devB, false, 3*time.Second)
	t.Logf("pi-file-b left the keys file %s after its revocation", time.Since(start).Round(time.Millisecond))
	cb := e.tunnel(kB, sp, fmt.Sprintf("%d:localhost:%d", port(devB), es.port))
	if code := cb.wait(10 * time.Second); code != 255 {
		t.Fatalf("revoked device connected (status %d)", code)
	}
	if !hookAsked(sp, "pi-file-b") {
		t.Errorf("the revoked device was not refused by the hook:\n%s", sp.log)
	}

	// pi-file-a's session freezes and the device logs in again: not from
	// the file but through the hook, where newest-wins ends the frozen one.
	syscall.Kill(c.cmd.Process.Pid, syscall.SIGSTOP)
	defer syscall.Kill(c.cmd.Process.Pid, syscall.SIGCONT)
	fresh, attempts, tookBack := e.reconnect(kA, sp, devA, es, 20*time.Second)
	t.Logf("pi-file-a back %s after its first attempt (%d attempts)", tookBack.Round(time.Millisecond), attempts)
	if !hookAsked(sp, "pi-file-a") {
		t.Errorf("the reconnect of a device holding its port did not reach the hook:\n%s", sp.log)
	}
	waitEvents(t, e, "pi-file-a", "superseded")

	// The tunnel ends: pi-file-a is back in the file.
	fresh.cmd.Process.Signal(syscall.SIGTERM)
	fresh.wait(5 * time.Second)
	took = waitKeysFile(t, sp, devA, true, 3*time.Second)
	t.Logf("pi-file-a back in the keys file %s after its client ended", took.Round(time.Millisecond))
}

// With --keys-file=false every authentication runs the hook, and a keys
// file left by an earlier run (the default keeps one) is removed.
func TestKeysFileOff(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	dev, k := e.enrol("pi-hookonly", "--forward", fwd(es))
	sp := e.startProbingSlave("s1")
	if _, err := os.Stat(sp.keysFile()); err != nil {
		t.Fatal(err)
	}
	sp.cmd.Process.Signal(syscall.SIGTERM) // sshd stays up; the next daemon adopts and reloads it
	<-sp.done
	sp.mode = []string{"--db", e.db, "--keys-file=false"}
	sp.start()
	if _, err := os.Stat(sp.keysFile()); !os.IsNotExist(err) {
		t.Fatalf("keys file still there with --keys-file=false (%v)", err)
	}
	if !strings.Contains(string(mustRead(t, statedir.Dir(sp.stateDir).SSHDConfig())), "\nAuthorizedKeysFile none\n") {
		t.Error("sshd_config still names a keys file")
	}
	c := e.tunnel(k, sp, fmt.Sprintf("%d:localhost:%d", port(dev), es.port))
	if !waitListen(t, port(dev), c, 10*time.Second) {
		t.Fatalf("tunnel did not come up: %s", c.stderr)
	}
	if !hookAsked(sp, "pi-hookonly") {
		t.Errorf("the hook was not asked:\n%s", sp.log)
	}
}

// Under a master, a device the slave has never seen is validated through
// the hook, then logs in from the keys file while its cache entry is fresh;
// a revocation on the master takes it out of the file.
func TestKeysFileUnderMaster(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	m := e.startMaster()
	sp := e.startSlaveWith("s1", "--master", m.url, "--token-file", m.slaveToken, "--public-host", "127.0.0.1")
	waitSlavesAlive(t, m, 1)
	dev, k := m.enrol("pi-mfile", fwd(es))

	_, c, _ := m.connect(k, es)
	if !hookAsked(sp, "pi-mfile") {
		t.Fatalf("the first login of a device new to the slave did not reach the hook:\n%s", sp.log)
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	c.wait(5 * time.Second)
	took := waitKey(t, sp, dev.Name, dev.PublicKey, true, 3*time.Second)
	t.Logf("validated device in the keys file %s after its client ended", took.Round(time.Millisecond))

	asked := hookCount(sp, "pi-mfile")
	_, c, _ = m.connect(k, es)
	if n := hookCount(sp, "pi-mfile"); n != asked {
		t.Errorf("the hook was asked again (%d times, was %d); sshd should have found the key in the file", n, asked)
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	c.wait(5 * time.Second)
	waitKey(t, sp, dev.Name, dev.PublicKey, true, 3*time.Second)

	start := time.Now()
	if _, stderr, code := m.admin("device", "revoke", "pi-mfile"); code != 0 {
		t.Fatal(stderr)
	}
	waitKey(t, sp, dev.Name, dev.PublicKey, false, e2eHeartbeat+3*time.Second)
	t.Logf("revoked on the master: out of the slave's keys file %s later", time.Since(start).Round(time.Millisecond))
	slotless := e.tunnel(k, sp, fmt.Sprintf("%d:localhost:%d", dev.Forwards[0].RemotePort, es.port))
	if code := slotless.wait(10 * time.Second); code != 255 {
		t.Fatalf("revoked device connected (status %d)", code)
	}
}
