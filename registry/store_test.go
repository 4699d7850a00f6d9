package registry

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/internal/pgcluster"
	"github.com/mas4h/mas4h/internal/testkit"
	"golang.org/x/crypto/ssh"
)

// TestMain stops the PostgreSQL cluster a MAS4H_TEST_DB=postgres run
// started.
func TestMain(m *testing.M) {
	code := m.Run()
	pgcluster.StopShared()
	os.Exit(code)
}

// openTemp opens a fresh registry: a SQLite file, or a PostgreSQL database
// when MAS4H_TEST_DB=postgres (testkit.RegistryLocation). The location is
// returned to reopen it.
func openTemp(t *testing.T) (*Store, string) { return openTempB(t) }

func openTempB(t testing.TB) (*Store, string) {
	t.Helper()
	path := testkit.RegistryLocation(t)
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func newEd25519(t testing.TB) ssh.PublicKey {
	t.Helper()
	return testkit.NewKey(t, "").Public
}

func TestOpenCreatesPrivateFileAndIsIdempotent(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "registry.db")
	for i := range 2 {
		s, err := Open(ctx, path)
		if err != nil {
			t.Fatalf("Open #%d: %v", i+1, err)
		}
		var v, n int
		if err := s.db.QueryRowContext(ctx, `SELECT max(version), count(*) FROM schema_version`).Scan(&v, &n); err != nil {
			t.Fatal(err)
		}
		if v != SchemaVersion || n != 1 {
			t.Errorf("Open #%d: schema_version = %d (%d rows), want %d in 1 row", i+1, v, n, SchemaVersion)
		}
		var mode string
		if err := s.db.QueryRowContext(ctx, `PRAGMA journal_mode`).Scan(&mode); err != nil {
			t.Fatal(err)
		}
		if mode != "wal" {
			t.Errorf("journal_mode = %q, want wal", mode)
		}
		var fk int
		if err := s.db.QueryRowContext(ctx, `PRAGMA foreign_keys`).Scan(&fk); err != nil {
			t.Fatal(err)
		}
		if fk != 1 {
			t.Errorf("foreign_keys = %d, want 1", fk)
		}
		if _, err := s.AddDevice(ctx, []string{"one", "two"}[i], newEd25519(t), nil, DefaultPortRange); err != nil {
			t.Fatalf("AddDevice after Open #%d: %v", i+1, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o600 {
		t.Errorf("registry file mode = %o, want 600", perm)
	}
}

func TestOpenRefusesNewerSchemaWithoutTouchingFile(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "future.db")
	// A file as a future mas4h would leave it: plain rollback journal, a
	// higher version.
	db, err := sql.Open("sqlite3", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE schema_version (version INTEGER NOT NULL); INSERT INTO schema_version VALUES (99);`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	_, err = Open(ctx, path)
	if !errors.Is(err, ErrSchemaTooNew) {
		t.Fatalf("Open = %v, want ErrSchemaTooNew", err)
	}
	for _, want := range []string{"99", fmt.Sprintf("version %d", SchemaVersion), "upgrade mas4h", path} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	after, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(before, after) {
		t.Error("Open changed a database it refused")
	}
	for _, side := range []string{"-wal", "-shm", "-journal"} {
		if _, err := os.Stat(path + side); err == nil {
			t.Errorf("Open left %s behind", path+side)
		}
	}
}

func TestOpenRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	notDB := filepath.Join(dir, "notes.txt")
	if err := os.WriteFile(notDB, []byte("hello, this is not a database\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, path, want string
	}{
		{"text file", notDB, "not a SQLite database"},
		{"directory", dir, "is a directory"},
		{"missing directory", filepath.Join(dir, "nope", "registry.db"), "does not exist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(context.Background(), tt.path)
			if err == nil {
				s.Close()
				t.Fatal("Open succeeded")
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.path) {
				t.Errorf("error %q should say %q and name %s", err, tt.want, tt.path)
			}
		})
	}
	if b, _ := os.ReadFile(notDB); string(b) != "hello, this is not a database\n" {
		t.Error("Open changed the non-database file")
	}
}

func TestOpenEmptyFileIsNewDatabase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "empty.db")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(context.Background(), path)
	if err != nil {
		t.Fatalf("Open on empty file: %v", err)
	}
	s.Close()
}

// A URL of a database this build does not know is refused with what to
// give instead, and nothing is created: "postgres://db/fleet" once became
// a SQLite file under a new directory named "postgres:". A PostgreSQL URL
// whose server does not answer says so, with the password hidden.
func TestOpenRefusesURLs(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	for _, u := range []string{"sqlite:///var/lib/x.db", "mysql://h/db", "mysql://u:hunter2@h/db"} {
		_, err := Open(t.Context(), u)
		if err == nil || !strings.Contains(err.Error(), "give the path of a SQLite file") || !strings.Contains(err.Error(), "postgres://") {
			t.Errorf("Open(%q) = %v, want a refusal that says what to give", u, err)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open(%q) = %v: the password shows", u, err)
		}
	}
	// Port 1 of the loopback: nothing listens there.
	for _, u := range []string{"postgres://mas4h:hunter2@127.0.0.1:1/fleet?connect_timeout=5", "postgresql://127.0.0.1:1/x?sslmode=disable"} {
		_, err := Open(t.Context(), u)
		if err == nil || !strings.Contains(err.Error(), "does not answer") || !strings.Contains(err.Error(), "127.0.0.1:1") {
			t.Errorf("Open(%q) = %v, want it to say the server does not answer", u, err)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open(%q) = %v: the password shows", u, err)
		}
	}
	if _, err := Open(t.Context(), "postgres://127.0.0.1:99999999/x"); err == nil || !errors.Is(err, ErrInvalid) {
		t.Errorf("Open of a malformed PostgreSQL URL = %v, want ErrInvalid", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("refused URLs left %v behind", ents)
	}
	for _, p := range []string{"registry.db", "./a://b.db"} {
		if err := CheckPath(p); err != nil {
			t.Errorf("CheckPath(%q) = %v, want nil", p, err)
		}
	}
}
