package registry

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/sshd/probe"
)

func FuzzParsePublicKey(f *testing.F) {
	f.Add([]byte(dsaLine))
	f.Add([]byte("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq5W7zQ8n0oZ9m3mT0q2m6N8zZ4q7vJxCk2Qf0sX5hY x"))
	f.Add([]byte("restrict ssh-ed25519 AAAA\n"))
	f.Add([]byte("-----BEGIN OPENSSH PRIVATE KEY-----\n"))
	f.Add([]byte("\n# c\n\n"))
	f.Add([]byte("sk-ssh-ed25519@openssh.com AAAA"))
	f.Fuzz(func(t *testing.T, data []byte) {
		k, err := ParsePublicKey(data)
		if err == nil {
			if CheckKey(k) != nil {
				t.Fatalf("ParsePublicKey accepted a key CheckKey refuses: %s", AuthorizedKey(k))
			}
			if !strings.HasPrefix(Fingerprint(k), "SHA256:") {
				t.Fatal("bad fingerprint")
			}
		}
	})
}

// FuzzParseForwardSpec: what parses is valid again as stored, renders
// (String) to a spec that parses to the same, carries a target that is a
// plain host:port, and a probe the slave can run (probe.Parse): the slave
// must be able to run what the operator was told is fine.
func FuzzParseForwardSpec(f *testing.F) {
	for _, s := range []string{
		"ssh=localhost:22", "web=[::1]:80,probe=http", "x=1.2.3.4:5,probe=banner:^SSH-",
		"m=h:1,probe=send-expect:a|b|c", "a;rm -rf /", "x=\n:1", "=:", ",probe=",
		"web=192.168.1.10:80,probe=http", `redis=localhost:6379,probe=send-expect:PING\r\n|^\+PONG`,
		"ssh=LOCALHOST:0022", "db=[0:0::1]:5432,probe=none", "s=h:22,probe=banner:a{1,3}",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := ParseForwardSpec(s)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseForwardSpec(%q): %v is not ErrInvalid", s, err)
			}
			return
		}
		// What is accepted once must be accepted again, unchanged: the
		// stored form is re-validated by AddDevice.
		again, err := spec.normalize()
		if err != nil || again != spec {
			t.Fatalf("ParseForwardSpec(%q) = %+v, which normalizes to %+v, %v", s, spec, again, err)
		}
		// The CLI sends the master what it parsed, rendered.
		if r, err := ParseForwardSpec(spec.String()); err != nil || r != spec {
			t.Fatalf("ParseForwardSpec(%q) = %+v, rendered %q, which parses to %+v, %v", s, spec, spec.String(), r, err)
		}
		if strings.ContainsAny(spec.Target, " ;$`\\'\"\n\x00") {
			t.Fatalf("target %q carries shell metacharacters", spec.Target)
		}
		host, port, err := net.SplitHostPort(spec.Target)
		if p, perr := strconv.Atoi(port); err != nil || perr != nil || p < 1 || p > 65535 || strconv.Itoa(p) != port || host == "" {
			t.Fatalf("target %q is not host:port with a port of 1-65535", spec.Target)
		}
		if a, err := netip.ParseAddr(host); err == nil && (a.Zone() != "" || a.Is4In6() || a.String() != host) {
			t.Fatalf("target %q: address %v not in its plain form", spec.Target, a)
		}
		if _, err := probe.Parse(spec.Probe, spec.Target); err != nil {
			t.Fatalf("ParseForwardSpec(%q) accepts probe %q, the slave refuses it: %v", s, spec.Probe, err)
		}
	})
}
