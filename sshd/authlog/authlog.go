// Package authlog reads what a slave's sshd says about authentications in
// its log (sshd -E, LogLevel VERBOSE): which key logged in from which
// address and port. Joined with the socket table (a session's device
// connection has that address and port), it tells the slave which key — so
// which device — each session belongs to, whatever ports it holds. The
// daemon follows the log as sshd writes it (Follower) and keeps the live
// part in an Index.
//
// The log is written by sshd, which runs as the tunnel user: its content is
// trusted only as far as that user is. A line is taken only when it has
// exactly the shape sshd gives it.
package authlog

import (
	"net/netip"
	"strconv"
	"strings"

	"github.com/mas4h/mas4h/names"
)

// Accepted is one "Accepted publickey" line: a session that authenticated.
type Accepted struct {
	User        string
	Remote      netip.AddrPort // the device's address and port, as the session's socket shows it
	KeyType     string         // ED25519, ECDSA, RSA, …
	Fingerprint string         // SHA256:…
}

// Closed is a line that says a connection ended ("Disconnected from user
// U A port P", "Connection closed by A port P", …).
type Closed struct {
	Remote netip.AddrPort
}

const acceptedPrefix = "Accepted publickey for "

// ParseAccepted reads "Accepted publickey for USER from ADDR port PORT
// ssh2: TYPE SHA256:FP" and nothing else (a certificate's longer line is
// not a device's).
func ParseAccepted(line string) (Accepted, bool) {
	rest, ok := strings.CutPrefix(strings.TrimRight(line, "\r\n"), acceptedPrefix)
	if !ok {
		return Accepted{}, false
	}
	f := strings.Split(rest, " ")
	// USER from ADDR port PORT ssh2: TYPE FP
	if len(f) != 8 || f[1] != "from" || f[3] != "port" || f[5] != "ssh2:" {
		return Accepted{}, false
	}
	if !names.ValidUser(f[0]) || !validKeyType(f[6]) || !validFingerprint(f[7]) {
		return Accepted{}, false
	}
	remote, ok := addrPort(f[2], f[4])
	if !ok {
		return Accepted{}, false
	}
	return Accepted{User: f[0], Remote: remote, KeyType: f[6], Fingerprint: f[7]}, true
}

// ParseClosed reads the lines sshd writes when a session's connection ends:
// "Disconnected from user USER ADDR port PORT", "Connection closed by ADDR
// port PORT", "Connection reset by ADDR port PORT", "Timeout, client not
// responding from user USER ADDR port PORT" (pre-authentication variants end
// in [preauth] and concern no session).
func ParseClosed(line string) (Closed, bool) {
	line = strings.TrimRight(line, "\r\n")
	if strings.HasSuffix(line, "[preauth]") {
		return Closed{}, false
	}
	var rest string
	for _, p := range []string{"Disconnected from user ", "Timeout, client not responding from user "} {
		if r, ok := strings.CutPrefix(line, p); ok {
			// USER ADDR port PORT
			f := strings.Split(r, " ")
			if len(f) != 4 || !names.ValidUser(f[0]) {
				return Closed{}, false
			}
			rest = strings.Join(f[1:], " ")
		}
	}
	for _, p := range []string{"Connection closed by ", "Connection reset by "} {
		if r, ok := strings.CutPrefix(line, p); ok {
			rest = r
		}
	}
	f := strings.Split(rest, " ")
	if len(f) != 3 || f[1] != "port" {
		return Closed{}, false
	}
	remote, ok := addrPort(f[0], f[2])
	if !ok {
		return Closed{}, false
	}
	return Closed{Remote: remote}, true
}

// addrPort reads sshd's "ADDR" and "PORT" (an IPv4-mapped address is the
// IPv4 one, as discovery reports it).
func addrPort(addr, port string) (netip.AddrPort, bool) {
	a, err := netip.ParseAddr(addr)
	if err != nil || a.Zone() != "" {
		return netip.AddrPort{}, false
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 || port[0] == '0' {
		return netip.AddrPort{}, false
	}
	return netip.AddrPortFrom(a.Unmap(), uint16(p)), true
}

// validKeyType: what sshd prints for a key's type (ED25519, ECDSA, RSA,
// ED25519-SK, ECDSA-SK).
func validKeyType(t string) bool {
	if len(t) < 2 || len(t) > 16 {
		return false
	}
	for i := 0; i < len(t); i++ {
		if c := t[i]; !(c >= 'A' && c <= 'Z') && !digit(c) && c != '-' {
			return false
		}
	}
	return true
}

// validFingerprint: "SHA256:" and 43 characters of unpadded base64, as
// sshd prints a SHA-256: 256 bits leave the last character's low 2 bits 0
// (any other spelling of the same bytes would match no key's fingerprint).
func validFingerprint(fp string) bool {
	b64, ok := strings.CutPrefix(fp, "SHA256:")
	if !ok || len(b64) != 43 || !strings.ContainsRune("AEIMQUYcgkosw048", rune(b64[42])) {
		return false
	}
	for i := 0; i < len(b64); i++ {
		if c := b64[i]; !lower(c) && !(c >= 'A' && c <= 'Z') && !digit(c) && c != '+' && c != '/' {
			return false
		}
	}
	return true
}

func lower(c byte) bool { return c >= 'a' && c <= 'z' }
func digit(c byte) bool { return c >= '0' && c <= '9' }
