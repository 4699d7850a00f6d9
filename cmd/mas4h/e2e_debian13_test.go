package main

// The next OpenSSH generation: Debian 13's (10.x: sshd execs sshd-session
// and sshd-auth, PerSourcePenalties on by default, ML-KEM) runs the tests
// whose outcome depends on the sshd again, in a Debian 13 root that
// mmdebstrap builds from Debian's mirror. The root is kept in
// debian13Cache between runs (rebuilt when its package list changes or it
// is older than a week, so security updates come in), and every run
// overlays it, so runs start from the same root and leave it as it was.
// The tests run in their own mount and network namespaces (only a loopback
// of their own) with this source tree, the Go toolchain and the module
// cache bind-mounted read-only: `go test` builds mas4h in there, against
// Debian 13's gcc and glibc.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// debian13Cache is the well-known dir CI may keep between runs: the
	// root, its stamp, a lock, and the Go build cache of the runs inside.
	debian13Cache  = "/var/cache/mas4h-ci"
	debian13Suite  = "trixie"
	debian13MaxAge = 7 * 24 * time.Hour
	// insideRootEnv is set for the tests inside a root, so that this
	// driver does not run again in there.
	insideRootEnv = "MAS4H_E2E_ROOT"
)

// debian13Packages are what the tests inside use: the slave's sshd and the
// clients, ssh-audit, iproute2 and procps, sqlite3, and gcc with the C
// library for cgo (go-sqlite3).
var debian13Packages = []string{"openssh-server", "openssh-client", "dropbear-bin", "ssh-audit",
	"iproute2", "procps", "sqlite3", "ca-certificates", "gcc", "libc6-dev", "rsync"}

// debian13Tests are the tests run again on Debian 13: every slave-side test
// that starts an sshd — its config and algorithms (and the clients that
// must still connect), what a client learns, the penalties, the refusals
// (each one's reason checked, so that no penalty can pass for the directive
// under test), discovery, liveness and the reaper, newest-wins, revocation,
// sessions, the keys file, the state dir's links, supervision (kill -9 of
// sshd and of the daemon, reload), the master's side of a slave, the agents
// and dropbear. Left to Debian 12 only: the tests of what the root lacks
// (busybox: the shell client; chromium: the dashboard; iptables: VIP and
// rate limits; dpkg-dev, lintian, systemd: the package and units) and the
// long soak of healthy tunnels.
var debian13Tests = []string{
	// e2e_audit, e2e_penalties
	"TestSSHAudit", "TestOldClientsConnect", "TestClientsSeeNoStatePaths", "TestBadNeighbourDoesNotLockOutDevice",
	// e2e_slave
	"TestTunnelComesUpAndCarriesBytes", "TestRefused", "TestRevokeKillsLiveSession", "TestDropbearClient",
	"TestDaemonKill9KeepsTunnels", "TestHookAnswersFromCacheWhileDaemonDown", "TestSSHDKill9IsRestarted",
	"TestHookHostileArguments", "TestRestartWithNewConfigReloadsSSHD",
	// e2e_keysfile
	"TestKeysFileFastPath", "TestKeysFileOff", "TestKeysFileUnderMaster",
	// e2e_tunnels, e2e_liveness: discovery, the reaper, newest-wins
	"TestFrozenClientIsReaped", "TestBrokenForwardIsReaped", "TestNewestWins", "TestNewestWinsLeavesHealthySessionAlone",
	"TestReaperTouchesOnlyItsOwnSessions", "TestTunnelsView", "TestLinkDownIsReaped",
	"TestDeviceLogQuietAtDefaults", "TestFrozenClientFreedAtDefaults", "TestDeadLinkFreedAtDefaults", "TestBrokenForwardingFound",
	// e2e_sessions
	"TestRevokeEndsPortlessSessions", "TestImpostorOnReleasedPortIsEnded", "TestKeyQueriesEndNothing",
	"TestSessionCapRefusesLogins", "TestMasterRevokeRefusesAtOnce",
	// e2e_links
	"TestHostKeyLinkIsNotFollowed", "TestPidFileIsNotTrusted", "TestPidFileAndLogLinksAreNotFollowed",
	"TestStateDirOfAnotherAccountIsLeftAlone", "TestTunnelUserMustBeASystemAccount", "TestOlderLayoutIsMigratedWithTunnelsUp",
	// e2e_master, e2e_slavecreds, e2e_metrics, e2e_opstools: the slave under a master
	"TestMasterSpreadsDevicesAndFailsOver", "TestMasterKill9DropsNoTunnel", "TestMasterDownCachedDeviceStillConnects",
	"TestMasterRevokeKillsSession", "TestExecValidator", "TestExecValidatorThatHangs",
	"TestForgedHeartbeatCannotRedirectDevices", "TestSharedSlaveTokenUpgradePath", "TestMetricsFollowEvents", "TestOperatorTools",
	// e2e_agent: the agent with OpenSSH and with dropbear
	"TestAgentOpenSSH", "TestAgentDropbear",
	// e2e_ops: the slave under exactly its unit's capabilities
	"TestUnitSlaveUnderItsCapabilities",
}

func TestDebian13(t *testing.T) {
	if r := os.Getenv(insideRootEnv); r != "" {
		t.Skipf("already inside the %s root", r)
	}
	requireE2E(t, "mmdebstrap", "unshare", "chroot", "mount", "ip")
	root := cachedRoot(t, "debian13", debian13Suite, debian13Packages)
	goEnv := func(name string) string {
		out, err := exec.Command("go", "env", name).Output()
		if err != nil || strings.TrimSpace(string(out)) == "" {
			t.Fatalf("go env %s: %v", name, err)
		}
		return strings.TrimSpace(string(out))
	}
	src := filepath.Dir(goEnv("GOMOD"))
	start := time.Now()
	out, err := inRoot(t, root, src, goEnv("GOROOT"), goEnv("GOMODCACHE"),
		"go", "test", "./cmd/mas4h", "-count=1", "-v", "-timeout", "40m", "-run", "^("+strings.Join(debian13Tests, "|")+")$")
	took := time.Since(start).Round(time.Second)
	var summary []string
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "--- ") || strings.HasPrefix(l, "ok ") || strings.HasPrefix(l, "FAIL") ||
			strings.Contains(l, "ssh-audit v") || strings.Contains(l, "negotiated") || strings.Contains(l, "healthy device") || strings.Contains(l, "default penalties") {
			summary = append(summary, l)
		}
	}
	if err != nil || t.Failed() || testing.Verbose() {
		t.Logf("go test inside the Debian 13 root (%s):\n%s", took, out)
	}
	if err != nil {
		t.Fatalf("the tests failed on Debian 13 (%s): %v\n%s", took, err, strings.Join(summary, "\n"))
	}
	for _, name := range debian13Tests {
		if !strings.Contains(out, "--- PASS: "+name+" ") {
			t.Errorf("%s did not pass on Debian 13 (skipped?)", name)
		}
	}
	t.Logf("Debian 13: %d tests in %s:\n%s", len(debian13Tests), took, strings.Join(summary, "\n"))
}

// cachedRoot returns the cached mmdebstrap root NAME of suite with
// packages, built or rebuilt first when needed (its package list changed,
// or it is older than a week). It holds a shared lock on it until the test
// ends: a rebuild (exclusive) waits for the runs that use the old one.
func cachedRoot(t *testing.T, name, suite string, packages []string) string {
	t.Helper()
	if err := os.MkdirAll(debian13Cache, 0o755); err != nil {
		t.Fatal(err)
	}
	lock, err := os.OpenFile(filepath.Join(debian13Cache, name+".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lock.Close() })
	root := filepath.Join(debian13Cache, name)
	stampPath := root + ".stamp"
	want := fmt.Sprintf("mmdebstrap --variant=important --include=%s %s", strings.Join(packages, ","), suite)
	fresh := func() bool {
		fi, err := os.Stat(stampPath)
		b, _ := os.ReadFile(stampPath)
		return err == nil && string(b) == want+"\n" && time.Since(fi.ModTime()) < debian13MaxAge
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if !fresh() {
		start := time.Now()
		tmp := root + ".new"
		os.RemoveAll(tmp)
		os.Remove(stampPath)
		args := append(strings.Fields(want), tmp)
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			os.RemoveAll(tmp)
			t.Fatalf("building the %s root: %s: %v\n%s", name, strings.Join(args, " "), err, lastLines(string(out), 30))
		}
		if err := os.RemoveAll(root); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, root); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(stampPath, []byte(want+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("built the %s root in %s", name, time.Since(start).Round(time.Second))
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	return root
}

// inRoot runs argv in root, overlaid (writes go to a throwaway upper dir),
// in new mount and network namespaces (loopback only), chrooted, in src
// cmd/mas4h, with src, goroot and modcache bind-mounted read-only at the
// same paths, and returns what it printed. Processes it leaves behind are
// killed, found by their root.
func inRoot(t *testing.T, root, src, goroot, modcache string, argv ...string) (string, error) {
	t.Helper()
	work, err := os.MkdirTemp("", "mas4h-debian13-")
	if err != nil {
		t.Fatal(err)
	}
	mnt := filepath.Join(work, "mnt")
	for _, d := range []string{"upper", "work", "mnt"} {
		if err := os.Mkdir(filepath.Join(work, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	gocache := filepath.Join(debian13Cache, "debian13-gocache")
	if err := os.MkdirAll(gocache, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		killRooted(t, mnt)
		os.RemoveAll(work)
	})
	env := []string{
		"PATH=" + goroot + "/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=/root", "LANG=C.UTF-8", "TMPDIR=/tmp",
		"GOROOT=" + goroot, "GOCACHE=/var/cache/go-build", "GOMODCACHE=" + modcache,
		"GOFLAGS=-buildvcs=false", "GOPROXY=off", "GOTOOLCHAIN=local",
		"MAS4H_E2E=1", insideRootEnv + "=debian13",
	}
	script := `set -eu
root=$1 work=$2 gocache=$3 src=$4 goroot=$5 modcache=$6 env=$7; shift 7
mnt=$work/mnt
mount -t overlay overlay -o "lowerdir=$root,upperdir=$work/upper,workdir=$work/work" "$mnt"
mount -t proc proc "$mnt/proc"
mount --rbind /sys "$mnt/sys"
mount --rbind /dev "$mnt/dev"
mount -t tmpfs -o mode=0755 tmpfs "$mnt/run"
ro() { mkdir -p "$mnt$1"; mount --bind "$1" "$mnt$1"; mount -o remount,bind,ro "$mnt$1"; }
ro "$src"; ro "$goroot"; ro "$modcache"
mkdir -p "$mnt/var/cache/go-build"
mount --bind "$gocache" "$mnt/var/cache/go-build"
ip link set lo up
exec env -i $env /usr/sbin/chroot "$mnt" /bin/sh -c 'cd "$1" && shift && exec "$@"' sh "$src" "$@"
`
	args := append([]string{"--mount", "--net", "--fork", "--kill-child", "--propagation", "private",
		"/bin/sh", "-c", script, "sh", root, work, gocache, src, goroot, modcache, strings.Join(env, " ")}, argv...)
	cmd := exec.CommandContext(t.Context(), "unshare", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	return out.String(), err
}

// killRooted kills the processes whose root is dir (what a test inside the
// root left running), by pid.
func killRooted(t *testing.T, dir string) {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if r, err := os.Readlink(filepath.Join("/proc", e.Name(), "root")); err == nil && r == dir {
			t.Logf("killing pid %d, left running in the root", pid)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
