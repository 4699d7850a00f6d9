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
