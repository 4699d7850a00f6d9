package main

// Operations: the systemd units pass systemd-analyze verify, `mas4h install`
// and `mas4h uninstall` round-trip (in a temporary root with the real
// useradd, and once for real), the .deb installs and purges leaving the host
// as it was, doctor reports a broken hook path, completions and man pages.

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mas4h/mas4h/doctor"
	"github.com/mas4h/mas4h/install"
	"github.com/mas4h/mas4h/sshd/statedir"
)

const opsRepo = "../.."

// opsRun runs a command and fails the test on a non-zero exit.
func opsRun(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// opsMas4h runs the test binary and returns its combined output and exit status.
func opsMas4h(t *testing.T, args ...string) (string, int) {
	t.Helper()
	out, err := exec.Command(testBin, args...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("mas4h %v: %v", args, err)
	}
	return string(out), 0
}

// opsManPath writes the man pages of the test binary as a MANPATH entry, so
// that systemd-analyze finds the units' Documentation=man:… pages.
func opsManPath(t *testing.T) string {
	dir := t.TempDir()
	opsRun(t, nil, testBin, "man", filepath.Join(dir, "man1"))
	return dir
}

// opsVerify runs systemd-analyze verify on unit files; any output (a
// warning about an unknown key, a missing binary or man page) fails.
func opsVerify(t *testing.T, manPath string, units ...string) {
	t.Helper()
	cmd := exec.Command("systemd-analyze", append([]string{"verify"}, units...)...)
	cmd.Env = append(os.Environ(), "MANPATH="+manPath+":", "SYSTEMD_LOG_COLOR=0")
	out, err := cmd.CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify %s: %v\n%s", strings.Join(units, " "), err, out)
	}
}

func TestUnitFilesVerify(t *testing.T) {
	requireE2E(t, "systemd-analyze", "man")
	units, err := filepath.Glob(filepath.Join(opsRepo, "systemd", "*.service"))
	if err != nil || len(units) < 3 {
		t.Fatalf("unit files: %v %v", units, err)
	}
	// The units run /usr/bin/mas4h (and /usr/bin/mas4h-agent); verify wants
	// the binaries to exist, so point them at the binary under test, as
	// `mas4h install` does.
	dir := t.TempDir()
	var paths []string
	for _, u := range units {
		b, err := install.UnitText(os.DirFS(filepath.Dir(u)), filepath.Base(u), testBin, "")
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	// The drop-in for a slave sharing a VIP is checked with its unit.
	dropin := filepath.Join(dir, "mas4h-slave@.service.d")
	os.MkdirAll(dropin, 0o755)
	if err := os.WriteFile(filepath.Join(dropin, "vip.conf"), mustRead(t, filepath.Join(opsRepo, "packaging/slave-vip.conf")), 0o644); err != nil {
		t.Fatal(err)
	}
	opsVerify(t, opsManPath(t), paths...)

	// The promises the units make, checked where a typo would not fail verify.
	want := map[string][]string{
		"mas4h-master.service": {"User=mas4h", "ProtectSystem=strict", "StateDirectory=mas4h/master", "LimitNOFILE=65536", "Restart=on-failure", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n", "NoNewPrivileges=yes"},
		"mas4h-slave@.service": {"KillMode=process", "EnvironmentFile=/etc/mas4h/slave-%i.conf", "TasksMax=32768", "ProtectSystem=strict", "CAP_SETUID", "CAP_KILL", "NoNewPrivileges=yes", "Restart=on-failure"},
		"mas4h-agent.service":  {"EnvironmentFile=-/etc/mas4h/agent.conf"},
	}
	for name, keys := range want {
		b, err := os.ReadFile(filepath.Join(opsRepo, "systemd", name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		for _, k := range keys {
			if !strings.Contains(string(b), k) {
				t.Errorf("%s lacks %q", name, k)
			}
		}
		if regexp.MustCompile(`(?m)^[^#].*CAP_NET_ADMIN`).Match(b) {
			t.Errorf("%s keeps CAP_NET_ADMIN; no unit applies netfilter rules", name)
		}
	}
}

// opsSeedRoot makes a minimal root for `install --root`: the account files
// useradd --prefix edits, and login.defs so that it behaves as on the host.
func opsSeedRoot(t *testing.T) string {
	root := t.TempDir()
	os.Chmod(root, 0o755)
	etc := filepath.Join(root, "etc")
	os.MkdirAll(etc, 0o755)
	files := map[string]string{
		"passwd":  "root:x:0:0:root:/root:/bin/bash\n",
		"group":   "root:x:0:\n",
		"shadow":  "root:*:19000:0:99999:7:::\n",
		"gshadow": "root:*::\n",
	}
	for n, s := range files {
		if err := os.WriteFile(filepath.Join(etc, n), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := os.ReadFile("/etc/login.defs"); err == nil {
		os.WriteFile(filepath.Join(etc, "login.defs"), b, 0o644)
	}
	return root
}

// opsTree lists every path below root with owner and mode, and the account
// files' user names, to compare a tree before and after.
func opsTree(t *testing.T, root string) string {
	var lines []string
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		if strings.HasSuffix(rel, "-") || strings.HasSuffix(rel, ".lock") { // useradd's backups
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		line := fmt.Sprintf("%s %s %d:%d", rel, fi.Mode(), st.Uid, st.Gid)
		if fi.Mode().IsRegular() && (rel == "etc/passwd" || rel == "etc/group" || rel == "etc/shadow" || rel == "etc/gshadow") {
			b, _ := os.ReadFile(p)
			var names []string
			for _, l := range strings.Split(string(b), "\n") {
				if n, _, ok := strings.Cut(l, ":"); ok {
					names = append(names, n)
				}
			}
			line += " " + strings.Join(names, ",")
		}
		lines = append(lines, line)
		return nil
	})
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func TestInstallRootRoundTrip(t *testing.T) {
	requireE2E(t, "useradd", "systemd-analyze", "man")
	root := opsSeedRoot(t)
	before := opsTree(t, root)

	out, code := opsMas4h(t, "install", "master", "--root", root, "--bin", testBin, "--listen", "0.0.0.0:8080")
	if code != 0 {
		t.Fatalf("install master: exit %d\n%s", code, out)
	}
	master, ok, _ := install.LookupUser(root, "mas4h")
	if !ok || master.UID == 0 {
		t.Fatalf("install master created no mas4h user:\n%s", out)
	}
	opsOwner(t, filepath.Join(root, "var/lib/mas4h"), 0, 0o755)
	opsOwner(t, filepath.Join(root, "var/lib/mas4h/master"), master.UID, 0o750)
	if b := string(mustRead(t, filepath.Join(root, "etc/mas4h/master.conf"))); !strings.Contains(b, `MAS4H_MASTER_ARGS="--listen 0.0.0.0:8080"`) {
		t.Errorf("master.conf:\n%s", b)
	}

	for _, s := range []string{"s1", "s2"} {
		out, code := opsMas4h(t, "install", "slave", s, "--root", root, "--bin", testBin, "--master", "http://127.0.0.1:8080")
		if code != 0 {
			t.Fatalf("install slave %s: exit %d\n%s", s, code, out)
		}
		if !strings.Contains(out, "systemd is not running here") {
			t.Errorf("install slave %s did not say it could not enable the unit:\n%s", s, out)
		}
	}
	tun, ok, _ := install.LookupUser(root, install.DefaultTunnelUser)
	if !ok || tun.Shell != "/usr/sbin/nologin" {
		t.Fatalf("no tunnel user %s in %s/etc/passwd", install.DefaultTunnelUser, root)
	}
	if pw, _, _ := install.PasswordField(root, install.DefaultTunnelUser); pw != "*" {
		t.Errorf("tunnel user's password field is %q, want * (not locked)", pw)
	}
	opsOwner(t, filepath.Join(root, "var/lib/mas4h/slave-s1"), 0, 0o755)
	conf := string(mustRead(t, filepath.Join(root, "etc/mas4h/slave-s1.conf")))
	if !strings.Contains(conf, `MAS4H_SLAVE_ARGS="--master http://127.0.0.1:8080 --token-file /etc/mas4h/slave-s1.token --ssh-listen 0.0.0.0:2222"`) {
		t.Errorf("slave-s1.conf:\n%s", conf)
	}
	units, _ := filepath.Glob(filepath.Join(root, "etc/systemd/system/*.service"))
	if len(units) != 2 {
		t.Fatalf("units written: %v", units)
	}
	for _, u := range units {
		if b := string(mustRead(t, u)); strings.Contains(b, "ExecStart=/usr/bin/mas4h ") {
			t.Errorf("%s still runs /usr/bin/mas4h, not --bin", u)
		}
	}
	opsVerify(t, opsManPath(t), units...)

	// Again: nothing new is created, nothing is overwritten.
	os.WriteFile(filepath.Join(root, "etc/mas4h/slave-s1.conf"), []byte("MAS4H_SLAVE_ARGS=\"--db /x\"\n"), 0o644)
	out, code = opsMas4h(t, "install", "slave", "s1", "--root", root, "--bin", testBin)
	if code != 0 || strings.Contains(out, "created") || strings.Contains(out, "wrote") {
		t.Errorf("second install (exit %d) created something:\n%s", code, out)
	}
	if b := string(mustRead(t, filepath.Join(root, "etc/mas4h/slave-s1.conf"))); !strings.Contains(b, "--db /x") {
		t.Errorf("second install overwrote the edited config:\n%s", b)
	}

	// s1 goes: s2 still needs the units and the tunnel user; s1's edited
	// config stays without --purge.
	out, code = opsMas4h(t, "uninstall", "slave", "s1", "--root", root)
	if code != 0 {
		t.Fatalf("uninstall slave s1: exit %d\n%s", code, out)
	}
	if _, ok, _ := install.LookupUser(root, install.DefaultTunnelUser); !ok {
		t.Errorf("uninstalling s1 removed the tunnel user s2 uses:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(root, "etc/systemd/system/mas4h-slave@.service")); err != nil {
		t.Errorf("uninstalling s1 removed the unit s2 uses:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/mas4h/slave-s1")); err == nil {
		t.Errorf("uninstalling s1 left its (empty) state dir:\n%s", out)
	}
	if !strings.Contains(out, "kept /etc/mas4h/slave-s1.conf: edited since install") {
		t.Errorf("uninstall did not keep the edited config:\n%s", out)
	}
	os.Remove(filepath.Join(root, "etc/mas4h/slave-s1.conf"))

	// A slave that ran leaves state: kept without --purge, gone with it.
	os.MkdirAll(filepath.Join(root, "var/lib/mas4h/slave-s2/sshd"), 0o700)
	out, _ = opsMas4h(t, "uninstall", "slave", "s2", "--root", root)
	if !strings.Contains(out, "kept /var/lib/mas4h/slave-s2: not empty") {
		t.Errorf("uninstall s2 without --purge:\n%s", out)
	}
	os.RemoveAll(filepath.Join(root, "var/lib/mas4h/slave-s2"))
	if out, code := opsMas4h(t, "uninstall", "master", "--root", root, "--purge"); code != 0 {
		t.Fatalf("uninstall master: exit %d\n%s", code, out)
	}
	if out, code := opsMas4h(t, "uninstall", "master", "--root", root); code != 1 || !strings.Contains(out, "no manifest") {
		t.Errorf("second uninstall: exit %d\n%s", code, out)
	}
	if after := opsTree(t, root); after != before {
		t.Errorf("install + uninstall changed the tree:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

func opsOwner(t *testing.T, path string, uid int, mode os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != uid || fi.Mode().Perm() != mode {
		t.Errorf("%s: uid %d mode %04o, want uid %d mode %04o", path, st.Uid, fi.Mode().Perm(), uid, mode)
	}
}

// TestInstallForReal installs a slave on this host, with a test tunnel user,
// checks it with doctor, and uninstalls it: the host is as before.
func TestInstallForReal(t *testing.T) {
	requireE2E(t, "useradd", "getent")
	const name, user = "e2e-inst", "mas4h-e2e-inst"
	if _, ok, _ := install.LookupUser("/", user); ok {
		t.Fatalf("user %s exists already; remove it (userdel %s)", user, user)
	}
	for _, p := range []string{install.ManifestPath("slave", name), install.ConfPath("slave", name), statedir.Default(name)} {
		if _, err := os.Stat(p); err == nil {
			t.Fatalf("%s exists already: refusing to touch it", p)
		}
	}
	snapshot := func() string {
		var b strings.Builder
		for _, p := range []string{"/etc/mas4h", "/var/lib/mas4h", "/etc/systemd/system"} {
			entries, _ := os.ReadDir(p)
			for _, e := range entries {
				b.WriteString(p + "/" + e.Name() + "\n")
			}
		}
		b.WriteString(opsRun(t, nil, "sh", "-c", "getent passwd | cut -d: -f1; getent group | cut -d: -f1"))
		return b.String()
	}
	before := snapshot()

	// The default --bin would be this test binary in /tmp, which the units'
	// PrivateTmp hides: refused with the reason.
	out, code := opsMas4h(t, "install", "slave", name, "--tunnel-user", user, "--db", "/var/lib/mas4h/registry.db")
	if code != 2 || !strings.Contains(out, "PrivateTmp") {
		t.Errorf("install with a binary in /tmp: exit %d\n%s", code, out)
	}
	out, code = opsMas4h(t, "install", "slave", name, "--tunnel-user", user, "--bin", testBin, "--db", "/var/lib/mas4h/registry.db", "--ssh-listen", "127.0.0.1:2299")
	t.Cleanup(func() {
		if _, err := os.Stat(install.ManifestPath("slave", name)); err == nil {
			opsMas4h(t, "uninstall", "slave", name, "--purge")
		}
	})
	if code != 0 {
		t.Fatalf("install: exit %d\n%s", code, out)
	}
	if pw := strings.Split(opsRun(t, nil, "getent", "shadow", user), ":")[1]; pw != "*" {
		t.Errorf("%s password field %q, want *", user, pw)
	}
	if b := string(mustRead(t, install.ConfPath("slave", name))); !strings.Contains(b, "--tunnel-user "+user) {
		t.Errorf("config lacks --tunnel-user:\n%s", b)
	}
	out, code = opsMas4h(t, "doctor", "slave", name, "-o", "json")
	var results []doctor.Result
	if err := json.Unmarshal([]byte(out), &results); err != nil {
		t.Fatalf("doctor -o json: %v\n%s", err, out)
	}
	for _, r := range results {
		if (r.Check == "hook path" || r.Check == "tunnel user" || r.Check == "openssh" || r.Check == "ssh port") && r.Status != doctor.OK {
			t.Errorf("doctor after install: %+v", r)
		}
	}
	if code != 0 {
		t.Errorf("doctor after install: exit %d\n%s", code, out)
	}
	out, code = opsMas4h(t, "uninstall", "slave", name)
	if code != 0 {
		t.Fatalf("uninstall: exit %d\n%s", code, out)
	}
	if after := snapshot(); after != before {
		t.Errorf("install + uninstall changed the host:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestDebInstallPurge builds the package, lints it, installs it on this host,
// and purges it: the host is as before (users, /var/lib/mas4h, /etc/mas4h,
// the host's own sshd untouched).
func TestDebInstallPurge(t *testing.T) {
	requireE2E(t, "dpkg", "dpkg-deb", "lintian", "systemd-analyze", "man", "objdump")
	if exec.Command("dpkg", "-s", "mas4h").Run() == nil {
		t.Fatal("the mas4h package is installed on this host: this test would replace and purge it")
	}
	hostSSHD := func() string {
		return opsRun(t, nil, "sh", "-c", "dpkg-query -W -f='${Status} ${Version}' openssh-server; md5sum /etc/ssh/sshd_config; ls /etc/systemd/system/multi-user.target.wants/ 2>/dev/null")
	}
	snapshot := func() string {
		var b strings.Builder
		for _, p := range []string{"/etc/mas4h", "/var/lib/mas4h", "/lib/systemd/system", "/usr/bin"} {
			entries, _ := os.ReadDir(p)
			for _, e := range entries {
				if p == "/usr/bin" || p == "/lib/systemd/system" {
					if !strings.HasPrefix(e.Name(), "mas4h") {
						continue
					}
				}
				fi, _ := e.Info()
				b.WriteString(p + "/" + e.Name() + " " + fi.Mode().String() + "\n")
			}
		}
		b.WriteString(opsRun(t, nil, "sh", "-c", "getent passwd | cut -d: -f1,3,7; getent group | cut -d: -f1,3"))
		return b.String() + hostSSHD()
	}
	before := snapshot()

	const version = "0.0.1+e2e"
	dist := t.TempDir()
	out := opsRun(t, []string{"GO=" + goBin(t)}, filepath.Join(opsRepo, "packaging/build-deb.sh"), version, dist)
	deb := strings.TrimSpace(lastLine(out))
	if !strings.HasSuffix(deb, ".deb") {
		t.Fatalf("build-deb.sh printed no .deb:\n%s", out)
	}
	lint, _ := exec.Command("lintian", "--tag-display-limit", "0", deb).CombinedOutput()
	t.Logf("lintian:\n%s", lint)
	if m := regexp.MustCompile(`(?m)^E: .*$`).FindAllString(string(lint), -1); len(m) > 0 {
		t.Errorf("lintian errors:\n%s", strings.Join(m, "\n"))
	}

	opsRun(t, []string{"DEBIAN_FRONTEND=noninteractive"}, "dpkg", "-i", deb)
	purged := false
	t.Cleanup(func() {
		if !purged {
			exec.Command("dpkg", "--purge", "mas4h").Run()
		}
	})
	if v := opsRun(t, nil, "/usr/bin/mas4h", "version"); !strings.Contains(v, version) {
		t.Errorf("/usr/bin/mas4h version: %q, want %s", v, version)
	}
	if _, err := os.Stat("/usr/bin/mas4h-authkeys"); err != nil {
		t.Errorf("the lean hook is not installed: %v", err)
	}
	var units []string
	for _, u := range []string{"mas4h-master.service", "mas4h-slave@.service", "mas4h-agent.service"} {
		p := filepath.Join("/lib/systemd/system", u)
		if _, err := os.Stat(p); err != nil {
			t.Errorf("unit %s not installed: %v", u, err)
			continue
		}
		units = append(units, p)
	}
	if _, err := os.Stat("/usr/bin/mas4h-agent"); err == nil {
		opsVerify(t, "/usr/share/man", units...) // installed binaries and man pages
	} else {
		t.Errorf("/usr/bin/mas4h-agent not installed: %v", err)
	}
	if p := strings.TrimSpace(opsRun(t, nil, "man", "-w", "mas4h-slave")); p != "/usr/share/man/man1/mas4h-slave.1.gz" {
		t.Errorf("man -w mas4h-slave: %q", p)
	}
	for _, p := range []string{"/usr/share/bash-completion/completions/mas4h", "/etc/mas4h/master.conf", "/etc/mas4h/agent.conf"} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%v", err)
		}
	}
	if pw := strings.Split(opsRun(t, nil, "getent", "shadow", "mas4h-tunnel"), ":")[1]; pw != "*" {
		t.Errorf("mas4h-tunnel's password field is %q, want *", pw)
	}
	if tun, op, err := lookupUserPair("mas4h-tunnel", "mas4h-operator"); err != nil {
		t.Error(err)
	} else if op.UID != tun.UID || op.GID == tun.GID || op.Shell != "/usr/sbin/nologin" {
		t.Errorf("mas4h-operator is %+v, want the uid of mas4h-tunnel (%+v), another group, no shell", op, tun)
	}
	if pw := strings.Split(opsRun(t, nil, "getent", "shadow", "mas4h-operator"), ":")[1]; pw != "*" {
		t.Errorf("mas4h-operator's password field is %q, want *", pw)
	}
	master, ok, _ := install.LookupUser("/", "mas4h")
	if !ok {
		t.Fatal("no mas4h user after install")
	}
	opsOwner(t, "/var/lib/mas4h", 0, 0o755)
	opsOwner(t, "/var/lib/mas4h/master", master.UID, 0o750)

	opsRun(t, nil, "dpkg", "--purge", "mas4h")
	purged = true
	for _, p := range append(units, "/usr/bin/mas4h", "/usr/bin/mas4h-authkeys", "/etc/mas4h/master.conf") {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s is still there after purge", p)
		}
	}
	if after := snapshot(); after != before {
		t.Errorf("install + purge changed the host:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// lookupUserPair reads the tunnel user and the operator user of a
// package or an install from /etc/passwd.
func lookupUserPair(tunnel, operator string) (install.Account, install.Account, error) {
	tun, ok, err := install.LookupUser("/", tunnel)
	if err != nil || !ok {
		return tun, install.Account{}, fmt.Errorf("no user %s: %v", tunnel, err)
	}
	op, ok, err := install.LookupUser("/", operator)
	if err != nil || !ok {
		return tun, op, fmt.Errorf("no operator user %s beside %s: %v", operator, tunnel, err)
	}
	return tun, op, nil
}

func goBin(t *testing.T) string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/local/go/bin/go"); err == nil {
		return "/usr/local/go/bin/go"
	}
	t.Fatal("no go toolchain to build the package")
	return ""
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// TestDoctorBrokenHookPath: a state dir below a group-writable directory,
// or one owned by another user, is a failed check (exit 1) naming the
// culprit; fixed, the check passes.
func TestDoctorBrokenHookPath(t *testing.T) {
	e := newEnv(t)
	parent := filepath.Join(e.dir, "shared")
	state := filepath.Join(parent, "slave-x")
	if err := os.MkdirAll(filepath.Join(state, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, "bin", "mas4h"), mustRead(t, testBin), 0o755); err != nil {
		t.Fatal(err)
	}
	hook := func() (doctor.Result, int, string) {
		out, code := opsMas4h(t, "doctor", "slave", "--state-dir", state, "--ssh-listen", "127.0.0.1:0", "-o", "json")
		var results []doctor.Result
		if err := json.Unmarshal([]byte(out), &results); err != nil {
			t.Fatalf("doctor -o json: %v\n%s", err, out)
		}
		for _, r := range results {
			if r.Check == "hook path" {
				return r, code, out
			}
		}
		t.Fatalf("no hook path check:\n%s", out)
		return doctor.Result{}, 0, ""
	}

	os.Chmod(parent, 0o775)
	r, code, out := hook()
	if r.Status != doctor.Fail || code != 1 || !strings.Contains(r.Detail, parent+" is group/world-writable") || r.Fix == "" {
		t.Errorf("group-writable parent: exit %d, %+v\n%s", code, r, out)
	}
	table, _ := opsMas4h(t, "doctor", "slave", "--state-dir", state, "--ssh-listen", "127.0.0.1:0")
	if !strings.Contains(table, "FAIL") || !strings.Contains(table, "fix: chown root:root "+parent) {
		t.Errorf("table output:\n%s", table)
	}

	os.Chmod(parent, 0o755)
	os.Chown(state, 65534, 65534)
	r, code, out = hook()
	if r.Status != doctor.Fail || code != 1 || !strings.Contains(r.Detail, state+" is owned by uid 65534") {
		t.Errorf("state dir owned by nobody: exit %d, %+v\n%s", code, r, out)
	}

	os.Chown(state, 0, 0)
	if r, _, out := hook(); r.Status != doctor.OK {
		t.Errorf("fixed path: %+v\n%s", r, out)
	}
}

// Completions come from cobra; they must stay enabled and visible.
func TestOpsCompletionAndManPages(t *testing.T) {
	for shell, want := range map[string]string{"bash": "__start_mas4h", "zsh": "#compdef mas4h", "fish": "complete -c mas4h"} {
		var out, errb bytes.Buffer
		g := &globals{stdout: &out, stderr: &errb}
		root := newRootCmd(g)
		root.SetArgs([]string{"completion", shell})
		if err := root.Execute(); err != nil || !strings.Contains(out.String(), want) {
			t.Errorf("completion %s: %v, output lacks %q (%d bytes) %s", shell, err, want, out.Len(), errb.String())
		}
	}
	var help bytes.Buffer
	root := newRootCmd(&globals{stdout: &help, stderr: &help})
	root.SetArgs([]string{"--help"})
	root.Execute()
	for _, c := range []string{"completion", "install", "uninstall", "doctor"} {
		if !regexp.MustCompile(`(?m)^  ` + c + `\s`).MatchString(help.String()) {
			t.Errorf("mas4h --help does not list %s:\n%s", c, help.String())
		}
	}

	dir := t.TempDir()
	var out bytes.Buffer
	root = newRootCmd(&globals{stdout: &out, stderr: &out})
	root.SetArgs([]string{"man", dir})
	if err := root.Execute(); err != nil {
		t.Fatalf("man: %v: %s", err, out.String())
	}
	for _, page := range []string{"mas4h.1", "mas4h-slave.1", "mas4h-master.1", "mas4h-doctor.1", "mas4h-install.1", "mas4h-device-add.1"} {
		b, err := os.ReadFile(filepath.Join(dir, page))
		if err != nil || !bytes.Contains(b, []byte(".TH \"MAS4H\" \"1\"")) {
			t.Errorf("%s: %v %.200s", page, err, b)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "mas4h-man.1")); err == nil {
		t.Error("the hidden man command got a page")
	}
}

// unitCaps reads a unit's CapabilityBoundingSet as setpriv's list.
func unitCaps(t *testing.T, unit string) string {
	b := mustRead(t, filepath.Join(opsRepo, "systemd", unit))
	m := regexp.MustCompile(`(?m)^CapabilityBoundingSet=(.*)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s has no CapabilityBoundingSet", unit)
	}
	list := "-all"
	for _, c := range strings.Fields(string(m[1])) {
		list += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}
	return list
}

// TestUnitSlaveUnderItsCapabilities runs a slave with no capabilities but
// its unit's CapabilityBoundingSet, and with NoNewPrivileges, as systemd
// would: sshd starts as the tunnel user, a tunnel carries bytes, the daemon
// finds it in the process tables and probes it, adopts sshd after a kill -9,
// and ends a revoked device's session.
func TestUnitSlaveUnderItsCapabilities(t *testing.T) {
	e := newEnv(t, "setpriv")
	caps := unitCaps(t, "mas4h-slave@.service")
	es := startEcho(t)
	dev, k := e.enrol("dev-caps", "--forward", fwd(es))
	sp := &slaveProc{e: e, name: "caps", stateDir: filepath.Join(e.dir, "slave-caps"), port: freePort(t),
		wrap: []string{"setpriv", "--bounding-set", caps, "--no-new-privs", "--"},
		mode: []string{"--db", e.db, "--probe-interval", "1s", "--probe-timeout", "500ms"}}
	sp.start()
	t.Cleanup(sp.cleanup)

	p := port(dev)
	c := e.tunnel(k, sp, fmt.Sprintf("%d:localhost:%d", p, es.port))
	if !waitListen(t, p, c, 10*time.Second) {
		t.Fatalf("tunnel did not come up: %s\n%s", c.stderr, sp.log)
	}
	if err := roundTrip(p); err != nil {
		t.Fatalf("bytes through the tunnel: %v", err)
	}
	waitProbed(t, e, sp, p, time.Time{})

	sp.kill9()
	sp.start()
	if !strings.Contains(sp.log.String(), "adopted running sshd") {
		t.Errorf("restarted daemon did not adopt sshd:\n%s", sp.log)
	}
	if err := roundTrip(p); err != nil {
		t.Fatalf("tunnel after the daemon's restart: %v", err)
	}

	if _, stderr, code := e.mas4h("", "device", "revoke", "dev-caps", "--db", e.db); code != 0 {
		t.Fatalf("revoke: %s", stderr)
	}
	if c.wait(10*time.Second) == -1 {
		t.Fatalf("revoked device's session still up:\n%s", sp.log)
	}
}
