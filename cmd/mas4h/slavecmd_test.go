package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// heartbeatWith sends one heartbeat as slave with the credential in
// credFile, presenting hostKey.
func heartbeatWith(t *testing.T, url, slave, credFile, hostKey string) int {
	t.Helper()
	tok, err := os.ReadFile(credFile)
	if err != nil {
		t.Fatal(err)
	}
	hb, _ := json.Marshal(wire.Heartbeat{Host: "192.0.2.1", Port: 2222, User: "mas4h-tunnel", Capacity: 10, HostKeys: []string{hostKey}})
	req, _ := http.NewRequest("POST", url+"/api/v1/slaves/"+slave+"/heartbeat", bytes.NewReader(hb))
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(tok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestSlaveAdminCommands(t *testing.T) {
	url, dir := startMasterInProcess(t, "--heartbeat-interval", "1s")
	adm := []string{"--master", url, "--token-file", filepath.Join(dir, "state", "admin.token")}
	run := func(args ...string) (string, string, int) {
		t.Helper()
		return cliRun(t, append(args, adm...)...)
	}

	// Printed once, to stdout alone, so that it can be redirected.
	out, stderr, code := run("slave", "add", "s2")
	if code != 0 || !strings.HasPrefix(out, "s2.") || strings.Count(out, "\n") != 1 || !strings.Contains(stderr, "shown once") {
		t.Fatalf("slave add s2: %d %q %q", code, out, stderr)
	}

	f1 := filepath.Join(dir, "s1.token")
	out, stderr, code = run("slave", "add", "s1", "--token-file-out", f1)
	if code != 0 || !strings.Contains(out, f1) {
		t.Fatalf("slave add --token-file-out: %d %q %q", code, out, stderr)
	}
	fi, err := os.Stat(f1)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credential file: %v %v", fi, err)
	}
	first, _ := os.ReadFile(f1)
	if strings.Contains(out, strings.TrimSpace(string(first))) {
		t.Error("the credential written to a file is printed too")
	}

	key := testkit.NewKey(t, "").Public
	if code := heartbeatWith(t, url, "s1", f1, registry.AuthorizedKey(key)); code != 200 {
		t.Fatalf("heartbeat with the written credential: %d", code)
	}
	if code := heartbeatWith(t, url, "s2", f1, registry.AuthorizedKey(key)); code != 403 {
		t.Fatalf("s1's credential as s2: %d", code)
	}

	out, _, code = run("slave", "list")
	if code != 0 || !strings.Contains(out, "CREDENTIAL") || !strings.Contains(out, registry.Fingerprint(key)) ||
		!regexpLine(out, `^s1\s+own\s+yes\s+192\.0\.2\.1:2222`) || !regexpLine(out, `^s2\s+issued\s+-\s+-\s+never`) {
		t.Errorf("slave list:\n%s", out)
	}

	// Re-adding into the same file replaces the credential there; the old
	// one stops working.
	out, stderr, code = run("slave", "add", "s1", "--token-file-out", f1)
	second, _ := os.ReadFile(f1)
	if code != 0 || !strings.Contains(stderr, "no longer works") || bytes.Equal(first, second) {
		t.Fatalf("re-add: %d %q %q", code, out, stderr)
	}
	old := filepath.Join(dir, "old.token")
	os.WriteFile(old, first, 0o600)
	if code := heartbeatWith(t, url, "s1", old, registry.AuthorizedKey(key)); code != 401 {
		t.Errorf("the replaced credential: %d", code)
	}
	// A file that is not this slave's credential is never overwritten, and
	// nothing is issued.
	adminTok := filepath.Join(dir, "state", "admin.token")
	before, _ := os.ReadFile(adminTok)
	for _, f := range []string{adminTok, f1} {
		name := "s3"
		if _, stderr, code := run("slave", "add", name, "--token-file-out", f); code != exitUsage || !strings.Contains(stderr, "is not slave s3's credential") {
			t.Errorf("add s3 into %s: %d %s", f, code, stderr)
		}
	}
	if after, _ := os.ReadFile(adminTok); !bytes.Equal(before, after) {
		t.Fatal("the admin token was overwritten")
	}
	out, _, _ = run("slave", "list", "-o", "json")
	var list []wire.Slave
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 2 {
		t.Fatalf("list -o json (no s3 issued): %v %s", err, out)
	}

	// A new host key is refused until accepted; a wrong fingerprint accepts nothing.
	if code := heartbeatWith(t, url, "s1", f1, registry.AuthorizedKey(key)); code != 200 {
		t.Fatalf("first heartbeat with the new credential: %d", code)
	}
	newKey := testkit.NewKey(t, "").Public
	if code := heartbeatWith(t, url, "s1", f1, registry.AuthorizedKey(newKey)); code != 409 {
		t.Fatalf("new host key: %d", code)
	}
	out, _, _ = run("slave", "list")
	if !regexpLine(out, `^s1\s.*`+regexp.QuoteMeta(registry.Fingerprint(newKey))+` \(\d+s ago\)$`) {
		t.Errorf("pending key not listed:\n%s", out)
	}
	if _, stderr, code := run("slave", "accept-key", "s1", "--fingerprint", registry.Fingerprint(key)); code != exitFail || !strings.Contains(stderr, "nothing accepted") {
		t.Errorf("accept-key with the wrong fingerprint: %d %s", code, stderr)
	}
	if _, stderr, code := run("slave", "accept-key", "s1", "--fingerprint", "md5:x"); code != exitUsage {
		t.Errorf("accept-key with a malformed fingerprint: %d %s", code, stderr)
	}
	out, stderr, code = run("slave", "accept-key", "s1", "--fingerprint", registry.Fingerprint(newKey))
	if code != 0 || !strings.Contains(out, registry.Fingerprint(newKey)) {
		t.Fatalf("accept-key: %d %s %s", code, out, stderr)
	}
	if code := heartbeatWith(t, url, "s1", f1, registry.AuthorizedKey(newKey)); code != 200 {
		t.Errorf("accepted key: %d", code)
	}

	out, _, code = run("slave", "rm", "s1")
	if code != 0 || !strings.Contains(out, "removed slave s1") {
		t.Fatalf("rm: %d %s", code, out)
	}
	if code := heartbeatWith(t, url, "s1", f1, registry.AuthorizedKey(newKey)); code != 401 {
		t.Errorf("a removed slave's credential: %d", code)
	}
	if _, stderr, code := run("slave", "rm", "s1"); code != exitFail || !strings.Contains(stderr, "not found") {
		t.Errorf("rm twice: %d %s", code, stderr)
	}
}

func TestSlaveAdminUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"slave", "add"}, "takes the slave's name"},
		{[]string{"slave", "add", "a", "b"}, "takes the slave's name"},
		{[]string{"slave", "add", "-x-"}, "unknown shorthand"},
		{[]string{"slave", "add", "../s1"}, "slave name must be"},
		{[]string{"slave", "rm"}, "takes the slave's name"},
		{[]string{"slave", "accept-key", "s1", "--fingerprint", "abc"}, "--fingerprint must be SHA256:"},
		{[]string{"slave", "list", "extra"}, "no arguments"},
		{[]string{"slave", "list", "-o", "yaml"}, "-o must be table or json"},
		{[]string{"slave", "add", "s1", "--token-file-out", "/nonexistent/dir/s1.token"}, "does not exist"},
		{[]string{"slave", "add", "s1"}, "no master given"},
		{[]string{"master", "--slave-token-file", "x"}, "only with --allow-shared-slave-token"},
	} {
		_, stderr, code := cliRun(t, tc.args...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, %q; want 2 mentioning %q", tc.args, code, stderr, tc.want)
		}
	}
}

func TestSlaveRefusesAnotherSlavesCredential(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "s2.token")
	os.WriteFile(f, []byte("s2."+strings.Repeat("ab", 32)+"\n"), 0o600)
	_, stderr, code := cliRun(t, "slave", "--name", "s1", "--master", "http://127.0.0.1:1", "--token-file", f, "--state-dir", dir)
	if code != exitUsage || !strings.Contains(stderr, "holds slave s2's credential, not slave s1's") {
		t.Errorf("exit %d: %s", code, stderr)
	}
}

func TestMasterSharedSlaveTokenFlag(t *testing.T) {
	url, dir := startMasterInProcess(t, "--allow-shared-slave-token")
	shared := filepath.Join(dir, "state", "slave.token")
	key := registry.AuthorizedKey(testkit.NewKey(t, "").Public)
	if code := heartbeatWith(t, url, "old", shared, key); code != 200 {
		t.Fatalf("shared token behind the flag: %d", code)
	}
	url2, dir2 := startMasterInProcess(t)
	if _, err := os.Stat(filepath.Join(dir2, "state", "slave.token")); err == nil {
		t.Error("a shared slave token created without the flag")
	}
	if code := heartbeatWith(t, url2, "old", shared, key); code != 401 {
		t.Errorf("a shared token without the flag: %d", code)
	}
}

// regexpLine reports whether a line of out matches re.
func regexpLine(out, re string) bool {
	return regexp.MustCompile("(?m)" + re).MatchString(out)
}

func TestInstallSlaveTakesOnlyItsOwnCredential(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("install refuses to run as non-root before reading its flags")
	}
	dir := t.TempDir()
	other := filepath.Join(dir, "s2.token")
	os.WriteFile(other, []byte("s2."+strings.Repeat("ab", 32)+"\n"), 0o600)
	shared := filepath.Join(dir, "slave.token")
	os.WriteFile(shared, []byte(strings.Repeat("ab", 32)+"\n"), 0o600)
	loose := filepath.Join(dir, "loose.token")
	os.WriteFile(loose, []byte("s1."+strings.Repeat("ab", 32)+"\n"), 0o600)
	os.Chmod(loose, 0o644)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--master", "https://m:8080", "--credential", other}, exitUsage, "is slave s2's, not slave s1's"},
		{[]string{"--master", "https://m:8080", "--credential", shared}, exitUsage, "holds no slave credential"},
		{[]string{"--master", "https://m:8080", "--credential", loose}, exitFail, "chmod 600"},
		{[]string{"--db", "/x.db", "--credential", other}, exitUsage, "--credential goes with --master"},
	} {
		args := append([]string{"install", "slave", "s1", "--root", dir, "--bin", "/usr/bin/mas4h"}, tc.args...)
		_, stderr, code := cliRun(t, args...)
		if code != tc.code || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d %q, want %d mentioning %q", tc.args, code, stderr, tc.code, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "etc")); err == nil {
		t.Error("install went ahead")
	}
}
