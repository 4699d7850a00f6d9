package registry

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// Several masters on one database keep the same live view: each rereads
// the slaves (Slaves) and the devices of those that beat through another
// master (SlaveDevices) every second, and shares its slot grants not yet
// seen as tunnels as a count per slave (SharePending), which the others
// add to each slave's load (PeerPending).

// pendingForget is how long a master's shared counts outlive its last
// update: a master that died takes its counts with it after this.
const pendingForget = time.Minute

// SharePending replaces master's shared counts of pending forwards by
// slave with counts (a slave absent from it has none), at time at, and
// deletes the counts of masters silent for a minute.
func (s *Store) SharePending(ctx context.Context, master string, counts map[string]int, at time.Time) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("sharing pending grants: %w", err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, `DELETE FROM master_pending WHERE master = ? OR updated_at < ?`,
		master, at.Add(-pendingForget).UnixNano()); err != nil {
		return fmt.Errorf("sharing pending grants: %w", err)
	}
	for slave, n := range counts {
		if n <= 0 {
			continue
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO master_pending (master, slave, forwards, updated_at) VALUES (?, ?, ?, ?)`,
			master, slave, n, at.UnixNano()); err != nil {
			return fmt.Errorf("sharing pending grants: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("sharing pending grants: %w", err)
	}
	return nil
}

// PeerPending sums, by slave, the pending forwards other masters than self
// shared since since.
func (s *Store) PeerPending(ctx context.Context, self string, since time.Time) (map[string]int, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT slave, sum(forwards) FROM master_pending WHERE master <> ? AND updated_at >= ? GROUP BY slave`,
		self, since.UnixNano())
	if err != nil {
		return nil, fmt.Errorf("reading other masters' pending grants: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var slave string
		var n int64
		if err := rows.Scan(&slave, &n); err != nil {
			return nil, fmt.Errorf("reading other masters' pending grants: %w", err)
		}
		out[slave] = int(n)
	}
	return out, rows.Err()
}

// SlaveDevices returns, for each of slaves, the devices with a tunnel in
// its last heartbeat.
func (s *Store) SlaveDevices(ctx context.Context, slaves []string) (map[string][]string, error) {
	out := make(map[string][]string, len(slaves))
	if len(slaves) == 0 {
		return out, nil
	}
	args := make([]any, len(slaves))
	for i, n := range slaves {
		args[i] = n
		out[n] = nil
	}
	q := `SELECT DISTINCT slave, device FROM tunnels WHERE slave IN (?` + strings.Repeat(", ?", len(slaves)-1) + `)`
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("reading slaves' devices: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var slave, dev string
		if err := rows.Scan(&slave, &dev); err != nil {
			return nil, fmt.Errorf("reading slaves' devices: %w", err)
		}
		out[slave] = append(out[slave], dev)
	}
	return out, rows.Err()
}
