package registry

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// dsaLine was made once with `ssh-keygen -t dsa` (OpenSSH 9.2); current
// OpenSSH cannot generate DSA keys any more.
const dsaLine = "ssh-dss AAAAB3NzaC1kc3MAAACBAME+NGlMZvJeajcy+omfdK3sfgLI1dUz1vM8MUSk2n2tyFrJ6IFzaD3r2IdccD1MEsRlGfDlaj+5bmIGZMfmqWS36gLbmnHb33QADeTf9+ysZaqiAmz5e0FMX6yYLnxBfpBji7q2TcgylR3jWnflyQKcn1mxZrOsDKtWgQksJPhxAAAAFQDaepX9fbdHi3HV6ivQ2G8JicvtrQAAAIAEvw17Cu4WaFc3yomPd7IC6opa87A3BpqN26AnvJDS9gBPFU+RHjCcXud0flYQLFzZCMp7PfnrYzBuX4luzsop0jAvw7rfbelmIVGyl4c7t4axtIkKCnWPacPr3ny/fi7/EgMcaxlf5kos1s/Akb0RiQBl4UEEqs9hFPljX8WwCwAAAIATs7lc8WaGe9bv8X0b5M689YZRAJZzIjunxBhkE2+ApNtMzTrvWsowzJgqUNv3/KCDhGXAqTm0QWkSluMaP4zb91uFlEZJKvB1+zDOaCI2KxU2urn1VlwOoaNx6w1LK84h6igjyqYNS+sC7/dm5duTNMknjFHhRtetQ7FLML/YEQ== old@box"

func authLine(t *testing.T, pub any, comment string) string {
	t.Helper()
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	line := AuthorizedKey(k)
	if comment != "" {
		line += " " + comment
	}
	return line
}

// skEd25519Line builds a security-key public key line by hand: no hardware
// is needed to write one down.
func skEd25519Line(t *testing.T) string {
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	blob := ssh.Marshal(struct {
		Type        string
		Key         []byte
		Application string
	}{ssh.KeyAlgoSKED25519, pub, "ssh:"})
	k, err := ssh.ParsePublicKey(blob)
	if err != nil {
		t.Fatal(err)
	}
	return AuthorizedKey(k) + " yubi"
}

func TestParsePublicKey(t *testing.T) {
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	ec256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ec384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	privBlock, err := ssh.MarshalPrivateKey(edPriv, "me@laptop")
	if err != nil {
		t.Fatal(err)
	}
	privPEM := string(pem.EncodeToMemory(privBlock))
	rsaPrivPEM := string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: []byte("not really")}))

	ed := authLine(t, edPub, "pi@kitchen")
	tests := []struct {
		name     string
		in       string
		wantType string
		wantErr  []string // substrings of the error; nil means success
	}{
		{"ed25519", ed, "ssh-ed25519", nil},
		{"ed25519 no comment", authLine(t, edPub, ""), "ssh-ed25519", nil},
		{"blank and comment lines around", "\n# my device key\n\n  " + ed + "  \r\n\n", "ssh-ed25519", nil},
		{"ecdsa p256", authLine(t, &ec256.PublicKey, "r1"), "ecdsa-sha2-nistp256", nil},
		{"ecdsa p384", authLine(t, &ec384.PublicKey, ""), "ecdsa-sha2-nistp384", nil},
		{"rsa 2048", authLine(t, &rsa2048.PublicKey, "nas"), "ssh-rsa", nil},
		{"rsa 1024", authLine(t, &rsa1024.PublicKey, ""), "", []string{"1024 bits", "2048"}},
		{"dsa", dsaLine, "", []string{"DSA", "ed25519"}},
		{"security key", skEd25519Line(t), "", []string{"security-key", "unattended"}},
		{"openssh private key", privPEM, "", []string{"PRIVATE key", ".pub"}},
		{"pem rsa private key", rsaPrivPEM, "", []string{"PRIVATE key"}},
		{"putty private key", "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n", "", []string{"PRIVATE key"}},
		{"two keys", ed + "\n" + authLine(t, &ec256.PublicKey, "") + "\n", "", []string{"found 2", "exactly one"}},
		{"key and garbage", ed + "\nhello\n", "", []string{"exactly one line"}},
		{"garbage", "hello world", "", []string{"not an OpenSSH public key"}},
		{"bad base64", "ssh-ed25519 !!!notbase64 x", "", []string{"not an OpenSSH public key"}},
		{"empty", "", "", []string{"empty"}},
		{"only comments", "# nothing here\n\n", "", []string{"empty"}},
		{"restrict option", "restrict " + ed, "", []string{"options", "mas4h"}},
		{"command option", `command="/bin/sh" ` + ed, "", []string{"options"}},
		{"rfc4716", "---- BEGIN SSH2 PUBLIC KEY ----\nAAAA\n---- END SSH2 PUBLIC KEY ----\n", "", []string{"ssh-keygen -i"}},
		{"huge", strings.Repeat("A", maxKeyFileSize+1), "", []string{"bytes"}},
		{"nul bytes", "ssh-ed25519 \x00\x00", "", []string{"not an OpenSSH public key"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			k, err := ParsePublicKey([]byte(tt.in))
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("ParsePublicKey: %v", err)
				}
				if k.Type() != tt.wantType {
					t.Errorf("got %s, want %s", k.Type(), tt.wantType)
				}
				return
			}
			if err == nil {
				t.Fatalf("ParsePublicKey accepted %s", tt.name)
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			// Never echo key material back.
			for _, tok := range strings.Fields(tt.in) {
				if len(tok) >= 16 && !strings.Contains(tok, "-") && strings.Contains(err.Error(), tok) {
					t.Errorf("error echoes key material: %q", err)
				}
			}
		})
	}
}

func TestFingerprintAndAuthorizedKey(t *testing.T) {
	k := newEd25519(t)
	if fp := Fingerprint(k); !strings.HasPrefix(fp, "SHA256:") || fp != ssh.FingerprintSHA256(k) {
		t.Errorf("Fingerprint = %q", fp)
	}
	ak := AuthorizedKey(k)
	if strings.ContainsAny(ak, "\n ") && len(strings.Fields(ak)) != 2 {
		t.Errorf("AuthorizedKey = %q, want \"type base64\"", ak)
	}
	if strings.HasSuffix(ak, "\n") {
		t.Errorf("AuthorizedKey has a trailing newline")
	}
	back, err := ParsePublicKey([]byte(ak))
	if err != nil || Fingerprint(back) != Fingerprint(k) {
		t.Errorf("AuthorizedKey does not round-trip: %v", err)
	}
}
