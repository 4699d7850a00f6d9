package pgcluster

import (
	"context"
	"database/sql"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"
)

func TestStartQueryStop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := Start(ctx, "", false)
	if errors.Is(err, ErrNotInstalled) && os.Getenv("MAS4H_E2E") == "" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Destroy()
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

// StartOn listens on the extra addresses too: 127.0.0.2 is on every
// Linux loopback, so no root is needed.
func TestStartOnListensThere(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := StartOn(ctx, "", false, []netip.Prefix{netip.MustParsePrefix("127.0.0.2/8")})
	if errors.Is(err, ErrNotInstalled) && os.Getenv("MAS4H_E2E") == "" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Destroy()
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
