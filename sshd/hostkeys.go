package sshd

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"os"

	"github.com/mas4h/mas4h/atomicfile"
	"golang.org/x/crypto/ssh"
)

// HostKey is one of the slave's host keys.
type HostKey struct {
	Path        string
	Fingerprint string
	Public      string // authorized_keys form, for devices to pin
}

// ensureHostKey creates an ed25519 host key once and keeps it for the slave's
// life. Only ed25519: the algorithm policy admits no client that lacks it
// (those that lack it also lack rsa-sha2), so an RSA key would serve no one.
// The private key belongs to the tunnel user, mode 0600, as sshd requires.
func ensureHostKey(path string, uid, gid int) (HostKey, error) {
	if _, err := os.Stat(path); os.IsNotExist(err) {
		_, priv, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return HostKey{}, fmt.Errorf("generating host key: %w", err)
		}
		block, err := ssh.MarshalPrivateKey(priv, "mas4h host key")
		if err != nil {
			return HostKey{}, fmt.Errorf("encoding host key: %w", err)
		}
		signer, err := ssh.NewSignerFromKey(priv)
		if err != nil {
			return HostKey{}, fmt.Errorf("encoding host key: %w", err)
		}
		if err := atomicfile.Write(path+".pub", ssh.MarshalAuthorizedKey(signer.PublicKey()), 0o644, atomicfile.Owner(uid, gid)); err != nil {
			return HostKey{}, err
		}
		if err := atomicfile.Write(path, pem.EncodeToMemory(block), 0o600, atomicfile.Owner(uid, gid)); err != nil {
			return HostKey{}, err
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return HostKey{}, fmt.Errorf("reading host key: %w", err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return HostKey{}, fmt.Errorf("host key %s does not parse: %w", path, err)
	}
	if err := os.Chown(path, uid, gid); err != nil {
		return HostKey{}, fmt.Errorf("host key %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return HostKey{}, fmt.Errorf("host key %s: %w", path, err)
	}
	pub := signer.PublicKey()
	return HostKey{
		Path:        path,
		Fingerprint: ssh.FingerprintSHA256(pub),
		Public:      string(ssh.MarshalAuthorizedKey(pub)[:len(ssh.MarshalAuthorizedKey(pub))-1]),
	}, nil
}
