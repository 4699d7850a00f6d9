package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
)

const (
	defaultEventLimit = 1000
	// maxEventDetail bounds one event's detail: auth-deny events are written
	// for strangers' keys, and a stranger must not be able to grow the log
	// by more than a line per attempt.
	maxEventDetail = 4096
	// MaxEventKinds bounds EventFilter.Kinds: each kind is a bound
	// variable, and SQLite takes at most 32,766 of them per statement.
	MaxEventKinds = 64
)

// execContexter is what *sql.DB and *sql.Tx share for writes, so events
// can be written inside the transaction of the change they record.
type execContexter interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// AddEvent appends an event to the log.
func (s *Store) AddEvent(ctx context.Context, kind, device, detail string) error {
	if kind == "" {
		return fmt.Errorf("adding event: empty kind: %w", ErrInvalid)
	}
	if err := addEvent(ctx, s.db, s.now().UTC(), kind, device, detail); err != nil {
		return fmt.Errorf("adding %s event: %w", kind, err)
	}
	return nil
}

// AddSlaveEvent appends an event about (or reported by) a slave.
func (s *Store) AddSlaveEvent(ctx context.Context, kind, slave, device, detail string) error {
	if kind == "" {
		return fmt.Errorf("adding event: empty kind: %w", ErrInvalid)
	}
	if err := addSlaveEvent(ctx, s.db, s.now().UTC(), kind, slave, device, detail); err != nil {
		return fmt.Errorf("adding %s event: %w", kind, err)
	}
	return nil
}

func addEvent(ctx context.Context, x execContexter, at time.Time, kind, device, detail string) error {
	return addSlaveEvent(ctx, x, at, kind, "", device, detail)
}

func addSlaveEvent(ctx context.Context, x execContexter, at time.Time, kind, slave, device, detail string) error {
	return insertEvent(ctx, x, Event{At: at, Kind: kind, Slave: slave, Device: device, Detail: detail})
}

// insertEvent writes e (its At, Kind, Slave, Device, Operator, Detail).
func insertEvent(ctx context.Context, x execContexter, e Event) error {
	_, err := x.ExecContext(ctx, `INSERT INTO events (at, kind, slave, device, operator, detail) VALUES (?, ?, ?, ?, ?, ?)`,
		e.At.UnixNano(), truncEvent(e.Kind), truncEvent(e.Slave), truncEvent(e.Device), truncEvent(e.Operator), truncEvent(e.Detail))
	return err
}

func truncEvent(s string) string {
	if len(s) > maxEventDetail {
		return s[:maxEventDetail] + "…"
	}
	return s
}

// EventFilter selects events. Zero fields do not filter.
type EventFilter struct {
	Device  string    // only this device's events
	Since   time.Time // only events at or after this time
	AfterID int64     // only events with a larger id: for following the log
	Kinds   []string  // only these kinds, at most MaxEventKinds
	Slave   string    // only events about this slave
	// Operator: only events of this operator (operator-* kinds).
	Operator string
	Limit    int // at most this many, oldest first; 0 means 1000
}

// Events returns the events matching f in ascending id order.
func (s *Store) Events(ctx context.Context, f EventFilter) ([]Event, error) {
	if f.Limit < 0 {
		return nil, fmt.Errorf("listing events: negative limit %d: %w", f.Limit, ErrInvalid)
	}
	if len(f.Kinds) > MaxEventKinds {
		return nil, fmt.Errorf("listing events: %d kinds, at most %d: %w", len(f.Kinds), MaxEventKinds, ErrInvalid)
	}
	limit := f.Limit
	if limit == 0 {
		limit = defaultEventLimit
	}
	var where []string
	var args []any
	if f.Device != "" {
		where = append(where, "device = ?")
		args = append(args, f.Device)
	}
	if f.Slave != "" {
		where = append(where, "slave = ?")
		args = append(args, f.Slave)
	}
	if f.Operator != "" {
		where = append(where, "operator = ?")
		args = append(args, f.Operator)
	}
	if !f.Since.IsZero() {
		where = append(where, "at >= ?")
		args = append(args, f.Since.UnixNano())
	}
	if f.AfterID > 0 {
		where = append(where, "id > ?")
		args = append(args, f.AfterID)
	}
	if len(f.Kinds) > 0 {
		where = append(where, "kind IN (?"+strings.Repeat(", ?", len(f.Kinds)-1)+")")
		for _, k := range f.Kinds {
			args = append(args, k)
		}
	}
	q := `SELECT id, at, kind, slave, device, operator, detail FROM events`
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += " ORDER BY id LIMIT ?"
	args = append(args, limit)

	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("listing events: %w", err)
	}
	defer rows.Close()
	events := []Event{}
	for rows.Next() {
		var e Event
		var at int64
		if err := rows.Scan(&e.ID, &at, &e.Kind, &e.Slave, &e.Device, &e.Operator, &e.Detail); err != nil {
			return nil, fmt.Errorf("listing events: %w", err)
		}
		e.At = fromNanos(at)
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing events: %w", err)
	}
	return events, nil
}

// LastEventID returns the id of the newest event, 0 when there is none, so
// a follower can start from now.
func (s *Store) LastEventID(ctx context.Context) (int64, error) {
	var id int64
	if err := s.db.QueryRowContext(ctx, `SELECT coalesce(max(id), 0) FROM events`).Scan(&id); err != nil {
		return 0, fmt.Errorf("reading last event id: %w", err)
	}
	return id, nil
}

// AddOperatorEvent appends an event about an operator (an access refused
// by the master, say), with the slave and device it concerns when known.
func (s *Store) AddOperatorEvent(ctx context.Context, kind, operator, slave, device, detail string) error {
	if kind == "" {
		return fmt.Errorf("adding event: empty kind: %w", ErrInvalid)
	}
	e := Event{At: s.now().UTC(), Kind: kind, Operator: operator, Slave: slave, Device: device, Detail: detail}
	if err := insertEvent(ctx, s.db, e); err != nil {
		return fmt.Errorf("adding %s event: %w", kind, err)
	}
	return nil
}

// LastDeviceEvent returns device's newest event of one of kinds (at most
// MaxEventKinds), ErrNotFound when it has none.
func (s *Store) LastDeviceEvent(ctx context.Context, device string, kinds []string) (Event, error) {
	if len(kinds) == 0 || len(kinds) > MaxEventKinds {
		return Event{}, fmt.Errorf("reading the last event of %s: %d kinds: %w", quoteTrunc(device), len(kinds), ErrInvalid)
	}
	args := []any{device}
	for _, k := range kinds {
		args = append(args, k)
	}
	var e Event
	var at int64
	err := s.db.QueryRowContext(ctx, `SELECT id, at, kind, slave, device, operator, detail FROM events
		WHERE device = ? AND kind IN (?`+strings.Repeat(", ?", len(kinds)-1)+`) ORDER BY id DESC LIMIT 1`, args...).
		Scan(&e.ID, &at, &e.Kind, &e.Slave, &e.Device, &e.Operator, &e.Detail)
	if errors.Is(err, sql.ErrNoRows) {
		return Event{}, fmt.Errorf("last event of %s: %w", quoteTrunc(device), ErrNotFound)
	}
	if err != nil {
		return Event{}, fmt.Errorf("reading the last event of %s: %w", quoteTrunc(device), err)
	}
	e.At = fromNanos(at)
	return e, nil
}
