package main

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mas4h/mas4h/registry"
)

// keysFile is the slave's keys file (sshd's AuthorizedKeysFile).
func (sp *slaveProc) keysFile() string { return filepath.Join(sp.stateDir, "authorized_keys") }

// waitKeysFile waits until dev's key is (or is no longer) in the slave's
// keys file and returns how long that took.
func waitKeysFile(t *testing.T, sp *slaveProc, dev registry.Device, present bool, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		data, err := os.ReadFile(sp.keysFile())
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(data), dev.PublicKey) == present {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("%s's key still %s the keys file after %s:\n%s", dev.Name, map[bool]string{true: "missing from", false: "in"}[present], within, data)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// hookAsked reports whether the daemon decided an authentication of device.
func hookAsked(sp *slaveProc, device string) bool {
	for _, l := range strings.Split(sp.log.String(), "\n") {
		if strings.Contains(l, "msg=auth ") && strings.Contains(l, "device="+device+" ") {
			return true
		}
	}
	return false
}

// sshd reads the keys file before it runs the hook: a known, disconnected
// device logs in from the file without the hook; once its port is held it
// leaves the file (its next login goes through newest-wins), and comes back
// when the port is free. A revoked device leaves the file at once.
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
	if !strings.Contains(string(mustRead(t, filepath.Join(sp.stateDir, "sshd_config"))), "\nAuthorizedKeysFile "+sp.keysFile()+"\n") {
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

	// The tunnel ends: pi-file-a is back in the file.
	c.cmd.Process.Signal(syscall.SIGTERM)
	c.wait(5 * time.Second)
	took = waitKeysFile(t, sp, devA, true, 3*time.Second)
	t.Logf("pi-file-a back in the keys file %s after its client ended", took.Round(time.Millisecond))
}

// With --keys-file=false every authentication runs the hook and no keys
// file is left behind from an earlier run.
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
	if !strings.Contains(string(mustRead(t, filepath.Join(sp.stateDir, "sshd_config"))), "\nAuthorizedKeysFile none\n") {
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
