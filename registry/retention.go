package registry

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// Retention bounds the event log, which strangers can grow (every refused
// key is an event somewhere): rows older than MaxAge go, and beyond the
// newest MaxRows rows the oldest go. A zero field does not bound.
type Retention struct {
	MaxAge  time.Duration
	MaxRows int64
}

// Defaults of Retention, sized for a small disk: a row of the log takes
// about 180 bytes with its indexes (TestDefaultRetentionFitsASmallDisk), so
// a full log is under 200 MB (at most 4 GB if every row carried the
// largest detail, 4 KiB, which only slaves can write); 90 days of a
// 1,000-device fleet's connects, reaps and slots stay well under it.
const (
	DefaultEventMaxAge  = 90 * 24 * time.Hour
	DefaultEventMaxRows = 1_000_000
	// DefaultPruneEvery is how often KeepEvents looks.
	DefaultPruneEvery = time.Minute
)

// DefaultRetention is what the master and a slave on a registry file keep.
var DefaultRetention = Retention{MaxAge: DefaultEventMaxAge, MaxRows: DefaultEventMaxRows}

func (r Retention) String() string {
	age, rows := "no age limit", "no row limit"
	if r.MaxAge > 0 {
		age = "max age " + r.MaxAge.String()
	}
	if r.MaxRows > 0 {
		rows = fmt.Sprintf("max %d rows", r.MaxRows)
	}
	return age + ", " + rows
}

// pruneBatch is how many rows one transaction deletes: writers (heartbeats,
// slot grants) wait for the lock meanwhile, and deleting a few thousand
// rows takes milliseconds.
const pruneBatch = 5000

// PruneEvents deletes the events r does not keep, as of now, in batches,
// and returns how many it deleted. Ids are never reused (AUTOINCREMENT),
// so followers paging with AfterID only skip what is gone.
//
// The row bound counts ids, not rows: everything at or below the newest id
// minus MaxRows goes. Ids have gaps only where an insert was rolled back,
// so the log keeps at most MaxRows rows, and about that many; counting
// rows would scan the whole log on every call.
func (s *Store) PruneEvents(ctx context.Context, r Retention, now time.Time) (int64, error) {
	if r.MaxAge < 0 || r.MaxRows < 0 {
		return 0, fmt.Errorf("pruning events: negative retention (%s): %w", r, ErrInvalid)
	}
	var total int64
	if r.MaxRows > 0 {
		var lo, hi int64
		if err := s.db.QueryRowContext(ctx, `SELECT coalesce(min(id), 0), coalesce(max(id), 0) FROM events`).Scan(&lo, &hi); err != nil {
			return total, fmt.Errorf("pruning events: %w", err)
		}
		for cut := hi - r.MaxRows; lo > 0 && lo <= cut; lo += pruneBatch {
			n, err := s.deleteEvents(ctx, `DELETE FROM events WHERE id <= ?`, min(lo+pruneBatch-1, cut))
			total += n
			if err != nil {
				return total, err
			}
		}
	}
	if r.MaxAge > 0 {
		before := now.Add(-r.MaxAge).UnixNano()
		for {
			n, err := s.deleteEvents(ctx, `DELETE FROM events WHERE id IN (SELECT id FROM events WHERE at < ? LIMIT ?)`, before, pruneBatch)
			total += n
			if err != nil {
				return total, err
			}
			if n < pruneBatch {
				break
			}
		}
	}
	return total, nil
}

func (s *Store) deleteEvents(ctx context.Context, q string, args ...any) (int64, error) {
	res, err := s.db.ExecContext(ctx, q, args...)
	if err != nil {
		return 0, fmt.Errorf("pruning events: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("pruning events: %w", err)
	}
	return n, nil
}

// KeepEvents prunes the event log to r at once and then every `every` (0:
// DefaultPruneEvery) until ctx ends. It is the one loop that bounds the
// log, run by the master and by a slave on a registry file.
func (s *Store) KeepEvents(ctx context.Context, r Retention, every time.Duration, log *slog.Logger) {
	if r.MaxAge == 0 && r.MaxRows == 0 {
		return
	}
	if every <= 0 {
		every = DefaultPruneEvery
	}
	log = log.With("component", "retention")
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		n, err := s.PruneEvents(ctx, r, s.now())
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			log.Error("pruning the event log", "err", err)
		case n > 0:
			log.Info("pruned the event log", "deleted", n, "retention", r.String())
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
