package sshdconfig

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/sshd/sshdversion"
)

// The sshds the tests run against: Debian 12's and Debian 13's, and an
// upstream 9.8 (penalties, no ML-KEM, no Debian patch).
var (
	debian12 = sshdversion.Features{Version: sshdversion.Version{Major: 9, Minor: 2, Release: "OpenSSH_9.2p1 Debian-2+deb12u10"}, DebianBanner: true}
	debian13 = func() sshdversion.Features {
		f := sshdversion.For(sshdversion.Version{Major: 10, Minor: 0, Release: "OpenSSH_10.0p2 Debian-7+deb13u4"})
		f.DebianBanner = true
		return f
	}()
	upstream98 = sshdversion.For(sshdversion.Version{Major: 9, Minor: 8, Release: "OpenSSH_9.8p1"})
)

func goldenParams() Params {
	return Params{
		SSHD:                debian12,
		SlaveName:           "s1",
		TunnelUser:          "mas4h-tunnel",
		OperatorUser:        "mas4h-operator",
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
	for name, f := range map[string]sshdversion.Features{
		"sshd_config.golden":            debian12,
		"sshd_config-openssh10.golden":  debian13,
		"sshd_config-openssh9.8.golden": upstream98,
	} {
		t.Run(name, func(t *testing.T) {
			p := goldenParams()
			p.SSHD = f
			got, err := Render(p)
			if err != nil {
				t.Fatal(err)
			}
			testkit.Golden(t, filepath.Join("testdata", name), got)
		})
	}
}

// What each sshd gets that another would reject: PerSourcePenalties from
// 9.8 (9.2 fails on the keyword), ML-KEM from 9.9, DebianBanner where the
// build has Debian's patch.
func TestRenderConfigFollowsTheSSHD(t *testing.T) {
	for _, c := range []struct {
		name                     string
		f                        sshdversion.Features
		penalties, mlkem, banner bool
	}{
		{"Debian 12", debian12, false, false, true},
		{"Debian 13", debian13, true, true, true},
		{"upstream 9.8", upstream98, true, false, false},
		{"unknown", sshdversion.Features{}, false, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := goldenParams()
			p.SSHD = c.f
			out, err := Render(p)
			if err != nil {
				t.Fatal(err)
			}
			got := string(out)
			if has := strings.Contains(got, "\nPerSourcePenalties "+PenaltyPolicy+"\n"); has != c.penalties {
				t.Errorf("PerSourcePenalties line: %v, want %v", has, c.penalties)
			}
			if has := strings.Contains(got, "\nKexAlgorithms mlkem768x25519-sha256,"); has != c.mlkem {
				t.Errorf("ML-KEM first in KexAlgorithms: %v, want %v", has, c.mlkem)
			}
			if has := strings.Contains(got, "\nDebianBanner no\n"); has != c.banner {
				t.Errorf("DebianBanner no: %v, want %v", has, c.banner)
			}
		})
	}
}

// The penalty policy costs an address nothing for what a healthy device's
// neighbour does (fails to log in, never tries, is too slow), and keeps
// the penalty for a crash of sshd.
func TestPenaltyPolicy(t *testing.T) {
	got := map[string]string{}
	for _, kv := range strings.Fields(PenaltyPolicy) {
		k, v, _ := strings.Cut(kv, ":")
		got[k] = v
	}
	for _, free := range []string{"authfail", "noauth", "grace-exceeded"} {
		if got[free] != "0s" {
			t.Errorf("%s costs %q, want 0s", free, got[free])
		}
	}
	if got["crash"] == "" || got["crash"] == "0s" {
		t.Errorf("crash costs %q: an exploit attempt should cost its address", got["crash"])
	}
	if _, ok := got["refuseconnection"]; ok {
		t.Error("refuseconnection is named: OpenSSH 9.8 and 9.9 reject it")
	}
}

// The client is told where its key line came from (the first 200
// characters of the path or command line): only slashes, never the state dir.
func TestRenderConfigHidesPathsFromClients(t *testing.T) {
	out, err := Render(goldenParams())
	if err != nil {
		t.Fatal(err)
	}
	for _, kw := range []string{"AuthorizedKeysFile ", "AuthorizedKeysCommand "} {
		for _, l := range strings.Split(string(out), "\n") {
			if v, ok := strings.CutPrefix(l, kw); ok {
				if len(v) < 200 || strings.Trim(v[:200], "/") != "" {
					t.Errorf("%s: a client would see %q", kw, v[:min(len(v), 200)])
				}
			}
		}
	}
}

// The security model of DESIGN.md, directive by directive: a template edit
// that drops one fails here even if someone regenerates the golden file.
func TestRenderConfigSecurityDirectives(t *testing.T) {
	got, err := Render(goldenParams())
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{
		"AuthorizedKeysFile " + ConfigPath("/var/lib/mas4h/slave-s1/authorized_keys"), "AllowTcpForwarding remote", "PermitOpen none",
		"PermitListen none", "Compression no",
		"AllowStreamLocalForwarding no", "PermitTTY no", "X11Forwarding no",
		"AllowAgentForwarding no", "PermitTunnel no", "PermitUserRC no", "GatewayPorts no",
		"PasswordAuthentication no", "KbdInteractiveAuthentication no", "ForceCommand /bin/false",
		"MaxSessions 0", "AllowUsers mas4h-tunnel mas4h-operator", "AuthorizedKeysCommandUser mas4h-tunnel",
		"UsePAM no", "PidFile /var/lib/mas4h/slave-s1/sshd/sshd.pid",
		"AuthorizedKeysCommand " + ConfigPath("/var/lib/mas4h/slave-s1/bin/mas4h authkeys --state-dir /var/lib/mas4h/slave-s1 --") + " %u %f %t %k",
	} {
		if !strings.Contains(string(got), "\n"+d+"\n") {
			t.Errorf("sshd_config lacks %q", d)
		}
	}
	if !strings.HasPrefix(string(got), "# managed by mas4h") {
		t.Error("sshd_config does not start with the managed-by line")
	}
	// The two Match blocks end the file (a Match block takes every line up
	// to the next Match): the tunnel user binds loopback only and opens
	// nothing; the operator opens loopback only, binds nothing and reads
	// no keys file (its device lines have no permitopen).
	if !strings.Contains(string(got), "\nMatch User mas4h-tunnel\n\tPermitListen localhost:* 127.0.0.1:* [::1]:*\n\tAllowTcpForwarding remote\n\n") {
		t.Error("sshd_config lacks the tunnel user's loopback-only PermitListen")
	}
	if !strings.HasSuffix(string(got), "\nMatch User mas4h-operator\n\tAuthorizedKeysFile none\n\tAllowTcpForwarding local\n"+
		"\tPermitOpen localhost:* 127.0.0.1:*\n\tPermitListen none\n") {
		t.Error("sshd_config does not end with the operator user's block")
	}
	for _, weak := range []string{"ssh-rsa,", "diffie-hellman-group1-sha1", "diffie-hellman-group14-sha1", "hmac-sha1", "cbc", "3des",
		"ecdh-sha2-nistp", "hmac-sha2-256,", "hmac-sha2-512\n", "umac-64"} {
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
		"newline in operator":   func(p *Params) { p.OperatorUser = "x\nPermitRootLogin yes" },
		"no operator user":      func(p *Params) { p.OperatorUser = "" },
		"operator is tunnel":    func(p *Params) { p.OperatorUser = p.TunnelUser },
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

// negotiate is SSH's rule: the first of the client's algorithms that the
// server also offers ("" for none).
func negotiate(client, server string) string {
	offered := map[string]bool{}
	for _, a := range strings.Split(server, ",") {
		offered[a] = true
	}
	for _, a := range strings.Split(client, ",") {
		if offered[a] {
			return a
		}
	}
	return ""
}

// The oldest clients fleets run, with their default lists (OpenSSH 8.0's
// myproposal.h; dropbear 2020.79's default_options.h: no GCM, no -etm MAC,
// no hmac-sha2-512), still find a key exchange, a host key, and a cipher
// with a MAC, on every sshd a slave renders for. A dropbear built without
// chacha20-poly1305 does not: it would need an encrypt-and-MAC MAC.
func TestOldClientsShareAlgorithms(t *testing.T) {
	type client struct {
		kex, hostKey, ciphers, macs string
		wantCipher, wantMAC         string
	}
	aead := map[string]bool{"chacha20-poly1305@openssh.com": true, "aes128-gcm@openssh.com": true, "aes256-gcm@openssh.com": true}
	clients := map[string]client{
		"OpenSSH 8.0": {
			kex:        "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,diffie-hellman-group-exchange-sha256,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,diffie-hellman-group14-sha256,diffie-hellman-group14-sha1",
			hostKey:    "ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,ssh-ed25519,rsa-sha2-512,rsa-sha2-256,ssh-rsa",
			ciphers:    "chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com",
			macs:       "umac-64-etm@openssh.com,umac-128-etm@openssh.com,hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com,hmac-sha1-etm@openssh.com,umac-64@openssh.com,umac-128@openssh.com,hmac-sha2-256,hmac-sha2-512,hmac-sha1",
			wantCipher: "chacha20-poly1305@openssh.com",
		},
		"OpenSSH 8.0 preferring AES-CTR": {
			kex:        "curve25519-sha256",
			hostKey:    "ssh-ed25519",
			ciphers:    "aes128-ctr,aes256-ctr",
			macs:       "umac-64-etm@openssh.com,umac-128-etm@openssh.com,hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com,hmac-sha1-etm@openssh.com,umac-64@openssh.com,umac-128@openssh.com,hmac-sha2-256,hmac-sha2-512,hmac-sha1",
			wantCipher: "aes128-ctr", wantMAC: "hmac-sha2-256-etm@openssh.com",
		},
		"dropbear 2020.79": {
			kex:        "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp521,ecdh-sha2-nistp384,ecdh-sha2-nistp256,diffie-hellman-group14-sha256,diffie-hellman-group14-sha1",
			hostKey:    "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-256,ssh-rsa",
			ciphers:    "chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr",
			macs:       "hmac-sha1,hmac-sha2-256",
			wantCipher: "chacha20-poly1305@openssh.com",
		},
		"dropbear 2020.79 without chacha20-poly1305": {
			kex:     "curve25519-sha256",
			hostKey: "ssh-ed25519",
			ciphers: "aes128-ctr,aes256-ctr",
			macs:    "hmac-sha1,hmac-sha2-256",
		},
	}
	for _, f := range []sshdversion.Features{debian12, upstream98, debian13} {
		for name, c := range clients {
			t.Run(f.Version.String()+"/"+name, func(t *testing.T) {
				if kex := negotiate(c.kex, KexAlgorithms(f)); kex == "" {
					t.Error("no key exchange in common")
				}
				if hk := negotiate(c.hostKey, hostKeyAlgorithms); hk != "ssh-ed25519" {
					t.Errorf("host key %q", hk)
				}
				// The client's first cipher the server offers; unless it
				// carries its own MAC, the MACs must meet too, or the
				// connection fails.
				cipher, mac := negotiate(c.ciphers, ciphers), ""
				if !aead[cipher] {
					if mac = negotiate(c.macs, macs); mac == "" {
						cipher = ""
					}
				}
				if cipher != c.wantCipher || mac != c.wantMAC {
					t.Errorf("cipher %q MAC %q, want %q %q", cipher, mac, c.wantCipher, c.wantMAC)
				}
			})
		}
	}
}
