package authkeys

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/registry"
)

func newKey(t testing.TB) ssh.PublicKey {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func hookArgs(user string, k ssh.PublicKey) []string {
	return []string{user, ssh.FingerprintSHA256(k), k.Type(), base64.StdEncoding.EncodeToString(k.Marshal())}
}

func TestParseHookArgs(t *testing.T) {
	k, other := newKey(t), newKey(t)
	good := hookArgs("mas4h-tunnel", k)
	if _, _, err := ParseHookArgs(good); err != nil {
		t.Fatalf("valid arguments refused: %v", err)
	}
	bad := map[string][]string{
		"too few":              good[:3],
		"too many":             append(append([]string{}, good...), "x"),
		"shell in user":        {"a;rm -rf /", good[1], good[2], good[3]},
		"dollar user":          {"$(id)", good[1], good[2], good[3]},
		"empty user":           {"", good[1], good[2], good[3]},
		"fingerprint of other": {good[0], ssh.FingerprintSHA256(other), good[2], good[3]},
		"wrong type":           {good[0], good[1], "ssh-rsa", good[3]},
		"truncated key":        {good[0], good[1], good[2], good[3][:20]},
		"not base64":           {good[0], good[1], good[2], "!!!"},
		"huge key":             {good[0], good[1], good[2], strings.Repeat("A", 1<<20)},
		"newline in type":      {good[0], good[1], "ssh-ed25519\nx", good[3]},
	}
	for name, args := range bad {
		t.Run(name, func(t *testing.T) {
			if _, _, err := ParseHookArgs(args); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestDecide(t *testing.T) {
	k, other := newKey(t), newKey(t)
	dev := registry.Device{Name: "pi", PublicKey: registry.AuthorizedKey(k), Status: registry.StatusActive,
		Forwards: []registry.Forward{{Name: "ssh", Target: "localhost:22", RemotePort: 20001}, {Name: "web", Target: "localhost:80", RemotePort: 20002}}}
	r := Decide("mas4h-tunnel", "mas4h-tunnel", k, dev, true)
	if !r.Allow || len(r.Lines) != 1 {
		t.Fatalf("active device refused: %+v", r)
	}
	want := `restrict,port-forwarding,permitlisten="localhost:20001",permitlisten="127.0.0.1:20001",permitlisten="[::1]:20001",permitlisten="localhost:20002",permitlisten="127.0.0.1:20002",permitlisten="[::1]:20002" ` + registry.AuthorizedKey(k)
	if r.Lines[0] != want {
		t.Errorf("line:\n got %s\nwant %s", r.Lines[0], want)
	}
	revoked := dev
	revoked.Status = registry.StatusRevoked
	for name, c := range map[string]struct {
		user  string
		key   ssh.PublicKey
		dev   registry.Device
		found bool
	}{
		"other user":   {"root", k, dev, true},
		"unknown":      {"mas4h-tunnel", k, registry.Device{}, false},
		"revoked":      {"mas4h-tunnel", k, revoked, true},
		"key mismatch": {"mas4h-tunnel", other, dev, true},
	} {
		t.Run(name, func(t *testing.T) {
			if r := Decide("mas4h-tunnel", c.user, c.key, c.dev, c.found); r.Allow || len(r.Lines) != 0 || r.Reason == "" {
				t.Fatalf("allowed or no reason: %+v", r)
			}
		})
	}
}

func FuzzParseHookArgs(f *testing.F) {
	k := newKey(f)
	a := hookArgs("mas4h-tunnel", k)
	f.Add(a[0], a[1], a[2], a[3])
	f.Add("root", "SHA256:x", "ssh-rsa", "AAAA")
	f.Add("", "", "", "")
	f.Fuzz(func(t *testing.T, user, fp, typ, key string) {
		req, parsed, err := ParseHookArgs([]string{user, fp, typ, key})
		if err != nil {
			return
		}
		// Whatever got through must be self-consistent.
		if ssh.FingerprintSHA256(parsed) != req.Fingerprint || parsed.Type() != req.KeyType {
			t.Fatalf("inconsistent accept: %+v", req)
		}
	})
}
