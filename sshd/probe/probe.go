// Package probe checks a forwarded port end to end from the slave side: it
// connects to the port a device leased and reads what only the device-side
// service can send (an SSH banner, an HTTP answer, a pattern).
package probe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Probe checks a forwarded port from the slave side. Connecting alone proves
// nothing: sshd accepts on a forwarded port whatever the device's state, so
// every probe reads something that only the device-side service can send.
type Probe struct {
	Kind   string // ssh-banner, banner, send-expect, http, none
	Send   string
	Expect *regexp.Regexp
}

// Probe kinds.
const (
	SSHBanner  = "ssh-banner"
	Banner     = "banner"
	SendExpect = "send-expect"
	HTTP       = "http"
	None       = "none"
)

// Parse turns a forward's probe spec into a Probe. An empty spec picks
// the default from the device-side target port: ssh-banner for 22, http for
// the usual web ports, none otherwise (a service that speaks first is not
// something mas4h can assume).
func Parse(spec, target string) (Probe, error) {
	if spec == "" {
		_, port, _ := net.SplitHostPort(target)
		switch port {
		case "22":
			return Probe{Kind: SSHBanner}, nil
		case "80", "8080", "8000", "8888":
			return Probe{Kind: HTTP}, nil
		}
		return Probe{Kind: None}, nil
	}
	kind, arg, hasArg := strings.Cut(spec, ":")
	switch kind {
	case SSHBanner, HTTP, None:
		if hasArg {
			return Probe{}, fmt.Errorf("probe %s takes no argument", kind)
		}
		return Probe{Kind: kind}, nil
	case Banner:
		re, err := regexp.Compile(arg)
		if err != nil {
			return Probe{}, fmt.Errorf("probe banner: %w", err)
		}
		return Probe{Kind: kind, Expect: re}, nil
	case SendExpect:
		i := strings.LastIndex(arg, "|")
		if i <= 0 {
			return Probe{}, errors.New("probe send-expect wants TEXT|REGEX")
		}
		re, err := regexp.Compile(arg[i+1:])
		if err != nil {
			return Probe{}, fmt.Errorf("probe send-expect: %w", err)
		}
		send, err := unescape(arg[:i])
		if err != nil {
			return Probe{}, fmt.Errorf("probe send-expect: %w", err)
		}
		return Probe{Kind: kind, Send: send, Expect: re}, nil
	}
	return Probe{}, fmt.Errorf("unknown probe kind %q", kind)
}

// unescape reads \r \n \t \\ in a send-expect text, so that line-based
// protocols can be probed from a command-line flag.
func unescape(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	u, err := strconv.Unquote(`"` + strings.ReplaceAll(s, `"`, `\"`) + `"`)
	if err != nil {
		return "", fmt.Errorf("bad escape in %q", s)
	}
	return u, nil
}

// maxProbeRead bounds what a probe reads from a device.
const maxProbeRead = 4096

// Run probes addr within timeout. nil means healthy; the error says what
// was wrong, for the event log.
func (p Probe) Run(ctx context.Context, addr string, timeout time.Duration) error {
	if p.Kind == None {
		return nil
	}
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	d := net.Dialer{Deadline: deadline}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer abort(conn)
	conn.SetDeadline(deadline)
	return p.run(ctx, conn)
}

// run speaks the probe's protocol on an open connection.
func (p Probe) run(ctx context.Context, conn net.Conn) error {
	switch p.Kind {
	case HTTP:
		if _, err := conn.Write([]byte("HEAD / HTTP/1.0\r\nHost: localhost\r\nUser-Agent: mas4h-probe\r\n\r\n")); err != nil {
			return fmt.Errorf("sending HEAD: %w", err)
		}
	case SendExpect:
		if _, err := conn.Write([]byte(p.Send)); err != nil {
			return fmt.Errorf("sending probe text: %w", err)
		}
	}
	// The answer is judged as each byte arrives, as if read one by one: a
	// pattern matches (or a prefix fails) however the bytes were split.
	var small [64]byte
	got := small[:0]
	for len(got) < maxProbeRead {
		if len(got) == cap(got) {
			got = append(make([]byte, 0, maxProbeRead), got...)
		}
		n, err := conn.Read(got[len(got):min(cap(got), maxProbeRead)])
		for i := len(got) + 1; i <= len(got)+n; i++ {
			if done, verdict := p.judge(got[:i]); done {
				if verdict == nil && p.Kind == SSHBanner {
					greet(conn)
				}
				return verdict
			}
		}
		got = got[:len(got)+n]
		if err != nil {
			return p.failure(got, err)
		}
	}
	return fmt.Errorf("expected text not found in the first %d bytes", maxProbeRead)
}

// judge says whether the answer so far settles the probe, and how.
func (p Probe) judge(got []byte) (bool, error) {
	switch p.Kind {
	case SSHBanner:
		if len(got) >= 4 {
			if !bytes.HasPrefix(got, []byte("SSH-")) {
				return true, fmt.Errorf("no SSH banner: read %q", got)
			}
			return true, nil
		}
	case HTTP:
		if len(got) >= 5 {
			if !bytes.HasPrefix(got, []byte("HTTP/")) {
				return true, fmt.Errorf("no HTTP answer: read %q", got)
			}
			return true, nil
		}
	default:
		if p.Expect.Match(got) {
			return true, nil
		}
	}
	return false, nil
}

// Identification is what the ssh-banner probe sends as an SSH client's
// identification string once the server's banner is read. An OpenSSH
// server that got no identification before the connection closed logs two
// lines, one of them an error ("kex_exchange_identification: Connection
// closed by remote host"); one that got one logs a single INFO line
// ("Connection closed by ... [preauth]"), and names "mas4h-probe" in its
// debug log. Measured with OpenSSH 9.2 as the device's sshd, through a real
// tunnel: see the README's liveness section.
const Identification = "SSH-2.0-mas4h-probe\r\n"

// greet sends the probe's identification string. A failure changes nothing:
// the banner already proved the forward works.
func greet(conn net.Conn) {
	_, _ = conn.Write([]byte(Identification))
}

// abort closes a probe's connection with a reset: the probe has what it
// came for, and a graceful close would leave a TIME_WAIT socket behind for
// a minute per probe (tens of thousands on a big slave, each one more line
// for every discovery to read) and cost both ends a FIN exchange. The
// device never sees the reset: the probe ends at the slave's sshd, and the
// device's ssh client closes its own connection to the target with a FIN
// (a greeted OpenSSH target logs one INFO line either way).
func abort(conn net.Conn) {
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetLinger(0)
	}
	conn.Close()
}

func (p Probe) failure(got []byte, err error) error {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		if len(got) == 0 {
			return errors.New("no answer within the timeout")
		}
		return fmt.Errorf("answer %q did not match within the timeout", truncate(got))
	case len(got) == 0:
		return errors.New("closed without a byte (the device's target refused or the forward is broken)")
	}
	return fmt.Errorf("closed after %q: %v", truncate(got), err)
}

func truncate(b []byte) []byte {
	if len(b) > 60 {
		return b[:60]
	}
	return b
}
