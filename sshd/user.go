package sshd

import (
	"context"
	"fmt"
	"os/user"
	"strconv"

	"github.com/mas4h/mas4h/names"
	"github.com/mas4h/mas4h/process"
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
func EnsureTunnelUser(ctx context.Context, run process.Runner, name string) (TunnelUser, error) {
	if err := names.User(name); err != nil {
		return TunnelUser{}, fmt.Errorf("tunnel user: %w", err)
	}
	u, err := user.Lookup(name)
	created := false
	if err != nil {
		if _, ok := err.(user.UnknownUserError); !ok {
			return TunnelUser{}, fmt.Errorf("looking up tunnel user %s: %w", name, err)
		}
		useradd := process.Command("useradd", "--system", "--user-group", "--no-create-home",
			"--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "--comment", "mas4h reverse tunnels", name)
		if _, err := run.Run(ctx, useradd); err != nil {
			return TunnelUser{}, fmt.Errorf("creating tunnel user %s (create it yourself with "+
				"`useradd --system --user-group --shell /usr/sbin/nologin %s` and `usermod -p '*' %s`): %w", name, name, name, err)
		}
		if _, err := run.Run(ctx, process.Command("usermod", "-p", "*", name)); err != nil {
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
