package install

import "strconv"

// DefaultOperatorUser is the operator user of a tunnel user: operators
// log in to a slave's sshd as a second name for the tunnel user's uid
// (sshd runs as that uid and serves no other), so each tunnel user has
// its own: mas4h-operator for the default one, else TUNNEL_USER-operator.
func DefaultOperatorUser(tunnelUser string) string {
	if tunnelUser == DefaultTunnelUser {
		return "mas4h-operator"
	}
	return tunnelUser + "-operator"
}

// OperatorUserComment is the operator user's GECOS field.
const OperatorUserComment = "mas4h operators"

// OperatorUserArgs are useradd's arguments that create the operator user
// name below root: a system account with the tunnel user's uid
// (non-unique), a group of its own (group, when one of that name exists
// already; else a new one named after it), no home and no login shell.
// Its password field is then set to '*' (usermod -p '*'), as the tunnel
// user's: no password, but not '!'-locked, which sshd refuses. The slave
// (sshd.EnsureOperatorUser) and 'mas4h install slave' both create it so.
func OperatorUserArgs(root, name string, tunnelUID int, group string) []string {
	args := append(prefixArgs(root), "--system", "--non-unique", "--uid", strconv.Itoa(tunnelUID))
	if group != "" {
		args = append(args, "--gid", group)
	} else {
		args = append(args, "--user-group")
	}
	return append(args, "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "--comment", OperatorUserComment, name)
}
