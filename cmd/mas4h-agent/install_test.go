package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/process"
)

func programArgs(t *testing.T, d map[string]any) []string {
	t.Helper()
	var args []string
	for _, a := range d["ProgramArguments"].([]any) {
		args = append(args, a.(string))
	}
	return args
}

// `install --print` shows, on any system, the launchd daemon macOS gets:
// a property list plistlib reads, with the agent's flags as given, the
// key's and macOS's state dir by default, started at boot and kept alive.
func TestLaunchdInstallPrint(t *testing.T) {
	out, errs, code := runAgent("install", "--master", "https://m.example:8443", "--master-ca", "/etc/mas4h/ca.pem", "--ssh-client", "openssh", "--print")
	if code != 0 {
		t.Fatalf("install --print: exit %d: %s", code, errs)
	}
	d := testkit.Plist(t, []byte(out))
	want := []string{"/usr/local/libexec/mas4h/mas4h-agent", "--key=/etc/mas4h/agent.key", "--master=https://m.example:8443",
		"--master-ca=/etc/mas4h/ca.pem", "--ssh-client=openssh", "--state-dir=/var/db/mas4h-agent"}
	if got := programArgs(t, d); !reflect.DeepEqual(got, want) {
		t.Errorf("ProgramArguments %q, want %q", got, want)
	}
	for k, v := range map[string]any{"Label": "net.mas4h.agent", "RunAtLoad": true, "KeepAlive": true,
		"StandardErrorPath": "/var/log/mas4h-agent.log", "StandardOutPath": "/var/log/mas4h-agent.log"} {
		if d[k] != v {
			t.Errorf("%s = %#v, want %#v", k, d[k], v)
		}
	}
	// Flags are checked as the agent checks them, before anything is written.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"install", "--print"}, "--master is required"},
		{[]string{"install", "--master", "http://m:8080", "--print"}, "--insecure-http"},
		{[]string{"install", "--master", "https://m:8080", "--ssh-client", "putty", "--print"}, "--ssh-client must be"},
		{[]string{"install", "--master", "https://m:8080", "extra"}, "unexpected arguments"},
	} {
		if out, errs, code := runAgent(tc.args...); code != 2 || !strings.Contains(errs, tc.want) || out != "" {
			t.Errorf("%v: exit %d, stdout %q, stderr %q lacks %q", tc.args, code, out, errs, tc.want)
		}
	}
}

// Off macOS, install and uninstall change nothing and say what to use.
func TestLaunchdInstallNotMacOS(t *testing.T) {
	root := t.TempDir()
	fake := &process.Fake{}
	var out, errb bytes.Buffer
	in := installer{root: root, goos: "linux", self: os.Args[0], run: fake, stdout: &out}
	if code := runInstall(context.Background(), in, []string{"--master", "https://m:8443"}, &errb); code != 1 ||
		!strings.Contains(errb.String(), "`mas4h install agent`") || !strings.Contains(errb.String(), "systemd/mas4h-agent.service") {
		t.Errorf("install on linux: exit %d: %s", code, errb.String())
	}
	errb.Reset()
	if code := runUninstall(context.Background(), in, nil, &errb); code != 1 || !strings.Contains(errb.String(), "on macOS") {
		t.Errorf("uninstall on linux: exit %d: %s", code, errb.String())
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 || len(fake.Calls()) != 0 {
		t.Errorf("install on linux wrote %v and ran %v", ents, fake.Calls())
	}
}

// On macOS (a root dir here, launchctl scripted: there is no launchd on
// Linux) install copies the binary and the plist with the modes launchd
// accepts, boots the old daemon out and the new one in; it refuses a
// directory a user could write; uninstall undoes it and keeps the key.
func TestLaunchdInstallLayout(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("MAS4H_E2E") != "" {
			t.Fatal("MAS4H_E2E is set: this test needs root (root-owned directories)")
		}
		t.Skip("needs root")
	}
	root := t.TempDir()
	os.Chmod(root, 0o755)
	os.MkdirAll(filepath.Join(root, "etc/mas4h"), 0o755)
	testkit.NewKey(t, "mac").Write(t, filepath.Join(root, "etc/mas4h/agent.key"))
	self := filepath.Join(t.TempDir(), "mas4h-agent")
	os.WriteFile(self, []byte("the agent binary"), 0o755)
	fake := &process.Fake{}
	var out, errb bytes.Buffer
	in := installer{root: root, goos: "darwin", self: self, run: fake, stdout: &out}
	ctx := context.Background()

	os.MkdirAll(filepath.Join(root, "usr/local"), 0o777)
	os.Chmod(filepath.Join(root, "usr/local"), 0o777)
	if code := runInstall(ctx, in, []string{"--master", "https://m.example:8443"}, &errb); code != 1 ||
		!strings.Contains(errb.String(), "/usr/local is not root's alone") {
		t.Errorf("install under a world-writable /usr/local: exit %d: %s", code, errb.String())
	}
	if _, err := os.Stat(filepath.Join(root, launchdBin)); err == nil || len(fake.Calls()) != 0 {
		t.Errorf("install under a world-writable /usr/local wrote the binary or ran %v", fake.Calls())
	}
	os.Chmod(filepath.Join(root, "usr/local"), 0o755)

	errb.Reset()
	if code := runInstall(ctx, in, []string{"--master", "https://m.example:8443"}, &errb); code != 0 {
		t.Fatalf("install: exit %d: %s", code, errb.String())
	}
	if b, err := os.ReadFile(filepath.Join(root, launchdBin)); err != nil || string(b) != "the agent binary" {
		t.Errorf("installed binary: %q %v", b, err)
	}
	for p, mode := range map[string]os.FileMode{launchdBin: 0o755, launchdPlist: 0o644} {
		if fi, err := os.Stat(filepath.Join(root, p)); err != nil || fi.Mode().Perm() != mode {
			t.Errorf("%s: %v %v, want mode %04o", p, fi.Mode(), err, mode)
		}
	}
	plist, _ := os.ReadFile(filepath.Join(root, launchdPlist))
	if got := programArgs(t, testkit.Plist(t, plist)); got[0] != launchdBin || got[len(got)-1] != "--state-dir=/var/db/mas4h-agent" {
		t.Errorf("ProgramArguments %q", got)
	}
	var calls []string
	for _, c := range fake.Calls() {
		calls = append(calls, c.String())
	}
	want := []string{"launchctl bootout system/net.mas4h.agent", "launchctl enable system/net.mas4h.agent",
		"launchctl bootstrap system /Library/LaunchDaemons/net.mas4h.agent.plist"}
	if !reflect.DeepEqual(calls, want) {
		t.Errorf("ran %q, want %q", calls, want)
	}
	if !strings.Contains(out.String(), "launchctl print system/net.mas4h.agent") {
		t.Errorf("install said: %s", out.String())
	}

	if code := runUninstall(ctx, in, nil, &errb); code != 0 {
		t.Fatalf("uninstall: exit %d: %s", code, errb.String())
	}
	for _, p := range []string{launchdBin, launchdPlist, filepath.Dir(launchdBin)} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s is still there after uninstall", p)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "etc/mas4h/agent.key")); err != nil {
		t.Errorf("uninstall removed the key: %v", err)
	}
	if c := fake.Calls(); c[len(c)-1].String() != "launchctl bootout system/net.mas4h.agent" {
		t.Errorf("uninstall ran %v", c[len(c)-1])
	}
}
