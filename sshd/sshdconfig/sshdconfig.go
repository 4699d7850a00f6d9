// Package sshdconfig renders the sshd_config of a slave's dedicated sshd from
// its embedded template: a pure function of Params, golden-tested, that
// refuses any value which could spill into another directive.
package sshdconfig

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/mas4h/mas4h/sshd/sshdversion"
	"github.com/mas4h/mas4h/templates"
)

// Algorithm lists for the generated sshd_config. Only modern choices: every
// client these fleets run (OpenSSH >= 8, dropbear >= 2020.79, x/crypto/ssh)
// speaks at least one of each.
//
// ssh-audit (Debian 12's 2.5.0) passes each without a fail or a warning,
// except the two it does not know yet: sntrup761x25519-sha512@openssh.com
// (post-quantum, kept) and the kex-strict-s-v00@openssh.com marker sshd adds
// (the Terrapin fix, kept). The NIST curves (fail: "weak elliptic curves")
// and the encrypt-and-MAC hmac-sha2-256/512 (warn) are gone: every client
// still has curve25519, and dropbear, which has no -etm MAC, gets
// chacha20-poly1305 (2020.79 and newer), which carries its own. Each
// list is checked against those clients' own lists in the tests.
const (
	kexAlgorithms     = "sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512"
	ciphers           = "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr"
	macs              = "hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com"
	hostKeyAlgorithms = "ssh-ed25519"
	pubkeyAlgorithms  = "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256"

	// mlkemKex leads the list where sshd knows it (OpenSSH 9.9; 10.0's
	// default): post-quantum ML-KEM with X25519, as standardised.
	mlkemKex = "mlkem768x25519-sha256"
)

// PenaltyPolicy is the PerSourcePenalties of an sshd that has them
// (OpenSSH 9.8 and newer, where they are on by default). A whole NAT shares
// one source address: with OpenSSH's defaults, four failed logins (a revoked
// device, an unknown key, a broken agent retrying) or twenty connections
// that never authenticate (a load balancer's health check, a device that
// rejects the slave's host key) lock every device behind that address out
// for 15 s and more, up to 10 minutes, again and again. So failed logins,
// connections without a login and logins too slow (a reconnect storm on a
// busy slave) cost nothing; a per-source --rate-limit in netfilter and
// MaxStartups bound what one address can do instead. Only a crash of sshd
// still costs its address OpenSSH's default 90 s: no device causes one, an
// exploit attempt (a memory-corruption race such as CVE-2024-6387) does.
// RefuseConnection's penalty (10.0) is not named: 9.8 and 9.9 reject the
// keyword, and mas4h never refuses that way.
const PenaltyPolicy = "crash:90s authfail:0s noauth:0s grace-exceeded:0s max:600s min:15s"

// locWidth is how much of a keys file's path, or of the hook's command
// line, sshd puts before ":LINE: key options" in the debug message it sends
// a client after login (auth2-pubkeyfile.c: "%.200s:%lu"). unseen prefixes
// that many slashes, which the kernel reads as one, so the client sees only
// slashes, never the state dir.
const locWidth = 200

func unseen(path string) string { return strings.Repeat("/", locWidth) + path }

// ConfigPath is how sshd_config names an absolute path whose name a client
// must not learn (the keys file, the hook).
func ConfigPath(path string) string { return unseen(path) }

// Params is everything the sshd_config template needs. Render is
// a pure function of it, so the file is golden-tested.
type Params struct {
	// SSHD is what the sshd that reads the file knows (sshdversion.Detect):
	// the zero value is a config any OpenSSH from 8.5 reads.
	SSHD sshdversion.Features

	SlaveName           string
	TunnelUser          string
	OperatorUser        string   // operators log in as this user (same uid as TunnelUser)
	ListenAddresses     []string // host:port, IPv6 in brackets
	HostKeys            []string
	PidFile             string
	HookCommand         string // absolute path and fixed arguments; sshd appends %u %f %t %k
	KeysFile            string // absolute path of the daemon-kept authorized_keys file; "" = none (hook only)
	MaxStartups         string
	LoginGraceTime      int // seconds
	ClientAliveInterval int // seconds
	ClientAliveCountMax int
}

// Defaults sized for reconnect storms: sshd refuses unauthenticated
// connections past MaxStartups, so the "full" figure must cover a slave's
// worth of devices coming back at once, while the random-drop start keeps a
// flood from starving the box.
//
// ClientAlive makes every live client answer sshd every few seconds, which
// is what the reaper's liveness policy reads in each session's tcp_info: a
// client silent past two keepalive periods is frozen or cut off. At 3 s
// (OpenSSH 9.2 sends a keepalive every second interval when the connection
// is idle: every 6 s) a stale session is suspect within 8 s and its port
// free within about 13 s; each keepalive costs a client ~100 bytes each
// way. sshd's own count stays the backstop for sessions nobody judges (the
// daemon down): 9 unanswered keepalives end a session, 60 s after its client
// stopped on OpenSSH 9.2. The reaper is told the interval
// (reaper.Config.Keepalive).
//
// A slave may choose another interval (mas4h slave --keepalive);
// KeepaliveCountMax keeps the backstop near a minute for it.
const (
	DefaultMaxStartups         = "200:30:2000"
	DefaultLoginGraceTime      = 30
	DefaultClientAliveInterval = 3
)

var sshdConfigTemplate = templates.MustParse("sshd_config.tmpl")

// KexAlgorithms is the key exchange list for an sshd that knows f.
func KexAlgorithms(f sshdversion.Features) string {
	if f.MLKEM {
		return mlkemKex + "," + kexAlgorithms
	}
	return kexAlgorithms
}

// KeepaliveCountMax is the ClientAliveCountMax that ends an unanswered
// session about a minute after its client stopped, for an interval of
// seconds (OpenSSH 9.2 counts a keepalive every second interval when
// idle), and never fewer than 3. KeepaliveCountMax(3) is 9.
func KeepaliveCountMax(seconds int) int {
	return max(3, 60/(2*max(seconds, 1))-1)
}

// Render renders sshd_config. It refuses values that would let one
// directive spill into another (newlines, quotes, spaces in paths), since sshd
// would otherwise parse them as extra configuration.
func Render(p Params) ([]byte, error) {
	check := func(what, v string) error {
		if v == "" {
			return fmt.Errorf("rendering sshd_config: %s is empty", what)
		}
		if strings.ContainsAny(v, " \t\r\n\"'#\\\x00") {
			return fmt.Errorf("rendering sshd_config: %s %q contains spaces, quotes or control characters", what, v)
		}
		return nil
	}
	fields := map[string]string{
		"slave name": p.SlaveName, "tunnel user": p.TunnelUser, "operator user": p.OperatorUser, "pid file": p.PidFile,
		"max startups": p.MaxStartups,
	}
	for what, v := range fields {
		if err := check(what, v); err != nil {
			return nil, err
		}
	}
	if p.OperatorUser == p.TunnelUser {
		return nil, fmt.Errorf("rendering sshd_config: the operator user and the tunnel user are both %s", p.TunnelUser)
	}
	for _, v := range append(append([]string{}, p.ListenAddresses...), p.HostKeys...) {
		if err := check("listen address or host key", v); err != nil {
			return nil, err
		}
	}
	if len(p.ListenAddresses) == 0 || len(p.HostKeys) == 0 {
		return nil, fmt.Errorf("rendering sshd_config: need at least one listen address and one host key")
	}
	for _, arg := range strings.Fields(p.HookCommand) {
		if err := check("hook command", arg); err != nil {
			return nil, err
		}
	}
	if strings.ContainsAny(p.HookCommand, "\r\n\x00\"'") || !strings.HasPrefix(p.HookCommand, "/") {
		return nil, fmt.Errorf("rendering sshd_config: hook command %q must be an absolute path with plain arguments", p.HookCommand)
	}
	if p.KeysFile != "" {
		if err := check("keys file", p.KeysFile); err != nil {
			return nil, err
		}
		if !strings.HasPrefix(p.KeysFile, "/") || strings.Contains(p.KeysFile, "%") {
			return nil, fmt.Errorf("rendering sshd_config: keys file %q must be an absolute path without %% tokens", p.KeysFile)
		}
	}
	if p.LoginGraceTime <= 0 || p.ClientAliveInterval <= 0 || p.ClientAliveCountMax <= 0 {
		return nil, fmt.Errorf("rendering sshd_config: timeouts must be positive")
	}
	data := struct {
		Params
		KexAlgorithms, Ciphers, MACs, HostKeyAlgorithms, PubkeyAlgorithms string
		AuthorizedKeysFile, AuthorizedKeysCommand, Penalties              string
	}{
		Params: p, KexAlgorithms: KexAlgorithms(p.SSHD), Ciphers: ciphers, MACs: macs,
		HostKeyAlgorithms: hostKeyAlgorithms, PubkeyAlgorithms: pubkeyAlgorithms,
		AuthorizedKeysFile: "none", AuthorizedKeysCommand: unseen(p.HookCommand), Penalties: PenaltyPolicy,
	}
	if p.KeysFile != "" {
		data.AuthorizedKeysFile = unseen(p.KeysFile)
	}
	var buf bytes.Buffer
	if err := sshdConfigTemplate.Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("rendering sshd_config for %s: %w", p.SlaveName, err)
	}
	return buf.Bytes(), nil
}
