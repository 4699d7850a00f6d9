package sshsig

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

const ns = "mas4h-slot"

func keys(t *testing.T) map[string]crypto.Signer {
	t.Helper()
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]crypto.Signer{"ed25519": ed, "ecdsa-p256": p256, "ecdsa-p384": p384, "rsa": rk}
}

func pubOf(t *testing.T, k crypto.Signer) ssh.PublicKey {
	t.Helper()
	p, err := ssh.NewPublicKey(k.Public())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestRoundTrip(t *testing.T) {
	msg := []byte("mas4h-slot v1\nmaster=https://m.example:8443\nts=1\n")
	for name, k := range keys(t) {
		t.Run(name, func(t *testing.T) {
			sig, err := Sign(k, ns, msg)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(sig), armorBegin+"\n") || !strings.HasSuffix(string(sig), armorEnd+"\n") {
				t.Errorf("not armored:\n%s", sig)
			}
			pub, err := Verify(string(sig), ns, msg)
			if err != nil {
				t.Fatal(err)
			}
			if string(pub.Marshal()) != string(pubOf(t, k).Marshal()) {
				t.Error("Verify returned another key")
			}
			// The bare base64 (what the shell client sends) verifies too.
			bare := strings.Join(strings.Split(strings.TrimSpace(string(sig)), "\n")[1:len(strings.Split(strings.TrimSpace(string(sig)), "\n"))-1], "")
			if _, err := Verify(bare, ns, msg); err != nil {
				t.Errorf("bare base64: %v", err)
			}
			for what, bad := range map[string]func() error{
				"other message":   func() error { _, err := Verify(string(sig), ns, append(msg, 'x')); return err },
				"other namespace": func() error { _, err := Verify(string(sig), "file", msg); return err },
				"garbage":         func() error { _, err := Verify("AAAA", ns, msg); return err },
				"flipped byte": func() error {
					raw, _ := Decode(string(sig))
					raw[len(raw)-3] ^= 1
					_, err := Verify(string(Armor(raw)), ns, msg)
					return err
				},
			} {
				if err := bad(); !errors.Is(err, ErrInvalid) {
					t.Errorf("%s: %v, want ErrInvalid", what, err)
				}
			}
		})
	}
}

// sshKeygen finds ssh-keygen; without it the interoperability tests are
// skipped unless MAS4H_E2E is set, where they must run.
func sshKeygen(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("ssh-keygen")
	if err != nil {
		if os.Getenv("MAS4H_E2E") != "" {
			t.Fatal("MAS4H_E2E is set but ssh-keygen is missing (Debian: openssh-client)")
		}
		t.Skip("ssh-keygen not installed")
	}
	return p
}

func writeKey(t *testing.T, dir, name string, k crypto.Signer) (priv, pub string) {
	t.Helper()
	block, err := ssh.MarshalPrivateKey(k, name)
	if err != nil {
		t.Fatal(err)
	}
	priv = filepath.Join(dir, name)
	if err := os.WriteFile(priv, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	pub = strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pubOf(t, k))))
	return priv, pub
}

// Signatures made here verify with `ssh-keygen -Y verify`, and those
// ssh-keygen makes verify here, for every key type a device may hold.
func TestInteropWithSSHKeygen(t *testing.T) {
	keygen := sshKeygen(t)
	dir := t.TempDir()
	msg := []byte("mas4h-slot v1\nmaster=https://m.example:8443\nts=1700000000\nnonce=abc\nbody=0123\n")
	msgFile := filepath.Join(dir, "msg")
	os.WriteFile(msgFile, msg, 0o644)
	for name, k := range keys(t) {
		t.Run(name, func(t *testing.T) {
			priv, pub := writeKey(t, dir, name, k)
			allowed := filepath.Join(dir, name+".allowed")
			os.WriteFile(allowed, []byte(`dev namespaces="`+ns+`" `+pub+"\n"), 0o644)

			// Go signs, ssh-keygen verifies.
			sig, err := Sign(k, ns, msg)
			if err != nil {
				t.Fatal(err)
			}
			sigFile := filepath.Join(dir, name+".go.sig")
			os.WriteFile(sigFile, sig, 0o644)
			verify := func(sigFile, namespace string, data []byte) (string, error) {
				c := exec.Command(keygen, "-Y", "verify", "-f", allowed, "-I", "dev", "-n", namespace, "-s", sigFile)
				c.Stdin = strings.NewReader(string(data))
				out, err := c.CombinedOutput()
				return string(out), err
			}
			if out, err := verify(sigFile, ns, msg); err != nil {
				t.Errorf("ssh-keygen -Y verify refused the Go signature: %v: %s", err, out)
			}
			if _, err := verify(sigFile, ns, append(msg, 'x')); err == nil {
				t.Error("ssh-keygen -Y verify accepted the Go signature over another message")
			}
			if _, err := verify(sigFile, "file", msg); err == nil {
				t.Error("ssh-keygen -Y verify accepted the Go signature in another namespace")
			}

			// ssh-keygen signs, Go verifies.
			c := exec.Command(keygen, "-Y", "sign", "-f", priv, "-n", ns, msgFile)
			if out, err := c.CombinedOutput(); err != nil {
				t.Fatalf("ssh-keygen -Y sign: %v: %s", err, out)
			}
			kg, err := os.ReadFile(msgFile + ".sig")
			if err != nil {
				t.Fatal(err)
			}
			os.Remove(msgFile + ".sig")
			got, err := Verify(string(kg), ns, msg)
			if err != nil {
				t.Fatalf("ssh-keygen's signature: %v\n%s", err, kg)
			}
			if string(got.Marshal()) != string(pubOf(t, k).Marshal()) {
				t.Error("ssh-keygen's signature names another key")
			}
			if _, err := Verify(string(kg), "file", msg); !errors.Is(err, ErrInvalid) {
				t.Errorf("ssh-keygen's signature in another namespace: %v", err)
			}
		})
	}
}

func TestDecodeBounds(t *testing.T) {
	if _, err := Decode(strings.Repeat("A", MaxSize+1)); !errors.Is(err, ErrInvalid) {
		t.Errorf("oversized: %v", err)
	}
	if _, err := Decode(armorBegin + "\nAAAA\n"); !errors.Is(err, ErrInvalid) {
		t.Errorf("no END line: %v", err)
	}
}

// FuzzVerify: no input makes Verify panic or accept without a valid
// signature.
func FuzzVerify(f *testing.F) {
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	msg := []byte("mas4h-slot v1\n")
	sig, _ := Sign(k, ns, msg)
	f.Add(string(sig), msg)
	f.Add("AAAA", []byte{})
	f.Fuzz(func(t *testing.T, sig string, m []byte) {
		if _, err := Verify(sig, ns, m); err == nil && string(m) != string(msg) {
			t.Fatalf("a signature verified over %q", m)
		}
	})
}
