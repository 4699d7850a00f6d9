package testkit

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/mas4h/mas4h/internal/pgcluster"
)

// RegistryLocation is where a test's registry lives: a new SQLite file in
// a temporary directory, or, when MAS4H_TEST_DB=postgres, a new database
// on the test binary's shared PostgreSQL cluster (whose package's
// TestMain calls pgcluster.StopShared). Without PostgreSQL installed that
// fails the test: a run that asked for PostgreSQL must not pass on SQLite.
func RegistryLocation(t testing.TB) string {
	t.Helper()
	if !pgcluster.TestOnPostgres() {
		return filepath.Join(t.TempDir(), "registry.db")
	}
	c, err := pgcluster.Shared()
	if err != nil {
		t.Fatalf("%s=postgres: %v", pgcluster.EnvTestDB, err)
	}
	u, err := c.NewDatabase(context.Background(), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// SQLiteOnly skips a test of the SQLite file itself (its mode, its header,
// a hand-made old schema) in a PostgreSQL run.
func SQLiteOnly(t testing.TB) {
	t.Helper()
	if pgcluster.TestOnPostgres() {
		t.Skip("a test of the SQLite file; this run is on PostgreSQL")
	}
}
