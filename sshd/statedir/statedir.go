// Package statedir is the layout of a slave's state dir: the one place that
// says where each of its files lives, for the daemon, the hook, install,
// doctor and the tests. It imports only path/filepath, so that the lean
// hook can use it without growing.
package statedir

import "path/filepath"

// Root holds every slave's state dir (and the master's, and install's
// manifests): root-owned and not group/world-writable, as sshd demands of
// every parent of the hook it runs.
const Root = "/var/lib/mas4h"

// Default is the state dir of slave name: Root/slave-NAME.
func Default(slave string) string { return filepath.Join(Root, "slave-"+slave) }

// Dir is one slave's state dir (an absolute path).
type Dir string

// Paths inside a state dir.
func (d Dir) SSHDConfig() string { return d.join("sshd_config") }
func (d Dir) Lock() string       { return d.join("slave.lock") }
func (d Dir) Bin() string        { return d.join("bin") }
func (d Dir) Cache() string      { return d.join("cache.db") }
func (d Dir) KeysFile() string   { return d.join("authorized_keys") }

// SSHD is the directory of sshd's own files: root's, readable by the
// tunnel group, which can write the pid file and the log but replace
// nothing (see package nofollow for the layout and how to read them).
func (d Dir) SSHD() string    { return d.join("sshd") }
func (d Dir) PidFile() string { return d.join("sshd", "sshd.pid") }
func (d Dir) Log() string     { return d.join("sshd", "sshd.log") }
func (d Dir) HostKey() string { return d.join("sshd", "ssh_host_ed25519_key") }

// Run is the directory of the hook's socket: root and the tunnel group.
func (d Dir) Run() string    { return d.join("run") }
func (d Dir) Socket() string { return d.join("run", "hook.sock") }

func (d Dir) join(elem ...string) string {
	return filepath.Join(append([]string{string(d)}, elem...)...)
}
