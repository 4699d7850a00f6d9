package main

import (
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

var testAccess = wire.Access{Operator: "alice", Device: "pi", Forward: "ssh", Slave: "s1", Host: "s1.example.net", Port: 2222,
	User: "mas4h-operator", HostKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGl0 s1"}, RemotePort: 20001}

func TestOperatorSSHArgv(t *testing.T) {
	kh := "/home/alice/.config/mas4h/known_hosts"
	slave := []string{"-p", "2222", "-o", "UserKnownHostsFile=" + kh, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes", "-o", "ForwardAgent=no", "-o", "ForwardX11=no"}
	withKey := append(append([]string{}, slave...), "-i", "/k/id 1", "-o", "IdentitiesOnly=yes", "-l", "mas4h-operator")
	for _, c := range []struct {
		name string
		got  []string
		want []string
	}{
		{"proxy", proxyArgv(testAccess, "/k/id 1", kh),
			append(append([]string{"-W", "localhost:20001", "-o", "BatchMode=yes", "-o", "ClearAllForwardings=yes"}, withKey...), "s1.example.net")},
		{"proxy without key file", proxyArgv(testAccess, "", kh),
			append(append([]string{"-W", "localhost:20001", "-o", "BatchMode=yes", "-o", "ClearAllForwardings=yes"}, slave...), "-l", "mas4h-operator", "s1.example.net")},
		{"forward", forwardArgv(testAccess, "/k/id 1", kh, 40000, []string{"-v"}),
			append(append([]string{"-N", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes", "-L", "127.0.0.1:40000:localhost:20001"}, withKey...), "s1.example.net", "-v")},
		{"login", loginArgv("ssh", testAccess, "/k/100%.pub", kh, "root", []string{"-A", "uptime"}),
			[]string{"-o", "ProxyCommand=ssh -W localhost:20001 -o BatchMode=yes -o ClearAllForwardings=yes -p 2222 -o UserKnownHostsFile=" + kh +
				" -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o ForwardAgent=no -o ForwardX11=no -i /k/100%%.pub -o IdentitiesOnly=yes -l mas4h-operator s1.example.net",
				"-o", "HostKeyAlias=mas4h-pi", "-l", "root", "pi", "-A", "uptime"}},
		{"login, default user", loginArgv("/usr/bin/ssh", testAccess, "", kh, "", nil)[2:],
			[]string{"-o", "HostKeyAlias=mas4h-pi", "pi"}},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s:\n got %q\nwant %q", c.name, c.got, c.want)
		}
	}
	if got := shellJoin([]string{"ssh", "-o", "ProxyCommand=a b", "it's"}); got != `ssh -o 'ProxyCommand=a b' 'it'\''s'` {
		t.Errorf("shellJoin = %s", got)
	}
	for fwd, want := range map[string]string{"web": "http://127.0.0.1:40000/", "https": "https://127.0.0.1:40000/", "webui": "http://127.0.0.1:40000/", "ssh": "127.0.0.1:40000", "vnc": "127.0.0.1:40000"} {
		if got := localURL(fwd, 40000); got != want {
			t.Errorf("localURL(%s) = %q, want %q", fwd, got, want)
		}
	}
}

func TestMergeKnownHosts(t *testing.T) {
	k1, k2 := "ssh-ed25519 AAAAkey1", "ecdsa-sha2-nistp256 AAAAkey2"
	for _, c := range []struct {
		name string
		old  string
		host string
		port int
		keys []string
		want string
	}{
		{"empty", "", "10.0.0.1", 2222, []string{k1 + " comment"}, "[10.0.0.1]:2222 " + k1 + "\n"},
		{"port 22 has no brackets", "", "s1.example.net", 22, []string{k1}, "s1.example.net " + k1 + "\n"},
		{"others kept, own replaced", "[a]:1 ssh-ed25519 AAAAold\n[10.0.0.1]:2222 ssh-ed25519 AAAAstale\nb ssh-rsa AAAAb",
			"10.0.0.1", 2222, []string{k1, k2},
			"[a]:1 ssh-ed25519 AAAAold\nb ssh-rsa AAAAb\n[10.0.0.1]:2222 " + k1 + "\n[10.0.0.1]:2222 " + k2 + "\n"},
		{"same port elsewhere kept", "[10.0.0.2]:2222 " + k1 + "\n", "10.0.0.1", 2222, []string{k1},
			"[10.0.0.2]:2222 " + k1 + "\n[10.0.0.1]:2222 " + k1 + "\n"},
	} {
		got := string(mergeKnownHosts([]byte(c.old), c.host, c.port, c.keys))
		if got != c.want {
			t.Errorf("%s:\n got %q\nwant %q", c.name, got, c.want)
		}
		if again := string(mergeKnownHosts([]byte(got), c.host, c.port, c.keys)); again != got {
			t.Errorf("%s: merging twice changed it:\n%q\n%q", c.name, got, again)
		}
	}
}

// pinSlave writes mas4h's known_hosts 0600 in a 0700 directory, and
// updates a slave's lines instead of adding more.
func TestPinSlave(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mas4h")
	key := testkit.NewKey(t, "slave")
	a := testAccess
	a.HostKeys = []string{strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key.Public)))}
	for range 2 {
		path, err := pinSlave(dir, a)
		if err != nil {
			t.Fatal(err)
		}
		b := mustRead(t, path)
		if n := strings.Count(string(b), "[s1.example.net]:2222 "); n != 1 {
			t.Errorf("%d lines for the slave:\n%s", n, b)
		}
		if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
			t.Errorf("mode %v", fi.Mode())
		}
		if fi, _ := os.Stat(dir); fi.Mode().Perm() != 0o700 {
			t.Errorf("dir mode %v", fi.Mode())
		}
	}
	a.HostKeys = nil
	if _, err := pinSlave(dir, a); err == nil || !strings.Contains(err.Error(), "knows no host key of slave s1") {
		t.Errorf("no host keys: %v", err)
	}
}

func TestKeyIdentity(t *testing.T) {
	t.Setenv("SSH_AUTH_SOCK", "")
	dir := t.TempDir()
	plain := testkit.NewKey(t, "plain")
	plain.Write(t, filepath.Join(dir, "plain"))
	id, err := keyIdentity(filepath.Join(dir, "plain"), nil, dir)
	if err != nil || id.file != filepath.Join(dir, "plain") || id.fingerprint() != ssh.FingerprintSHA256(plain.Public) {
		t.Errorf("plain key: %+v %v", id, err)
	}
	block, err := ssh.MarshalPrivateKeyWithPassphrase(plain.Private, "", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	enc := filepath.Join(dir, "enc")
	if err := os.WriteFile(enc, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, want string }{
		{enc, "must be in your ssh-agent, and no ssh-agent is running"},
		{filepath.Join(dir, "plain.pub"), "must be in your ssh-agent"},
		{filepath.Join(dir, "nope"), "no such file"},
	} {
		_, err := keyIdentity(c.path, nil, dir)
		var ue usageError
		if err == nil || !strings.Contains(err.Error(), c.want) || !errors.As(err, &ue) {
			t.Errorf("--key %s: %v, want a usage error with %q", c.path, err, c.want)
		}
	}
}

func TestAccessErrors(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
	}{
		{&client.Error{Status: 404, Message: "operator alice may reach no device named nope"}, "operator alice may reach no device named nope: it is not enrolled, or not on your allow list"},
		{&client.Error{Status: 404, Message: "device pi has no forward web (it has: ssh)"}, "device pi has no forward web (it has: ssh)"},
		{&client.Error{Status: 409, Message: "device pi is offline since 2026-01-02T03:04:05Z (last on slave s1)"}, "device pi is offline since 2026-01-02T03:04:05Z (last on slave s1): its tunnel is down"},
		{&client.Error{Status: 403, Message: "operator alice is revoked"}, "operator alice is revoked: you may reach no device through the master at http://m; ask an admin"},
		{&client.Error{Status: 429, Message: "slow down", RetryAfter: 3 * time.Second}, "try again in 3s"},
		{&client.Error{Status: 503, Message: "device pi is on slave s1, which takes no operators"}, "which takes no operators: an admin must run that slave with an operator user"},
		{&client.UnreachableError{URL: "http://m", Err: errors.New("connection refused")}, "master at http://m is unreachable: connection refused"},
	} {
		got := accessError(c.err, "http://m", "pi", "ssh")
		if !strings.Contains(got.Error(), c.want) || strings.Contains(got.Error(), "HTTP") {
			t.Errorf("%v:\n got %q\nwant %q", c.err, got, c.want)
		}
	}
}

func TestRenderSSHConfig(t *testing.T) {
	sels, err := registry.ParseSelectors([]string{"pi-*", "site=lyon", "lyon-[12]", "?x"})
	if err != nil {
		t.Fatal(err)
	}
	patterns, listed := sshPatterns(sels)
	if !reflect.DeepEqual(patterns, []string{"pi-*", "?x"}) || !reflect.DeepEqual(listed, []string{"site=lyon", "lyon-[12]"}) {
		t.Errorf("sshPatterns = %q, %q", patterns, listed)
	}
	got := renderSSHConfig("https://m:8080", []string{"pi-*", "lyon-1"}, []string{"/usr/bin/mas4h", "proxy", "--master", "https://m:8080", "--key", "/k/100% me.pub"})
	want := "# mas4h ssh-config: devices of the master at https://m:8080, reached as an operator\n" +
		"# through their slave (mas4h proxy); their host keys are known as mas4h-NAME.\n" +
		"Host pi-* lyon-1\n  Hostname mas4h-%h\n  ProxyCommand /usr/bin/mas4h proxy --master https://m:8080 --key '/k/100%% me.pub' %n\n"
	if got != want {
		t.Errorf("renderSSHConfig:\n%s\nwant:\n%s", got, want)
	}
	many := make([]string, 20)
	for i := range many {
		many[i] = "d" + string(rune('a'+i))
	}
	got = renderSSHConfig("http://m", many, []string{"/m", "proxy"})
	if n := strings.Count(got, "\nHost "); n != 2 || !strings.Contains(got, "Host da db") || !strings.Contains(got, "Host dq dr ds dt\n") {
		t.Errorf("20 devices in %d blocks:\n%s", n, got)
	}
}
