package authlog

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/names"
)

// What OpenSSH 9.2's sshd -E wrote at LogLevel VERBOSE for logins with
// ED25519, RSA (over IPv6) and ECDSA keys, a refused key, and a bare TCP
// connection reset before the banner.
var sshdLogLines = []string{
	"Server listening on 127.0.0.1 port 22987.",
	`Connection from 127.0.0.1 port 34176 on 127.0.0.1 port 22987 rdomain ""`,
	"Accepted key ED25519 SHA256:nOZQrQMSYi9zG5tvTi60PpKgSOrFKQXVT5HFvRGExdE found at /tmp/authlog-seed.pCs5/ak:1",
	"Postponed publickey for root from 127.0.0.1 port 34176 ssh2 [preauth]",
	"Accepted publickey for root from 127.0.0.1 port 34176 ssh2: ED25519 SHA256:nOZQrQMSYi9zG5tvTi60PpKgSOrFKQXVT5HFvRGExdE",
	"Starting session: command for root from 127.0.0.1 port 34176 id 0",
	"Received disconnect from 127.0.0.1 port 34176:11: disconnected by user",
	"Disconnected from user root 127.0.0.1 port 34176",
	"Accepted publickey for root from ::1 port 36768 ssh2: RSA SHA256:u72RRxPPHmyrIBfyE7ZGNKkaaAxSTQ9hUOYHaJlFVnY",
	"Disconnected from user root ::1 port 36768",
	"Accepted publickey for root from 127.0.0.1 port 34188 ssh2: ECDSA SHA256:4OmALdY3x18t+rnvGl7H/99DWIQZyy8ozr/o0mKojsQ",
	"Failed publickey for root from 127.0.0.1 port 34194 ssh2: ED25519 SHA256:Mb2Gjo9SIZMwMxjvXYye1FHbwXJrl6t8s6i4vJXmFaM",
	"Connection closed by authenticating user root 127.0.0.1 port 34194 [preauth]",
	"kex_exchange_identification: read: Connection reset by peer",
	"Connection reset by 127.0.0.1 port 34208",
	"Accepted publickey for mas4h-tunnel from ::ffff:198.18.0.2 port 65535 ssh2: ED25519-SK " + fp + "\r\n",
	"Timeout, client not responding from user mas4h-tunnel 2001:db8::7 port 1",
}

// FuzzParse: ParseAccepted and ParseClosed take exactly the lines of
// sshd's shape (a reference regular expression, net/netip for the address,
// a port of 1-65535) and nothing else, never the same line; what they take
// holds what the line says — a user by names.ValidUser, a fingerprint that
// is SHA256: and the unpadded base64 of 32 bytes, as sshd prints it, an
// address without zone or IPv4-mapping — and reads back the same from the
// line sshd would write for it.
func FuzzParse(f *testing.F) {
	for _, l := range sshdLogLines {
		f.Add(l)
	}
	const user, addr, port = `([a-z_][a-z0-9_-]{0,31})`, `([^ ]+)`, `([1-9][0-9]{0,4})`
	// A SHA-256 is 256 bits, 43 base64 digits: the last one's low 2 bits are 0.
	acceptedRE := regexp.MustCompile(`^Accepted publickey for ` + user + ` from ` + addr + ` port ` + port +
		` ssh2: ([A-Z0-9-]{2,16}) (SHA256:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048])$`)
	closedRE := regexp.MustCompile(`^(?:(?:Disconnected from user|Timeout, client not responding from user) [a-z_][a-z0-9_-]{0,31} |Connection (?:closed|reset) by )` +
		addr + ` port ` + port + `$`)
	remote := func(a, p string) (netip.AddrPort, bool) {
		ip, err := netip.ParseAddr(a)
		n, perr := strconv.ParseUint(p, 10, 16)
		if err != nil || perr != nil || ip.Zone() != "" {
			return netip.AddrPort{}, false
		}
		return netip.AddrPortFrom(ip.Unmap(), uint16(n)), true
	}
	f.Fuzz(func(t *testing.T, line string) {
		a, aok := ParseAccepted(line)
		c, cok := ParseClosed(line)
		if aok && cok {
			t.Fatalf("%q is both a login and an end: %+v, %+v", line, a, c)
		}
		trimmed := strings.TrimRight(line, "\r\n")

		var want Accepted
		wok := false
		if m := acceptedRE.FindStringSubmatch(trimmed); m != nil {
			if r, ok := remote(m[2], m[3]); ok {
				want, wok = Accepted{User: m[1], Remote: r, KeyType: m[4], Fingerprint: m[5]}, true
			}
		}
		if aok != wok || a != want {
			t.Fatalf("ParseAccepted(%q) = %+v, %v; want %+v, %v", line, a, aok, want, wok)
		}
		if aok {
			raw, err := base64.RawStdEncoding.Strict().DecodeString(strings.TrimPrefix(a.Fingerprint, "SHA256:"))
			if err != nil || len(raw) != 32 || "SHA256:"+base64.RawStdEncoding.EncodeToString(raw) != a.Fingerprint {
				t.Fatalf("fingerprint %q is not SHA256: and a SHA-256 in unpadded base64 (%v)", a.Fingerprint, err)
			}
			if !names.ValidUser(a.User) || !a.Remote.IsValid() || a.Remote.Port() == 0 || a.Remote.Addr().Is4In6() || a.Remote.Addr().Zone() != "" {
				t.Fatalf("ParseAccepted(%q) = %+v", line, a)
			}
			again := fmt.Sprintf("Accepted publickey for %s from %s port %d ssh2: %s %s", a.User, a.Remote.Addr(), a.Remote.Port(), a.KeyType, a.Fingerprint)
			if b, ok := ParseAccepted(again); !ok || b != a {
				t.Fatalf("%q -> %+v -> %q -> %+v, %v", line, a, again, b, ok)
			}
		}

		var wantC Closed
		wcok := false
		if m := closedRE.FindStringSubmatch(trimmed); m != nil {
			if r, ok := remote(m[1], m[2]); ok {
				wantC, wcok = Closed{Remote: r}, true
			}
		}
		if cok != wcok || c != wantC {
			t.Fatalf("ParseClosed(%q) = %+v, %v; want %+v, %v", line, c, cok, wantC, wcok)
		}
		if cok {
			if !c.Remote.IsValid() || c.Remote.Port() == 0 || c.Remote.Addr().Is4In6() || c.Remote.Addr().Zone() != "" {
				t.Fatalf("ParseClosed(%q) = %+v", line, c)
			}
			again := fmt.Sprintf("Connection closed by %s port %d", c.Remote.Addr(), c.Remote.Port())
			if d, ok := ParseClosed(again); !ok || d != c {
				t.Fatalf("%q -> %+v -> %q -> %+v, %v", line, c, again, d, ok)
			}
		}
	})
}
