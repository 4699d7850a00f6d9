package agent

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"
)

// KeyFormat is how a private key file is encoded.
type KeyFormat int

const (
	FormatOpenSSH  KeyFormat = iota // OpenSSH ("BEGIN OPENSSH PRIVATE KEY") or PEM: what ssh reads
	FormatDropbear                  // dropbear's binary format: what dbclient reads
)

func (f KeyFormat) String() string {
	if f == FormatDropbear {
		return "dropbear"
	}
	return "openssh"
}

// Key is the device's private key as loaded from --key.
type Key struct {
	Path   string
	Format KeyFormat
	Signer crypto.Signer // *ed25519.PrivateKey is stored as ed25519.PrivateKey
	Public string        // authorized_keys form without comment: "ssh-ed25519 AAAA..."
	raw    []byte
}

// KeyError is a key file the agent cannot use. The agent retries with
// backoff (the operator may fix the file) and says what is wrong once.
type KeyError struct {
	Path   string
	Reason string
}

func (e *KeyError) Error() string { return fmt.Sprintf("key file %s: %s", e.Path, e.Reason) }

// maxKeyFile bounds what is read of --key: private keys are a few KiB.
const maxKeyFile = 64 << 10

// LoadKey reads and checks the device's private key. Like ssh, it refuses
// a key that others can read; it also refuses one its owner cannot read
// (mode 0400 unset), which root would otherwise read silently.
func LoadKey(path string) (*Key, error) {
	kerr := func(format string, args ...any) error {
		return &KeyError{Path: path, Reason: fmt.Sprintf(format, args...)}
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, kerr("does not exist; create one with `ssh-keygen -t ed25519 -N '' -f %s` (or dropbearkey -t ed25519 -f %s) and enrol its public key with `mas4h device add NAME --key FILE.pub`", path, path)
	case err != nil:
		return nil, kerr("%v", errors.Unwrap(err))
	case !fi.Mode().IsRegular():
		return nil, kerr("is not a regular file (%s)", fi.Mode().Type())
	case fi.Size() > maxKeyFile:
		return nil, kerr("is %d bytes, too large for a private key", fi.Size())
	case fi.Mode().Perm()&0o077 != 0:
		return nil, kerr("is accessible by others (mode %04o); a private key must be readable by its owner only: chmod 600 %s", fi.Mode().Perm(), path)
	case fi.Mode().Perm()&0o400 == 0:
		return nil, kerr("is not readable by its owner (mode %04o): chmod 600 %s", fi.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, kerr("cannot read it: %v", errors.Unwrap(err))
	}
	k, err := ParseKey(data)
	if err != nil {
		return nil, kerr("%v", err)
	}
	k.Path = path
	return k, nil
}

// ParseKey parses an unencrypted private key in OpenSSH, PEM or dropbear
// format.
func ParseKey(data []byte) (*Key, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, errors.New("is empty")
	}
	if raw, err := ssh.ParseRawPrivateKey(data); err == nil {
		s, err := normalise(raw)
		if err != nil {
			return nil, err
		}
		return newKey(s, FormatOpenSSH, data)
	} else {
		var pm *ssh.PassphraseMissingError
		if errors.As(err, &pm) {
			return nil, errors.New("is encrypted with a passphrase; the agent runs unattended and needs an unencrypted key")
		}
	}
	if s, err := parseDropbear(data); err == nil {
		return newKey(s, FormatDropbear, data)
	} else if !errors.Is(err, errNotDropbear) {
		return nil, fmt.Errorf("looks like a dropbear key but %w", err)
	}
	if _, _, _, _, err := ssh.ParseAuthorizedKey(data); err == nil {
		return nil, errors.New("holds a public key; --key needs the private key (the file without .pub)")
	}
	if b, _ := pem.Decode(data); b != nil {
		return nil, fmt.Errorf("is a PEM %q block the agent cannot use as an SSH private key", b.Type)
	}
	return nil, errors.New("is not a private key in OpenSSH, PEM or dropbear format")
}

// normalise turns what x/crypto/ssh parses into a crypto.Signer of a type
// both clients support.
func normalise(raw any) (crypto.Signer, error) {
	switch k := raw.(type) {
	case *ed25519.PrivateKey:
		return *k, nil
	case ed25519.PrivateKey:
		return k, nil
	case *rsa.PrivateKey:
		return k, nil
	case *ecdsa.PrivateKey:
		return k, nil
	default:
		return nil, fmt.Errorf("holds a %T key; use ed25519, ecdsa or rsa", raw)
	}
}

func newKey(s crypto.Signer, f KeyFormat, raw []byte) (*Key, error) {
	pub, err := ssh.NewPublicKey(s.Public())
	if err != nil {
		return nil, fmt.Errorf("deriving the public key: %w", err)
	}
	return &Key{Format: f, Signer: s, Public: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))), raw: raw}, nil
}

// Encode returns the key in format f: the file's own bytes when it is
// already in f, a conversion otherwise.
func (k *Key) Encode(f KeyFormat) ([]byte, error) {
	if f == k.Format {
		return k.raw, nil
	}
	if f == FormatDropbear {
		return marshalDropbear(k.Signer)
	}
	block, err := ssh.MarshalPrivateKey(k.Signer, "mas4h-agent")
	if err != nil {
		return nil, fmt.Errorf("converting the key to OpenSSH format: %w", err)
	}
	return pem.EncodeToMemory(block), nil
}
