package registry

import (
	"bytes"
	"crypto/rsa"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"
)

// keyAlgoDSA names DSA keys, which are refused by name (ssh's constant for
// it is deprecated, since nothing should use DSA any more).
const keyAlgoDSA = "ssh-dss"

// MinRSABits is the smallest RSA modulus accepted for a device key.
const MinRSABits = 2048

// maxKeyFileSize bounds the input of ParsePublicKey. The largest sane public
// key line (RSA 16384) is under 3 KiB; anything far bigger is not a key file.
const maxKeyFileSize = 64 << 10

// ParsePublicKey reads the content of an OpenSSH public key file (one
// authorized_keys-style line, with optional comment; blank lines and '#'
// lines around it are ignored) and returns the key. Its comment is dropped:
// the device's name is what names it in mas4h.
//
// It refuses, saying why, anything a device should not enrol with: private
// keys, several keys, keys with authorized_keys options, and key types that
// are weak, deprecated or need a human (security keys). Errors never contain
// key material, since a pasted private key must not end up in a log.
func ParsePublicKey(data []byte) (ssh.PublicKey, error) {
	if len(data) > maxKeyFileSize {
		return nil, fmt.Errorf("public key input is %d bytes, more than a key file can be (max %d): %w", len(data), maxKeyFileSize, ErrInvalid)
	}
	if looksPrivate(data) {
		return nil, fmt.Errorf("this looks like a PRIVATE key; give the public key instead (the .pub file, e.g. id_ed25519.pub), and keep the private one on the device: %w", ErrInvalid)
	}
	if bytes.Contains(data, []byte("---- BEGIN SSH2 PUBLIC KEY")) {
		return nil, fmt.Errorf("this is an RFC 4716 (SSH2) public key; convert it with `ssh-keygen -i -f FILE` to OpenSSH format: %w", ErrInvalid)
	}

	type keyLine struct {
		no   int
		text []byte
	}
	var lines []keyLine
	for i, l := range bytes.Split(data, []byte("\n")) {
		l = bytes.TrimSpace(l)
		if len(l) == 0 || l[0] == '#' {
			continue
		}
		lines = append(lines, keyLine{i + 1, l})
	}
	if len(lines) == 0 {
		return nil, fmt.Errorf("no public key found: input is empty: %w", ErrInvalid)
	}
	if len(lines) > 1 {
		n := 0
		for _, l := range lines {
			if _, _, _, _, err := ssh.ParseAuthorizedKey(l.text); err == nil {
				n++
			}
		}
		if n > 1 {
			return nil, fmt.Errorf("found %d public keys; exactly one is wanted per device: %w", n, ErrInvalid)
		}
		return nil, fmt.Errorf("found %d non-comment lines; a public key file holds exactly one line like \"ssh-ed25519 AAAA... comment\": %w", len(lines), ErrInvalid)
	}

	line := lines[0].text
	// Name the refused type before parsing: the library may one day stop
	// parsing DSA or a new type, and the user should still hear why.
	first := line
	if i := bytes.IndexAny(line, " \t"); i >= 0 {
		first = line[:i]
	}
	if len(first) > 0 {
		if err := checkKeyType(string(first)); err != nil && isKnownRefusedType(string(first)) {
			return nil, err
		}
	}
	key, _, options, _, err := ssh.ParseAuthorizedKey(line)
	if err != nil {
		return nil, fmt.Errorf("not an OpenSSH public key (expected one line like \"ssh-ed25519 AAAA... comment\"): %w", ErrInvalid)
	}
	if len(options) > 0 {
		return nil, fmt.Errorf("the key has authorized_keys options in front of it (%d option(s)); give the bare key, options are set by mas4h: %w", len(options), ErrInvalid)
	}
	if err := CheckKey(key); err != nil {
		return nil, err
	}
	return key, nil
}

// looksPrivate spots the common private key containers: PEM (OpenSSH, PKCS#1,
// PKCS#8, EC) and PuTTY's .ppk.
func looksPrivate(data []byte) bool {
	if bytes.Contains(data, []byte("PuTTY-User-Key-File")) {
		return true
	}
	i := bytes.Index(data, []byte("-----BEGIN"))
	return i >= 0 && bytes.Contains(data[i:], []byte("PRIVATE KEY"))
}

// isKnownRefusedType reports whether checkKeyType refuses t for a reason
// worth telling before the parser gets a say.
func isKnownRefusedType(t string) bool {
	return t == keyAlgoDSA || strings.HasPrefix(t, "sk-") || strings.Contains(t, "-cert-")
}

// checkKeyType refuses key types by name.
func checkKeyType(t string) error {
	switch {
	case t == ssh.KeyAlgoED25519, t == ssh.KeyAlgoECDSA256, t == ssh.KeyAlgoECDSA384,
		t == ssh.KeyAlgoECDSA521, t == ssh.KeyAlgoRSA:
		return nil
	case t == keyAlgoDSA:
		return fmt.Errorf("DSA (ssh-dss) keys are refused: deprecated and removed from OpenSSH; generate an ed25519 key (ssh-keygen -t ed25519): %w", ErrInvalid)
	case strings.HasPrefix(t, "sk-"):
		return fmt.Errorf("security-key (%s) keys are refused: an unattended device cannot touch a hardware key; use a plain ed25519 key: %w", quoteTrunc(t), ErrInvalid)
	case strings.Contains(t, "-cert-"):
		return fmt.Errorf("SSH certificates (%s) are not supported; give the plain public key: %w", quoteTrunc(t), ErrInvalid)
	default:
		return fmt.Errorf("key type %s is not supported; use ssh-ed25519, ecdsa-sha2-nistp256/384/521 or ssh-rsa of at least %d bits: %w", quoteTrunc(t), MinRSABits, ErrInvalid)
	}
}

// CheckKey reports whether k is a type and size a device may enrol with.
// ParsePublicKey applies it; AddDevice applies it again for keys that did
// not come through the parser.
func CheckKey(k ssh.PublicKey) error {
	if k == nil {
		return fmt.Errorf("no public key given: %w", ErrInvalid)
	}
	if err := checkKeyType(k.Type()); err != nil {
		return err
	}
	if k.Type() != ssh.KeyAlgoRSA {
		return nil
	}
	ck, ok := k.(ssh.CryptoPublicKey)
	if !ok {
		return fmt.Errorf("cannot read the size of this RSA key: %w", ErrInvalid)
	}
	rk, ok := ck.CryptoPublicKey().(*rsa.PublicKey)
	if !ok {
		return fmt.Errorf("cannot read the size of this RSA key: %w", ErrInvalid)
	}
	if bits := rk.N.BitLen(); bits < MinRSABits {
		return fmt.Errorf("RSA key is %d bits, the minimum is %d; generate an ed25519 key (ssh-keygen -t ed25519) or a larger RSA key: %w", bits, MinRSABits, ErrInvalid)
	}
	return nil
}

// Fingerprint is the OpenSSH SHA256 fingerprint, "SHA256:...", the same
// string sshd passes to AuthorizedKeysCommand as %f.
func Fingerprint(k ssh.PublicKey) string { return ssh.FingerprintSHA256(k) }

// AuthorizedKey is the key as "type base64", without comment or newline,
// ready to be placed after options in an authorized_keys line.
func AuthorizedKey(k ssh.PublicKey) string {
	return strings.TrimSuffix(string(ssh.MarshalAuthorizedKey(k)), "\n")
}
