// Package install lays a mas4h role (master, slave or agent) out on a host:
// the system users, the directories with the ownership sshd demands of the
// hook's path, config skeletons in /etc/mas4h and the systemd units, enabled
// when systemd runs. It records what it created in a manifest, and Uninstall
// takes exactly that away again. Every path is below a relocatable root, so
// tests lay a role out in a temporary tree.
package install

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/mas4h/mas4h/agent"
	"github.com/mas4h/mas4h/atomicfile"
	"github.com/mas4h/mas4h/names"
	"github.com/mas4h/mas4h/process"
	"github.com/mas4h/mas4h/sshd/statedir"
)

// Roles.
const (
	RoleMaster = "master"
	RoleSlave  = "slave"
	RoleAgent  = "agent"
)

// Defaults shared with the units, the .deb and the daemons.
const (
	DefaultTunnelUser = "mas4h-tunnel"
	DefaultMasterUser = "mas4h"
	DefaultBin        = "/usr/bin/mas4h"
	StateRoot         = "/var/lib/mas4h"
	AgentStateDir     = agent.DefaultStateDir
	ConfDir           = "/etc/mas4h"
	UnitDir           = "/etc/systemd/system"
)

// vendorUnitDirs are where a package or `make install` puts units; a unit
// found there is used as it is rather than copied into /etc.
var vendorUnitDirs = []string{"/usr/local/lib/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"}

// Runner runs the system's tools (useradd, systemctl): process.Exec in
// production.
type Runner interface {
	Run(ctx context.Context, c process.Cmd) ([]byte, error)
}

// Config says what to lay out and where.
type Config struct {
	Role string
	Name string // the slave's name
	// Root is the file system root ("/" on a real host).
	Root string
	// Bin is the mas4h binary the units run, as a path on the target system.
	Bin        string
	TunnelUser string // slave
	// OperatorUser is the name operators log in as to a slave, created
	// with the tunnel user's uid (OperatorUserArgs); default
	// DefaultOperatorUser(TunnelUser).
	OperatorUser string // slave
	MasterUser   string // master
	// Args is the flag line written into the role's config file
	// (MAS4H_MASTER_ARGS, MAS4H_SLAVE_ARGS or MAS4H_AGENT_ARGS). Empty:
	// the skeleton's example line, and an existing file is kept. Given, it
	// replaces what an existing file says (the old file kept beside it as
	// NAME.conf.mas4h-old).
	Args string
	// Credential, when not nil, is the slave's own credential (from 'mas4h
	// slave add NAME' on the master), installed as CredentialFile (a path
	// on the target), root's, mode 0600.
	Credential     []byte
	CredentialFile string
	// Units holds the unit files (mas4h-*.service) at its top level.
	Units fs.FS
	// Systemd is true when systemd runs the host: units are then enabled
	// with systemctl (and disabled and stopped again by Uninstall).
	Systemd bool
	// Purge makes Uninstall also remove state the daemons filled (a slave's
	// host keys and cache, the master's registry) and edited config files.
	Purge  bool
	Runner Runner
	Out    io.Writer
}

// Check validates c and fills defaults.
func (c *Config) Check() error {
	switch c.Role {
	case RoleMaster, RoleAgent:
		if c.Name != "" {
			return fmt.Errorf("%s takes no name", c.Role)
		}
	case RoleSlave:
		if err := names.Slave(c.Name); err != nil {
			return err
		}
	default:
		return fmt.Errorf("role must be master, slave or agent, not %q", c.Role)
	}
	if c.Root == "" {
		c.Root = "/"
	}
	if !filepath.IsAbs(c.Root) {
		return fmt.Errorf("root %q is not an absolute path", c.Root)
	}
	if c.Bin == "" {
		c.Bin = DefaultBin
	}
	if c.TunnelUser == "" {
		c.TunnelUser = DefaultTunnelUser
	}
	if c.MasterUser == "" {
		c.MasterUser = DefaultMasterUser
	}
	if c.OperatorUser == "" {
		c.OperatorUser = DefaultOperatorUser(c.TunnelUser)
	}
	if c.OperatorUser == c.TunnelUser {
		return fmt.Errorf("the operator user must not be the tunnel user (%s)", c.TunnelUser)
	}
	for _, u := range []string{c.TunnelUser, c.OperatorUser, c.MasterUser} {
		if err := names.User(u); err != nil {
			return err
		}
	}
	if strings.ContainsAny(c.Args, "\"\\$`\n") {
		return fmt.Errorf("config arguments %q: no quotes, backslashes, $, ` or newlines", c.Args)
	}
	if c.Credential != nil && (c.Role != RoleSlave || !filepath.IsAbs(c.CredentialFile)) {
		return fmt.Errorf("a credential is installed for a slave, at an absolute path")
	}
	if c.Runner == nil {
		c.Runner = process.Exec{}
	}
	if c.Out == nil {
		c.Out = io.Discard
	}
	return nil
}

// id names the installation: "master", "agent" or "slave-NAME".
func (c *Config) id() string {
	if c.Role == RoleSlave {
		return "slave-" + c.Name
	}
	return c.Role
}

// path maps a path of the target system below Root.
func (c *Config) path(p string) string { return filepath.Join(c.Root, p) }

// ManifestPath is where the record of an installation lives (on the target).
func ManifestPath(role, name string) string {
	if role == RoleSlave {
		return filepath.Join(StateRoot, ".install-manifest-slave-"+name)
	}
	return filepath.Join(StateRoot, ".install-manifest-"+role)
}

// MasterStateDir holds the master's registry and tokens under its unit.
const MasterStateDir = StateRoot + "/master"

// ConfPath is the role's EnvironmentFile.
func ConfPath(role, name string) string {
	if role == RoleSlave {
		return filepath.Join(ConfDir, "slave-"+name+".conf")
	}
	return filepath.Join(ConfDir, role+".conf")
}

// Step kinds of a manifest.
const (
	KindUser   = "user"
	KindGroup  = "group"
	KindDir    = "dir"
	KindFile   = "file"
	KindUnit   = "unit"
	KindEnable = "enable"
	// KindReplaced is a config file that was there (the package's, or
	// hand-made) and that install replaced because flags were given; the
	// old one was moved to Backup, and uninstall moves it back.
	KindReplaced = "replaced"
	// KindBackup is a copy install made of a config file of its own that
	// had been edited, before replacing it: the operator's, kept.
	KindBackup = "backup"
)

// BackupSuffix ends the name a replaced config file is kept under.
const BackupSuffix = ".mas4h-old"

// Step is one thing an installation created. Path is a path on the target
// system, a user or group name, or a unit name.
type Step struct {
	Kind   string `json:"kind"`
	Path   string `json:"path"`
	SHA256 string `json:"sha256,omitempty"` // of a file as written
	Backup string `json:"backup,omitempty"` // KindReplaced: where the old file went
}

// Manifest records what one installation created, in order.
type Manifest struct {
	Role    string `json:"role"`
	Name    string `json:"name,omitempty"`
	Created []Step `json:"created"`
}

func (m *Manifest) has(s Step) bool {
	for _, c := range m.Created {
		if c.Kind == s.Kind && c.Path == s.Path {
			return true
		}
	}
	return false
}

func (m *Manifest) add(s Step) {
	if !m.has(s) {
		m.Created = append(m.Created, s)
	}
}

func readManifest(path string) (*Manifest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return &m, nil
}

func writeManifest(path string, m *Manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("saving the install manifest: %w", err)
	}
	return nil
}

// Install lays the role out and records what it created; running it again
// creates only what is missing and overwrites no config file.
func Install(ctx context.Context, c Config) (*Manifest, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	mpath := c.path(ManifestPath(c.Role, c.Name))
	m, err := readManifest(mpath)
	if errors.Is(err, fs.ErrNotExist) {
		m, err = &Manifest{Role: c.Role, Name: c.Name}, nil
	}
	if err != nil {
		return nil, err
	}
	in := &installer{c: &c, m: m}
	// The manifest lives in /var/lib/mas4h: that comes first, and the
	// manifest is saved after every step so a failure leaves an exact record.
	in.dir(StateRoot, 0o755, "root")
	in.save = func() error { return writeManifest(mpath, m) }
	if in.err == nil {
		in.err = in.save()
	}
	switch c.Role {
	case RoleMaster:
		in.user(ctx, c.MasterUser, MasterStateDir, false)
		in.dir(MasterStateDir, 0o750, c.MasterUser)
		in.dir(ConfDir, 0o755, "root")
		in.conf(ConfPath(c.Role, ""), masterConf(c.Args), c.Args != "")
		in.unit("mas4h-master.service")
		in.enable(ctx, "mas4h-master.service")
	case RoleSlave:
		in.user(ctx, c.TunnelUser, "/nonexistent", true)
		in.operatorUser(ctx)
		in.dir(statedir.Default(c.Name), 0o755, "root")
		in.dir(ConfDir, 0o755, "root")
		if c.Credential != nil {
			in.secret(c.CredentialFile, c.Credential)
		}
		in.conf(ConfPath(c.Role, c.Name), slaveConf(c.Name, c.Args), c.Args != "")
		in.unit("mas4h-slave@.service")
		in.enable(ctx, "mas4h-slave@"+c.Name+".service")
	case RoleAgent:
		in.dir(AgentStateDir, 0o700, "root")
		in.dir(ConfDir, 0o755, "root")
		in.conf(ConfPath(c.Role, ""), agentConf(c.Args), c.Args != "")
		in.unit("mas4h-agent.service")
		in.enable(ctx, "mas4h-agent.service")
	}
	if in.err != nil {
		return m, fmt.Errorf("installing %s: %w", c.id(), in.err)
	}
	return m, nil
}

type installer struct {
	c    *Config
	m    *Manifest
	save func() error
	err  error
	// units holds the units this run wrote or found, for enable.
	units map[string]bool
}

func (in *installer) record(s Step, format string, args ...any) {
	in.m.add(s)
	fmt.Fprintf(in.c.Out, format+"\n", args...)
	if in.save != nil {
		in.err = in.save()
	}
}

func (in *installer) user(ctx context.Context, name, home string, tunnel bool) {
	if in.err != nil {
		return
	}
	c := in.c
	if _, ok, err := LookupUser(c.Root, name); err != nil || ok {
		if ok {
			fmt.Fprintf(c.Out, "user %s exists\n", name)
		}
		in.err = err
		return
	}
	hadGroup, err := HasGroup(c.Root, name)
	if err != nil {
		in.err = err
		return
	}
	comment := "mas4h master"
	if tunnel {
		comment = "mas4h reverse tunnels"
	}
	args := append(prefixArgs(c.Root), "--system", "--user-group", "--no-create-home",
		"--home-dir", home, "--shell", "/usr/sbin/nologin", "--comment", comment, name)
	if hadGroup {
		args = append(prefixArgs(c.Root), "--system", "--gid", name, "--no-create-home",
			"--home-dir", home, "--shell", "/usr/sbin/nologin", "--comment", comment, name)
	}
	if err := c.run(ctx, "useradd", args...); err != nil {
		in.err = fmt.Errorf("creating user %s: %w", name, err)
		return
	}
	if !hadGroup {
		in.record(Step{Kind: KindGroup, Path: name}, "created group %s", name)
	}
	in.record(Step{Kind: KindUser, Path: name}, "created user %s", name)
	if tunnel && in.err == nil {
		// '*': no password, but not '!'-locked, which sshd refuses.
		if err := c.run(ctx, "usermod", append(prefixArgs(c.Root), "-p", "*", name)...); err != nil {
			in.err = fmt.Errorf("setting the password field of %s to '*': %w", name, err)
		}
	}
}

// operatorUser creates the operator user of the slave's tunnel user, as
// the slave would (OperatorUserArgs), so that uninstall removes it: the
// tunnel user's uid, a group of its own, no shell, password '*'. An
// existing account is left as it is (the slave checks it at start).
func (in *installer) operatorUser(ctx context.Context) {
	if in.err != nil {
		return
	}
	c := in.c
	name := c.OperatorUser
	if _, ok, err := LookupUser(c.Root, name); err != nil || ok {
		if ok {
			fmt.Fprintf(c.Out, "user %s exists\n", name)
		}
		in.err = err
		return
	}
	tunnel, ok, err := LookupUser(c.Root, c.TunnelUser)
	if err != nil || !ok {
		in.err = fmt.Errorf("operator user %s: tunnel user %s: %v", name, c.TunnelUser, errOr(err, "no such user"))
		return
	}
	hadGroup, err := HasGroup(c.Root, name)
	if err != nil {
		in.err = err
		return
	}
	group := ""
	if hadGroup {
		group = name
	}
	if err := c.run(ctx, "useradd", OperatorUserArgs(c.Root, name, tunnel.UID, group)...); err != nil {
		in.err = fmt.Errorf("creating operator user %s: %w", name, err)
		return
	}
	if !hadGroup {
		in.record(Step{Kind: KindGroup, Path: name}, "created group %s", name)
	}
	in.record(Step{Kind: KindUser, Path: name}, "created user %s (uid %d, the tunnel user's)", name, tunnel.UID)
	if in.err == nil {
		if err := c.run(ctx, "usermod", append(prefixArgs(c.Root), "-p", "*", name)...); err != nil {
			in.err = fmt.Errorf("setting the password field of %s to '*': %w", name, err)
		}
	}
}

// run runs a system tool in the C locale, so that its messages, which
// errors carry, read the same everywhere.
func (c *Config) run(ctx context.Context, name string, args ...string) error {
	cmd := process.Command(name, args...)
	cmd.Env = []string{"LC_ALL=C"}
	_, err := c.Runner.Run(ctx, cmd)
	return err
}

func prefixArgs(root string) []string {
	if root == "/" {
		return nil
	}
	return []string{"--prefix", root}
}

// dir creates a directory (and records it) or brings an existing one to the
// owner and mode given; root-owned dirs on the hook's path must not stay
// group/world-writable.
func (in *installer) dir(p string, mode os.FileMode, owner string) {
	if in.err != nil {
		return
	}
	c := in.c
	uid, gid := 0, 0
	if owner != "root" {
		u, ok, err := LookupUser(c.Root, owner)
		if err != nil || !ok {
			in.err = fmt.Errorf("owner %s of %s: %v", owner, p, errOr(err, "no such user"))
			return
		}
		uid, gid = u.UID, u.GID
	}
	full := c.path(p)
	fi, err := os.Stat(full) // an admin's link (to another disk) is followed, as the slave does
	created := errors.Is(err, fs.ErrNotExist)
	if err == nil {
		// Check before changing: a directory another account owns (or a
		// file) is not taken over, and is left as it is.
		st, _ := fi.Sys().(*syscall.Stat_t)
		switch {
		case !fi.IsDir():
			in.err = fmt.Errorf("%s exists and is not a directory (%s); left as it is: remove it or move it away, then install again", p, fi.Mode().Type())
			return
		case st != nil && st.Uid != 0 && int(st.Uid) != uid:
			in.err = fmt.Errorf("%s exists and is owned by uid %d, neither root nor %s: mas4h takes over no directory another account owns, and left it as it is; "+
				"if it is meant for mas4h, chown %s %s and install again", p, st.Uid, owner, owner, p)
			return
		}
	}
	if created {
		if in.parents(filepath.Dir(p)); in.err != nil {
			return
		}
		if err := os.Mkdir(full, mode); err != nil {
			in.err = err
			return
		}
	} else if err != nil {
		in.err = err
		return
	}
	if err := os.Chown(full, uid, gid); err != nil {
		in.err = err
		return
	}
	if err := os.Chmod(full, mode); err != nil {
		in.err = err
		return
	}
	if created {
		in.record(Step{Kind: KindDir, Path: p}, "created %s (%s, %04o)", p, owner, mode)
	} else {
		fmt.Fprintf(c.Out, "%s exists (now %s, %04o)\n", p, owner, mode)
	}
}

// parents creates the missing directories of p (a path on the target),
// root-owned 0755, recording each so that uninstall removes them again.
func (in *installer) parents(p string) {
	if in.err != nil || p == "/" || p == "." {
		return
	}
	full := in.c.path(p)
	if _, err := os.Lstat(full); err == nil {
		return
	}
	if in.parents(filepath.Dir(p)); in.err != nil {
		return
	}
	if err := os.Mkdir(full, 0o755); err != nil {
		in.err = err
		return
	}
	in.record(Step{Kind: KindDir, Path: p}, "created %s", p)
}

func errOr(err error, s string) string {
	if err != nil {
		return err.Error()
	}
	return s
}

// conf writes a role's config file. An existing one is kept when no flags
// were given (given false). With flags it is replaced, unless it says
// exactly this already: a file of this installation's own, unedited, is
// rewritten; any other (the package's, one made or edited by hand) is first
// moved aside to NAME.conf.mas4h-old (or .mas4h-old.N), and said so —
// never silently kept.
func (in *installer) conf(p string, data []byte, given bool) {
	if in.err != nil {
		return
	}
	full := in.c.path(p)
	old, err := os.ReadFile(full)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if err := atomicfile.Write(full, data, 0o644); err != nil {
			in.err = err
			return
		}
		in.record(Step{Kind: KindFile, Path: p, SHA256: sum(data)}, "wrote %s", p)
		return
	case err != nil:
		in.err = err
		return
	case !given:
		fmt.Fprintf(in.c.Out, "%s exists, kept (give the role's flags, or --args, to replace it)\n", p)
		return
	case bytes.Equal(old, data):
		fmt.Fprintf(in.c.Out, "%s says this already\n", p)
		return
	}
	own := -1
	for i, s := range in.m.Created {
		if (s.Kind == KindFile || s.Kind == KindReplaced) && s.Path == p {
			own = i
		}
	}
	if own >= 0 && in.m.Created[own].SHA256 == sum(old) {
		if err := atomicfile.Write(full, data, 0o644); err != nil {
			in.err = err
			return
		}
		in.m.Created[own].SHA256 = sum(data)
		in.record(in.m.Created[own], "rewrote %s with the flags given", p)
		return
	}
	backup := p + BackupSuffix
	for n := 1; ; n++ {
		if _, err := os.Lstat(in.c.path(backup)); errors.Is(err, fs.ErrNotExist) {
			break
		}
		backup = fmt.Sprintf("%s%s.%d", p, BackupSuffix, n)
	}
	if err := os.Link(full, in.c.path(backup)); err != nil {
		in.err = fmt.Errorf("keeping %s as %s: %w", p, backup, err)
		return
	}
	if err := atomicfile.Write(full, data, 0o644); err != nil {
		os.Remove(in.c.path(backup))
		in.err = err
		return
	}
	if own >= 0 {
		// Ours, but edited since: the edit is the operator's, kept.
		in.m.Created[own].SHA256 = sum(data)
		in.record(Step{Kind: KindBackup, Path: backup}, "replaced %s (edited since install) with the flags given; the edited one is kept as %s", p, backup)
		return
	}
	in.record(Step{Kind: KindReplaced, Path: p, SHA256: sum(data), Backup: backup},
		"replaced %s with the flags given; the old one is kept as %s (uninstall puts it back)", p, backup)
}

// secret installs a credential, root's and 0600, replacing an older one:
// a credential given again is a new one, and the old no longer works.
// Uninstall removes it unless it was edited since.
func (in *installer) secret(p string, data []byte) {
	if in.err != nil {
		return
	}
	full := in.c.path(p)
	old, err := os.ReadFile(full)
	if err == nil && bytes.Equal(old, data) {
		fmt.Fprintf(in.c.Out, "%s holds this credential already\n", p)
		return
	}
	if in.parents(filepath.Dir(p)); in.err != nil {
		return
	}
	if err := atomicfile.Write(full, data, 0o600); err != nil { // install runs as root
		in.err = err
		return
	}
	step := Step{Kind: KindFile, Path: p, SHA256: sum(data)}
	for i, s := range in.m.Created {
		if s.Kind == KindFile && s.Path == p {
			in.m.Created[i].SHA256 = step.SHA256 // ours, replaced
		}
	}
	in.record(step, "wrote %s (the slave's credential, mode 0600)", p)
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// DefaultAgentBin is the standalone agent the agent's unit runs.
const DefaultAgentBin = "/usr/bin/mas4h-agent"

// UnitText is a unit file with the mas4h binary's path set to bin; with
// agentBin empty, the agent's unit runs `bin agent` (same flags) instead of
// the standalone mas4h-agent.
func UnitText(units fs.FS, name, bin, agentBin string) ([]byte, error) {
	b, err := fs.ReadFile(units, name)
	if err != nil {
		return nil, err
	}
	if agentBin == "" {
		b = bytes.ReplaceAll(b, []byte("ExecStart="+DefaultAgentBin+" "), []byte("ExecStart="+bin+" agent "))
	} else if agentBin != DefaultAgentBin {
		b = bytes.ReplaceAll(b, []byte("ExecStart="+DefaultAgentBin+" "), []byte("ExecStart="+agentBin+" "))
	}
	if bin != DefaultBin {
		b = bytes.ReplaceAll(b, []byte("ExecStart="+DefaultBin+" "), []byte("ExecStart="+bin+" "))
	}
	return b, nil
}

// unit writes a unit into /etc/systemd/system, unless a package or `make
// install` already provides it; a unit written before is brought up to date.
func (in *installer) unit(name string) {
	if in.err != nil {
		return
	}
	c := in.c
	if in.units == nil {
		in.units = map[string]bool{}
	}
	for _, d := range vendorUnitDirs {
		if _, err := os.Stat(c.path(filepath.Join(d, name))); err == nil {
			fmt.Fprintf(c.Out, "unit %s is provided by %s\n", name, d)
			in.units[name] = true
			return
		}
	}
	if c.Units == nil {
		in.err = fmt.Errorf("no unit files in this build")
		return
	}
	agentBin := ""
	if _, err := os.Stat(c.path(DefaultAgentBin)); err == nil {
		agentBin = DefaultAgentBin
	}
	data, err := UnitText(c.Units, name, c.Bin, agentBin)
	if errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintf(c.Out, "this build has no %s: not installed\n", name)
		return
	}
	if err != nil {
		in.err = err
		return
	}
	p := filepath.Join(UnitDir, name)
	full := c.path(p)
	old, err := os.ReadFile(full)
	existed := err == nil
	if existed && bytes.Equal(old, data) {
		fmt.Fprintf(c.Out, "unit %s is up to date\n", p)
		in.units[name] = true
		return
	}
	if in.parents(UnitDir); in.err != nil {
		return
	}
	if err := atomicfile.Write(full, data, 0o644); err != nil {
		in.err = err
		return
	}
	in.units[name] = true
	if existed {
		fmt.Fprintf(c.Out, "updated unit %s\n", p)
		return
	}
	in.record(Step{Kind: KindUnit, Path: p}, "wrote unit %s", p)
}

func unitFileOf(unit string) string {
	if i := strings.Index(unit, "@"); i >= 0 {
		return unit[:i+1] + ".service"
	}
	return unit
}

func (in *installer) enable(ctx context.Context, unit string) {
	if in.err != nil || !in.units[unitFileOf(unit)] {
		return
	}
	c := in.c
	if !c.Systemd {
		fmt.Fprintf(c.Out, "systemd is not running here: not enabling %s; once it is, run: systemctl enable --now %s\n", unit, unit)
		return
	}
	if err := c.run(ctx, "systemctl", "daemon-reload"); err != nil {
		in.err = err
		return
	}
	if err := c.run(ctx, "systemctl", "enable", unit); err != nil {
		in.err = err
		return
	}
	in.record(Step{Kind: KindEnable, Path: unit}, "enabled %s (start it with: systemctl start %s)", unit, unit)
}
