package sshd

import (
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// UnsafePathError says which component of a path sshd would refuse for an
// AuthorizedKeysCommand, and why.
type UnsafePathError struct {
	Path, Component, Why string
}

func (e *UnsafePathError) Error() string {
	return fmt.Sprintf("%s: %s %s; sshd refuses an AuthorizedKeysCommand below it, and mas4h takes over no directory "+
		"that another account owns or can write to (it changed nothing). If %s is meant for mas4h, fix it "+
		"(chown root:root %s && chmod go-w %s); or use a state dir whose every parent is root-owned and not "+
		"group/world-writable (e.g. /var/lib/mas4h/slave-NAME)",
		e.Path, e.Component, e.Why, e.Component, e.Component, e.Component)
}

// CheckRootOwnedPath applies sshd's safe_path rule to path and every parent
// directory: owned by root, not writable by group or others. The same rule
// is what lets an unprivileged sshd trust the hook binary.
func CheckRootOwnedPath(path string) error {
	abs, err := filepath.Abs(path)
	if err != nil {
		return fmt.Errorf("checking %s: %w", path, err)
	}
	for p := abs; ; p = filepath.Dir(p) {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("checking %s: %s: %w", path, p, err)
		}
		perm := os.FileMode(st.Mode & 0o777)
		switch {
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			resolved, err := filepath.EvalSymlinks(p)
			if err != nil {
				return fmt.Errorf("checking %s: %w", path, err)
			}
			if err := CheckRootOwnedPath(resolved); err != nil {
				return err
			}
		case st.Uid != 0:
			return &UnsafePathError{Path: path, Component: p, Why: fmt.Sprintf("is owned by uid %d, not root", st.Uid)}
		case perm&0o022 != 0:
			return &UnsafePathError{Path: path, Component: p, Why: fmt.Sprintf("is group/world-writable (mode %04o)", perm)}
		}
		if p == "/" {
			return nil
		}
	}
}
