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

// OperatorUserError says why an account cannot be the operator user.
type OperatorUserError struct {
	Name, Why string
}

func (e *OperatorUserError) Error() string {
	return fmt.Sprintf("operator user %s %s. Operators log in to the slave's sshd as the operator user, and an sshd that "+
		"is not root runs sessions of its own uid only, so the operator user is a second name for the tunnel user's uid, "+
		"with a group of its own and no login shell; mas4h changed nothing. Omit --operator-user (mas4h then creates and "+
		"uses mas4h-operator), or create it: useradd --system --non-unique --uid TUNNEL_UID --user-group --no-create-home "+
		"--home-dir /nonexistent --shell /usr/sbin/nologin NAME && usermod -p '*' NAME", e.Name, e.Why)
}

// EnsureOperatorUser creates the operator user when missing and checks an
// existing one. Operators log in to the slave's sshd, which runs as the
// tunnel user: an sshd that is not root cannot change uid after
// authentication (it ends a session whose account has another uid), so
// the operator user is an account of the tunnel user's uid under another
// name, which sshd's Match User, AllowUsers and the hook's %u tell apart.
// It has a group of its own (the tunnel group reads the host key), no
// home, no login shell and the password field "*", as the tunnel user.
// Nothing runs as it: neither user gets a shell, a command or a pty.
func EnsureOperatorUser(ctx context.Context, run process.Runner, root, name string, tunnel TunnelUser) error {
	if err := names.User(name); err != nil {
		return fmt.Errorf("operator user: %w", err)
	}
	if name == tunnel.Name {
		return &OperatorUserError{Name: name, Why: "is the tunnel user"}
	}
	_, ok, err := install.LookupUser(root, name)
	if err != nil {
		return fmt.Errorf("checking operator user %s: %w", name, err)
	}
	if !ok {
		if _, err := user.Lookup(name); err == nil {
			return &OperatorUserError{Name: name, Why: fmt.Sprintf("is not a local account (no line in %s)", filepath.Join(root, "etc/passwd"))}
		}
		useradd := process.Command("useradd", install.OperatorUserArgs(root, name, tunnel.UID, "")...)
		if _, err := run.Run(ctx, useradd); err != nil {
			return fmt.Errorf("creating operator user %s: %w", name, err)
		}
		if _, err := run.Run(ctx, process.Command("usermod", "-p", "*", name)); err != nil {
			return fmt.Errorf("unlocking operator user %s: %w", name, err)
		}
	}
	return CheckOperatorAccount(root, name, tunnel)
}

// CheckOperatorAccount applies the operator user policy to the account
// name of root/etc/passwd: the tunnel user's uid, another primary group,
// no login shell.
func CheckOperatorAccount(root, name string, tunnel TunnelUser) error {
	a, ok, err := install.LookupUser(root, name)
	if err != nil {
		return fmt.Errorf("checking operator user %s: %w", name, err)
	}
	switch {
	case !ok:
		return &OperatorUserError{Name: name, Why: fmt.Sprintf("is not a local account (no line in %s)", filepath.Join(root, "etc/passwd"))}
	case a.UID != tunnel.UID:
		return &OperatorUserError{Name: name, Why: fmt.Sprintf("has uid %d, not the tunnel user %s's uid %d", a.UID, tunnel.Name, tunnel.UID)}
	case a.GID == tunnel.GID:
		return &OperatorUserError{Name: name, Why: fmt.Sprintf("has the tunnel user's group (gid %d), which can read the slave's host key", a.GID)}
	case !noLoginShells[filepath.Base(a.Shell)]:
		return &OperatorUserError{Name: name, Why: fmt.Sprintf("has a login shell, %q", a.Shell)}
	}
	return nil
}
