// Package testkit holds the helpers mas4h's tests share: a test key, a
// locked buffer, golden files and Eventually, which waits for a condition
// instead of sleeping a fixed time (the house rule: no fixed sleeps
// waiting for something to happen). It is imported by tests only.
package testkit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// Key is a fresh ed25519 key in the forms tests need.
type Key struct {
	Private ed25519.PrivateKey
	Signer  ssh.Signer
	Public  ssh.PublicKey
	// AuthorizedKey is the public key as an authorized_keys line, without
	// comment or newline: "ssh-ed25519 AAAA…".
	AuthorizedKey string
	// PEM is the private key in OpenSSH's format, as ssh-keygen writes it.
	PEM []byte
}

// NewKey generates a key; comment goes into its PEM form.
func NewKey(t testing.TB, comment string) Key {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		t.Fatal(err)
	}
	return Key{
		Private:       priv,
		Signer:        signer,
		Public:        signer.PublicKey(),
		AuthorizedKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))),
		PEM:           pem.EncodeToMemory(block),
	}
}

// Fingerprint is the key's SHA256 fingerprint, as sshd's %f.
func (k Key) Fingerprint() string { return ssh.FingerprintSHA256(k.Public) }

// Write writes the private key to path (mode 0600) and the public one to
// path.pub (0644), as ssh-keygen would.
func (k Key) Write(t testing.TB, path string) {
	t.Helper()
	if err := os.WriteFile(path, k.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".pub", []byte(k.AuthorizedKey+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// Buffer is a bytes.Buffer safe for concurrent use: a process's output
// written by one goroutine and read by the test in another.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Contains reports whether what was written so far holds s.
func (b *Buffer) Contains(s string) bool { return strings.Contains(b.String(), s) }

var update = flag.Bool("update", false, "rewrite the golden files and recorded test data with what the tests got")

// Updating reports whether the tests run with -update: recorded test data
// (golden files, seed corpora captured from the live system) is rewritten
// instead of checked.
func Updating() bool { return *update }

// Golden compares got with the file at path (conventionally
// testdata/NAME.golden); `go test -update` writes got there instead.
func Golden(t testing.TB, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// Poll intervals of Eventually: short at first, for what is nearly there,
// then longer, for conditions that run a program.
const (
	firstPoll = 10 * time.Millisecond
	maxPoll   = 200 * time.Millisecond
)

// Eventually polls cond until it is true, and fails the test with the
// message (format, args) if it is still false after timeout. cond runs in
// the caller's goroutine, so it may itself call t.Fatal (a process that
// exited while it was awaited). The timeout is a bound, not a measure:
// tests assert what happened, never how fast.
func Eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	if !Wait(timeout, cond) {
		t.Fatalf("after %s: %s", timeout, fmt.Sprintf(format, args...))
	}
}

// Wait polls cond as Eventually does and reports whether it became true
// within timeout, for a caller that reports the failure its own way.
func Wait(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	pause := firstPoll
	for {
		if cond() {
			return true
		}
		left := time.Until(deadline)
		if left <= 0 {
			return false
		}
		time.Sleep(min(pause, left))
		pause = min(2*pause, maxPoll)
	}
}
