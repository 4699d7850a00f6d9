package registry

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestSessions(t *testing.T) {
	s, _ := openTemp(t)
	ctx := context.Background()
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	s.now = func() time.Time { return now }
	old := Session{ID: "old", Binding: "b", CSRF: "c", CreatedAt: now.Add(-13 * time.Hour), ExpiresAt: now.Add(-time.Hour)}
	live := Session{ID: "live", Binding: "b", CSRF: "c2", CreatedAt: now, ExpiresAt: now.Add(12 * time.Hour)}
	if err := s.AddSession(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := s.AddSession(ctx, live); err != nil {
		t.Fatal(err)
	}
	got, err := s.Session(ctx, "live")
	if err != nil || got.CSRF != "c2" || got.Binding != "b" || !got.ExpiresAt.Equal(live.ExpiresAt) {
		t.Fatalf("Session(live) = %+v, %v", got, err)
	}
	// Adding a session dropped the expired one.
	if _, err := s.Session(ctx, "old"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired session still there: %v", err)
	}
	if err := s.RemoveSession(ctx, "live"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Session(ctx, "live"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("removed session still there: %v", err)
	}
	if err := s.RemoveSession(ctx, "live"); err != nil {
		t.Fatalf("removing twice: %v", err)
	}
	if err := s.AddSession(ctx, Session{ID: "x"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("session without binding: %v", err)
	}
}
