package registry

import (
	"strings"
	"testing"
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

func FuzzParseForwardSpec(f *testing.F) {
	for _, s := range []string{
		"ssh=localhost:22", "web=[::1]:80,probe=http", "x=1.2.3.4:5,probe=banner:^SSH-",
		"m=h:1,probe=send-expect:a|b|c", "a;rm -rf /", "x=\n:1", "=:", ",probe=",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		spec, err := ParseForwardSpec(s)
		if err != nil {
			return
		}
		// What is accepted once must be accepted again, unchanged: the
		// stored form is re-validated by AddDevice.
		again, err := spec.normalize()
		if err != nil || again != spec {
			t.Fatalf("ParseForwardSpec(%q) = %+v, which normalizes to %+v, %v", s, spec, again, err)
		}
		if strings.ContainsAny(spec.Target, " ;$`\\'\"\n\x00") {
			t.Fatalf("target %q carries shell metacharacters", spec.Target)
		}
	})
}
