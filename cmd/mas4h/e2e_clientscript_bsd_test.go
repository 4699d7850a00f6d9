package main

// The client script on a Mac's userland, without a Mac: bash in POSIX mode
// as /bin/sh (what macOS's /bin/sh is), and a PATH of BSD stand-ins that
// refuse GNU-only options and lack what macOS lacks (sha256sum, timeout).

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
)

// bsdTool stands in for a macOS tool: it refuses, like BSD's getopt, the
// GNU-only options (long ones, sed -i without a suffix, date -d, stat -c,
// readlink -f, mktemp without a template, grep -P, head/tail with a
// negative count), notes the refusal in $MAS4H_BSD_LOG, and otherwise runs
// the real tool.
const bsdTool = `#!/bin/sh
name=${0##*/}
refuse() {
	echo "$name: illegal option -- $1" >&2
	echo "$name $*" >>"$MAS4H_BSD_LOG"
	exit 64
}
[ "$name" = mktemp ] && [ $# = 0 ] && refuse "(no template)"
for a in "$@"; do
	[ "$a" = -- ] && break
	case $name:$a in
	*:--?*) refuse "$a" ;;
	sed:-i|sed:-r|sed:-z|sed:-s|sed:-u|sed:-*i*) refuse "$a" ;;
	date:-d*|date:-I*) refuse "$a" ;;
	stat:-c*) refuse "$a" ;;
	readlink:-f|readlink:-e|readlink:-m) refuse "$a" ;;
	grep:-P*|grep:-*P*) refuse "$a" ;;
	head:-n-*|tail:-n+*|head:-c-*) refuse "$a" ;;
	esac
done
for d in /usr/bin /bin /usr/sbin /sbin; do
	[ -x "$d/$name" ] && exec "$d/$name" "$@"
done
echo "$name: not found" >&2
exit 127
`

// bsdPath makes the stand-ins, and links the tools macOS has as they are
// (ssh, ssh-keygen, curl: OpenSSH's and curl's own options; shasum).
func bsdPath(t *testing.T, e *env) string {
	t.Helper()
	dir := filepath.Join(e.dir, "bsd-bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tool := filepath.Join(e.dir, "bsd-tool")
	if err := os.WriteFile(tool, []byte(bsdTool), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range strings.Fields("cat chmod cp cut date dirname basename grep head tail ls mkdir mv nohup od rm sed sleep tr " +
		"stat readlink mktemp wc awk id uname env kill printf echo test") {
		if err := os.Symlink(tool, filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"ssh", "ssh-keygen", "curl", "shasum"} {
		p, err := exec.LookPath(name)
		if err != nil {
			t.Fatal(err)
		}
		os.Symlink(p, filepath.Join(dir, name))
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal(err)
	}
	// bash started as sh runs in POSIX mode, as macOS's /bin/sh does.
	os.Symlink(bash, filepath.Join(dir, "sh"))
	return dir
}

// A Mac-like device (OpenSSH, curl, shasum, BSD userland, bash as sh)
// against a real master and slave on loopback: the script rendered with
// --install launchd prints a launchd plist that plistlib reads with the
// keys launchd needs, brings the tunnel up with its `run` and with `check`
// (which starts `run` once and then leaves it alone), and never passes a
// GNU-only option to a tool.
func TestClientScriptBSDUserland(t *testing.T) {
	e := newEnv(t, "bash", "curl", "ssh-keygen", "shasum", "python3")
	es := startEcho(t)
	m := e.startMaster()
	sp := m.startSlave("s1")
	waitSlavesAlive(t, m, 1)
	dev, k := m.enrol("mac-1", fwd(es))
	script := e.renderScript("mac.sh", "--master", m.url, "--insecure-http", "--device", "mac-1", "--install", "launchd")
	bin := bsdPath(t, e)
	bsdLog := filepath.Join(e.dir, "gnu-only.log")
	os.WriteFile(bsdLog, nil, 0o644)
	state := filepath.Join(e.dir, "state-mac")
	env := []string{"PATH=" + bin, "MAS4H_KEY=" + k.private, "MAS4H_STATE=" + state, "MAS4H_BSD_LOG=" + bsdLog}
	sh := filepath.Join(bin, "sh")
	shell := func(args ...string) (string, string, int) {
		cmd := exec.Command(sh, args...)
		cmd.Env = append(os.Environ(), env...)
		return exitOf(t, cmd, "")
	}

	// The stand-ins have teeth: GNU-only uses fail, macOS's missing tools are missing.
	for _, probe := range []string{"sed -i s/a/b/ " + script, "date -d yesterday", "stat -c %a " + script, "readlink -f " + script,
		"grep --quiet x " + script, "sha256sum " + script, "timeout 1 true"} {
		if _, _, code := shell("-c", probe); code == 0 {
			t.Errorf("the BSD stand-ins let %q through", probe)
		}
	}
	os.WriteFile(bsdLog, nil, 0o644)

	out, errs, code := shell(script, "service")
	if code != 0 {
		t.Fatalf("service: exit %d: %s", code, errs)
	}
	d := testkit.Plist(t, []byte(out))
	var prog []string
	for _, a := range d["ProgramArguments"].([]any) {
		prog = append(prog, a.(string))
	}
	if strings.Join(prog, " ") != "/bin/sh /usr/local/libexec/mas4h/mas4h-client run" || d["Label"] != "net.mas4h.client" ||
		d["RunAtLoad"] != true || d["KeepAlive"] != true || d["StandardErrorPath"] != "/var/log/mas4h-client.log" {
		t.Errorf("the launchd plist:\n%s\nparses to %v", out, d)
	}
	if !strings.Contains(string(mustRead(t, script)), "MAS4H_STATE=${MAS4H_STATE:-'/var/db/mas4h-client'}") {
		t.Error("rendered with --install launchd, the script's state dir is not /var/db/mas4h-client")
	}
	if out, errs, code := shell(script, "pubkey"); code != 0 || strings.TrimSpace(out) != strings.Join(strings.Fields(string(mustRead(t, k.public)))[:2], " ") {
		t.Errorf("pubkey: exit %d: %q %s", code, out, errs)
	}

	start := time.Now()
	sc := e.startDevProc(env, sh, script, "run")
	took := waitRoundTrip(t, sp, dev.Forwards[0].RemotePort, start, 30*time.Second, "script on BSD userland", sc.log)
	t.Logf("BSD userland: tunnel up %s after start", took.Round(time.Millisecond))
	if !sc.log.Contains("client openssh") || sc.log.Contains("unsigned") {
		t.Errorf("script log:\n%s", sc.log)
	}
	if code := sc.stop(10 * time.Second); code != 0 {
		t.Errorf("run exited %d on SIGTERM", code)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return !dialOK(dev.Forwards[0].RemotePort) }, "the tunnel outlived run")

	// check starts run in the background (nohup /bin/sh), once.
	if _, errs, code := shell(script, "check"); code != 0 {
		t.Fatalf("check: exit %d: %s", code, errs)
	}
	pidOf := func() int {
		b, err := os.ReadFile(filepath.Join(state, "pid"))
		if err != nil {
			return 0
		}
		p, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return p
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return pidOf() > 0 }, "check started no run")
	pid := pidOf()
	t.Cleanup(func() {
		kids := childPids(pid)
		syscall.Kill(pid, syscall.SIGKILL)
		for _, k := range kids {
			syscall.Kill(k, syscall.SIGKILL)
		}
	})
	waitRoundTrip(t, sp, dev.Forwards[0].RemotePort, time.Now(), 30*time.Second, "run started by check", &syncBuffer{})
	if _, errs, code := shell(script, "check"); code != 0 || pidOf() != pid {
		t.Errorf("a second check: exit %d (%s), pid %d, want %d still", code, errs, pidOf(), pid)
	}
	syscall.Kill(pid, syscall.SIGTERM)
	testkit.Eventually(t, 10*time.Second, func() bool { return syscall.Kill(pid, 0) != nil }, "run %d did not stop on SIGTERM", pid)

	if b := mustRead(t, bsdLog); len(b) > 0 {
		t.Errorf("the script used GNU-only options:\n%s", b)
	}
}
