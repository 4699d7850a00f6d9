package pgcluster

import (
	"context"
	"os"
	"sync"
	"time"
)

// EnvTestDB is the variable that runs the registry's and the master's
// tests on PostgreSQL: MAS4H_TEST_DB=postgres (make test runs them once
// with it, once without).
const EnvTestDB = "MAS4H_TEST_DB"

// TestOnPostgres reports whether this test run wants PostgreSQL.
func TestOnPostgres() bool { return os.Getenv(EnvTestDB) == "postgres" }

var shared struct {
	once sync.Once
	c    *Cluster
	err  error
}

// Shared starts (once per process) the cluster a test binary's tests
// share; each test takes its own database with NewDatabase. The package's
// TestMain calls StopShared after m.Run.
func Shared() (*Cluster, error) {
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		shared.c, shared.err = Start(ctx, "", false)
	})
	return shared.c, shared.err
}

// StopShared stops and removes the shared cluster, if one was started.
func StopShared() {
	if shared.c != nil {
		shared.c.Destroy()
	}
}
