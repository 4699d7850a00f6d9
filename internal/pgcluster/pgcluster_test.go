package pgcluster

import (
	"context"
	"database/sql"
	"errors"
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
