package sshd

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/sshd/statedir/nofollow"
)

// The host key is created root:tunnel group 0640, kept across starts, and
// never read through a link.
func TestEnsureHostKey(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown)")
	}
	const gid = 4712
	dir := t.TempDir()
	path := filepath.Join(dir, "ssh_host_ed25519_key")
	first, err := ensureHostKey(path, gid)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	unix.Lstat(path, &st)
	if st.Uid != 0 || st.Gid != gid || st.Mode&0o7777 != 0o640 {
		t.Errorf("key %d:%d %04o, want 0:%d 0640", st.Uid, st.Gid, st.Mode&0o7777, gid)
	}
	again, err := ensureHostKey(path, gid)
	if err != nil || again.Fingerprint != first.Fingerprint {
		t.Errorf("second start: %v, fingerprint %s, was %s", err, again.Fingerprint, first.Fingerprint)
	}
	// A link to a root-only key elsewhere: refused, the key untouched.
	other := filepath.Join(t.TempDir(), "root-only")
	b, _ := os.ReadFile(path)
	os.WriteFile(other, b, 0o600)
	os.Remove(path)
	os.Symlink(other, path)
	var u *nofollow.UnsafeError
	if _, err := ensureHostKey(path, gid); !errors.As(err, &u) {
		t.Errorf("through a link: %v, want an UnsafeError", err)
	}
	unix.Stat(other, &st)
	if st.Uid != 0 || st.Gid != 0 || st.Mode&0o7777 != 0o600 {
		t.Errorf("the target is now %d:%d %04o", st.Uid, st.Gid, st.Mode&0o7777)
	}
}
