package registry

import (
	"github.com/mas4h/mas4h/internal/testkit"

	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// fillEvents writes n events, one a minute from start, in one transaction.
func fillEvents(t *testing.T, s *Store, start time.Time, n int) {
	t.Helper()
	ctx := context.Background()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	for i := range n {
		if err := addEvent(ctx, tx, start.Add(time.Duration(i)*time.Minute), EventAuthDeny, "", fmt.Sprintf("event %d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func countEvents(t *testing.T, s *Store) (n int, oldest string) {
	t.Helper()
	if err := s.db.QueryRow(`SELECT count(*), coalesce((SELECT detail FROM events ORDER BY id LIMIT 1), '') FROM events`).Scan(&n, &oldest); err != nil {
		t.Fatal(err)
	}
	return n, oldest
}

func TestPruneEventsByCount(t *testing.T) {
	s, _ := openTemp(t)
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	fillEvents(t, s, start, 12_345)
	n, err := s.PruneEvents(context.Background(), Retention{MaxRows: 1000}, start)
	if err != nil || n != 11_345 {
		t.Fatalf("PruneEvents = %d, %v; want 11345 deleted", n, err)
	}
	if got, oldest := countEvents(t, s); got != 1000 || oldest != "event 11345" {
		t.Fatalf("%d rows left, oldest %q; want the newest 1000 (from event 11345)", got, oldest)
	}
	// Followers go on from where they were; ids are not reused.
	last, _ := s.LastEventID(context.Background())
	if err := s.AddEvent(context.Background(), EventEnrol, "d", ""); err != nil {
		t.Fatal(err)
	}
	if evs, _ := s.Events(context.Background(), EventFilter{AfterID: last}); len(evs) != 1 || evs[0].ID != last+1 {
		t.Fatalf("after pruning, the next event = %+v, want id %d", evs, last+1)
	}
	// Nothing more to do: nothing deleted.
	if n, err := s.PruneEvents(context.Background(), Retention{MaxRows: 1001}, start); err != nil || n != 0 {
		t.Fatalf("second prune = %d, %v; want 0", n, err)
	}
}

func TestPruneEventsByAge(t *testing.T) {
	s, _ := openTemp(t)
	start := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	fillEvents(t, s, start, 12_000) // 200 hours of one a minute
	now := start.Add(200 * time.Hour)
	n, err := s.PruneEvents(context.Background(), Retention{MaxAge: 24 * time.Hour, MaxRows: 1_000_000}, now)
	if err != nil || n != 12_000-24*60 {
		t.Fatalf("PruneEvents = %d, %v; want %d deleted", n, err, 12_000-24*60)
	}
	if got, oldest := countEvents(t, s); got != 24*60 || oldest != fmt.Sprintf("event %d", 12_000-24*60) {
		t.Fatalf("%d rows left, oldest %q; want the last day's", got, oldest)
	}
	if _, err := s.PruneEvents(context.Background(), Retention{MaxAge: -time.Hour}, now); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative retention: %v, want ErrInvalid", err)
	}
}

// The defaults fit a small disk: a full log at DefaultEventMaxRows stays
// within a quarter of a GB (measured here on a sample of rows as the
// master writes them).
func TestDefaultRetentionFitsASmallDisk(t *testing.T) {
	testkit.SQLiteOnly(t) // measures the SQLite file's pages
	s, path := openTemp(t)
	const sample = 20_000
	ctx := context.Background()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range sample {
		detail := fmt.Sprintf("slave s1: tunnel of device pi-%05d on port %d reaped: probe failed 3 times (connection refused)", i, 20000+i%10000)
		if err := addSlaveEvent(ctx, tx, time.Now(), "reap", "s1", fmt.Sprintf("pi-%05d", i), detail); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
		t.Fatal(err)
	}
	var pages, pageSize int64
	s.db.QueryRow(`PRAGMA page_count`).Scan(&pages)
	s.db.QueryRow(`PRAGMA page_size`).Scan(&pageSize)
	perRow := float64(pages*pageSize) / sample
	full := perRow * DefaultEventMaxRows
	t.Logf("%s: %.0f bytes a row with its indexes; %d rows ≈ %.0f MB", path, perRow, DefaultEventMaxRows, full/1e6)
	if full > 300e6 {
		t.Errorf("a full log at the default retention takes %.0f MB, more than a small disk should give it", full/1e6)
	}
}

func TestEventsRefusesTooManyKinds(t *testing.T) {
	s, _ := openTemp(t)
	kinds := strings.Split(strings.Repeat("k,", 40_000), ",")
	if _, err := s.Events(context.Background(), EventFilter{Kinds: kinds}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("40,000 kinds: %v, want ErrInvalid", err)
	}
	if _, err := s.Events(context.Background(), EventFilter{Kinds: kinds[:MaxEventKinds]}); err != nil {
		t.Fatalf("%d kinds: %v", MaxEventKinds, err)
	}
}
