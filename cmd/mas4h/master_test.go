package main

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
)

// cli runs mas4h in-process as run() does, with its own output buffers.
func cli(ctx context.Context, stdout, stderr *testkit.Buffer, args ...string) int {
	g := &globals{stdout: stdout, stderr: stderr}
	root := newRootCmd(g)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return exitOK
	}
	fmt.Fprintf(stderr, "mas4h: %s\n", err)
	var ue usageError
	if errors.As(err, &ue) || isCobraUsage(err) {
		return exitUsage
	}
	return exitFail
}

func cliRun(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	var out, errb testkit.Buffer
	code := cli(context.Background(), &out, &errb, args...)
	return out.String(), errb.String(), code
}

// startMasterInProcess runs `mas4h master` in this process on a free port.
func startMasterInProcess(t *testing.T, extra ...string) (url, dir string) {
	t.Helper()
	url, dir, _ = startStoppableMaster(t, extra...)
	return url, dir
}

// startStoppableMaster is startMasterInProcess with stop, which ends the
// master (its port then refuses connections); it may be called more than
// once.
func startStoppableMaster(t *testing.T, extra ...string) (url, dir string, stop func()) {
	t.Helper()
	dir = t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errb testkit.Buffer
	done := make(chan int, 1)
	args := append([]string{"master", "--listen", addr, "--db", filepath.Join(dir, "state", "registry.db")}, extra...)
	go func() { done <- cli(ctx, &out, &errb, args...) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case code := <-done:
				if code != 0 {
					t.Errorf("master exited %d after cancel: %s", code, errb.String())
				}
			case <-time.After(10 * time.Second):
				t.Error("master did not stop on cancel")
			}
		})
	}
	t.Cleanup(stop)
	url = "http://" + addr
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case code := <-done:
			t.Fatalf("master exited %d: %s %s", code, out.String(), errb.String())
		default:
		}
		if resp, err := http.Get(url + "/api/v1/healthz"); err == nil {
			resp.Body.Close()
			if !strings.Contains(out.String(), "admin token file: "+filepath.Join(dir, "state", "admin.token")+" (created)") {
				t.Errorf("master did not print the admin token path: %q", out.String())
			}
			return url, dir, stop
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("master did not come up: %s", errb.String())
	return "", "", nil
}

func writePubKey(t *testing.T, dir string) string {
	t.Helper()
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "device.pub")
	if err := os.WriteFile(path, ssh.MarshalAuthorizedKey(k), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestDeviceCommandsSameOutputWithMasterAndDB(t *testing.T) {
	url, dir := startMasterInProcess(t)
	key := writePubKey(t, dir)
	remote := []string{"--master", url, "--token-file", filepath.Join(dir, "state", "admin.token")}
	local := []string{"--db", filepath.Join(dir, "local.db")}

	run := func(mode []string, args ...string) string {
		t.Helper()
		out, stderr, code := cliRun(t, append(args, mode...)...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", args, code, stderr)
		}
		return out
	}
	// Times differ between the two registries; everything else must not.
	norm := func(s string) string {
		var lines []string
		for _, l := range strings.Split(s, "\n") {
			if strings.Contains(l, "created") || strings.Contains(l, "updated_at") {
				continue
			}
			lines = append(lines, l)
		}
		return strings.Join(lines, "\n")
	}
	for _, args := range [][]string{
		{"device", "add", "pi-1", "--key", key, "--forward", "ssh=localhost:22", "--forward", "web=127.0.0.1:80,probe=http",
			"--forward", "db=[0:0::1]:05432,probe=none"}, // to the master as parsed: [::1]:5432
		{"device", "list"},
		{"device", "list", "-o", "json"},
		{"device", "show", "pi-1", "-o", "json"},
		{"device", "revoke", "pi-1"},
		{"device", "show", "pi-1"},
		{"device", "rm", "pi-1", "-o", "json"},
		{"device", "list", "-o", "json"},
	} {
		r, l := run(remote, args...), run(local, args...)
		if norm(r) != norm(l) {
			t.Errorf("%v: output differs\n--master:\n%s\n--db:\n%s", args, r, l)
		}
	}

	// The environment stands in for the flags.
	t.Setenv("MAS4H_MASTER", url)
	t.Setenv("MAS4H_TOKEN_FILE", filepath.Join(dir, "state", "admin.token"))
	if out, stderr, code := cliRun(t, "device", "list", "-o", "json"); code != 0 || strings.TrimSpace(out) != "[]" {
		t.Errorf("device list from the environment: %d %q %s", code, out, stderr)
	}
	// --db beats $MAS4H_MASTER.
	if _, stderr, code := cliRun(t, "device", "list", "--db", filepath.Join(dir, "local.db")); code != 0 {
		t.Errorf("--db with MAS4H_MASTER set: exit %d: %s", code, stderr)
	}
}

func TestDeviceAndStatusUsageErrors(t *testing.T) {
	t.Chdir(t.TempDir()) // nothing may be created here (a --db URL once made a directory "postgres:")
	t.Setenv("MAS4H_MASTER", "")
	t.Setenv("MAS4H_TOKEN_FILE", "")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"device", "list"}, "--master URL"},
		{[]string{"device", "list", "--db", "x.db", "--master", "http://127.0.0.1:1"}, "not both"},
		{[]string{"device", "list", "--master", "http://127.0.0.1:1"}, "--token-file"},
		{[]string{"status"}, "--master URL"},
		{[]string{"status", "--master", "ftp://x", "--token-file", "x"}, ""},
		{[]string{"master", "--validator", "http://insecure.example/check"}, "https"},
		{[]string{"master", "--validator", "exec:/nonexistent/validator"}, "nonexistent"},
		{[]string{"master", "--tls-cert", "c.pem"}, "go together"},
		{[]string{"master", "--port-range", "5-1"}, "port range"},
		{[]string{"master", "--slot-burst", "0"}, "slot-burst"},
		{[]string{"master", "--db", "mysql://mas4h@127.0.0.1/fleet"}, "is not a registry this build knows"},
		{[]string{"slave", "--name", "s1", "--db", "postgres://127.0.0.1:1/fleet"}, "through a master"},
		{[]string{"slave", "--name", "s1", "--db", "x.db", "--keepalive", "1500ms"}, "--keepalive must be whole seconds"},
		{[]string{"slave", "--name", "s1", "--db", "x.db", "--keepalive", "0s"}, "--keepalive must be whole seconds"},
		{[]string{"slave", "--name", "-s1", "--db", "x.db"}, "slave name must be"},
		{[]string{"slave", "--name", "s1", "--db", "x.db", "--newest-wins", "sometimes"}, "--newest-wins must be"},
		{[]string{"slave", "--name", "s1", "--db", "x.db", "--guard-ports", "30000"}, "--guard-ports: port range must be LO-HI"},
		{[]string{"slave", "--name", "s1", "--db", "x.db", "--guard-ports", "3-1"}, "--guard-ports"},
		{[]string{"slave", "--name", "s1", "--db", "x.db", "--probe-interval", "2s", "--probe-timeout", "3s"}, "must be shorter"},
	} {
		_, stderr, code := cliRun(t, tc.args...)
		if tc.args[0] == "status" && len(tc.args) > 1 {
			// A missing token file is an operational error, checked before the URL.
			if code == 0 {
				t.Errorf("%v: exit 0", tc.args)
			}
			continue
		}
		if code != exitUsage || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 mentioning %q", tc.args, code, stderr, tc.want)
		}
	}
	if ents, _ := os.ReadDir("."); len(ents) != 0 {
		t.Errorf("usage errors left %v behind", ents)
	}
}

func TestStatusCommand(t *testing.T) {
	url, dir := startMasterInProcess(t, "--heartbeat-interval", "1s")
	tokenFile := filepath.Join(dir, "state", "admin.token")
	credFile := filepath.Join(dir, "s1.token")
	if _, stderr, code := cliRun(t, "slave", "add", "s1", "--token-file-out", credFile, "--master", url, "--token-file", tokenFile); code != 0 {
		t.Fatalf("slave add: %d %s", code, stderr)
	}
	slaveTok, err := os.ReadFile(credFile)
	if err != nil {
		t.Fatal(err)
	}
	hb, _ := json.Marshal(wire.Heartbeat{Host: "192.0.2.1", Port: 2222, User: "mas4h-tunnel", Capacity: 200,
		Tunnels: []wire.Tunnel{{Device: "d1", Forward: "ssh", Port: 20000}}})
	req, _ := http.NewRequest("POST", url+"/api/v1/slaves/s1/heartbeat", bytes.NewReader(hb))
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(slaveTok)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("heartbeat: %v %v", resp, err)
	}
	resp.Body.Close()

	out, stderr, code := cliRun(t, "status", "--master", url, "--token-file", tokenFile)
	if code != 0 {
		t.Fatalf("status: %d %s", code, stderr)
	}
	for _, want := range []string{"SLAVE", "s1", "192.0.2.1:2222", "yes", "1/200", "0.5%", "s ago", "devices: 0 total"} {
		if !strings.Contains(out, want) {
			t.Errorf("status table lacks %q:\n%s", want, out)
		}
	}
	out, _, code = cliRun(t, "status", "-o", "json", "--master", url, "--token-file", tokenFile)
	var st wire.Status
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Slaves) != 1 || st.Slaves[0].Tunnels != 1 || !st.Slaves[0].Alive {
		t.Errorf("status -o json: %d %s", code, out)
	}

	// A dead master: one line, exit 1.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	dead := "http://" + ln.Addr().String()
	ln.Close()
	out, stderr, code = cliRun(t, "status", "--master", dead, "--token-file", tokenFile)
	if code != exitFail || out != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, "master at "+dead+" is unreachable") {
		t.Errorf("dead master: exit %d, stdout %q, stderr %q", code, out, stderr)
	}
}

func TestMasterRefusesLooseTokenFile(t *testing.T) {
	dir := t.TempDir()
	tf := filepath.Join(dir, "admin.token")
	os.WriteFile(tf, []byte(strings.Repeat("x", 40)), 0o644)
	os.Chmod(tf, 0o644)
	_, stderr, code := cliRun(t, "master", "--listen", "127.0.0.1:0", "--db", filepath.Join(dir, "r.db"), "--admin-token-file", tf)
	if code != exitFail || !strings.Contains(stderr, "chmod 600") {
		t.Errorf("loose token file: exit %d, %s", code, stderr)
	}
	_, stderr, code = cliRun(t, "status", "--master", "http://127.0.0.1:1", "--token-file", tf)
	if code != exitFail || !strings.Contains(stderr, "chmod 600") {
		t.Errorf("status with a loose token file: exit %d, %s", code, stderr)
	}
}

// An admin command to a plain-http master beyond the loopback warns (the
// admin token would cross the network in clear); https and the loopback do
// not. Only the client is built: no request leaves.
func TestAdminClientWarnsOfCleartext(t *testing.T) {
	tf := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tf, []byte("0123456789abcdef0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for u, warn := range map[string]bool{
		"http://master.example.net:8080":  true,
		"https://master.example.net:8080": false,
		"http://127.0.0.1:8080":           false,
	} {
		var errb testkit.Buffer
		m := masterFlags{master: u, tokenFile: tf}
		if _, err := m.client(&globals{stderr: &errb}); err != nil {
			t.Fatalf("%s: %v", u, err)
		}
		if got := strings.Contains(errb.String(), "warning: "+u+" is plain http"); got != warn {
			t.Errorf("%s: warned %v, want %v (%q)", u, got, warn, errb.String())
		}
	}
}
