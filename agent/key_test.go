package agent

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"
)

func testSigners(t *testing.T) map[string]crypto.Signer {
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ec384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	return map[string]crypto.Signer{"ed25519": ed, "ecdsa-p256": ec, "ecdsa-p384": ec384, "rsa": rk}
}

func TestDropbearFormatRoundTrip(t *testing.T) {
	for name, s := range testSigners(t) {
		b, err := marshalDropbear(s)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		k, err := ParseKey(b)
		if err != nil {
			t.Fatalf("%s: parsing our own dropbear key: %v", name, err)
		}
		want, _ := ssh.NewPublicKey(s.Public())
		if k.Format != FormatDropbear || k.Public != string(bytes.TrimSpace(ssh.MarshalAuthorizedKey(want))) {
			t.Errorf("%s: %+v", name, k)
		}
		if _, err := ParseKey(b[:len(b)-3]); err == nil {
			t.Errorf("%s: truncated key accepted", name)
		}
	}
}

// The agent's dropbear files are what dropbear's own tools read and write.
func TestDropbearFormatMatchesDropbearconvert(t *testing.T) {
	if _, err := exec.LookPath("dropbearconvert"); err != nil {
		if os.Getenv("MAS4H_E2E") != "" {
			t.Fatal("MAS4H_E2E is set but dropbearconvert (dropbear-bin) is missing")
		}
		t.Skip("needs dropbearconvert (a failure instead when MAS4H_E2E is set)")
	}
	dir := t.TempDir()
	for name, s := range testSigners(t) {
		block, err := ssh.MarshalPrivateKey(s, "")
		if err != nil {
			t.Fatal(err)
		}
		osshPath := filepath.Join(dir, name+".openssh")
		os.WriteFile(osshPath, pem.EncodeToMemory(block), 0o600)
		k, err := LoadKey(osshPath)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		ours, err := k.Encode(FormatDropbear)
		if err != nil {
			t.Fatal(err)
		}
		// dropbear reads ours...
		oursPath := filepath.Join(dir, name+".ours")
		os.WriteFile(oursPath, ours, 0o600)
		back := filepath.Join(dir, name+".back")
		if out, err := exec.Command("dropbearconvert", "dropbear", "openssh", oursPath, back).CombinedOutput(); err != nil {
			t.Fatalf("%s: dropbearconvert cannot read the agent's dropbear key: %v: %s", name, err, out)
		}
		kb, err := LoadKey(back)
		if err != nil || kb.Public != k.Public {
			t.Errorf("%s: dropbear's reading of our key differs: %v", name, err)
		}
		// ...and we read dropbear's.
		theirs := filepath.Join(dir, name+".theirs")
		if out, err := exec.Command("dropbearconvert", "openssh", "dropbear", osshPath, theirs).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", name, err, out)
		}
		kt, err := LoadKey(theirs)
		if err != nil || kt.Format != FormatDropbear || kt.Public != k.Public {
			t.Errorf("%s: reading dropbearconvert's key: %v %+v", name, err, kt)
		}
		if name == "ed25519" && !bytes.Equal(mustRead(t, theirs), ours) {
			t.Errorf("ed25519: our dropbear encoding differs from dropbearconvert's")
		}
		// OpenSSH format from a dropbear key, for ssh.
		oss, err := kt.Encode(FormatOpenSSH)
		if err != nil {
			t.Fatal(err)
		}
		if k2, err := ParseKey(oss); err != nil || k2.Public != k.Public || k2.Format != FormatOpenSSH {
			t.Errorf("%s: dropbear → openssh: %v", name, err)
		}
	}
}
