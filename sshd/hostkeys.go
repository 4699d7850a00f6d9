package sshd

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/atomicfile"
	"github.com/mas4h/mas4h/sshd/statedir/nofollow"
)

// HostKey is one of the slave's host keys.
type HostKey struct {
	Path        string
	Fingerprint string
	Public      string // authorized_keys form, for devices to pin
}

// maxHostKey bounds the read of a private key file (an ed25519 key in
// OpenSSH's format is about 400 bytes).
const maxHostKey = 64 << 10

// ensureHostKey creates an ed25519 host key once and keeps it for the slave's
// life. Only ed25519: the algorithm policy admits no client that lacks it
// (those that lack it also lack rsa-sha2), so an RSA key would serve no one.
// The private key is root's, readable by the tunnel group (root:gid
// nofollow.KeyMode): sshd, running as the tunnel user, must read it, and
// accepts a key it does not own; the tunnel user can neither change nor
// replace it (its directory is root's, prepared by nofollow.PrepareSSHD).
// The key is read through a descriptor opened without following a link.
func ensureHostKey(path string, gid int) (HostKey, error) {
	f, err := nofollow.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		if err := createHostKey(path, gid); err != nil {
			return HostKey{}, err
		}
		f, err = nofollow.Open(path)
	}
	if err != nil {
		return HostKey{}, fmt.Errorf("host key: %w", err)
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return HostKey{}, fmt.Errorf("host key %s: %w", path, err)
	}
	if st.Uid != 0 {
		// nofollow.PrepareSSHD made it root's; someone changed it since.
		return HostKey{}, &nofollow.UnsafeError{Path: path, Why: fmt.Sprintf("is owned by uid %d, not root", st.Uid)}
	}
	b, err := io.ReadAll(io.LimitReader(f, maxHostKey))
	if err != nil {
		return HostKey{}, fmt.Errorf("reading host key %s: %w", path, err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		return HostKey{}, fmt.Errorf("host key %s does not parse: %w", path, err)
	}
	if err := unix.Fchown(int(f.Fd()), 0, gid); err != nil {
		return HostKey{}, fmt.Errorf("host key %s: %w", path, err)
	}
	if err := unix.Fchmod(int(f.Fd()), uint32(nofollow.KeyMode)); err != nil {
		return HostKey{}, fmt.Errorf("host key %s: %w", path, err)
	}
	pub := signer.PublicKey()
	line := ssh.MarshalAuthorizedKey(pub)
	// The .pub is for people; it follows the private key, whatever it held.
	if _, err := atomicfile.WriteIfChanged(path+".pub", line, nofollow.PubMode, atomicfile.Owner(0, 0)); err != nil {
		return HostKey{}, err
	}
	return HostKey{
		Path:        path,
		Fingerprint: ssh.FingerprintSHA256(pub),
		Public:      string(line[:len(line)-1]),
	}, nil
}

// createHostKey writes a new key; atomicfile.Create never replaces what is
// there (a link included).
func createHostKey(path string, gid int) error {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return fmt.Errorf("generating host key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "mas4h host key")
	if err != nil {
		return fmt.Errorf("encoding host key: %w", err)
	}
	return atomicfile.Create(path, pem.EncodeToMemory(block), nofollow.KeyMode, atomicfile.Owner(0, gid))
}
