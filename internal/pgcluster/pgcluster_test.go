package pgcluster

import (
	"context"
	"database/sql"
	"errors"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

// started takes what Start returned: the cluster, destroyed after the
// test; without PostgreSQL installed the test is skipped, or fails when
// MAS4H_E2E is set.
func started(t *testing.T) func(*Cluster, error) *Cluster {
	return func(c *Cluster, err error) *Cluster {
		t.Helper()
		if errors.Is(err, ErrNotInstalled) && os.Getenv("MAS4H_E2E") == "" {
			t.Skip(err)
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Destroy)
		return c
	}
}

func TestStartQueryStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := started(t)(Start(ctx, "", false))
	u, err := c.NewDatabase(ctx, "TestStart")
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("pgx", u)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRowContext(ctx, `SELECT 41 + 1`).Scan(&n); err != nil || n != 42 {
		t.Fatalf("SELECT 41+1 = %d, %v", n, err)
	}
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := db.PingContext(ctx); err == nil {
		t.Fatal("ping succeeded with the server stopped")
	}
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRowContext(ctx, `SELECT 2`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("after restart: %d, %v", n, err)
	}
}

// A replica follows its primary and, promoted, takes writes.
func TestReplicaPromote(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p := started(t)(Start(ctx, "", false))
	u, err := p.NewDatabase(ctx, "repl")
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("pgx", u)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE t (v int); INSERT INTO t VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	r, err := StartReplica(ctx, p, "")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Destroy()
	ru := strings.Replace(u, p.Host(), r.Host(), 1)
	rdb, err := sql.Open("pgx", ru)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	var n int
	if err := rdb.QueryRowContext(ctx, `SELECT v FROM t`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("replica reads %d, %v", n, err)
	}
	if _, err := rdb.ExecContext(ctx, `INSERT INTO t VALUES (2)`); err == nil {
		t.Fatal("a replica took a write")
	}
	if err := p.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := rdb.ExecContext(ctx, `INSERT INTO t VALUES (2)`); err != nil {
		t.Fatalf("the promoted replica refused a write: %v", err)
	}
}

// StartOn listens on the extra addresses too: 127.0.0.2 is on every
// Linux loopback, so no root is needed.
func TestStartOnListensThere(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := started(t)(StartOn(ctx, "", false, []netip.Prefix{netip.MustParsePrefix("127.0.0.2/8")}))
	if _, err := c.NewDatabase(ctx, "TestStartOn"); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("pgx", c.URLAt("127.0.0.2", "postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var addr string
	if err := db.QueryRowContext(ctx, `SELECT host(inet_server_addr())`).Scan(&addr); err != nil || addr != "127.0.0.2" {
		t.Fatalf("server address %q, %v; want 127.0.0.2", addr, err)
	}
}
