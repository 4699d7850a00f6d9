package sshd

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/sshd/statedir"
)

// A state dir another account owns, or that others can write to, is
// refused before anything changes: owner and mode stay as they were, and
// nothing is created in it.
func TestPrepareStateDirChecksFirst(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown)")
	}
	parent := t.TempDir()
	os.Chmod(parent, 0o755)
	if err := CheckRootOwnedPath(parent); err != nil {
		t.Skipf("the temp dir is not a possible parent of a state dir: %v", err)
	}
	for name, c := range map[string]struct {
		uid  int
		mode os.FileMode
	}{"nobody 0700": {65534, 0o700}, "root 0777": {0, 0o777}, "root 0775": {0, 0o775}} {
		dir := filepath.Join(parent, "state")
		os.RemoveAll(dir)
		if err := os.Mkdir(dir, c.mode); err != nil {
			t.Fatal(err)
		}
		os.Chmod(dir, c.mode)
		os.Chown(dir, c.uid, c.uid)
		s := &Slave{cfg: SlaveConfig{StateDir: dir}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
		s.dir = statedir.Dir(dir)
		err := s.prepareStateDir()
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
		var st unix.Stat_t
		unix.Stat(dir, &st)
		if int(st.Uid) != c.uid || os.FileMode(st.Mode&0o7777) != c.mode {
			t.Errorf("%s: now %d %04o (err %v)", name, st.Uid, st.Mode&0o7777, err)
		}
		if entries, _ := os.ReadDir(dir); len(entries) > 0 {
			t.Errorf("%s: created %v in it", name, entries)
		}
	}
	// Below a parent that is not root's, nothing is created.
	bad := filepath.Join(parent, "nobodys")
	os.Mkdir(bad, 0o755)
	os.Chown(bad, 65534, 65534)
	s := &Slave{cfg: SlaveConfig{StateDir: filepath.Join(bad, "a", "state")}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s.dir = statedir.Dir(s.cfg.StateDir)
	if err := s.prepareStateDir(); err == nil {
		t.Error("accepted a state dir below a nobody-owned parent")
	}
	if entries, _ := os.ReadDir(bad); len(entries) > 0 {
		t.Errorf("created %v below a nobody-owned parent", entries)
	}
	// A root-owned 0700 dir (an admin's umask) is fine: made 0755.
	ok := filepath.Join(parent, "ok")
	os.Mkdir(ok, 0o700)
	s = &Slave{cfg: SlaveConfig{StateDir: ok}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s.dir = statedir.Dir(ok)
	if err := s.prepareStateDir(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(ok); fi.Mode().Perm() != 0o755 {
		t.Errorf("root 0700 dir now %04o", fi.Mode().Perm())
	}
}
