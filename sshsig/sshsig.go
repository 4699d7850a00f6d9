// Package sshsig makes and checks SSH signatures in the format of
// OpenSSH's PROTOCOL.sshsig: what `ssh-keygen -Y sign -n NAMESPACE` writes
// and `ssh-keygen -Y verify` checks. Devices sign their slot requests with
// it (the Go agent here, the shell client with ssh-keygen) and the master
// verifies them. The cryptography is golang.org/x/crypto/ssh's; this
// package only adds the small wrapper around it, so it stays cgo-free for
// the static agent.
package sshsig

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"strings"

	"golang.org/x/crypto/ssh"
)

const (
	magic   = "SSHSIG"
	version = 1

	armorBegin = "-----BEGIN SSH SIGNATURE-----"
	armorEnd   = "-----END SSH SIGNATURE-----"

	// MaxSize bounds an encoded signature (armored or not): an RSA-16384
	// key and its signature are well under it.
	MaxSize = 8 << 10
)

// ErrInvalid is a signature that does not verify or cannot be parsed. The
// wrapped message says which, for logs; callers that answer strangers
// should not repeat it.
var ErrInvalid = errors.New("invalid SSH signature")

// blob is the wire form of a signature (PROTOCOL.sshsig, after the magic).
type blob struct {
	Version   uint32
	PublicKey []byte
	Namespace string
	Reserved  string
	HashAlg   string
	Signature []byte
}

// signedData is what the key actually signs.
type signedData struct {
	Namespace string
	Reserved  string
	HashAlg   string
	Hash      []byte
}

func hasher(alg string) (hash.Hash, error) {
	switch alg {
	case "sha512":
		return sha512.New(), nil
	case "sha256":
		return sha256.New(), nil
	}
	return nil, fmt.Errorf("%w: hash algorithm %q is neither sha256 nor sha512", ErrInvalid, alg)
}

func toSign(namespace, alg string, message []byte) ([]byte, error) {
	h, err := hasher(alg)
	if err != nil {
		return nil, err
	}
	h.Write(message)
	return append([]byte(magic), ssh.Marshal(signedData{Namespace: namespace, HashAlg: alg, Hash: h.Sum(nil)})...), nil
}

// Sign signs message under namespace with key (ed25519, ECDSA or RSA, as
// crypto.Signer or ssh.Signer) and returns the armored signature, as
// `ssh-keygen -Y sign` writes it. RSA keys sign with rsa-sha2-512, as
// ssh-keygen does.
func Sign(key any, namespace string, message []byte) ([]byte, error) {
	if namespace == "" {
		return nil, errors.New("signing: empty namespace")
	}
	var s ssh.Signer
	switch k := key.(type) {
	case ssh.Signer:
		s = k
	case crypto.Signer:
		var err error
		if s, err = ssh.NewSignerFromSigner(k); err != nil {
			return nil, fmt.Errorf("signing: %w", err)
		}
	default:
		return nil, fmt.Errorf("signing: %T is not a signer", key)
	}
	data, err := toSign(namespace, "sha512", message)
	if err != nil {
		return nil, err
	}
	var sig *ssh.Signature
	if s.PublicKey().Type() == ssh.KeyAlgoRSA {
		as, ok := s.(ssh.AlgorithmSigner)
		if !ok {
			return nil, errors.New("signing: this RSA signer cannot make rsa-sha2-512 signatures")
		}
		sig, err = as.SignWithAlgorithm(rand.Reader, data, ssh.KeyAlgoRSASHA512)
	} else {
		sig, err = s.Sign(rand.Reader, data)
	}
	if err != nil {
		return nil, fmt.Errorf("signing: %w", err)
	}
	b := ssh.Marshal(blob{Version: version, PublicKey: s.PublicKey().Marshal(), Namespace: namespace, HashAlg: "sha512", Signature: ssh.Marshal(sig)})
	return Armor(append([]byte(magic), b...)), nil
}

// Armor wraps a binary signature as ssh-keygen does: base64 in lines of 70
// between BEGIN and END lines.
func Armor(raw []byte) []byte {
	enc := base64.StdEncoding.EncodeToString(raw)
	var b bytes.Buffer
	b.WriteString(armorBegin + "\n")
	for len(enc) > 70 {
		b.WriteString(enc[:70] + "\n")
		enc = enc[70:]
	}
	b.WriteString(enc + "\n" + armorEnd + "\n")
	return b.Bytes()
}

// Decode reads a signature given armored (as ssh-keygen writes it) or as
// the bare base64 between the armor lines, line breaks allowed.
func Decode(sig string) ([]byte, error) {
	if len(sig) > MaxSize {
		return nil, fmt.Errorf("%w: longer than %d bytes", ErrInvalid, MaxSize)
	}
	s := strings.TrimSpace(sig)
	if strings.HasPrefix(s, armorBegin) {
		body, ok := strings.CutPrefix(s, armorBegin)
		body, ok2 := strings.CutSuffix(body, armorEnd)
		if !ok || !ok2 {
			return nil, fmt.Errorf("%w: armor without its END line", ErrInvalid)
		}
		s = body
	}
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' || r == ' ' || r == '\t' {
			return -1
		}
		return r
	}, s)
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64", ErrInvalid)
	}
	return raw, nil
}

// Verify checks that sig (armored or bare base64) signs message under
// namespace, and returns the key that made it. The caller must check that
// this key is the one it expected: any key can sign anything.
func Verify(sig string, namespace string, message []byte) (ssh.PublicKey, error) {
	raw, err := Decode(sig)
	if err != nil {
		return nil, err
	}
	rest, ok := bytes.CutPrefix(raw, []byte(magic))
	if !ok {
		return nil, fmt.Errorf("%w: no %s preamble", ErrInvalid, magic)
	}
	var b blob
	if err := ssh.Unmarshal(rest, &b); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	if b.Version != version {
		return nil, fmt.Errorf("%w: version %d, want %d", ErrInvalid, b.Version, version)
	}
	if b.Namespace != namespace {
		return nil, fmt.Errorf("%w: namespace %q, want %q", ErrInvalid, b.Namespace, namespace)
	}
	pub, err := ssh.ParsePublicKey(b.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("%w: public key: %v", ErrInvalid, err)
	}
	var s ssh.Signature
	if err := ssh.Unmarshal(b.Signature, &s); err != nil {
		return nil, fmt.Errorf("%w: signature: %v", ErrInvalid, err)
	}
	// SHA-1 RSA signatures are refused, as ssh-keygen -Y verify does.
	if s.Format == ssh.KeyAlgoRSA {
		return nil, fmt.Errorf("%w: ssh-rsa (SHA-1) signatures are not accepted", ErrInvalid)
	}
	data, err := toSign(namespace, b.HashAlg, message)
	if err != nil {
		return nil, err
	}
	if err := pub.Verify(data, &s); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return pub, nil
}
