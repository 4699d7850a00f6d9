// Package doctor checks whether a host can run a mas4h role — OpenSSH's
// version, the tunnel user, the hook's path ownership, sshd's directory,
// netfilter's cluster match, free ports, the master's reachability and
// clock skew, the device's SSH client — and says, for each check that is
// not ok, how to fix it.
// It reads the system through relocatable roots and small seams, so every
// check runs against fixtures in tests.
package doctor

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mas4h/mas4h/install"
	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/process"
	"github.com/mas4h/mas4h/sshd"
	"github.com/mas4h/mas4h/sshd/sshdversion"
	"github.com/mas4h/mas4h/sshd/statedir"
	"github.com/mas4h/mas4h/sshd/statedir/nofollow"
	"golang.org/x/sys/unix"
)

// Status of a check.
type Status string

// Statuses, from good to bad.
const (
	OK   Status = "ok"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Result is one check's verdict.
type Result struct {
	Role   string `json:"role"` // "master", "agent" or "slave NAME"
	Check  string `json:"check"`
	Status Status `json:"status"`
	Detail string `json:"detail"`
	Fix    string `json:"fix,omitempty"`
}

// Config says what to check. Zero values mean the defaults of the daemons.
type Config struct {
	Role string // master, slave or agent

	// Slave.
	Name       string
	StateDir   string
	TunnelUser string
	SSHListen  string
	SSHDPath   string

	// Master.
	Listen string
	DB     string

	// Agent.
	KeyPath string

	// Master is the master's URL, or several (URL,URL…), each checked
	// (slave and agent: reachability and clock).
	Master string

	// Root is the file system root for /etc and /lib/modules ("/").
	Root     string
	ProcRoot string // "/proc"

	HTTP   *http.Client
	Now    func() time.Time
	Runner Runner
}

// Runner runs and finds programs: process.Exec on a real host.
type Runner interface {
	Run(ctx context.Context, c process.Cmd) ([]byte, error)
	LookPath(name string) (string, error)
}

func (c *Config) defaults() {
	if c.Root == "" {
		c.Root = "/"
	}
	if c.ProcRoot == "" {
		c.ProcRoot = "/proc"
	}
	if c.TunnelUser == "" {
		c.TunnelUser = install.DefaultTunnelUser
	}
	if c.SSHListen == "" {
		c.SSHListen = "0.0.0.0:2222"
	}
	if c.SSHDPath == "" {
		c.SSHDPath = "/usr/sbin/sshd"
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8080"
	}
	if c.DB == "" {
		c.DB = filepath.Join(install.StateRoot, "registry.db")
	}
	if c.StateDir == "" && c.Name != "" {
		c.StateDir = statedir.Default(c.Name)
	}
	if c.HTTP == nil {
		c.HTTP = &http.Client{Timeout: 5 * time.Second}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Runner == nil {
		c.Runner = process.Exec{}
	}
}

// Run runs the checks of c.Role.
func Run(ctx context.Context, c Config) []Result {
	c.defaults()
	r := &report{role: c.Role}
	if c.Role == "slave" && c.Name != "" {
		r.role = "slave " + c.Name
	}
	switch c.Role {
	case "master":
		checkMasterPort(ctx, &c, r)
		checkRegistry(&c, r)
	case "slave":
		checkOpenSSH(ctx, &c, r)
		checkTunnelUser(&c, r)
		checkHookPath(&c, r)
		checkKeysFile(&c, r)
		checkSSHDDir(&c, r)
		checkSSHPort(&c, r)
		checkNetfilter(ctx, &c, r)
		if c.Master != "" {
			checkMasters(ctx, &c, r)
		}
	case "agent":
		checkSSHClient(&c, r)
		checkKey(&c, r)
		if c.Master != "" {
			checkMasters(ctx, &c, r)
		} else {
			r.add("master", Warn, "no master URL given", "pass --master URL (or set it in /etc/mas4h/agent.conf)")
		}
	default:
		r.add("role", Fail, fmt.Sprintf("unknown role %q", c.Role), "use master, slave or agent")
	}
	return r.results
}

// Failed says whether any result is a failure.
func Failed(results []Result) bool {
	for _, r := range results {
		if r.Status == Fail {
			return true
		}
	}
	return false
}

type report struct {
	role    string
	results []Result
}

func (r *report) add(check string, st Status, detail, fix string) {
	if st == OK {
		fix = ""
	}
	r.results = append(r.results, Result{Role: r.role, Check: check, Status: st, Detail: detail, Fix: fix})
}

// checkOpenSSH: the slave's authorized_keys lines use permitlisten (7.8);
// the rest of what the slave renders follows the release (sshdversion).
func checkOpenSSH(ctx context.Context, c *Config, r *report) {
	const fix = "install OpenSSH's server 7.8 or newer: apt-get install openssh-server"
	if _, err := os.Stat(c.SSHDPath); err != nil {
		r.add("openssh", Fail, fmt.Sprintf("no sshd at %s", c.SSHDPath), fix)
		return
	}
	// sshd prints its version on stderr, and exits 1 on old releases.
	version := process.Command(c.SSHDPath, "-V")
	version.Combined = true
	out, _ := c.Runner.Run(ctx, version)
	v, err := sshdversion.Parse(out)
	if err != nil {
		r.add("openssh", Fail, fmt.Sprintf("%s -V did not say an OpenSSH version: %q", c.SSHDPath, strings.TrimSpace(string(out))), fix)
		return
	}
	if !v.AtLeast(7, 8) {
		r.add("openssh", Fail, v.String()+": too old for permitlisten (needs 7.8), which confines each device to its own ports", fix)
		return
	}
	detail := v.String() + " (has permitlisten, restrict, AuthorizedKeysCommand)"
	if f := sshdversion.For(v); f.PerSourcePenalties {
		detail += "; the slave's sshd_config sets its own PerSourcePenalties policy, so that one address's failures do not lock out the devices behind it"
	}
	r.add("openssh", OK, detail, "")
}

func checkTunnelUser(c *Config, r *report) {
	u := c.TunnelUser
	acct, ok, err := install.LookupUser(c.Root, u)
	switch {
	case err != nil:
		r.add("tunnel user", Fail, err.Error(), "")
		return
	case !ok:
		r.add("tunnel user", Warn, fmt.Sprintf("%s does not exist yet; a slave run by hand creates it, but under systemd /etc is read-only", u),
			fmt.Sprintf("mas4h install slave %s (or: useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin %s && usermod -p '*' %s)", nameOr(c.Name), u, u))
		return
	case acct.UID == 0:
		r.add("tunnel user", Fail, fmt.Sprintf("%s has uid 0", u), "use an unprivileged system user as --tunnel-user")
		return
	}
	if _, err := sshd.CheckTunnelAccount(c.Root, u); err != nil {
		var tu *sshd.TunnelUserError
		if errors.As(err, &tu) {
			r.add("tunnel user", Fail, fmt.Sprintf("%s %s: the slave refuses it (devices log in as it, its sshd runs as it)", u, tu.Why),
				"omit --tunnel-user (the slave uses mas4h-tunnel), or create a dedicated account: useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin NAME && usermod -p '*' NAME")
		} else {
			r.add("tunnel user", Fail, err.Error(), "")
		}
		return
	}
	pw, found, err := install.PasswordField(c.Root, u)
	switch {
	case err != nil && errors.Is(err, os.ErrPermission):
		r.add("tunnel user", Warn, fmt.Sprintf("%s exists (uid %d); cannot read /etc/shadow to check its password field", u, acct.UID), "run mas4h doctor as root")
	case err != nil:
		r.add("tunnel user", Warn, fmt.Sprintf("%s exists (uid %d); %v", u, acct.UID, err), "")
	case !found:
		r.add("tunnel user", Warn, fmt.Sprintf("%s exists (uid %d) but has no /etc/shadow entry", u, acct.UID), "pwconv; usermod -p '*' "+u)
	case strings.HasPrefix(pw, "!"):
		r.add("tunnel user", Fail, fmt.Sprintf("%s is locked (password field starts with '!'): sshd refuses every login to a locked account", u), "usermod -p '*' "+u)
	case pw == "":
		r.add("tunnel user", Warn, fmt.Sprintf("%s has an empty password field", u), "usermod -p '*' "+u)
	default:
		r.add("tunnel user", OK, fmt.Sprintf("%s (uid %d), not locked", u, acct.UID), "")
	}
}

func nameOr(n string) string {
	if n == "" {
		return "NAME"
	}
	return n
}

// checkHookPath applies sshd's rule for an AuthorizedKeysCommand to the hook
// (or, before the slave's first start, to the state dir or its nearest
// existing parent): every component root-owned, not group/world-writable.
func checkHookPath(c *Config, r *report) {
	if c.StateDir == "" {
		r.add("hook path", Warn, "no slave name or --state-dir given: hook path not checked", "mas4h doctor slave NAME")
		return
	}
	dir := c.path(c.StateDir)
	target := filepath.Join(dir, "bin", "mas4h")
	what := "hook " + target
	if _, err := os.Stat(target); err != nil {
		target = dir
		what = "state dir " + dir + " (no hook installed yet)"
		for {
			if _, err := os.Stat(target); err == nil || target == "/" {
				break
			}
			target = filepath.Dir(target)
			what = "nearest existing parent " + target + " of the state dir " + dir
		}
	}
	if checkSSHDPath(r, "hook path", target, what, "sshd refuses an AuthorizedKeysCommand below it",
		"chown root:root %[1]s && chmod go-w %[1]s, or use a state dir below /var/lib/mas4h") {
		r.add("hook path", OK, what+": root-owned and not group/world-writable up to /", "")
	}
}

// checkSSHDPath reports a Fail finding when path, or a directory above it,
// is not one sshd's StrictModes accepts, and returns whether it is. fix is a
// format with the offending component as %[1]s.
func checkSSHDPath(r *report, check, path, what, consequence, fix string) bool {
	err := sshd.CheckRootOwnedPath(path)
	var unsafe *sshd.UnsafePathError
	switch {
	case errors.As(err, &unsafe):
		r.add(check, Fail, fmt.Sprintf("%s: %s %s; %s", what, unsafe.Component, unsafe.Why, consequence), fmt.Sprintf(fix, unsafe.Component))
	case err != nil:
		r.add(check, Fail, err.Error(), "")
	default:
		return true
	}
	return false
}

// checkKeysFile looks at the slave's keys file (its default; none with
// --keys-file=false, which its sshd_config says): sshd ignores one that is
// not root-owned or is writable by others, and every device then costs two
// hook runs again.
func checkKeysFile(c *Config, r *report) {
	if c.StateDir == "" {
		return
	}
	dir := statedir.Dir(c.path(c.StateDir))
	path := dir.KeysFile()
	named := keysFileNamed(dir.SSHDConfig())
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if named {
			r.add("keys file", Warn, fmt.Sprintf("sshd_config names %s but it does not exist: every login runs the hook", path),
				"start the slave (it writes the file), or check its log for why it could not")
		}
		return // hook only (--keys-file=false), or a slave that never ran
	}
	if err != nil {
		r.add("keys file", Fail, err.Error(), "")
		return
	}
	if !checkSSHDPath(r, "keys file", path, path, "sshd ignores the file and every login runs the hook",
		"chown root %[1]s && chmod go-w %[1]s (the slave rewrites the file with the right owner on its next change)") {
		return
	}
	n := 0
	for _, l := range strings.Split(string(data), "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			n++
		}
	}
	r.add("keys file", OK, fmt.Sprintf("%s: %d devices sshd finds without the hook", path, n), "")
}

// checkSSHDDir compares sshd's directory in the state dir with the layout
// in which the tunnel user can replace nothing (package nofollow), without
// changing or following anything: the older layout (the tunnel user's) is
// migrated at the slave's next start; a link or a hard link where a file
// should be makes the slave refuse to start.
func checkSSHDDir(c *Config, r *report) {
	if c.StateDir == "" {
		return
	}
	dir := statedir.Dir(c.path(c.StateDir))
	uid := -1
	if acct, ok, err := install.LookupUser(c.Root, c.TunnelUser); err == nil && ok {
		uid = acct.UID
	}
	problems := nofollow.Inspect(dir, uid)
	if len(problems) == 0 {
		if _, err := os.Lstat(dir.SSHD()); err == nil {
			r.add("sshd dir", OK, dir.SSHD()+": root's; the tunnel user can write sshd's pid file and log but replace nothing", "")
		}
		return
	}
	var unsafe, older []string
	for _, p := range problems {
		if p.Unsafe {
			unsafe = append(unsafe, p.Path+" "+p.Why)
		} else {
			older = append(older, p.Path)
		}
	}
	if len(unsafe) > 0 {
		r.add("sshd dir", Fail, strings.Join(unsafe, "; ")+": the slave refuses to start; the daemon never follows a link there",
			"see where each points and check that file (the tunnel user could write there in older versions), then remove it and start the slave")
		return
	}
	r.add("sshd dir", Warn, "older layout: "+strings.Join(older, ", ")+" owned by the tunnel user, who could replace them",
		"start the slave: it makes them root's (the running sshd and its tunnels stay up)")
}

// keysFileNamed reports whether a slave's sshd_config names a keys file
// (AuthorizedKeysFile other than none).
func keysFileNamed(sshdConfig string) bool {
	b, err := os.ReadFile(sshdConfig)
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "AuthorizedKeysFile "); ok {
			return strings.TrimSpace(v) != "none"
		}
	}
	return false
}

func (c *Config) path(p string) string {
	if c.Root == "/" || strings.HasPrefix(p, c.Root+"/") {
		return p
	}
	return filepath.Join(c.Root, p)
}

// sshdRunning says whether the slave's sshd runs from its pid file.
func sshdRunning(c *Config) (int, bool) {
	if c.StateDir == "" {
		return 0, false
	}
	pid, err := nofollow.ReadPid(statedir.Dir(c.StateDir).PidFile())
	if err != nil {
		return 0, false
	}
	cmdline, err := os.ReadFile(filepath.Join(c.ProcRoot, strconv.Itoa(pid), "cmdline"))
	if err != nil || !strings.Contains(string(cmdline), c.StateDir) {
		return 0, false
	}
	return pid, true
}

func checkSSHPort(c *Config, r *report) {
	pid, running := sshdRunning(c)
	err := portFree(c.SSHListen)
	switch {
	case err == nil && running:
		r.add("ssh port", Warn, fmt.Sprintf("%s is free, but this slave's sshd (pid %d) runs: it listens elsewhere", c.SSHListen, pid), "check --ssh-listen against the slave's sshd_config")
	case err == nil:
		r.add("ssh port", OK, c.SSHListen+" is free", "")
	case running:
		r.add("ssh port", OK, fmt.Sprintf("%s is held by this slave's sshd (pid %d)", c.SSHListen, pid), "")
	default:
		r.add("ssh port", Fail, fmt.Sprintf("%s is in use by another process: %v", c.SSHListen, err),
			fmt.Sprintf("find it with: ss -ltnp 'sport = :%s'; or pick another --ssh-listen", portOf(c.SSHListen)))
	}
}

func portFree(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		if errors.Is(err, unix.EADDRINUSE) {
			return errors.New("address in use")
		}
		return err
	}
	return l.Close()
}

func portOf(addr string) string {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return p
}

// checkNetfilter: the shared VIP needs iptables and the cluster match
// (xt_cluster); a slave without a VIP needs neither, so these only warn.
func checkNetfilter(ctx context.Context, c *Config, r *report) {
	if _, err := c.Runner.LookPath("iptables"); err != nil {
		r.add("netfilter", Warn, "iptables not found (only the shared VIP needs it)", "apt-get install iptables")
		return
	}
	if b, err := os.ReadFile(filepath.Join(c.ProcRoot, "net/ip_tables_matches")); err == nil && hasLine(string(b), "cluster") {
		r.add("netfilter", OK, "iptables and the cluster match (xt_cluster, loaded) for the shared VIP", "")
		return
	}
	if out, err := c.Runner.Run(ctx, process.Command("modinfo", "-n", "xt_cluster")); err == nil && strings.TrimSpace(string(out)) != "" {
		r.add("netfilter", OK, "iptables and the cluster match (xt_cluster, loadable: "+strings.TrimSpace(string(out))+") for the shared VIP", "")
		return
	}
	r.add("netfilter", Warn, "the kernel has no cluster match (xt_cluster): the shared VIP (mas4h netfilter) cannot split by source", "use a kernel with CONFIG_NETFILTER_XT_MATCH_CLUSTER (modprobe xt_cluster), or run without a shared VIP")
}

func hasLine(s, want string) bool {
	for _, l := range strings.Split(s, "\n") {
		if strings.TrimSpace(l) == want {
			return true
		}
	}
	return false
}

// checkMasters checks each master of c.Master (URL[,URL…]): a list the
// slave or agent would refuse fails at once; every master that does not
// answer fails, even when another does (the fleet then runs on fewer).
func checkMasters(ctx context.Context, c *Config, r *report) {
	masters, err := client.ParseMasters(c.Master)
	if err != nil {
		r.add("master", Fail, fmt.Sprintf("--master %q: %v", c.Master, err), "pass --master https://HOST:PORT[,https://HOST:PORT...]")
		return
	}
	for _, m := range masters {
		probe := *c
		probe.Master = m
		if len(masters) == 1 {
			checkMaster(ctx, &probe, r)
			continue
		}
		sub := &report{role: r.role}
		checkMaster(ctx, &probe, sub)
		for _, res := range sub.results {
			if res.Check == "clock" {
				res.Detail = m + ": " + res.Detail
			}
			r.results = append(r.results, res)
		}
	}
}

// checkMaster: reachability of GET /api/v1/healthz and clock skew from its
// Date header (whole seconds, so a skew under 2 s is noise).
func checkMaster(ctx context.Context, c *Config, r *report) {
	url := strings.TrimRight(c.Master, "/") + "/api/v1/healthz"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		r.add("master", Fail, fmt.Sprintf("master URL %q: %v", c.Master, err), "pass --master https://HOST:PORT")
		return
	}
	t0 := c.Now()
	resp, err := c.HTTP.Do(req)
	t1 := c.Now()
	if err != nil {
		r.add("master", Fail, fmt.Sprintf("%s: %v", url, err), "check that the master runs (systemctl status mas4h-master), the URL, and firewalls between here and there")
		return
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		r.add("master", Fail, fmt.Sprintf("%s answered %s", url, resp.Status), "check the URL points at a mas4h master")
		return
	}
	r.add("master", OK, fmt.Sprintf("%s answered in %s", url, t1.Sub(t0).Round(time.Millisecond)), "")
	date, err := http.ParseTime(resp.Header.Get("Date"))
	if err != nil {
		r.add("clock", Warn, "the master sent no Date header: clock skew not checked", "")
		return
	}
	mid := t0.Add(t1.Sub(t0) / 2)
	skew := mid.Sub(date)
	if skew > 0 {
		skew -= time.Second // Date truncates to the second
		skew = max(skew, 0)
	}
	abs := skew
	if abs < 0 {
		abs = -abs
	}
	detail := fmt.Sprintf("this clock is %s %s the master's", abs.Round(time.Second), map[bool]string{true: "ahead of", false: "behind"}[skew >= 0])
	fix := "run NTP on both hosts (apt-get install systemd-timesyncd or chrony)"
	switch {
	case abs <= 5*time.Second:
		r.add("clock", OK, "within 5s of the master's", "")
	case abs <= 5*time.Minute:
		r.add("clock", Warn, detail+" (event times and heartbeat ages will disagree)", fix)
	default:
		r.add("clock", Fail, detail+" (TLS certificates and event times break)", fix)
	}
}

func checkMasterPort(ctx context.Context, c *Config, r *report) {
	err := portFree(c.Listen)
	if err == nil {
		r.add("listen", OK, c.Listen+" is free", "")
		return
	}
	host, port, _ := net.SplitHostPort(c.Listen)
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	probe := *c
	probe.Master = "http://" + net.JoinHostPort(host, port)
	sub := &report{role: r.role}
	checkMaster(ctx, &probe, sub)
	if len(sub.results) > 0 && sub.results[0].Status == OK {
		r.add("listen", OK, c.Listen+" is held by a running mas4h master", "")
		return
	}
	r.add("listen", Fail, fmt.Sprintf("%s is in use by another process: %v", c.Listen, err),
		fmt.Sprintf("find it with: ss -ltnp 'sport = :%s'; or pick another --listen", port))
}

func checkRegistry(c *Config, r *report) {
	db := c.path(c.DB)
	dir := filepath.Dir(db)
	if _, err := os.Stat(dir); err != nil {
		r.add("registry", Warn, fmt.Sprintf("%s does not exist yet (the master creates it)", dir), "mas4h install master")
		return
	}
	if _, err := os.Stat(db); err != nil {
		r.add("registry", OK, fmt.Sprintf("%s will be created at first start", db), "")
	} else {
		r.add("registry", OK, db, "")
	}
	for _, tok := range []string{"admin.token", "slave.token"} {
		p := filepath.Join(dir, tok)
		fi, err := os.Stat(p)
		if err != nil {
			continue
		}
		if fi.Mode().Perm()&0o077 != 0 {
			r.add("tokens", Fail, fmt.Sprintf("%s has mode %04o: others can read a bearer token", p, fi.Mode().Perm()), "chmod 600 "+p)
			return
		}
	}
	r.add("tokens", OK, "token files, where present, are mode 0600", "")
}

func checkSSHClient(c *Config, r *report) {
	var found []string
	for _, n := range []string{"ssh", "dbclient"} {
		if p, err := c.Runner.LookPath(n); err == nil {
			found = append(found, p)
		}
	}
	if len(found) == 0 {
		r.add("ssh client", Fail, "neither OpenSSH's ssh nor dropbear's dbclient is installed", "apt-get install openssh-client (or dropbear-bin; opkg install dropbear on OpenWrt)")
		return
	}
	r.add("ssh client", OK, strings.Join(found, ", "), "")
}

func checkKey(c *Config, r *report) {
	if c.KeyPath == "" {
		r.add("key", Warn, "no --key given: not checked", "pass --key FILE (the device's private key)")
		return
	}
	fi, err := os.Stat(c.path(c.KeyPath))
	switch {
	case err != nil:
		r.add("key", Fail, err.Error(), "generate one: ssh-keygen -t ed25519 -N '' -f "+c.KeyPath+", and enrol its .pub with mas4h device add")
	case fi.Mode().Perm()&0o077 != 0:
		r.add("key", Fail, fmt.Sprintf("%s has mode %04o: ssh refuses a private key others can read", c.KeyPath, fi.Mode().Perm()), "chmod 600 "+c.KeyPath)
	default:
		r.add("key", OK, c.KeyPath, "")
	}
}
