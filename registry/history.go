package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Event kinds the slaves report for a device's tunnels (one per forward),
// which the history reads.
const (
	EventConnect    = "connect"
	EventDisconnect = "disconnect"
)

// FleetSeries is the series name of the fleet's online devices in
// load_samples; every other series is a slave's name.
const FleetSeries = ""

// LoadSample is one minute of one series: the fleet's online devices, or a
// slave's tunnels with its capacity and liveness.
type LoadSample struct {
	Series   string    // FleetSeries, or a slave's name
	At       time.Time // the minute it covers (truncated)
	Min, Max int       // least and most seen in the minute
	Capacity int       // a slave's capacity (0 for the fleet)
	Alive    bool      // false: the slave was dead at some sample of the minute
}

// RecordLoad merges samples into their minutes: a minute keeps the least
// Min, the most Max, the latest Capacity, and is alive only while every
// sample of it was. Several masters on one registry may sample the same
// minute; merging keeps what each saw.
func (s *Store) RecordLoad(ctx context.Context, samples []LoadSample) error {
	if len(samples) == 0 {
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("recording load samples: %w", err)
	}
	defer tx.Rollback()
	ins, err := tx.PrepareContext(ctx, `INSERT INTO load_samples (series, at, min, max, capacity, alive) VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (series, at) DO UPDATE SET
		min = CASE WHEN excluded.min < load_samples.min THEN excluded.min ELSE load_samples.min END,
		max = CASE WHEN excluded.max > load_samples.max THEN excluded.max ELSE load_samples.max END,
		capacity = excluded.capacity,
		alive = CASE WHEN excluded.alive < load_samples.alive THEN excluded.alive ELSE load_samples.alive END`)
	if err != nil {
		return fmt.Errorf("recording load samples: %w", err)
	}
	defer ins.Close()
	for _, l := range samples {
		if l.Min < 0 || l.Max < l.Min || l.Capacity < 0 {
			return fmt.Errorf("recording load samples: bad sample %+v: %w", l, ErrInvalid)
		}
		if _, err := ins.ExecContext(ctx, truncEvent(l.Series), l.At.Truncate(time.Minute).Unix(), l.Min, l.Max, l.Capacity, boolInt(l.Alive)); err != nil {
			return fmt.Errorf("recording load samples: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("recording load samples: %w", err)
	}
	return nil
}

// LoadHistory returns the samples of every series in [since, until),
// sorted by series and time.
func (s *Store) LoadHistory(ctx context.Context, since, until time.Time) ([]LoadSample, error) {
	return s.loadHistory(ctx, `SELECT series, at, min, max, capacity, alive FROM load_samples
		WHERE at >= ? AND at < ? ORDER BY series, at`, since.Unix(), until.Unix())
}

// SeriesHistory returns the samples of one series in [since, until),
// oldest first.
func (s *Store) SeriesHistory(ctx context.Context, series string, since, until time.Time) ([]LoadSample, error) {
	return s.loadHistory(ctx, `SELECT series, at, min, max, capacity, alive FROM load_samples
		WHERE series = ? AND at >= ? AND at < ? ORDER BY at`, series, since.Unix(), until.Unix())
}

func (s *Store) loadHistory(ctx context.Context, q string, args ...any) ([]LoadSample, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("reading load history: %w", err)
	}
	defer rows.Close()
	out := []LoadSample{}
	for rows.Next() {
		var l LoadSample
		var at int64
		if err := rows.Scan(&l.Series, &at, &l.Min, &l.Max, &l.Capacity, &l.Alive); err != nil {
			return nil, fmt.Errorf("reading load history: %w", err)
		}
		l.At = time.Unix(at, 0).UTC()
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading load history: %w", err)
	}
	return out, nil
}

// PruneLoad deletes the samples older than before.
func (s *Store) PruneLoad(ctx context.Context, before time.Time) (int64, error) {
	res, err := s.db.ExecContext(ctx, `DELETE FROM load_samples WHERE at < ?`, before.Unix())
	if err != nil {
		return 0, fmt.Errorf("pruning load history: %w", err)
	}
	return res.RowsAffected()
}

// DeviceHistory returns what the history of device since since is made
// of, oldest first by id: its connect and disconnect events from since on,
// the last one before since (its state when the window opens), and every
// slave-down and slave-up from that one on (a slave that dies takes its
// tunnels with it, and writes no disconnect for them). Each read goes
// through an index: the device's events, and slave events by kind and
// time.
func (s *Store) DeviceHistory(ctx context.Context, device string, since time.Time) ([]Event, error) {
	kinds := []string{EventConnect, EventDisconnect}
	from := since
	prior, err := s.deviceEventBefore(ctx, device, kinds, since)
	if err != nil {
		return nil, err
	}
	var out []Event
	if prior != nil {
		out = append(out, *prior)
		from = prior.At
	}
	own, err := s.Events(ctx, EventFilter{Device: device, Kinds: kinds, Since: since, Limit: maxHistoryEvents})
	if err != nil {
		return nil, err
	}
	out = append(out, own...)
	slaves, err := s.eventsOfKinds(ctx, []string{EventSlaveDown, EventSlaveUp}, from)
	if err != nil {
		return nil, err
	}
	return append(out, slaves...), nil
}

// maxHistoryEvents bounds one device's events in a window: a device
// flapping every few seconds for a week stays readable in one page.
const maxHistoryEvents = 100_000

// deviceEventBefore is device's newest event of kinds before t, nil when
// it has none.
func (s *Store) deviceEventBefore(ctx context.Context, device string, kinds []string, t time.Time) (*Event, error) {
	var e Event
	var at int64
	err := s.db.QueryRowContext(ctx, `SELECT id, at, kind, slave, device, operator, detail FROM events
		WHERE device = ? AND kind IN (?, ?) AND at < ? ORDER BY id DESC LIMIT 1`, device, kinds[0], kinds[1], t.UnixNano()).
		Scan(&e.ID, &at, &e.Kind, &e.Slave, &e.Device, &e.Operator, &e.Detail)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the history of %s: %w", quoteTrunc(device), err)
	}
	e.At = fromNanos(at)
	return &e, nil
}

// eventsOfKinds returns the events of two kinds at or after since, by
// time, at most maxHistoryEvents, through the index on kind and time.
func (s *Store) eventsOfKinds(ctx context.Context, kinds []string, since time.Time) ([]Event, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, at, kind, slave, device, operator, detail FROM events INDEXED BY events_kind_at
		WHERE kind IN (?, ?) AND at >= ? ORDER BY at, id LIMIT ?`, kinds[0], kinds[1], since.UnixNano(), maxHistoryEvents)
	if err != nil {
		return nil, fmt.Errorf("listing %v events: %w", kinds, err)
	}
	defer rows.Close()
	out := []Event{}
	for rows.Next() {
		var e Event
		var at int64
		if err := rows.Scan(&e.ID, &at, &e.Kind, &e.Slave, &e.Device, &e.Operator, &e.Detail); err != nil {
			return nil, fmt.Errorf("listing %v events: %w", kinds, err)
		}
		e.At = fromNanos(at)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing %v events: %w", kinds, err)
	}
	return out, nil
}

// DeviceCount is a device and a number of its events.
type DeviceCount struct {
	Device string `json:"device"`
	Count  int    `json:"count"`
}

// TopDisconnects returns the n devices with the most disconnect events at
// or after since, most first (then by name).
func (s *Store) TopDisconnects(ctx context.Context, since time.Time, n int) ([]DeviceCount, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT device, count(*) AS c FROM events INDEXED BY events_kind_at
		WHERE kind = ? AND at >= ? AND device != '' GROUP BY device ORDER BY c DESC, device LIMIT ?`,
		EventDisconnect, since.UnixNano(), n)
	if err != nil {
		return nil, fmt.Errorf("counting disconnects: %w", err)
	}
	defer rows.Close()
	out := []DeviceCount{}
	for rows.Next() {
		var d DeviceCount
		if err := rows.Scan(&d.Device, &d.Count); err != nil {
			return nil, fmt.Errorf("counting disconnects: %w", err)
		}
		out = append(out, d)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("counting disconnects: %w", err)
	}
	return out, nil
}
