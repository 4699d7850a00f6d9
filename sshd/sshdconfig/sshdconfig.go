// Package sshdconfig renders the sshd_config of a slave's dedicated sshd from
// its embedded template: a pure function of Params, golden-tested, that
// refuses any value which could spill into another directive.
package sshdconfig

import (
	"bytes"
	"fmt"
	"strings"

	"github.com/mas4h/mas4h/templates"
)

// Algorithm lists for the generated sshd_config. Only modern choices: every
// client these fleets run (OpenSSH >= 8, dropbear >= 2020.79, x/crypto/ssh)
// speaks at least one of each.
const (
	kexAlgorithms     = "sntrup761x25519-sha512@openssh.com,curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512"
	ciphers           = "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,aes128-gcm@openssh.com,aes256-ctr,aes192-ctr,aes128-ctr"
	macs              = "hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com,hmac-sha2-256,hmac-sha2-512"
	hostKeyAlgorithms = "ssh-ed25519"
	pubkeyAlgorithms  = "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256"
)

// Params is everything the sshd_config template needs. Render is
// a pure function of it, so the file is golden-tested.
type Params struct {
	SlaveName           string
	TunnelUser          string
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
		"slave name": p.SlaveName, "tunnel user": p.TunnelUser, "pid file": p.PidFile,
		"max startups": p.MaxStartups,
	}
	for what, v := range fields {
		if err := check(what, v); err != nil {
			return nil, err
		}
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
	}{p, kexAlgorithms, ciphers, macs, hostKeyAlgorithms, pubkeyAlgorithms}
	var buf bytes.Buffer
	if err := sshdConfigTemplate.Execute(&buf, data); err != nil {
		return nil, fmt.Errorf("rendering sshd_config for %s: %w", p.SlaveName, err)
	}
	return buf.Bytes(), nil
}
