package install

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Uninstall reverses what Install recorded, newest first. Things another
// installation still needs (the slave units and the tunnel user when another
// slave remains, /var/lib/mas4h and /etc/mas4h while any remains) are handed
// over to its manifest instead. Without Purge, a config file the operator
// edited and a state dir a daemon filled are kept, and said so.
func Uninstall(ctx context.Context, c Config) error {
	if err := c.Check(); err != nil {
		return err
	}
	mpath := c.path(ManifestPath(c.Role, c.Name))
	m, err := readManifest(mpath)
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("nothing to uninstall for %s: no manifest at %s", c.id(), ManifestPath(c.Role, c.Name))
	}
	if err != nil {
		return err
	}
	others, err := otherManifests(c)
	if err != nil {
		return err
	}
	if err := os.Remove(mpath); err != nil {
		return err
	}
	var errs []error
	for i := len(m.Created) - 1; i >= 0; i-- {
		s := m.Created[i]
		if heir := heirFor(s, c.Role, others); heir != nil {
			heir.m.Created = append([]Step{s}, heir.m.Created...)
			if err := writeManifest(heir.path, heir.m); err != nil {
				errs = append(errs, err)
			}
			fmt.Fprintf(c.Out, "kept %s %s: %s still uses it\n", s.Kind, s.Path, heir.id)
			continue
		}
		if err := undo(ctx, c, s); err != nil {
			errs = append(errs, err)
			fmt.Fprintf(c.Out, "could not remove %s %s: %v\n", s.Kind, s.Path, err)
		}
	}
	return errors.Join(errs...)
}

type otherManifest struct {
	id, path string
	m        *Manifest
}

func otherManifests(c Config) ([]otherManifest, error) {
	dir := c.path(StateRoot)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	own := filepath.Base(ManifestPath(c.Role, c.Name))
	var out []otherManifest
	for _, e := range entries {
		n := e.Name()
		if !strings.HasPrefix(n, ".install-manifest-") || n == own || strings.HasSuffix(n, ".tmp") {
			continue
		}
		p := filepath.Join(dir, n)
		m, err := readManifest(p)
		if err != nil {
			return nil, err
		}
		out = append(out, otherManifest{id: strings.TrimPrefix(n, ".install-manifest-"), path: p, m: m})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].id < out[j].id })
	return out, nil
}

// heirFor picks another installation that still needs what s created.
func heirFor(s Step, role string, others []otherManifest) *otherManifest {
	for i := range others {
		o := &others[i]
		switch {
		case s.Kind == KindDir && (s.Path == StateRoot || s.Path == ConfDir):
			return o
		case role == RoleSlave && o.m.Role == RoleSlave && (s.Kind == KindUnit || s.Kind == KindUser || s.Kind == KindGroup):
			return o
		}
	}
	return nil
}

func undo(ctx context.Context, c Config, s Step) error {
	switch s.Kind {
	case KindEnable:
		if !c.Systemd {
			fmt.Fprintf(c.Out, "systemd is not running: nothing to disable for %s\n", s.Path)
			return nil
		}
		if err := c.run(ctx, "systemctl", "disable", "--now", s.Path); err != nil {
			return err
		}
		fmt.Fprintf(c.Out, "disabled and stopped %s\n", s.Path)
	case KindUnit:
		if err := os.Remove(c.path(s.Path)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		fmt.Fprintf(c.Out, "removed unit %s\n", s.Path)
		if c.Systemd {
			return c.run(ctx, "systemctl", "daemon-reload")
		}
	case KindFile:
		full := c.path(s.Path)
		b, err := os.ReadFile(full)
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if sum(b) != s.SHA256 && !c.Purge {
			fmt.Fprintf(c.Out, "kept %s: edited since install (--purge removes it)\n", s.Path)
			return nil
		}
		if err := os.Remove(full); err != nil {
			return err
		}
		fmt.Fprintf(c.Out, "removed %s\n", s.Path)
	case KindReplaced:
		full, backup := c.path(s.Path), c.path(s.Backup)
		b, err := os.ReadFile(full)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		if err == nil && sum(b) != s.SHA256 && !c.Purge {
			fmt.Fprintf(c.Out, "kept %s: edited since install (--purge puts back %s); %s stays too\n", s.Path, s.Backup, s.Backup)
			return nil
		}
		if _, err := os.Lstat(backup); err != nil {
			if err := os.Remove(full); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			fmt.Fprintf(c.Out, "removed %s (%s, the one it replaced, is gone)\n", s.Path, s.Backup)
			return nil
		}
		if err := os.Rename(backup, full); err != nil {
			return err
		}
		fmt.Fprintf(c.Out, "put back %s as it was before install (from %s)\n", s.Path, s.Backup)
	case KindBackup:
		if _, err := os.Lstat(c.path(s.Path)); err == nil {
			fmt.Fprintf(c.Out, "kept %s: your edited config, saved when install replaced it\n", s.Path)
		}
	case KindDir:
		full := c.path(s.Path)
		if c.Root == "/" && strings.HasPrefix(filepath.Base(s.Path), "slave-") {
			if pid, ok := stopSlaveSSHD("/proc", full); ok {
				fmt.Fprintf(c.Out, "stopped the slave's sshd (pid %d) and its sessions\n", pid)
			}
		}
		err := os.Remove(full)
		switch {
		case err == nil || errors.Is(err, fs.ErrNotExist):
			fmt.Fprintf(c.Out, "removed %s\n", s.Path)
		case c.Purge && s.Path != StateRoot && s.Path != ConfDir:
			if err := os.RemoveAll(full); err != nil {
				return err
			}
			fmt.Fprintf(c.Out, "purged %s\n", s.Path)
		default:
			fmt.Fprintf(c.Out, "kept %s: not empty%s%s\n", s.Path, map[bool]string{true: "", false: " (--purge removes a role's state)"}[s.Path == StateRoot || s.Path == ConfDir], leftIn(full))
		}
	case KindUser:
		if _, ok, err := LookupUser(c.Root, s.Path); err != nil || !ok {
			return err
		}
		if err := c.run(ctx, "userdel", append(prefixArgs(c.Root), s.Path)...); err != nil {
			return err
		}
		fmt.Fprintf(c.Out, "removed user %s\n", s.Path)
	case KindGroup:
		if ok, err := HasGroup(c.Root, s.Path); err != nil || !ok {
			return err // userdel removed it with the user
		}
		if err := c.run(ctx, "groupdel", append(prefixArgs(c.Root), s.Path)...); err != nil {
			return err
		}
		fmt.Fprintf(c.Out, "removed group %s\n", s.Path)
	default:
		return fmt.Errorf("unknown manifest step %q", s.Kind)
	}
	return nil
}

// leftIn names what a directory kept for not being empty still holds (files
// mas4h did not make, or state), for the message: ", holding a, b".
func leftIn(dir string) string {
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) == 0 {
		return ""
	}
	var names []string
	for i, e := range entries {
		if i == 8 {
			names = append(names, fmt.Sprintf("and %d more", len(entries)-i))
			break
		}
		names = append(names, e.Name())
	}
	return ", holding " + strings.Join(names, ", ")
}
