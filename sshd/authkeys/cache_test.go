package authkeys

import (
	"context"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/registry"
)

// Snapshot decodes the cache once per generation: the same slice until a
// write, then the new content.
func TestCacheSnapshot(t *testing.T) {
	c, err := OpenCache(PathsFor(t.TempDir()).Cache)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	dev := func(name string) registry.Device {
		k := newKey(t)
		return registry.Device{Name: name, Fingerprint: ssh.FingerprintSHA256(k), PublicKey: registry.AuthorizedKey(k),
			Status: registry.StatusActive, Forwards: []registry.Forward{{Name: "ssh", Target: "localhost:22", RemotePort: 20001}}}
	}
	if err := c.Put(ctx, dev("a"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	s1, g1, err := c.Snapshot(ctx)
	if err != nil || len(s1) != 1 {
		t.Fatalf("snapshot: %v, %d entries", err, len(s1))
	}
	s2, g2, _ := c.Snapshot(ctx)
	if g2 != g1 || &s2[0] != &s1[0] {
		t.Error("unchanged cache decoded again")
	}
	if err := c.Put(ctx, dev("b"), time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	s3, g3, _ := c.Snapshot(ctx)
	if g3 == g1 || len(s3) != 2 || s3[0].Device.Name != "a" || s3[1].Device.Name != "b" {
		t.Errorf("after a write: generation %d (was %d), %+v", g3, g1, s3)
	}
}
