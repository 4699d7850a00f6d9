package install

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/mas4h/mas4h/process"
	"github.com/mas4h/mas4h/systemd"
)

// fakeRoot is a target root with an empty passwd and group, and a runner
// whose useradd adds the user there, as the real one would.
func fakeRoot(t *testing.T) (string, *process.Fake) {
	t.Helper()
	if os.Geteuid() != 0 { // Install gives its directories to root
		if os.Getenv("MAS4H_E2E") != "" {
			t.Fatal("MAS4H_E2E is set: this test needs root")
		}
		t.Skip("needs root")
	}
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"passwd", "group"} {
		if err := os.WriteFile(filepath.Join(root, "etc", f), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := &process.Fake{Handle: func(c process.Cmd) ([]byte, error) {
		if c.Argv[0] == "useradd" {
			name := c.Argv[len(c.Argv)-1]
			appendLine(t, filepath.Join(root, "etc/passwd"), name+":x:990:990::/nonexistent:/usr/sbin/nologin")
			appendLine(t, filepath.Join(root, "etc/group"), name+":x:990:")
		}
		return nil, nil
	}}
	return root, run
}

func appendLine(t *testing.T, path, line string) {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.WriteString(line + "\n")
}

func TestInstallSlaveRunsTheUserTools(t *testing.T) {
	root, run := fakeRoot(t)
	var out bytes.Buffer
	m, err := Install(context.Background(), Config{Role: RoleSlave, Name: "s1", Root: root, Units: systemd.Units, Runner: run, Out: &out})
	if err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	want := []string{
		"useradd --prefix " + root + " --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --comment \"mas4h reverse tunnels\" mas4h-tunnel",
		"usermod --prefix " + root + " -p * mas4h-tunnel",
		// The operator user: the tunnel user's uid, its own group, as the slave makes it.
		"useradd --prefix " + root + " --system --non-unique --uid 990 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin --comment \"mas4h operators\" mas4h-operator",
		"usermod --prefix " + root + " -p * mas4h-operator",
	}
	if got := run.Commands(); !slices.Equal(got, want) {
		t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	for _, c := range run.Calls() {
		if !slices.Contains(c.Env, "LC_ALL=C") {
			t.Errorf("%s runs without LC_ALL=C", c)
		}
	}
	var kinds []string
	for _, s := range m.Created {
		kinds = append(kinds, s.Kind+" "+s.Path)
	}
	for _, w := range []string{KindGroup + " mas4h-tunnel", KindUser + " mas4h-tunnel", KindGroup + " mas4h-operator", KindUser + " mas4h-operator", KindFile + " /etc/mas4h/slave-s1.conf"} {
		if !slices.Contains(kinds, w) {
			t.Errorf("manifest lacks %q: %v", w, kinds)
		}
	}
	if fi, err := os.Stat(filepath.Join(root, ManifestPath(RoleSlave, "s1"))); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("manifest file: %v", err)
	}
	// Uninstall removes the operator user (and its group) before the
	// tunnel user whose uid it shares.
	n := len(run.Commands())
	if err := Uninstall(context.Background(), Config{Role: RoleSlave, Name: "s1", Root: root, Runner: run, Out: &out}); err != nil {
		t.Fatalf("%v\n%s", err, out.String())
	}
	var dels []string
	for _, c := range run.Commands()[n:] {
		if strings.HasPrefix(c, "userdel") || strings.HasPrefix(c, "groupdel") {
			dels = append(dels, strings.Replace(c, " --prefix "+root, "", 1))
		}
	}
	if want := []string{"userdel mas4h-operator", "groupdel mas4h-operator", "userdel mas4h-tunnel", "groupdel mas4h-tunnel"}; !slices.Equal(dels, want) {
		t.Errorf("uninstall ran %q, want %q", dels, want)
	}
}

func TestInstallStopsAtAFailingTool(t *testing.T) {
	root, run := fakeRoot(t)
	run.On("useradd", "", process.Exit(9, "useradd: cannot lock /etc/passwd; try again later.\n"))
	var out bytes.Buffer
	m, err := Install(context.Background(), Config{Role: RoleSlave, Name: "s1", Root: root, Units: systemd.Units, Runner: run, Out: &out})
	if err == nil || !strings.Contains(err.Error(), "creating user mas4h-tunnel: running useradd --prefix "+root) ||
		!strings.HasSuffix(err.Error(), "exit status 9: useradd: cannot lock /etc/passwd; try again later.") {
		t.Fatalf("err = %v", err)
	}
	if len(run.Commands()) != 1 {
		t.Errorf("ran on after the failure: %q", run.Commands())
	}
	for _, s := range m.Created {
		if s.Kind == KindUser || s.Kind == KindGroup || s.Kind == KindFile {
			t.Errorf("manifest records %s %s, which the failure stopped", s.Kind, s.Path)
		}
	}
}

// A slave's state dir that another account owns is not taken over: install
// stops, and the dir keeps its owner and mode.
func TestInstallLeavesAStateDirOfAnotherAccountAlone(t *testing.T) {
	root, run := fakeRoot(t)
	state := filepath.Join(root, "var/lib/mas4h/slave-s1")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(state, 0o700)
	os.Chown(state, 65534, 65534)
	var out bytes.Buffer
	_, err := Install(context.Background(), Config{Role: RoleSlave, Name: "s1", Root: root, Units: systemd.Units, Runner: run, Out: &out})
	if err == nil || !strings.Contains(err.Error(), "owned by uid 65534") {
		t.Fatalf("err = %v", err)
	}
	fi, _ := os.Stat(state)
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 || fi.Mode().Perm() != 0o700 {
		t.Errorf("state dir now uid %d mode %04o", st.Uid, fi.Mode().Perm())
	}
}

// Flags given to install are applied to a config file that is there
// already (the package's master.conf): the old one is kept beside it and
// said so, never silently kept; uninstall puts it back.
func TestInstallAppliesFlagsToAnExistingConf(t *testing.T) {
	root, run := fakeRoot(t)
	conf := filepath.Join(root, "etc/mas4h/master.conf")
	pkg := []byte("# the package's\nMAS4H_MASTER_ARGS=\"--listen 127.0.0.1:8080\"\n")
	if err := os.MkdirAll(filepath.Dir(conf), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(conf, pkg, 0o644); err != nil {
		t.Fatal(err)
	}
	inst := func(args string) string {
		t.Helper()
		var out bytes.Buffer
		if _, err := Install(context.Background(), Config{Role: RoleMaster, Root: root, Args: args, Units: systemd.Units, Runner: run, Out: &out}); err != nil {
			t.Fatalf("install master %q: %v\n%s", args, err, out.String())
		}
		return out.String()
	}
	read := func(p string) string {
		t.Helper()
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	// No flags: the file stays, and the output says how to change it.
	if out := inst(""); !strings.Contains(out, "/etc/mas4h/master.conf exists, kept (give the role's flags") || read(conf) != string(pkg) {
		t.Errorf("without flags:\n%s\n%s", out, read(conf))
	}
	// Flags: applied; the package's file kept as master.conf.mas4h-old.
	out := inst("--listen 0.0.0.0:9090")
	if !strings.Contains(out, "replaced /etc/mas4h/master.conf with the flags given; the old one is kept as /etc/mas4h/master.conf.mas4h-old") {
		t.Errorf("with flags:\n%s", out)
	}
	if !strings.Contains(read(conf), `MAS4H_MASTER_ARGS="--listen 0.0.0.0:9090"`) || read(conf+BackupSuffix) != string(pkg) {
		t.Errorf("after install --listen: conf\n%s\nbackup\n%s", read(conf), read(conf+BackupSuffix))
	}
	// The same flags again change nothing; other flags rewrite the file
	// install wrote, with no second backup.
	if out := inst("--listen 0.0.0.0:9090"); !strings.Contains(out, "says this already") {
		t.Errorf("same flags again:\n%s", out)
	}
	if out := inst("--listen 0.0.0.0:9091"); !strings.Contains(out, "rewrote /etc/mas4h/master.conf") || !strings.Contains(read(conf), "0.0.0.0:9091") {
		t.Errorf("other flags:\n%s", out)
	}
	// An edit of the operator's is kept aside too.
	os.WriteFile(conf, []byte("MAS4H_MASTER_ARGS=\"--listen 0.0.0.0:1 --edited\"\n"), 0o644)
	if out := inst("--listen 0.0.0.0:9092"); !strings.Contains(out, "the edited one is kept as /etc/mas4h/master.conf.mas4h-old.1") {
		t.Errorf("over an edit:\n%s", out)
	}
	if !strings.Contains(read(conf+BackupSuffix+".1"), "--edited") {
		t.Errorf("backup of the edit: %s", read(conf+BackupSuffix+".1"))
	}

	var uout bytes.Buffer
	if err := Uninstall(context.Background(), Config{Role: RoleMaster, Root: root, Runner: run, Out: &uout}); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, uout.String())
	}
	if read(conf) != string(pkg) || !strings.Contains(uout.String(), "put back /etc/mas4h/master.conf") {
		t.Errorf("uninstall did not put the package's file back:\n%s\n%s", uout.String(), read(conf))
	}
	if !strings.Contains(uout.String(), "kept /etc/mas4h/master.conf.mas4h-old.1: your edited config") {
		t.Errorf("uninstall did not name the operator's edit it kept:\n%s", uout.String())
	}
	if _, err := os.Stat(conf + BackupSuffix); err == nil {
		t.Errorf("the backup is still there after it was put back")
	}
}
