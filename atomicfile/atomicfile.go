// Package atomicfile is mas4h's one way to write a file that others read
// while it changes (sshd_config, authorized_keys, the slave's cache, the
// agent's last slot, the files of an install): a reader sees the old content
// or the new, never a part, and after a crash the file is one or the other.
//
// The temp file is made in the destination's own directory (so that the
// rename cannot cross file systems), given its mode and owner, written,
// fsynced, optionally checked, renamed over the destination, and then the
// directory is fsynced so that the rename itself is durable.
// github.com/google/renameio/v2 does the temp file and the rename.
package atomicfile

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/google/renameio/v2"
	"golang.org/x/sys/unix"
)

// Option changes how Write writes.
type Option func(*options)

type options struct {
	owner    bool
	uid, gid int
	check    func(tmpPath string) error
}

// Owner gives the file to uid and gid (which needs root or CAP_CHOWN). It
// is set on the temp file, before the rename: the destination never exists
// with another owner.
func Owner(uid, gid int) Option {
	return func(o *options) { o.owner, o.uid, o.gid = true, uid, gid }
}

// Check runs check on the complete temp file (its path, in the
// destination's directory, with the final mode and owner) before it
// replaces the destination; an error leaves the destination as it was.
// For a generated config that must pass its program's own test first
// (`sshd -t -f TMP`).
func Check(check func(tmpPath string) error) Option {
	return func(o *options) { o.check = check }
}

// Write replaces path with data, mode (exactly: the umask does not apply)
// and the options' owner, atomically and durably. The directory must
// exist. A symbolic link at path is replaced, not followed.
func Write(path string, data []byte, mode os.FileMode, opts ...Option) error {
	t, err := pending(path, data, mode, opts)
	if err != nil {
		return err
	}
	defer t.Cleanup() // removes the temp file unless it was renamed
	if err := t.CloseAtomicallyReplace(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("writing %s: syncing its directory: %w", path, err)
	}
	return nil
}

// Create is Write for a file that must not be replaced once it exists (a
// token, a key): the complete temp file is linked into place, so that path
// appears whole or not at all, and an existing path (a link included) is
// left alone with an error that matches fs.ErrExist.
func Create(path string, data []byte, mode os.FileMode, opts ...Option) error {
	t, err := pending(path, data, mode, opts)
	if err != nil {
		return err
	}
	defer t.Cleanup() // removes the temp name; the link stays
	if err := t.File.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Link(t.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("creating %s: it exists already: %w", path, fs.ErrExist)
		}
		return fmt.Errorf("creating %s: %w", path, err)
	}
	if err := syncDir(filepath.Dir(path)); err != nil {
		return fmt.Errorf("writing %s: syncing its directory: %w", path, err)
	}
	return nil
}

// pending is the complete, synced and checked temp file for path.
func pending(path string, data []byte, mode os.FileMode, opts []Option) (*renameio.PendingFile, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	dir := filepath.Dir(path)
	t, err := renameio.NewPendingFile(path, renameio.WithTempDir(dir), renameio.WithStaticPermissions(mode))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("writing %s: directory %s does not exist: %w", path, dir, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("writing %s: %w", path, err)
	}
	fail := func(err error) (*renameio.PendingFile, error) {
		t.Cleanup()
		return nil, err
	}
	if o.owner {
		if err := t.Chown(o.uid, o.gid); err != nil {
			return fail(fmt.Errorf("writing %s: %w", path, err))
		}
	}
	// renameio sets the permission bits only, and chown clears set-ID bits.
	if mode&^fs.ModePerm != 0 {
		if err := t.Chmod(mode); err != nil {
			return fail(fmt.Errorf("writing %s: %w", path, err))
		}
	}
	if _, err := t.Write(data); err != nil {
		return fail(fmt.Errorf("writing %s: %w", path, err))
	}
	if err := t.Sync(); err != nil {
		return fail(fmt.Errorf("writing %s: %w", path, err))
	}
	if o.check != nil {
		if err := o.check(t.Name()); err != nil {
			return fail(fmt.Errorf("checking the new %s: %w", path, err))
		}
	}
	return t, nil
}

// WriteIfChanged is Write, skipped when path already holds data with mode
// (and the options' owner): unchanged files are not rewritten, and their
// readers not reloaded, on every start. changed reports whether it wrote.
func WriteIfChanged(path string, data []byte, mode os.FileMode, opts ...Option) (changed bool, err error) {
	if same(path, data, mode, opts) {
		return false, nil
	}
	if err := Write(path, data, mode, opts...); err != nil {
		return false, err
	}
	return true, nil
}

func same(path string, data []byte, mode os.FileMode, opts []Option) bool {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() || fi.Mode()&(fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != mode {
		return false
	}
	if o.owner {
		var st unix.Stat_t
		if unix.Lstat(path, &st) != nil || int(st.Uid) != o.uid || int(st.Gid) != o.gid {
			return false
		}
	}
	old, err := os.ReadFile(path)
	return err == nil && bytes.Equal(old, data)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
