package nofollow

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/sshd/statedir"
)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A secret elsewhere, and the ways a state file can point at it or stand
// in for a file: none is opened through, all are refused as unsafe.
func TestOpenRefusesWhatIsNotAPlainFile(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "secret")
	must(t, os.WriteFile(secret, []byte("4242\n"), 0o600))
	link := filepath.Join(dir, "link")
	must(t, os.Symlink(secret, link))
	fifo := filepath.Join(dir, "fifo")
	must(t, unix.Mkfifo(fifo, 0o600))
	hard := filepath.Join(dir, "hard")
	must(t, os.Link(secret, hard))
	for _, path := range []string{link, fifo, hard, dir} {
		f, err := Open(path)
		var u *UnsafeError
		if !errors.As(err, &u) {
			t.Errorf("Open(%s): %v, want an UnsafeError", filepath.Base(path), err)
		}
		if f != nil {
			f.Close()
		}
		if _, err := ReadPid(path); !errors.As(err, &u) {
			t.Errorf("ReadPid(%s): %v, want an UnsafeError", filepath.Base(path), err)
		}
	}
	if err := Writable(link, os.Getgid(), true); err == nil {
		t.Error("Writable followed a link")
	}
	if b, _ := os.ReadFile(secret); string(b) != "4242\n" {
		t.Errorf("the target changed: %q", b)
	}
	if _, err := Size(link); err == nil {
		t.Error("Size of a link")
	}
	if _, err := Open(link); err == nil || !strings.Contains(err.Error(), `symbolic link (to "`+secret+`")`) {
		t.Errorf("the error does not say where the link points: %v", err)
	}
}

// A pid file or log someone removed is created again, for sshd to write.
func TestWritable(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sshd.pid")
	must(t, Writable(p, os.Getgid(), true))
	want(t, p, os.Geteuid(), os.Getgid(), WritableMode)
	must(t, os.WriteFile(p, []byte("123\n"), 0))
	must(t, Writable(p, os.Getgid(), false))
	if b, _ := os.ReadFile(p); string(b) != "123\n" {
		t.Errorf("kept: %q", b)
	}
	must(t, Writable(p, os.Getgid(), true))
	if b, _ := os.ReadFile(p); len(b) != 0 {
		t.Errorf("emptied: %q", b)
	}
}

func TestReadPid(t *testing.T) {
	dir := t.TempDir()
	for content, want := range map[string]int{"1234\n": 1234, " 77 ": 77, "": 0, "1": 0, "-5": 0, "12ab": 0, strings.Repeat("9", 100): 0} {
		p := filepath.Join(dir, "pid")
		must(t, os.WriteFile(p, []byte(content), 0o600))
		got, err := ReadPid(p)
		if got != want || (want == 0) != (err != nil) {
			t.Errorf("ReadPid(%q) = %d, %v; want %d", content, got, err, want)
		}
	}
}

func stat(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Lstat(path, &st))
	return st
}

func want(t *testing.T, path string, uid, gid int, mode os.FileMode) {
	t.Helper()
	st := stat(t, path)
	if int(st.Uid) != uid || int(st.Gid) != gid || os.FileMode(st.Mode&0o7777) != mode {
		t.Errorf("%s: %d:%d %04o, want %d:%d %04o", path, st.Uid, st.Gid, st.Mode&0o7777, uid, gid, mode)
	}
}

const tunnelUID, tunnelGID = 4711, 4712

// oldLayout is a state dir as mas4h left it before this layout: sshd's
// directory and files the tunnel user's.
func oldLayout(t *testing.T) statedir.Dir {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown)")
	}
	root := t.TempDir()
	d := statedir.Dir(root)
	must(t, os.Mkdir(d.SSHD(), 0o700))
	for path, mode := range map[string]os.FileMode{d.HostKey(): 0o600, d.HostKey() + ".pub": 0o644, d.PidFile(): 0o644, d.Log(): 0o600} {
		must(t, os.WriteFile(path, []byte(filepath.Base(path)), mode))
		must(t, os.Chown(path, tunnelUID, tunnelGID))
	}
	must(t, os.Chown(d.SSHD(), tunnelUID, tunnelGID))
	return d
}

func TestPrepareSSHDFresh(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown)")
	}
	d := statedir.Dir(t.TempDir())
	res, err := PrepareSSHD(d, tunnelUID, tunnelGID)
	must(t, err)
	if res.Migrated || len(res.Unexpected) > 0 {
		t.Errorf("fresh dir: %+v", res)
	}
	want(t, d.SSHD(), 0, tunnelGID, DirMode)
	want(t, d.PidFile(), 0, tunnelGID, WritableMode)
	want(t, d.Log(), 0, tunnelGID, WritableMode)
	must(t, PrepareRun(d, tunnelGID))
	want(t, d.Run(), 0, tunnelGID, DirMode)
}

func TestPrepareSSHDMigrates(t *testing.T) {
	d := oldLayout(t)
	must(t, os.WriteFile(filepath.Join(d.SSHD(), "stray"), nil, 0o600))
	res, err := PrepareSSHD(d, tunnelUID, tunnelGID)
	must(t, err)
	if !res.Migrated || strings.Join(res.Unexpected, " ") != "stray" {
		t.Errorf("old layout: %+v", res)
	}
	want(t, d.SSHD(), 0, tunnelGID, DirMode)
	want(t, d.HostKey(), 0, tunnelGID, KeyMode)
	want(t, d.HostKey()+".pub", 0, 0, PubMode)
	want(t, d.PidFile(), 0, tunnelGID, WritableMode)
	want(t, d.Log(), 0, tunnelGID, WritableMode)
	if b, _ := os.ReadFile(d.HostKey()); string(b) != filepath.Base(d.HostKey()) {
		t.Errorf("the key's content changed: %q", b)
	}
	again, err := PrepareSSHD(d, tunnelUID, tunnelGID)
	must(t, err)
	if again.Migrated {
		t.Error("migrated twice")
	}
}

// Whatever stands where a file of the layout should be — a link to a
// root-only file, a hard link, a FIFO, a file of another account — is
// refused, and the file it points to keeps its owner, mode and content.
func TestPrepareSSHDRefuses(t *testing.T) {
	for name, plant := range map[string]func(path, target string) error{
		"symlink":   func(path, target string) error { return os.Symlink(target, path) },
		"hard link": func(path, target string) error { return os.Link(target, path) },
		"fifo":      func(path, _ string) error { return unix.Mkfifo(path, 0o600) },
		"other owner": func(path, _ string) error {
			if err := os.WriteFile(path, nil, 0o600); err != nil {
				return err
			}
			return os.Chown(path, 9999, 9999)
		},
	} {
		for _, file := range []func(statedir.Dir) string{statedir.Dir.HostKey, statedir.Dir.PidFile, statedir.Dir.Log} {
			d := oldLayout(t)
			path := file(d)
			target := filepath.Join(filepath.Dir(string(d)), filepath.Base(string(d))+"-root-only")
			must(t, os.WriteFile(target, []byte("secret"), 0o600))
			t.Cleanup(func() { os.Remove(target) })
			must(t, os.Remove(path))
			must(t, plant(path, target))
			_, err := PrepareSSHD(d, tunnelUID, tunnelGID)
			var u *UnsafeError
			if !errors.As(err, &u) || u.Path != path {
				t.Errorf("%s as %s: %v, want an UnsafeError for it", name, filepath.Base(path), err)
			}
			want(t, target, 0, 0, 0o600)
			if b, _ := os.ReadFile(target); string(b) != "secret" {
				t.Errorf("%s as %s: the target changed: %q", name, filepath.Base(path), b)
			}
		}
	}
}

func TestPrepareSSHDRefusesDirs(t *testing.T) {
	d := oldLayout(t)
	must(t, os.Chown(d.SSHD(), 9999, 9999))
	if _, err := PrepareSSHD(d, tunnelUID, tunnelGID); err == nil || !strings.Contains(err.Error(), "uid 9999") {
		t.Errorf("a dir of another account: %v", err)
	}
	want(t, d.SSHD(), 9999, 9999, 0o700)

	d = oldLayout(t)
	elsewhere := t.TempDir()
	must(t, os.Chmod(elsewhere, 0o700))
	must(t, os.RemoveAll(d.SSHD()))
	must(t, os.Symlink(elsewhere, d.SSHD()))
	var u *UnsafeError
	if _, err := PrepareSSHD(d, tunnelUID, tunnelGID); !errors.As(err, &u) {
		t.Errorf("sshd dir a link: %v", err)
	}
	want(t, elsewhere, 0, 0, 0o700)
	if entries, _ := os.ReadDir(elsewhere); len(entries) > 0 {
		t.Errorf("created %v through the link", entries)
	}
}

func TestInspect(t *testing.T) {
	d := oldLayout(t)
	must(t, os.Remove(d.PidFile()))
	must(t, os.Symlink("/etc/shadow", d.PidFile()))
	got := map[string]bool{}
	for _, p := range Inspect(d, tunnelUID) {
		got[filepath.Base(p.Path)] = p.Unsafe
	}
	if len(got) != 5 || got["sshd"] || got["ssh_host_ed25519_key"] || !got["sshd.pid"] || got["sshd.log"] {
		t.Errorf("Inspect: %v", got)
	}
}
