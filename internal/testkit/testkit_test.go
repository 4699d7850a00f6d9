package testkit

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func TestKey(t *testing.T) {
	k := NewKey(t, "pi-1")
	path := filepath.Join(t.TempDir(), "id")
	k.Write(t, path)
	priv, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(priv)
	if err != nil || string(signer.PublicKey().Marshal()) != string(k.Public.Marshal()) {
		t.Fatalf("the written private key does not parse back to the key: %v", err)
	}
	pub, _ := os.ReadFile(path + ".pub")
	parsed, _, _, _, err := ssh.ParseAuthorizedKey(pub)
	if err != nil || ssh.FingerprintSHA256(parsed) != k.Fingerprint() {
		t.Fatalf("the .pub file: %v", err)
	}
	if !strings.HasPrefix(k.AuthorizedKey, "ssh-ed25519 AAAA") || strings.Count(k.AuthorizedKey, " ") != 1 || strings.Contains(k.AuthorizedKey, "\n") {
		t.Errorf("authorized key %q", k.AuthorizedKey)
	}
	for _, p := range []string{path, path + ".pub"} {
		fi, _ := os.Stat(p)
		if want := map[bool]os.FileMode{true: 0o600, false: 0o644}[p == path]; fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode(), want)
		}
	}
	if NewKey(t, "other").Fingerprint() == k.Fingerprint() {
		t.Error("two keys are the same")
	}
}

func TestBuffer(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				b.Write([]byte("x"))
				_ = b.String()
			}
		})
	}
	wg.Wait()
	if len(b.String()) != 400 || !b.Contains("xx") {
		t.Errorf("buffer holds %d bytes", len(b.String()))
	}
}

func TestGolden(t *testing.T) {
	path := filepath.Join(t.TempDir(), "testdata", "x.golden")
	*update = true
	Golden(t, path, []byte("plan\n"))
	*update = false
	Golden(t, path, []byte("plan\n"))
	ft := &fakeT{}
	Golden(ft, path, []byte("other\n"))
	if !ft.failed || !strings.Contains(ft.msg, "-update") {
		t.Errorf("a difference: failed %v, %q", ft.failed, ft.msg)
	}
}

func TestEventually(t *testing.T) {
	n := 0
	Eventually(t, 10*time.Second, func() bool { n++; return n == 3 }, "never")
	if n != 3 {
		t.Errorf("cond ran %d times, want 3", n)
	}
	ft := &fakeT{}
	func() {
		defer func() { recover() }() // fakeT.Fatalf panics to stop, as FailNow would
		Eventually(ft, 30*time.Millisecond, func() bool { return false }, "port %d still open", 22)
	}()
	if !ft.failed || !strings.Contains(ft.msg, "port 22 still open") {
		t.Errorf("a false condition: failed %v, %q", ft.failed, ft.msg)
	}
	if Wait(0, func() bool { return true }) != true {
		t.Error("Wait(0) of a true condition")
	}
}

// fakeT records a failure instead of failing the test.
type fakeT struct {
	testing.TB
	failed bool
	msg    string
}

func (f *fakeT) Helper() {}
func (f *fakeT) Errorf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
}
func (f *fakeT) Fatalf(format string, args ...any) {
	f.Errorf(format, args...)
	panic("fatal")
}
func (f *fakeT) Fatal(args ...any) { f.failed = true; panic("fatal") }
