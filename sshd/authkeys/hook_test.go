package authkeys

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/registry"
)

func newKey(t testing.TB) ssh.PublicKey { return testkit.NewKey(t, "").Public }

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
		"md5 fingerprint":      {good[0], ssh.FingerprintLegacyMD5(k), good[2], good[3]},
		"newline in key":       {good[0], good[1], good[2], good[3][:20] + "\n" + good[3][20:]},
		"key of other":         {good[0], good[1], good[2], hookArgs("x", other)[3]},
	}
	for name, args := range bad {
		t.Run(name, func(t *testing.T) {
			if _, _, err := ParseHookArgs(args); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

// `mas4h authkeys --cache-only`, the lean hook's fallback, answers from the
// cache without asking the daemon, within its budget.
func TestMainCacheOnly(t *testing.T) {
	k, other := newKey(t), newKey(t)
	dir := t.TempDir()
	c, err := OpenCache(PathsFor(dir).Cache)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	dev := registry.Device{Name: "pi", Fingerprint: ssh.FingerprintSHA256(k), PublicKey: registry.AuthorizedKey(k), Status: registry.StatusActive,
		Forwards: []registry.Forward{{Name: "ssh", Target: "localhost:22", RemotePort: 20001}}}
	if err := c.SetTunnelUser(ctx, "mas4h-tunnel"); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(ctx, dev, time.Now().Add(-time.Hour)); err != nil { // expired still counts
		t.Fatal(err)
	}
	c.Close()
	// A daemon that would allow anything: --cache-only must not ask it.
	if err := os.Mkdir(filepath.Join(dir, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", PathsFor(dir).Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			var req HookRequest
			json.NewDecoder(conn).Decode(&req)
			json.NewEncoder(conn).Encode(HookReply{Allow: true, Lines: []string{"from the daemon"}})
			conn.Close()
		}
	}()
	want, _ := AuthorizedLine(dev)
	for _, c := range []struct {
		flags []string
		key   ssh.PublicKey
		out   string
	}{
		{[]string{"--cache-only", "--budget-ms", "1500"}, k, want + "\n"},
		{[]string{"--cache-only"}, other, ""},
		{nil, other, "from the daemon\n"},
	} {
		var out bytes.Buffer
		args := append(append(c.flags, "--state-dir", dir, "--"), hookArgs("mas4h-tunnel", c.key)...)
		code := Main(ctx, args, &out)
		if out.String() != c.out || (code == 0) != (c.out != "") {
			t.Errorf("%q: exit %d, output %q, want %q", c.flags, code, out.String(), c.out)
		}
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
