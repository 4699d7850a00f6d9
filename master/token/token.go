// Package token reads and creates the bearer-token files of the master's
// API: the admin token, each slave's own credential, and the shared slave
// token of older installs. Tokens live in files of mode 0600, never in argv
// or the environment, where other users and crash reports can read them.
package token

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/mas4h/mas4h/atomicfile"
	"github.com/mas4h/mas4h/names"
)

// MinLength is the shortest token accepted from a file: shorter ones are
// guessable, whoever made them.
const MinLength = 16

// maxFile bounds what is read: a token file holds one short line.
const maxFile = 4096

// Load reads a token file, refusing one that group or others can read, one
// that is not a regular file, and one whose token is empty or short.
func Load(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("reading token file: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return "", fmt.Errorf("reading token file %s: %w", path, err)
	}
	if !fi.Mode().IsRegular() {
		return "", fmt.Errorf("token file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return "", fmt.Errorf("token file %s is readable or writable by group or others (mode %04o); run: chmod 600 %s", path, perm, path)
	}
	buf := make([]byte, maxFile+1)
	n, err := f.Read(buf)
	if err != nil && n == 0 {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	if n > maxFile {
		return "", fmt.Errorf("token file %s is larger than %d bytes; it should hold one token", path, maxFile)
	}
	tok := strings.TrimSpace(string(buf[:n]))
	if strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("token file %s holds more than one word; it should hold one token", path)
	}
	if len(tok) < MinLength {
		return "", fmt.Errorf("token in %s is %d characters; at least %d are needed", path, len(tok), MinLength)
	}
	return tok, nil
}

// LoadOrCreate reads the token file at path, or, when there is none, writes
// a new random token (32 bytes, hex) to it with mode 0600, creating its
// parent directory with mode 0700, and reports created=true so the caller
// can tell the operator where it is.
func LoadOrCreate(path string) (tok string, created bool, err error) {
	tok, err = Load(path)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		return tok, false, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", false, fmt.Errorf("creating token file %s: %w", path, err)
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", false, fmt.Errorf("creating token file %s: %w", path, err)
	}
	tok = hex.EncodeToString(raw)
	// Whole or not at all: a crash leaves no empty token file behind.
	err = atomicfile.Create(path, []byte(tok+"\n"), 0o600)
	if errors.Is(err, os.ErrExist) {
		// Another process made it first: use theirs.
		tok, err := Load(path)
		return tok, false, err
	}
	if err != nil {
		return "", false, fmt.Errorf("creating token file %s: %w", path, err)
	}
	return tok, true, nil
}

// secretBytes is the entropy of a slave credential's secret.
const secretBytes = 32

// NewSlaveCredential returns a fresh credential for slave name, and its
// secret. The credential is "NAME.SECRET", SECRET 64 hex digits of 32
// random bytes: naming the slave lets the master look its hash up by name
// and compare in constant time, and lets the slave check at start that it
// was given its own.
func NewSlaveCredential(name string) (cred, secret string, err error) {
	if err := names.Slave(name); err != nil {
		return "", "", err
	}
	raw := make([]byte, secretBytes)
	if _, err := rand.Read(raw); err != nil {
		return "", "", fmt.Errorf("making a credential for slave %s: %w", name, err)
	}
	secret = hex.EncodeToString(raw)
	return name + "." + secret, secret, nil
}

// ParseSlaveCredential splits a slave credential into its slave's name and
// secret. ok is false for anything else: an admin token, or the shared
// slave token of older installs (plain hex, no name).
func ParseSlaveCredential(tok string) (name, secret string, ok bool) {
	i := strings.LastIndexByte(tok, '.')
	if i < 0 {
		return "", "", false
	}
	name, secret = tok[:i], tok[i+1:]
	if len(secret) != 2*secretBytes || names.Slave(name) != nil {
		return "", "", false
	}
	for _, c := range []byte(secret) {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", "", false
		}
	}
	return name, secret, true
}

// Write writes tok to path with mode 0600, atomically, replacing any file
// there. The directory must exist.
func Write(path, tok string) error {
	if err := atomicfile.Write(path, []byte(tok+"\n"), 0o600); err != nil {
		return fmt.Errorf("writing token file: %w", err)
	}
	return nil
}
