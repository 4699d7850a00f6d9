package doctor

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/process"
)

// fixture is a root with one tunnel user whose password field is pw.
func fixture(t *testing.T, pw string) string {
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/bash\nmas4h-tunnel:x:995:994::/nonexistent:/usr/sbin/nologin\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/shadow"), []byte("root:*:1::::::\nmas4h-tunnel:"+pw+":1::::::\n"), 0o640)
	return root
}

func find(t *testing.T, results []Result, check string) Result {
	t.Helper()
	for _, r := range results {
		if r.Check == check {
			return r
		}
	}
	t.Fatalf("no %q check in %+v", check, results)
	return Result{}
}

// fakeHost has an sshd that says version, and no other program.
func fakeHost(version string) *process.Fake {
	return &process.Fake{
		Paths: map[string]string{},
		Handle: func(c process.Cmd) ([]byte, error) {
			if strings.HasSuffix(c.Argv[0], "sshd") && c.Combined {
				return []byte(version + ", OpenSSL 3.0.0\n"), nil
			}
			return nil, process.Exit(127, c.Argv[0]+": not found")
		},
	}
}

func TestSlaveChecks(t *testing.T) {
	sshdBin := filepath.Join(t.TempDir(), "sshd")
	os.WriteFile(sshdBin, nil, 0o755)
	for _, tc := range []struct {
		name, pw, version string
		check             string
		want              Status
	}{
		{"unlocked", "*", "OpenSSH_9.2p1 Debian-2", "tunnel user", OK},
		{"locked", "!", "OpenSSH_9.2p1", "tunnel user", Fail},
		{"locked hash", "!$6$abc", "OpenSSH_9.2p1", "tunnel user", Fail},
		{"empty", "", "OpenSSH_9.2p1", "tunnel user", Warn},
		{"old openssh", "*", "OpenSSH_7.4p1", "openssh", Fail},
		{"openssh 7.8", "*", "OpenSSH_7.8p1", "openssh", OK},
		{"openssh 10", "*", "OpenSSH_10.0p2 Debian-7+deb13u4", "openssh", OK},
		{"not openssh", "*", "dropbear v2022", "openssh", Fail},
	} {
		t.Run(tc.name, func(t *testing.T) {
			results := Run(context.Background(), Config{Role: "slave", Root: fixture(t, tc.pw), SSHDPath: sshdBin,
				SSHListen: "127.0.0.1:0", Runner: fakeHost(tc.version), ProcRoot: t.TempDir()})
			if r := find(t, results, tc.check); r.Status != tc.want || (r.Status != OK && r.Fix == "") {
				t.Errorf("%s: %+v, want %s with a fix", tc.check, r, tc.want)
			}
			if Failed(results) != (tc.want == Fail) {
				t.Errorf("Failed = %v for %+v", Failed(results), results)
			}
		})
	}
}

func TestHookPathUnderTmpFails(t *testing.T) {
	// t.TempDir is below /tmp (1777): sshd would refuse a hook there.
	state := filepath.Join(t.TempDir(), "slave-x")
	r := find(t, Run(context.Background(), Config{Role: "slave", StateDir: state, SSHListen: "127.0.0.1:0",
		Runner: fakeHost("OpenSSH_9.2")}), "hook path")
	if r.Status != Fail || !strings.Contains(r.Detail, "group/world-writable") && !strings.Contains(r.Detail, "not root") {
		t.Errorf("hook path below /tmp: %+v", r)
	}
}

// A keys file below /tmp (1777) is one sshd ignores; none at all is no
// finding when sshd_config names none (--keys-file=false), and a warning
// when it names one.
func TestKeysFileChecks(t *testing.T) {
	state := filepath.Join(t.TempDir(), "slave-x")
	cfg := Config{Role: "slave", StateDir: state, SSHListen: "127.0.0.1:0",
		Runner: fakeHost("OpenSSH_9.2")}
	if err := os.MkdirAll(state, 0o755); err != nil {
		t.Fatal(err)
	}
	sshdConfig := filepath.Join(state, "sshd_config")
	if err := os.WriteFile(sshdConfig, []byte("AuthorizedKeysFile none\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, r := range Run(context.Background(), cfg) {
		if r.Check == "keys file" {
			t.Errorf("a finding without a keys file (hook only): %+v", r)
		}
	}
	if err := os.WriteFile(sshdConfig, []byte("AuthorizedKeysFile "+filepath.Join(state, "authorized_keys")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := find(t, Run(context.Background(), cfg), "keys file"); r.Status != Warn || !strings.Contains(r.Detail, "does not exist") {
		t.Errorf("a keys file named and missing: %+v", r)
	}
	if err := os.WriteFile(filepath.Join(state, "authorized_keys"), []byte("# managed\nrestrict ssh-ed25519 AAAA\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	r := find(t, Run(context.Background(), cfg), "keys file")
	if r.Status != Fail || !strings.Contains(r.Detail, "sshd ignores the file") {
		t.Errorf("keys file below /tmp: %+v", r)
	}
}

func TestClockSkew(t *testing.T) {
	for _, tc := range []struct {
		skew time.Duration
		want Status
	}{{0, OK}, {30 * time.Second, Warn}, {-30 * time.Second, Warn}, {time.Hour, Fail}} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/api/v1/healthz" {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Date", time.Now().Add(-tc.skew).UTC().Format(http.TimeFormat))
			w.Write([]byte(`{"ok":true}`))
		}))
		results := Run(context.Background(), Config{Role: "agent", Master: srv.URL, Runner: &process.Fake{}})
		srv.Close()
		if r := find(t, results, "master"); r.Status != OK {
			t.Errorf("master reachable: %+v", r)
		}
		if r := find(t, results, "clock"); r.Status != tc.want {
			t.Errorf("skew %s: %+v, want %s", tc.skew, r, tc.want)
		}
	}
	results := Run(context.Background(), Config{Role: "agent", Master: "http://127.0.0.1:1", Runner: fakeHost("")})
	if r := find(t, results, "master"); r.Status != Fail {
		t.Errorf("unreachable master: %+v", r)
	}
	if r := find(t, results, "ssh client"); r.Status != Fail {
		t.Errorf("no ssh client: %+v", r)
	}
}

// An ordinary account as the tunnel user is a failure the slave would
// refuse, with what to do.
func TestOrdinaryTunnelUserFails(t *testing.T) {
	root := fixture(t, "*")
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/bash\nmas4h-tunnel:x:1000:1000::/home/t:/bin/bash\n"), 0o644)
	r := find(t, Run(context.Background(), Config{Role: "slave", Root: root, SSHListen: "127.0.0.1:0",
		Runner: fakeHost("OpenSSH_9.2"), ProcRoot: t.TempDir()}), "tunnel user")
	if r.Status != Fail || !strings.Contains(r.Detail, "ordinary account") || !strings.Contains(r.Fix, "useradd --system") {
		t.Errorf("an ordinary tunnel user: %+v", r)
	}
}

// sshd's directory: the older layout (the tunnel user's) is a warning the
// slave fixes at its next start; a link where a file should be, a failure.
func TestSSHDDirChecks(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chown)")
	}
	root := fixture(t, "*")
	state := filepath.Join(root, "var/lib/mas4h/slave-x")
	sshdDir := filepath.Join(state, "sshd")
	os.MkdirAll(sshdDir, 0o700)
	key := filepath.Join(sshdDir, "ssh_host_ed25519_key")
	os.WriteFile(key, []byte("key"), 0o600)
	cfg := Config{Role: "slave", Root: root, StateDir: "/var/lib/mas4h/slave-x", SSHListen: "127.0.0.1:0",
		Runner: fakeHost("OpenSSH_9.2"), ProcRoot: t.TempDir()}
	if r := find(t, Run(context.Background(), cfg), "sshd dir"); r.Status != OK {
		t.Errorf("root's: %+v", r)
	}
	os.Chown(sshdDir, 995, 994)
	os.Chown(key, 995, 994)
	if r := find(t, Run(context.Background(), cfg), "sshd dir"); r.Status != Warn || !strings.Contains(r.Detail, "older layout") {
		t.Errorf("the older layout: %+v", r)
	}
	os.Remove(key)
	os.Symlink("/etc/shadow", key)
	if r := find(t, Run(context.Background(), cfg), "sshd dir"); r.Status != Fail || !strings.Contains(r.Detail, "symbolic link") {
		t.Errorf("a link: %+v", r)
	}
}

// Several masters: each is checked and reported; a bad list fails with
// what is wrong.
func TestSeveralMasters(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Date", time.Now().UTC().Format(http.TimeFormat))
		w.Write([]byte(`{"ok":true}`))
	}))
	defer srv.Close()
	results := Run(context.Background(), Config{Role: "agent", Master: srv.URL + ",http://127.0.0.1:1", Runner: &process.Fake{}})
	var got []string
	for _, r := range results {
		if r.Check == "master" || r.Check == "clock" {
			got = append(got, string(r.Status)+" "+r.Check+" "+r.Detail)
		}
	}
	if len(got) != 3 || !strings.HasPrefix(got[0], string(OK)+" master "+srv.URL) || !strings.HasPrefix(got[1], string(OK)+" clock "+srv.URL+": within") ||
		!strings.HasPrefix(got[2], string(Fail)+" master http://127.0.0.1:1/api/v1/healthz") {
		t.Errorf("two masters, one down:\n%s", strings.Join(got, "\n"))
	}
	results = Run(context.Background(), Config{Role: "agent", Master: srv.URL + ",", Runner: &process.Fake{}})
	if r := find(t, results, "master"); r.Status != Fail || !strings.Contains(r.Detail, "master 2 of 2: empty") {
		t.Errorf("a list with an empty element: %+v", r)
	}
}
