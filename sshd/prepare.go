package sshd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mas4h/mas4h/atomicfile"
	"github.com/mas4h/mas4h/process"
	"github.com/mas4h/mas4h/sshd/sshdconfig"
	"github.com/mas4h/mas4h/sshd/sshdversion"
	"github.com/mas4h/mas4h/sshd/statedir/nofollow"
	"golang.org/x/sys/unix"
)

// prepareStateDir makes the state dir, root-owned 0755 as sshd demands of
// every parent of the hook, with its bin/. It checks before it changes: a
// state dir (or a parent) that is not root's, or that others can write to,
// is refused and left exactly as it was — taking it over would trust what
// its owner put there. Only a missing dir is created, and only a root-owned
// one that others cannot write to gets its mode set.
func (s *Slave) prepareStateDir() error {
	dir := s.cfg.StateDir
	if _, err := os.Lstat(dir); errors.Is(err, fs.ErrNotExist) {
		parent := filepath.Dir(dir)
		for {
			if _, err := os.Lstat(parent); err == nil || parent == "/" {
				break
			}
			parent = filepath.Dir(parent)
		}
		if err := CheckRootOwnedPath(parent); err != nil {
			return fmt.Errorf("creating state dir %s: %w", dir, err)
		}
		if err := mkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating state dir: %w", err)
		}
	} else if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	if err := CheckRootOwnedPath(dir); err != nil {
		return err
	}
	// Root's, and no one else can write to it or above it: safe to set.
	if err := os.Chmod(dir, 0o755); err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	return mkdirAll(s.dir.Bin(), 0o755)
}

// mkdirAll is os.MkdirAll with each directory it creates given mode
// exactly (not masked by the umask: sshd must reach the hook).
func mkdirAll(path string, mode os.FileMode) error {
	if _, err := os.Lstat(path); err == nil {
		return nil
	}
	if err := mkdirAll(filepath.Dir(path), mode); err != nil {
		return err
	}
	if err := os.Mkdir(path, mode); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	return os.Chmod(path, mode)
}

// prepareSharedDirs makes the dirs the tunnel user reads or writes in —
// sshd's own (its host key, pid file and log) and the hook socket's —
// root-owned and not writable by it, migrating the older layout in which
// sshd's was the tunnel user's (nofollow says how, without following a
// link).
func (s *Slave) prepareSharedDirs(u TunnelUser) error {
	res, err := nofollow.PrepareSSHD(s.dir, u.UID, u.GID)
	if err != nil {
		return fmt.Errorf("preparing sshd's directory: %w", err)
	}
	if res.Migrated {
		s.log.Info("sshd's directory was the tunnel user's (older layout); made it root's, the tunnel user can no longer replace its files",
			"dir", s.dir.SSHD())
	}
	if len(res.Unexpected) > 0 {
		s.log.Warn("sshd's directory holds files mas4h does not use (left alone; in the older layout the tunnel user could put them there)",
			"dir", s.dir.SSHD(), "files", strings.Join(res.Unexpected, " "))
	}
	if err := nofollow.PrepareRun(s.dir, u.GID); err != nil {
		return fmt.Errorf("preparing the hook's socket directory: %w", err)
	}
	return nil
}

// installHook copies the hook into the state dir's bin, root-owned, where
// sshd accepts it as an AuthorizedKeysCommand, and returns the command line
// for sshd_config. It prefers the lean mas4h-authkeys binary next to this one
// (static, about 2.5 ms less CPU per run, twice per authentication), which
// only asks the daemon and execs this binary's `authkeys --cache-only`, found
// next to it, when the daemon cannot answer: so this binary goes there too,
// first, so that an upgraded hook never finds an older fallback. Without the
// lean binary the hook is this binary's `authkeys` subcommand.
func (s *Slave) installHook() (string, error) {
	src := s.cfg.Executable
	if src == "" {
		exe, err := os.Executable()
		if err != nil {
			return "", fmt.Errorf("finding the mas4h binary to install as the hook: %w", err)
		}
		src = exe
	}
	full, err := s.installHookBinary(src, "mas4h")
	if err != nil {
		return "", err
	}
	hook := full + " authkeys"
	if lean := filepath.Join(filepath.Dir(src), "mas4h-authkeys"); isFile(lean) {
		if hook, err = s.installHookBinary(lean, "mas4h-authkeys"); err != nil {
			return "", err
		}
	}
	return hook + " --state-dir " + s.cfg.StateDir + " --", nil
}

// installHookBinary copies src to the state dir's bin/name, root-owned 0755,
// unless it is there already, checks the path as sshd will, and returns it.
func (s *Slave) installHookBinary(src, name string) (string, error) {
	data, err := os.ReadFile(src)
	if err != nil {
		return "", fmt.Errorf("reading %s to install for the hook: %w", src, err)
	}
	dst := filepath.Join(s.dir.Bin(), name)
	changed, err := atomicfile.WriteIfChanged(dst, data, 0o755, atomicfile.Owner(0, 0))
	if err != nil {
		return "", fmt.Errorf("installing the hook: %w", err)
	}
	if changed {
		s.log.Info("installed hook binary", "path", dst, "from", src)
	}
	if err := CheckRootOwnedPath(dst); err != nil {
		return "", err
	}
	return dst, nil
}

func isFile(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular()
}

// writeConfig renders sshd_config for the sshd it is for (its release
// decides some directives), has sshd check it (as the tunnel user, as it
// will run), and replaces the old file only when it changed.
func (s *Slave) writeConfig(ctx context.Context, u TunnelUser, hk HostKey, hookCmd string) (bool, error) {
	sshdFeatures, err := sshdversion.Detect(ctx, s.run, s.cfg.SSHDPath)
	if err != nil {
		return false, fmt.Errorf("rendering sshd_config: %w", err)
	}
	keysFile := ""
	if s.cfg.KeysFile {
		keysFile = s.dir.KeysFile()
	}
	cfg, err := sshdconfig.Render(sshdconfig.Params{
		SSHD:                sshdFeatures,
		SlaveName:           s.cfg.Name,
		TunnelUser:          u.Name,
		OperatorUser:        s.cfg.OperatorUser,
		ListenAddresses:     []string{s.cfg.SSHListen},
		HostKeys:            []string{hk.Path},
		PidFile:             s.dir.PidFile(),
		HookCommand:         hookCmd,
		KeysFile:            keysFile,
		MaxStartups:         sshdconfig.DefaultMaxStartups,
		LoginGraceTime:      sshdconfig.DefaultLoginGraceTime,
		ClientAliveInterval: int(s.cfg.Keepalive / time.Second),
		ClientAliveCountMax: sshdconfig.KeepaliveCountMax(int(s.cfg.Keepalive / time.Second)),
	})
	if err != nil {
		return false, err
	}
	path := s.dir.SSHDConfig()
	check := func(tmp string) error {
		c := process.Command(s.cfg.SSHDPath, "-t", "-f", tmp)
		c.Cred, c.Combined = &process.Cred{UID: u.UID, GID: u.GID}, true // as it will run
		if out, err := s.run.Run(ctx, c); err != nil {
			if len(bytes.TrimSpace(out)) == 0 {
				// sshd says why it rejects a config; silence is not sshd.
				return fmt.Errorf("%s -t rejected the generated config without a word (%w): is --sshd OpenSSH's sshd?", s.cfg.SSHDPath, err)
			}
			return fmt.Errorf("sshd rejected the generated config: %w", err)
		}
		return nil
	}
	changed, err := atomicfile.WriteIfChanged(path, cfg, 0o644, atomicfile.Owner(0, 0), atomicfile.Check(check))
	if err != nil {
		return false, err
	}
	if changed {
		s.log.Info("wrote sshd_config", "path", path, "openssh", sshdFeatures.Version.Release)
	}
	return changed, nil
}

// lockStateDir keeps two daemons off one state dir.
func lockStateDir(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("locking state dir: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		b, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		return nil, fmt.Errorf("another mas4h slave (pid %s) is running on state dir %s", string(b), filepath.Dir(path))
	}
	f.Truncate(0)
	f.WriteAt([]byte(strconv.Itoa(os.Getpid())), 0)
	return func() { f.Close() }, nil
}
