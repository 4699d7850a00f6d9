package sshd

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"

	"github.com/mas4h/mas4h/names"
)

// TunnelUser is the unprivileged account the slave's sshd runs as and every
// device logs in as.
type TunnelUser struct {
	Name     string
	UID, GID int
	Created  bool
}

// EnsureTunnelUser looks the user up and creates it when missing: a system
// user with no home and no login shell, password field "*" (no password, but
// not "!"-locked, which sshd would treat as a locked account).
func EnsureTunnelUser(ctx context.Context, name string) (TunnelUser, error) {
	if err := names.User(name); err != nil {
		return TunnelUser{}, fmt.Errorf("tunnel user: %w", err)
	}
	u, err := user.Lookup(name)
	created := false
	if err != nil {
		if _, ok := err.(user.UnknownUserError); !ok {
			return TunnelUser{}, fmt.Errorf("looking up tunnel user %s: %w", name, err)
		}
		if err := run(ctx, "useradd", "--system", "--user-group", "--no-create-home",
			"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
			"--comment", "mas4h reverse tunnels", name); err != nil {
			return TunnelUser{}, fmt.Errorf("creating tunnel user %s (create it yourself with "+
				"`useradd --system --user-group --shell /usr/sbin/nologin %s` and `usermod -p '*' %s`): %w", name, name, name, err)
		}
		if err := run(ctx, "usermod", "-p", "*", name); err != nil {
			return TunnelUser{}, fmt.Errorf("unlocking tunnel user %s: %w", name, err)
		}
		if u, err = user.Lookup(name); err != nil {
			return TunnelUser{}, fmt.Errorf("looking up tunnel user %s after creating it: %w", name, err)
		}
		created = true
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if uid == 0 {
		return TunnelUser{}, fmt.Errorf("tunnel user %s is root; it must be an unprivileged account", name)
	}
	return TunnelUser{Name: name, UID: uid, GID: gid, Created: created}, nil
}

// run executes a system command; its error carries argv and stderr.
func run(ctx context.Context, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return nil
}
