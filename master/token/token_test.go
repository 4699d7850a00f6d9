package token

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadOrCreate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "admin.token")
	tok, created, err := LoadOrCreate(path)
	if err != nil || !created || len(tok) != 64 {
		t.Fatalf("LoadOrCreate = %q, %v, %v; want a new 64-char token", tok, created, err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode = %v, %v; want 0600", fi.Mode(), err)
	}
	di, _ := os.Stat(filepath.Dir(path))
	if di.Mode().Perm() != 0o700 {
		t.Errorf("parent dir mode = %v, want 0700", di.Mode())
	}
	again, created, err := LoadOrCreate(path)
	if err != nil || created || again != tok {
		t.Fatalf("second LoadOrCreate = %q, %v, %v; want the same token, not created", again, created, err)
	}
}

func TestLoadRefusesLooseModeAndShortTokens(t *testing.T) {
	dir := t.TempDir()
	loose := filepath.Join(dir, "loose")
	os.WriteFile(loose, []byte(strings.Repeat("a", 32)+"\n"), 0o600)
	os.Chmod(loose, 0o644)
	if _, err := Load(loose); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("Load(0644 file) = %v, want a refusal saying chmod 600", err)
	}
	if _, _, err := LoadOrCreate(loose); err == nil {
		t.Errorf("LoadOrCreate(0644 file) succeeded; want the same refusal, not a new token")
	}
	short := filepath.Join(dir, "short")
	os.WriteFile(short, []byte("abc\n"), 0o600)
	if _, err := Load(short); err == nil {
		t.Error("Load(short token) succeeded")
	}
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o600)
	if _, err := Load(empty); err == nil {
		t.Error("Load(empty file) succeeded")
	}
	if _, err := Load(filepath.Join(dir, "missing")); err == nil {
		t.Error("Load(missing) succeeded")
	}
}

func TestSlaveCredential(t *testing.T) {
	cred, secret, err := NewSlaveCredential("s1.lyon")
	if err != nil || !strings.HasPrefix(cred, "s1.lyon.") || len(secret) != 64 || !strings.HasSuffix(cred, secret) {
		t.Fatalf("NewSlaveCredential = %q, %q, %v", cred, secret, err)
	}
	other, _, _ := NewSlaveCredential("s1.lyon")
	if other == cred {
		t.Fatal("two credentials alike")
	}
	name, sec, ok := ParseSlaveCredential(cred)
	if !ok || name != "s1.lyon" || sec != secret {
		t.Errorf("Parse(%q) = %q, %q, %v", cred, name, sec, ok)
	}
	for _, tok := range []string{
		secret,                          // the shared token of older installs: plain hex
		"s1." + secret[:63],             // short
		"s1." + strings.ToUpper(secret), // not lowercase hex
		"-s1." + secret,                 // not a slave name
		"." + secret,                    // no name
		"s1." + secret + "0",            // long
	} {
		if _, _, ok := ParseSlaveCredential(tok); ok {
			t.Errorf("Parse(%q) accepted", tok)
		}
	}
	if _, _, err := NewSlaveCredential("../x"); err == nil {
		t.Error("a credential for a bad name")
	}
	path := filepath.Join(t.TempDir(), "s1.token")
	if err := Write(path, cred); err != nil {
		t.Fatal(err)
	}
	if got, err := Load(path); err != nil || got != cred {
		t.Fatalf("Load after Write = %q, %v", got, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
}
