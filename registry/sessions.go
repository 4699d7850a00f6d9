package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Session is one dashboard login, as the master keeps it. ID is the
// SHA-256 (hex) of the secret in the browser's cookie; the secret itself
// is never stored.
type Session struct {
	ID        string
	Binding   string // names the admin token the session was opened with
	CSRF      string // the token the session's forms carry
	CreatedAt time.Time
	ExpiresAt time.Time
}

// maxSessionField bounds the strings of a session row.
const maxSessionField = 128

// AddSession stores a new session and drops the expired ones.
func (s *Store) AddSession(ctx context.Context, sess Session) error {
	for _, f := range []string{sess.ID, sess.Binding, sess.CSRF} {
		if f == "" || len(f) > maxSessionField {
			return fmt.Errorf("adding session: id, binding and csrf must be 1-%d bytes: %w", maxSessionField, ErrInvalid)
		}
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("adding session: %w", err)
	}
	defer tx.Rollback()
	now := s.now().UTC().UnixNano()
	if _, err := tx.ExecContext(ctx, `DELETE FROM sessions WHERE expires_at <= ?`, now); err != nil {
		return fmt.Errorf("adding session: %w", err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO sessions (id, binding, csrf, created_at, expires_at) VALUES (?, ?, ?, ?, ?)`,
		sess.ID, sess.Binding, sess.CSRF, sess.CreatedAt.UnixNano(), sess.ExpiresAt.UnixNano()); err != nil {
		return fmt.Errorf("adding session: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("adding session: %w", err)
	}
	return nil
}

// Session returns the session with id, expired or not: the caller judges.
func (s *Store) Session(ctx context.Context, id string) (Session, error) {
	sess := Session{ID: id}
	var created, expires int64
	err := s.db.QueryRowContext(ctx, `SELECT binding, csrf, created_at, expires_at FROM sessions WHERE id = ?`, id).
		Scan(&sess.Binding, &sess.CSRF, &created, &expires)
	if errors.Is(err, sql.ErrNoRows) {
		return Session{}, fmt.Errorf("session: %w", ErrNotFound)
	}
	if err != nil {
		return Session{}, fmt.Errorf("reading session: %w", err)
	}
	sess.CreatedAt, sess.ExpiresAt = fromNanos(created), fromNanos(expires)
	return sess, nil
}

// RemoveSession ends the session with id; ending one that is not there is
// not an error (a second logout, or one after expiry).
func (s *Store) RemoveSession(ctx context.Context, id string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM sessions WHERE id = ?`, id); err != nil {
		return fmt.Errorf("removing session: %w", err)
	}
	return nil
}
