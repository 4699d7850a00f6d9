package sshd

import (
	"context"
	"fmt"
	"os/user"
	"path/filepath"
	"strings"

	"github.com/mas4h/mas4h/install"
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

// TunnelUserError says why an account cannot be the tunnel user.
type TunnelUserError struct {
	Name, Why string
}

func (e *TunnelUserError) Error() string {
	return fmt.Sprintf("tunnel user %s %s. Every device logs in as the tunnel user and the slave's sshd runs as it, "+
		"so it must be a system account of its own, with no login shell, that nothing else uses; mas4h changed nothing. "+
		"Omit --tunnel-user (mas4h then creates and uses mas4h-tunnel), or create a dedicated account: "+
		"useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin NAME && usermod -p '*' NAME",
		e.Name, e.Why)
}

// noLoginShells are the shells of accounts no one logs in to.
var noLoginShells = map[string]bool{"nologin": true, "false": true}

// CheckTunnelAccount applies the tunnel user policy to the account name of
// root/etc/passwd (not NSS: a directory account is no local system
// account): a system account (uid in the system range of
// root/etc/login.defs, not root, not nobody), with no login shell, whose
// group is its own (no other account has it, as primary group or member;
// the group can read the host key). That is what mas4h, `mas4h install`
// and the package create; an ordinary or shared account is refused with a
// *TunnelUserError.
func CheckTunnelAccount(root, name string) (install.Account, error) {
	refuse := func(format string, args ...any) (install.Account, error) {
		return install.Account{}, &TunnelUserError{Name: name, Why: fmt.Sprintf(format, args...)}
	}
	a, ok, err := install.LookupUser(root, name)
	if err != nil {
		return install.Account{}, fmt.Errorf("checking tunnel user %s: %w", name, err)
	}
	if !ok {
		return refuse("is not a local account (no line in %s)", filepath.Join(root, "etc/passwd"))
	}
	max := install.SystemUIDMax(root)
	switch {
	case a.UID == 0:
		return refuse("is root (uid 0)")
	case a.UID == 65534 || name == "nobody":
		return refuse("is nobody (uid %d), the overflow account that other services share", a.UID)
	case a.UID > max:
		return refuse("is an ordinary account (uid %d; system accounts end at uid %d)", a.UID, max)
	case !noLoginShells[filepath.Base(a.Shell)]:
		shell := a.Shell
		if shell == "" {
			shell = "/bin/sh (empty shell field)"
		}
		return refuse("has a login shell, %s", shell)
	}
	accounts, err := install.Accounts(root)
	if err != nil {
		return install.Account{}, fmt.Errorf("checking tunnel user %s: %w", name, err)
	}
	for _, o := range accounts {
		if o.GID == a.GID && o.Name != name {
			return refuse("shares its primary group (gid %d) with %s; the tunnel group can read the slave's host key", a.GID, o.Name)
		}
	}
	g, found, err := install.LookupGroupID(root, a.GID)
	if err != nil {
		return install.Account{}, fmt.Errorf("checking tunnel user %s: %w", name, err)
	}
	if found {
		var others []string
		for _, m := range g.Members {
			if m != name {
				others = append(others, m)
			}
		}
		if len(others) > 0 {
			return refuse("has a group, %s, with other members (%s); the tunnel group can read the slave's host key", g.Name, strings.Join(others, ", "))
		}
	}
	return a, nil
}

// EnsureTunnelUser creates the tunnel user when missing — a system user
// with no home and no login shell, password field "*" (no password, but
// not "!"-locked, which sshd would treat as a locked account) — and checks
// an existing one with CheckTunnelAccount before anything uses it. root is
// the file system root of /etc ("/").
func EnsureTunnelUser(ctx context.Context, run process.Runner, root, name string) (TunnelUser, error) {
	if err := names.User(name); err != nil {
		return TunnelUser{}, fmt.Errorf("tunnel user: %w", err)
	}
	_, err := user.Lookup(name)
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
		created = true
	}
	a, err := CheckTunnelAccount(root, name)
	if err != nil {
		return TunnelUser{}, err
	}
	return TunnelUser{Name: name, UID: a.UID, GID: a.GID, Created: created}, nil
}
