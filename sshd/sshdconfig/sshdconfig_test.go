package sshdconfig

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/internal/testkit"
)

func goldenParams() Params {
	return Params{
		SlaveName:           "s1",
		TunnelUser:          "mas4h-tunnel",
		ListenAddresses:     []string{"0.0.0.0:2222"},
		HostKeys:            []string{"/var/lib/mas4h/slave-s1/sshd/ssh_host_ed25519_key"},
		PidFile:             "/var/lib/mas4h/slave-s1/sshd/sshd.pid",
		HookCommand:         "/var/lib/mas4h/slave-s1/bin/mas4h authkeys --state-dir /var/lib/mas4h/slave-s1 --",
		KeysFile:            "/var/lib/mas4h/slave-s1/authorized_keys",
		MaxStartups:         DefaultMaxStartups,
		LoginGraceTime:      DefaultLoginGraceTime,
		ClientAliveInterval: DefaultClientAliveInterval,
		ClientAliveCountMax: KeepaliveCountMax(DefaultClientAliveInterval),
	}
}

func TestRenderConfigGolden(t *testing.T) {
	got, err := Render(goldenParams())
	if err != nil {
		t.Fatal(err)
	}
	testkit.Golden(t, filepath.Join("testdata", "sshd_config.golden"), got)
}

// The security model of DESIGN.md, directive by directive: a template edit
// that drops one fails here even if someone regenerates the golden file.
func TestRenderConfigSecurityDirectives(t *testing.T) {
	got, err := Render(goldenParams())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{
		"AuthorizedKeysFile /var/lib/mas4h/slave-s1/authorized_keys", "AllowTcpForwarding remote", "PermitOpen none",
		"AllowStreamLocalForwarding no", "PermitTTY no", "X11Forwarding no",
		"AllowAgentForwarding no", "PermitTunnel no", "PermitUserRC no", "GatewayPorts no",
		"PasswordAuthentication no", "KbdInteractiveAuthentication no", "ForceCommand /bin/false",
		"MaxSessions 0", "AllowUsers mas4h-tunnel", "AuthorizedKeysCommandUser mas4h-tunnel",
		"UsePAM no", "PidFile /var/lib/mas4h/slave-s1/sshd/sshd.pid",
		"AuthorizedKeysCommand /var/lib/mas4h/slave-s1/bin/mas4h authkeys --state-dir /var/lib/mas4h/slave-s1 -- %u %f %t %k",
	} {
		if !strings.Contains(string(got), "\n"+d+"\n") {
			t.Errorf("sshd_config lacks %q", d)
		}
	}
	if !strings.HasPrefix(string(got), "# managed by mas4h") {
		t.Error("sshd_config does not start with the managed-by line")
	}
	for _, weak := range []string{"ssh-rsa,", "diffie-hellman-group1-sha1", "diffie-hellman-group14-sha1", "hmac-sha1", "cbc", "3des"} {
		if strings.Contains(string(got), weak) {
			t.Errorf("sshd_config allows weak algorithm %s", weak)
		}
	}
}

// Without a keys file (--keys-file=false) every key goes through the hook.
func TestRenderConfigHookOnly(t *testing.T) {
	p := goldenParams()
	p.KeysFile = ""
	got, err := Render(p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(got), "\nAuthorizedKeysFile none\n") {
		t.Errorf("hook-only sshd_config lacks AuthorizedKeysFile none:\n%s", got)
	}
}

func TestRenderConfigRefusesInjection(t *testing.T) {
	for name, mutate := range map[string]func(*Params){
		"newline in user":       func(p *Params) { p.TunnelUser = "x\nPermitRootLogin yes" },
		"space in pid file":     func(p *Params) { p.PidFile = "/a b/pid" },
		"quote in listen":       func(p *Params) { p.ListenAddresses = []string{"1.2.3.4:22\""} },
		"relative hook":         func(p *Params) { p.HookCommand = "mas4h authkeys" },
		"newline in hook":       func(p *Params) { p.HookCommand = "/bin/mas4h\nForceCommand x" },
		"no host keys":          func(p *Params) { p.HostKeys = nil },
		"relative keys file":    func(p *Params) { p.KeysFile = "authorized_keys" },
		"token in keys file":    func(p *Params) { p.KeysFile = "%h/.ssh/authorized_keys" },
		"newline in keys file":  func(p *Params) { p.KeysFile = "/k\nPermitRootLogin yes" },
		"zero client alive":     func(p *Params) { p.ClientAliveInterval = 0 },
		"comment in slave name": func(p *Params) { p.SlaveName = "a#b" },
	} {
		t.Run(name, func(t *testing.T) {
			p := goldenParams()
			mutate(&p)
			if out, err := Render(p); err == nil {
				t.Fatalf("rendered without error:\n%s", out)
			}
		})
	}
}

// The backstop stays near a minute whatever the interval: OpenSSH 9.2
// counts an unanswered keepalive every second interval when idle.
func TestKeepaliveCountMax(t *testing.T) {
	for _, c := range []struct{ interval, want int }{{3, 9}, {1, 29}, {5, 5}, {10, 3}, {15, 3}, {60, 3}} {
		if got := KeepaliveCountMax(c.interval); got != c.want {
			t.Errorf("KeepaliveCountMax(%d) = %d, want %d", c.interval, got, c.want)
		}
	}
}
