package bench

import (
	"strings"
	"testing"
)

func TestRawConfig(t *testing.T) {
	in := `# managed by mas4h
ListenAddress 127.0.0.1:2401
HostKey /s/sshd/ssh_host_ed25519_key
PidFile /s/sshd/sshd.pid
AuthorizedKeysFile none
AuthorizedKeysCommand /s/bin/mas4h authkeys --state-dir /s -- %u %f %t %k
AuthorizedKeysCommandUser mas4h-bench
MaxStartups 200:30:2000
Match User mas4h-bench
	PermitListen localhost:*
`
	want := `# mas4h-bench raw baseline, derived from mas4h's generated sshd_config
# managed by mas4h
ListenAddress 127.0.0.1:2402
HostKey /s/sshd/ssh_host_ed25519_key
PidFile /r/sshd.pid
AuthorizedKeysFile /r/authorized_keys
MaxStartups 200:30:2000
Match User mas4h-bench
	PermitListen localhost:*
`
	got, err := RawConfig([]byte(in), "/r/authorized_keys", "/r/sshd.pid", "127.0.0.1:2402")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("got:\n%s\nwant:\n%s", got, want)
	}

	noCmd := strings.Replace(in, "AuthorizedKeysCommand ", "# ", 1)
	if _, err := RawConfig([]byte(noCmd), "/r/a", "/r/p", "127.0.0.1:1"); err == nil {
		t.Error("config without AuthorizedKeysCommand: want an error")
	}
}

func TestExpectedLine(t *testing.T) {
	got := expectedLine("ssh-ed25519 AAAA", []int{41000})
	want := `restrict,port-forwarding,permitlisten="localhost:41000",permitlisten="127.0.0.1:41000",permitlisten="[::1]:41000" ssh-ed25519 AAAA`
	if got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}
