package main

// The root daemon and what the tunnel user can write (issue 13, section 3).
// The tunnel user is what any post-auth bug in sshd gives an attacker: these
// tests act as it (setpriv) and check that the root daemon never follows a
// link it planted, never trusts a pid it wrote, takes over no directory
// another account owns, and runs sshd only as a dedicated system account —
// and that a slave in the older layout (sshd's directory the tunnel user's)
// is migrated with its sshd and tunnels running.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/sshd/statedir"
)

// rootOnly is a root-owned 0600 file outside any state dir, watched with
// inotify from its creation: untouched fails the test if anything opened,
// read, wrote or chowned it since, or if its owner, mode or content changed.
type rootOnly struct {
	path    string
	content []byte
	watch   int
}

func (e *env) rootOnly(name string, content []byte) *rootOnly {
	e.t.Helper()
	r := &rootOnly{path: filepath.Join(e.dir, name), content: content}
	if err := os.WriteFile(r.path, content, 0o600); err != nil {
		e.t.Fatal(err)
	}
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { unix.Close(fd) })
	if _, err := unix.InotifyAddWatch(fd, r.path, unix.IN_OPEN|unix.IN_ACCESS|unix.IN_MODIFY|unix.IN_ATTRIB); err != nil {
		e.t.Fatal(err)
	}
	r.watch = fd
	return r
}

func (r *rootOnly) untouched(t *testing.T) {
	t.Helper()
	buf := make([]byte, 4096)
	if n, _ := unix.Read(r.watch, buf); n > 0 {
		var what []string
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
			what = append(what, inotifyMask(ev.Mask))
			off += unix.SizeofInotifyEvent + int(ev.Len)
		}
		t.Errorf("%s was touched (inotify: %s)", r.path, strings.Join(what, ", "))
	}
	var st unix.Stat_t
	if err := unix.Lstat(r.path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 0 || st.Gid != 0 || st.Mode&0o7777 != 0o600 {
		t.Errorf("%s is now %d:%d %04o, was 0:0 0600", r.path, st.Uid, st.Gid, st.Mode&0o7777)
	}
	if b, _ := os.ReadFile(r.path); !bytes.Equal(b, r.content) {
		t.Errorf("%s changed", r.path)
	}
}

func inotifyMask(m uint32) string {
	var out []string
	for bit, name := range map[uint32]string{unix.IN_OPEN: "open", unix.IN_ACCESS: "read", unix.IN_MODIFY: "write", unix.IN_ATTRIB: "chown/chmod"} {
		if m&bit != 0 {
			out = append(out, name)
		}
	}
	return strings.Join(out, "+")
}

// tunnelIDs are the e2e tunnel user's uid and gid.
func tunnelIDs(t *testing.T) (int, int) {
	t.Helper()
	u, err := user.Lookup(e2eTunnelUser)
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return uid, gid
}

// asTunnelUser runs a command as the tunnel user.
func asTunnelUser(t *testing.T, name string, args ...string) (string, int) {
	t.Helper()
	out, stderr, code := runAs(t, name, args...)
	return out + stderr, code
}

// toOldLayout gives sshd's directory and files to the tunnel user, as mas4h
// laid them out before: the directory 0700, the key 0600, the pid file as
// sshd writes it (0644), the log as sshd -E creates it (0600).
func toOldLayout(t *testing.T, d statedir.Dir) {
	t.Helper()
	uid, gid := tunnelIDs(t)
	for path, mode := range map[string]os.FileMode{d.SSHD(): 0o700, d.HostKey(): 0o600, d.HostKey() + ".pub": 0o644, d.PidFile(): 0o644, d.Log(): 0o600} {
		if _, err := os.Lstat(path); os.IsNotExist(err) && path == d.PidFile() {
			continue // an sshd that ended removed it (it could, in that layout)
		}
		if err := os.Lchown(path, uid, gid); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
	}
}

// wantOwner checks a path's owner, group and mode (without following it).
func wantOwner(t *testing.T, path string, uid, gid int, mode os.FileMode) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	if int(st.Uid) != uid || int(st.Gid) != gid || os.FileMode(st.Mode&0o7777) != mode || st.Mode&unix.S_IFMT == unix.S_IFLNK {
		t.Errorf("%s: %d:%d %04o (type %o), want %d:%d %04o", path, st.Uid, st.Gid, st.Mode&0o7777, st.Mode&unix.S_IFMT, uid, gid, mode)
	}
}

// refusedStart runs the slave, expecting it to refuse to start: it returns
// the daemon's output once it exited with an error. A slave that serves
// instead is stopped (with its sshd) and fails the test.
func (sp *slaveProc) refusedStart(t *testing.T) string {
	t.Helper()
	host := sp.host
	if host == "" {
		host = "127.0.0.1"
	}
	args := append(sp.baseArgs(host), sp.mode...)
	sp.log = &syncBuffer{}
	sp.cmd = exec.Command(testBin, args...)
	sp.cmd.Stdout, sp.cmd.Stderr = sp.log, sp.log
	if err := sp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sp.done = make(chan struct{})
	var err error
	go func() { err = sp.cmd.Wait(); close(sp.done) }()
	select {
	case <-sp.done:
	case <-time.After(20 * time.Second):
		sp.cleanup()
		t.Fatalf("the slave did not refuse to start:\n%s", sp.log)
	}
	if err == nil || sp.cmd.ProcessState.ExitCode() != 1 {
		t.Fatalf("the slave exited with %v, want exit status 1:\n%s", err, sp.log)
	}
	t.Logf("refused:\n%s", sp.log)
	return sp.log.String()
}

// newSlave is a slave that has not started (refusedStart or start).
func (e *env) newSlave(name string) *slaveProc {
	sp := &slaveProc{e: e, mode: []string{"--db", e.db}, name: name, stateDir: filepath.Join(e.dir, "slave-"+name), port: freePort(e.t)}
	e.t.Cleanup(func() {
		if sp.cmd != nil {
			sp.cleanup()
		}
	})
	return sp
}

// servedHostKey is the host key the slave's sshd presents.
func servedHostKey(t *testing.T, port int) string {
	t.Helper()
	var got ssh.PublicKey
	cfg := &ssh.ClientConfig{User: "nobody", Timeout: 5 * time.Second,
		HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error { got = k; return fmt.Errorf("enough") }}
	ssh.Dial("tcp", "127.0.0.1:"+strconv.Itoa(port), cfg)
	if got == nil {
		t.Fatalf("port %d presented no host key", port)
	}
	return ssh.FingerprintSHA256(got)
}

func fileFingerprint(t *testing.T, pubPath string) string {
	t.Helper()
	k, _, _, _, err := ssh.ParseAuthorizedKey(mustRead(t, pubPath))
	if err != nil {
		t.Fatal(err)
	}
	return ssh.FingerprintSHA256(k)
}

func newPrivateKeyPEM(t *testing.T) []byte {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	block, err := ssh.MarshalPrivateKey(priv, "root-only key")
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(block)
}

// The tunnel user replaces the host key with a link to a root-owned private
// key elsewhere. In the running slave's layout it cannot; in the older
// layout it could, and the next start then refuses, naming the link,
// without opening, chowning or serving the key it points to.
func TestHostKeyLinkIsNotFollowed(t *testing.T) {
	e := newEnv(t)
	e.enrol("pi-key")
	sp := e.startSlave("s1")
	d := statedir.Dir(sp.stateDir)
	fp := fileFingerprint(t, d.HostKey()+".pub")
	victim := e.rootOnly("root_only_key", newPrivateKeyPEM(t))

	for _, try := range [][]string{
		{"ln", "-sfn", victim.path, d.HostKey()},
		{"rm", "-f", d.HostKey()},
		{"sh", "-c", "echo x >> " + d.HostKey()},
		{"ln", "-s", victim.path, filepath.Join(d.SSHD(), "planted")},
	} {
		if out, code := asTunnelUser(t, try[0], try[1:]...); code == 0 {
			t.Errorf("the tunnel user could %s: %s", strings.Join(try, " "), out)
		}
	}
	_, gid := tunnelIDs(t)
	wantOwner(t, d.SSHD(), 0, gid, 0o750)
	wantOwner(t, d.HostKey(), 0, gid, 0o640)
	if got := servedHostKey(t, sp.port); got != fp {
		t.Errorf("serves %s, want %s", got, fp)
	}

	// The older layout, where the tunnel user could plant the link.
	sp.stopAll(t)
	toOldLayout(t, d)
	if out, code := asTunnelUser(t, "ln", "-sfn", victim.path, d.HostKey()); code != 0 {
		t.Fatalf("planting the link in the older layout: %s", out)
	}
	out := sp.refusedStart(t)
	if !strings.Contains(out, d.HostKey()) || !strings.Contains(out, "symbolic link") {
		t.Errorf("the refusal does not name the link:\n%s", out)
	}
	victim.untouched(t)
	if dialOK(sp.port) {
		t.Errorf("port %d serves", sp.port)
	}
}

// The pid file is the tunnel user's to write (sshd writes it as that
// user): a pid it names is signalled only if it is this slave's sshd. Here
// it names a root process whose command line even holds the slave's config
// path (an admin looking at it); a restart with a changed config must
// reload the real sshd, adopted from the process table, and leave the
// other process alone.
func TestPidFileIsNotTrusted(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	dev, k := e.enrol("pi-pid", "--forward", fwd(es))
	sp := e.startSlave("s1")
	e.upTunnel(k, sp, dev, es)
	d := statedir.Dir(sp.stateDir)
	pid := sp.sshdPid()

	bystander := &exec.Cmd{Path: "/bin/sleep", Args: []string{"less " + d.SSHDConfig(), "600"}}
	if err := bystander.Start(); err != nil {
		t.Fatal(err)
	}
	gone := make(chan error, 1)
	go func() { gone <- bystander.Wait() }()
	t.Cleanup(func() { bystander.Process.Kill() })

	sp.kill9()
	if out, code := asTunnelUser(t, "sh", "-c", fmt.Sprintf("echo %d > %s", bystander.Process.Pid, d.PidFile())); code != 0 {
		t.Fatalf("the tunnel user cannot write the pid file (sshd must): %s", out)
	}
	sp.mode = append(sp.mode, "--keepalive", "7s") // a config change: the slave reloads the sshd it adopts
	sp.start()
	select {
	case err := <-gone:
		t.Fatalf("the root process named in the pid file was signalled: %v\n%s", err, sp.log)
	case <-time.After(time.Second):
	}
	if !sp.log.Contains("does not name this slave's running sshd") {
		t.Errorf("the slave did not say the pid file was wrong:\n%s", sp.log)
	}
	if !sp.log.Contains("reloaded its new config") || !sp.log.Contains(fmt.Sprintf("pid=%d", pid)) {
		t.Errorf("the slave did not adopt and reload its sshd (pid %d):\n%s", pid, sp.log)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return sp.sshdPid() == pid }, "sshd did not rewrite its pid file after the reload")
	if err := roundTrip(port(dev)); err != nil {
		t.Errorf("the tunnel is lost: %v", err)
	}
}

// A pid file or a log that is a link to a root-only file (planted in the
// older layout) is refused at start: never read, never chowned — not even
// to show why sshd failed (sshd, as the tunnel user, cannot open the log
// through the link and exits; the daemon must not read the target as root
// to report that).
func TestPidFileAndLogLinksAreNotFollowed(t *testing.T) {
	for _, c := range []struct {
		name string
		file func(statedir.Dir) string
	}{{"pid file", statedir.Dir.PidFile}, {"log", statedir.Dir.Log}} {
		t.Run(strings.ReplaceAll(c.name, " ", "-"), func(t *testing.T) {
			e := newEnv(t)
			e.enrol("pi-link")
			sp := e.startSlave("s1")
			d := statedir.Dir(sp.stateDir)
			secret := fmt.Sprintf("%d\nSECRET-%d\n", os.Getpid(), time.Now().UnixNano())
			victim := e.rootOnly("root_only", []byte(secret))
			pid := sp.sshdPid()
			if out, code := asTunnelUser(t, "ln", "-sfn", victim.path, c.file(d)); code == 0 {
				t.Errorf("the tunnel user replaced the %s with a link: %s", c.name, out)
				os.Remove(c.file(d)) // put it back, to go on to the older layout's case
				os.WriteFile(c.file(d), []byte(fmt.Sprintln(pid)), 0o644)
			}
			sp.stopAll(t)
			toOldLayout(t, d)
			if out, code := asTunnelUser(t, "ln", "-sfn", victim.path, c.file(d)); code != 0 {
				t.Fatalf("planting the link in the older layout: %s", out)
			}
			out := sp.refusedStart(t)
			if !strings.Contains(out, c.file(d)) || !strings.Contains(out, "symbolic link") {
				t.Errorf("the refusal does not name the link:\n%s", out)
			}
			if strings.Contains(out, "SECRET-") {
				t.Errorf("the slave showed the root-only file's content:\n%s", out)
			}
			victim.untouched(t)
		})
	}
}

// A state dir that another account owns (nobody, 0700) is refused before
// anything changes: owner, mode and content stay as they were.
func TestStateDirOfAnotherAccountIsLeftAlone(t *testing.T) {
	e := newEnv(t)
	e.enrol("pi-dir")
	sp := e.newSlave("s1")
	if err := os.Mkdir(sp.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(sp.stateDir, 0o700)
	if err := os.Chown(sp.stateDir, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sp.stateDir) })
	out := sp.refusedStart(t)
	if !strings.Contains(out, sp.stateDir) || !strings.Contains(out, "uid 65534") || !strings.Contains(out, "changed nothing") {
		t.Errorf("the refusal does not say whose dir it is and that nothing changed:\n%s", out)
	}
	wantOwner(t, sp.stateDir, 65534, 65534, 0o700)
	if entries, _ := os.ReadDir(sp.stateDir); len(entries) > 0 {
		t.Errorf("the slave created %v in it", entries)
	}
}

// tempAccount creates an account with useradd (args), removed at the end.
func tempAccount(t *testing.T, name string, group bool, args ...string) {
	t.Helper()
	if _, err := user.Lookup(name); err == nil {
		t.Fatalf("user %s exists already; remove it (userdel %s)", name, name)
	}
	if group {
		if out, err := exec.Command("groupadd", "--system", name).CombinedOutput(); err != nil {
			t.Fatalf("groupadd %s: %v: %s", name, err, out)
		}
	}
	if out, err := exec.Command("useradd", append(args, name)...).CombinedOutput(); err != nil {
		exec.Command("groupdel", name).Run()
		t.Fatalf("useradd %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() { deleteAccount(t, name) })
}

// deleteAccount removes a test account (and its group), waiting for its
// last sessions to end.
func deleteAccount(t *testing.T, name string) {
	testkit.Wait(10*time.Second, func() bool {
		out, err := exec.Command("userdel", name).CombinedOutput()
		return err == nil || bytes.Contains(out, []byte("does not exist"))
	})
	exec.Command("groupdel", name).Run()
	if _, err := user.Lookup(name); err == nil {
		t.Errorf("could not remove test user %s", name)
	}
}

// The tunnel user must be a dedicated system account with no login shell:
// an ordinary account (uid 1000+) or a system account with a login shell is
// refused with a message that says what to do; accounts made as mas4h,
// `mas4h install` and the package make them are accepted and carry tunnels.
func TestTunnelUserMustBeASystemAccount(t *testing.T) {
	e := newEnv(t, "useradd", "groupadd")
	e.enrol("pi-user")
	tempAccount(t, "mas4h-e2e-person", false, "--no-create-home", "--shell", "/bin/bash")
	tempAccount(t, "mas4h-e2e-sysbash", false, "--system", "--user-group", "--no-create-home", "--shell", "/bin/bash")
	for name, why := range map[string]string{
		"mas4h-e2e-person":  "is an ordinary account",
		"mas4h-e2e-sysbash": "has a login shell, /bin/bash",
	} {
		sp := e.newSlave("s-" + strings.TrimPrefix(name, "mas4h-e2e-"))
		sp.mode = append(sp.mode, "--tunnel-user", name)
		out := sp.refusedStart(t)
		if !strings.Contains(out, name+" "+why) || !strings.Contains(out, "Omit --tunnel-user") {
			t.Errorf("%s: the refusal does not say why and what to do:\n%s", name, out)
		}
		if _, err := os.Stat(statedir.Dir(sp.stateDir).SSHD()); err == nil {
			t.Errorf("%s: the slave prepared sshd's directory before refusing", name)
		}
	}

	// As the package makes it (its own group first, then the user), and
	// one the slave creates itself.
	tempAccount(t, "mas4h-e2e-pkg", true, "--system", "--gid", "mas4h-e2e-pkg", "--no-create-home",
		"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "--comment", "mas4h reverse tunnels")
	if out, err := exec.Command("usermod", "-p", "*", "mas4h-e2e-pkg").CombinedOutput(); err != nil {
		t.Fatalf("usermod: %v: %s", err, out)
	}
	if _, err := user.Lookup("mas4h-e2e-made"); err == nil {
		t.Fatal("user mas4h-e2e-made exists already; remove it (userdel mas4h-e2e-made)")
	}
	t.Cleanup(func() { deleteAccount(t, "mas4h-e2e-made") })
	es := startEcho(t)
	for _, name := range []string{"mas4h-e2e-pkg", "mas4h-e2e-made"} {
		// Its operator user, which the slave makes with the same uid.
		t.Cleanup(func() { deleteAccount(t, name+"-operator") })
		dev, k := e.enrol("pi-"+name, "--forward", fwd(es))
		sp := e.startSlaveWith("s-"+strings.TrimPrefix(name, "mas4h-e2e-"), "--db", e.db, "--tunnel-user", name)
		c := e.startClient("ssh", sshArgs(k, sp.port, "-N", "-R", fmt.Sprintf("%d:localhost:%d", port(dev), es.port), name+"@127.0.0.1")...)
		if !waitListen(t, port(dev), c, 10*time.Second) {
			t.Fatalf("%s: the tunnel did not come up: %s\n%s", name, c.stderr, sp.log)
		}
		if err := roundTrip(port(dev)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		c.cmd.Process.Kill()
		<-c.done
		sp.stopAll(t)
	}
}

// Upgrade: a state dir in the older layout (sshd's directory and files the
// tunnel user's), with its sshd running and a live tunnel, is migrated by
// the new daemon: the directory and files become root's, the same sshd is
// adopted, the tunnel stays up, the host key is the same; and after a
// config change the reloaded sshd (which re-reads its key and reopens its
// log as the tunnel user) still serves the old tunnel and a new one.
func TestOlderLayoutIsMigratedWithTunnelsUp(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	dev, k := e.enrol("pi-old", "--forward", fwd(es))
	sp := e.startSlave("s1")
	c := e.upTunnel(k, sp, dev, es)
	d := statedir.Dir(sp.stateDir)
	fp := servedHostKey(t, sp.port)
	pid := sp.sshdPid()

	sp.kill9()
	toOldLayout(t, d)
	if err := roundTrip(port(dev)); err != nil {
		t.Fatalf("tunnel before the upgrade: %v", err)
	}
	sp.start()
	if !sp.log.Contains("older layout") {
		t.Errorf("the daemon did not say it migrated:\n%s", sp.log)
	}
	if sp.sshdPid() != pid || !sp.log.Contains("adopted running sshd") {
		t.Errorf("sshd pid %d, was %d (not adopted):\n%s", sp.sshdPid(), pid, sp.log)
	}
	_, gid := tunnelIDs(t)
	wantOwner(t, d.SSHD(), 0, gid, 0o750)
	wantOwner(t, d.HostKey(), 0, gid, 0o640)
	wantOwner(t, d.HostKey()+".pub", 0, 0, 0o644)
	wantOwner(t, d.PidFile(), 0, gid, 0o620)
	wantOwner(t, d.Log(), 0, gid, 0o620)
	if err := roundTrip(port(dev)); err != nil || c.exited() {
		t.Fatalf("tunnel after the migration: %v (client exited: %v)", err, c.exited())
	}
	if got := servedHostKey(t, sp.port); got != fp {
		t.Errorf("host key %s after the migration, was %s", got, fp)
	}

	// Reload on the migrated layout: a new port, the same sshd.
	logBefore := len(mustRead(t, d.Log()))
	sp.kill9()
	sp.port = freePort(t)
	sp.start()
	if !sp.log.Contains("reloaded its new config") || sp.sshdPid() != pid {
		t.Fatalf("no reload of sshd %d:\n%s", pid, sp.log)
	}
	if got := servedHostKey(t, sp.port); got != fp {
		t.Errorf("host key %s after the reload, was %s", got, fp)
	}
	if err := roundTrip(port(dev)); err != nil {
		t.Errorf("tunnel after the reload: %v", err)
	}
	dev2, k2 := e.enrol("pi-new", "--forward", fwd(es))
	sp.waitKnown(t, k2)
	e.upTunnel(k2, sp, dev2, es)
	if len(mustRead(t, d.Log())) <= logBefore {
		t.Error("the reloaded sshd does not write its log")
	}
	wantOwner(t, d.Log(), 0, gid, 0o620)
}
