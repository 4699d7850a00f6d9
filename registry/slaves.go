package registry

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/mas4h/mas4h/master/wire"
)

// Slave is a slave as the master knows it from its heartbeats.
type Slave struct {
	Name      string
	Host      string // public host devices connect to
	Port      int    // its sshd port
	User      string // the tunnel user devices log in as
	HostKeys  []string
	Capacity  int
	CPU       float64 // percent
	Mem       float64 // percent used
	FirstSeen time.Time
	LastSeen  time.Time
	Alive     bool
	Tunnels   int    // tunnels in its last heartbeat
	VIP       string // shared virtual IP it serves a share of ("" for none)
	Node      int    // its node number for that VIP (1..nodes)
	// OperatorUser is the user operators log in as there ("": none), and
	// Operators its live operator sessions, as its last heartbeat said.
	OperatorUser string
	Operators    []wire.OperatorSession
}

// Tunnel is one live forward a slave reported.
type Tunnel struct {
	Slave   string
	Device  string
	Forward string
	Port    int
	Remote  string // the device's address:port as the slave sees it
	Since   time.Time
	Probe   *Probe // nil: not probed yet
}

// Probe is the last health probe of a tunnel.
type Probe struct {
	OK     bool
	At     time.Time
	Detail string
}

// SlaveReport is what one heartbeat tells: the slave's address, load, live
// tunnels and the events it saw since the previous one.
type SlaveReport struct {
	Name     string
	Host     string
	Port     int
	User     string
	HostKeys []string
	Capacity int
	CPU      float64
	Mem      float64
	At       time.Time // when the master received it
	Tunnels  []Tunnel
	Events   []Event // Slave is set from Name; a zero At means At above
	VIP      string
	Node     int
	// OperatorUser is the user operators log in as on this slave, and
	// Operators its live operator sessions (kept, so that every master
	// can send operators there and show them).
	OperatorUser string
	Operators    []wire.OperatorSession
}

// SlaveChange says what a heartbeat changed in the slave's liveness.
type SlaveChange int

const (
	SlaveSteady   SlaveChange = iota // was live, still is
	SlaveNew                         // first heartbeat ever: registered
	SlaveReturned                    // was dead (or silent past the deadline), is back
)

// RecordHeartbeat stores a heartbeat in one transaction: the slave's row
// (created on the first one), its tunnels (replacing those of the previous
// heartbeat), the events it reports, and a slave-up event when it is new or
// returns. A slave counts as returning when it was marked dead or its last
// heartbeat is older than liveSince.
//
// The host keys of the first heartbeat are bound to the slave's name; a
// heartbeat presenting others is refused with a *HostKeyMismatchError and
// stores nothing but those keys as pending (see bindHostKeys).
func (s *Store) RecordHeartbeat(ctx context.Context, r SlaveReport, liveSince time.Time) (SlaveChange, error) {
	hostKeys := r.HostKeys
	if hostKeys == nil {
		hostKeys = []string{}
	}
	keys, err := json.Marshal(hostKeys)
	if err != nil {
		return 0, fmt.Errorf("recording heartbeat of slave %s: %w", r.Name, err)
	}
	ops := r.Operators
	if ops == nil {
		ops = []wire.OperatorSession{}
	}
	opsJSON, err := json.Marshal(ops)
	if err != nil {
		return 0, fmt.Errorf("recording heartbeat of slave %s: %w", r.Name, err)
	}
	at := r.At.UTC()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, fmt.Errorf("recording heartbeat of slave %s: %w", r.Name, err)
	}
	defer tx.Rollback()

	change := SlaveSteady
	var alive bool
	var lastSeen, pendingSince int64
	var bound, pending string
	err = tx.QueryRowContext(ctx, `SELECT alive, last_seen, host_keys, pending_host_keys, pending_since FROM slaves WHERE name = ?`,
		r.Name).Scan(&alive, &lastSeen, &bound, &pending, &pendingSince)
	exists := err == nil
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return 0, fmt.Errorf("recording heartbeat of slave %s: %w", r.Name, err)
	}
	if err := bindHostKeys(ctx, tx, r, exists, bound, pending, pendingSince, at); err != nil {
		var mismatch *HostKeyMismatchError
		if !errors.As(err, &mismatch) {
			return 0, fmt.Errorf("recording heartbeat of slave %s: %w", r.Name, err)
		}
		// Nothing of the heartbeat is kept but the refused keys, as
		// pending, and the event.
		if err := tx.Commit(); err != nil {
			return 0, fmt.Errorf("recording heartbeat of slave %s: %w", r.Name, err)
		}
		return 0, mismatch
	}
	switch {
	case !exists:
		change = SlaveNew
		_, err = tx.ExecContext(ctx, `INSERT INTO slaves (name, host, port, "user", host_keys, capacity, cpu, mem, first_seen, last_seen, alive, vip, node, operator_user, operators)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)`,
			r.Name, r.Host, r.Port, r.User, string(keys), r.Capacity, r.CPU, r.Mem, at.UnixNano(), at.UnixNano(), r.VIP, r.Node, r.OperatorUser, string(opsJSON))
	default:
		if !alive || lastSeen < liveSince.UnixNano() {
			change = SlaveReturned
		}
		_, err = tx.ExecContext(ctx, `UPDATE slaves SET host = ?, port = ?, "user" = ?, host_keys = ?, capacity = ?, cpu = ?, mem = ?,
			last_seen = ?, alive = 1, vip = ?, node = ?, operator_user = ?, operators = ? WHERE name = ?`,
			r.Host, r.Port, r.User, string(keys), r.Capacity, r.CPU, r.Mem, at.UnixNano(), r.VIP, r.Node, r.OperatorUser, string(opsJSON), r.Name)
	}
	if err != nil {
		return 0, fmt.Errorf("recording heartbeat of slave %s: %w", r.Name, err)
	}

	if _, err := tx.ExecContext(ctx, `DELETE FROM tunnels WHERE slave = ?`, r.Name); err != nil {
		return 0, fmt.Errorf("recording tunnels of slave %s: %w", r.Name, err)
	}
	if err := insertTunnels(ctx, tx, r.Name, r.Tunnels); err != nil {
		return 0, fmt.Errorf("recording tunnels of slave %s: %w", r.Name, err)
	}

	for _, e := range r.Events {
		when := e.At
		if when.IsZero() {
			when = at
		}
		if err := insertEvent(ctx, tx, Event{At: when.UTC(), Kind: e.Kind, Slave: r.Name, Device: e.Device, Operator: e.Operator, Detail: e.Detail}); err != nil {
			return 0, fmt.Errorf("recording events of slave %s: %w", r.Name, err)
		}
	}

	switch change {
	case SlaveNew:
		err = addSlaveEvent(ctx, tx, at, EventSlaveUp, r.Name, "", fmt.Sprintf("slave %s registered (%s:%d, capacity %d)", r.Name, r.Host, r.Port, r.Capacity))
	case SlaveReturned:
		err = addSlaveEvent(ctx, tx, at, EventSlaveUp, r.Name, "", fmt.Sprintf("slave %s is back (%s:%d) after silence since %s",
			r.Name, r.Host, r.Port, fromNanos(lastSeen).Format(time.RFC3339)))
	}
	if err != nil {
		return 0, fmt.Errorf("recording heartbeat of slave %s: %w", r.Name, err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("recording heartbeat of slave %s: %w", r.Name, err)
	}
	return change, nil
}

// MarkSlaveDead marks a live slave dead and writes a slave-down event with
// detail, in one transaction, unless the slave has beaten since lastSeen
// (its last heartbeat when it was found silent): a heartbeat that arrives
// meanwhile wins. It reports false, writing nothing, when the slave was
// already dead, has beaten since, or is unknown.
func (s *Store) MarkSlaveDead(ctx context.Context, name string, lastSeen, at time.Time, detail string) (bool, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("marking slave %s dead: %w", name, err)
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, `UPDATE slaves SET alive = 0 WHERE name = ? AND alive = 1 AND last_seen = ?`, name, lastSeen.UnixNano())
	if err != nil {
		return false, fmt.Errorf("marking slave %s dead: %w", name, err)
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return false, err
	}
	if err := addSlaveEvent(ctx, tx, at.UTC(), EventSlaveDown, name, "", detail); err != nil {
		return false, fmt.Errorf("marking slave %s dead: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("marking slave %s dead: %w", name, err)
	}
	return true, nil
}

// Slaves returns every slave ever registered, sorted by name, with the
// number of tunnels of its last heartbeat.
func (s *Store) Slaves(ctx context.Context) ([]Slave, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT s.name, s.host, s.port, s."user", s.host_keys, s.capacity, s.cpu, s.mem,
		s.first_seen, s.last_seen, s.alive, (SELECT count(*) FROM tunnels t WHERE t.slave = s.name), s.vip, s.node,
		s.operator_user, s.operators
		FROM slaves s ORDER BY s.name`)
	if err != nil {
		return nil, fmt.Errorf("listing slaves: %w", err)
	}
	defer rows.Close()
	slaves := []Slave{}
	for rows.Next() {
		var sl Slave
		var keys, ops string
		var first, last int64
		if err := rows.Scan(&sl.Name, &sl.Host, &sl.Port, &sl.User, &keys, &sl.Capacity, &sl.CPU, &sl.Mem,
			&first, &last, &sl.Alive, &sl.Tunnels, &sl.VIP, &sl.Node, &sl.OperatorUser, &ops); err != nil {
			return nil, fmt.Errorf("listing slaves: %w", err)
		}
		if err := json.Unmarshal([]byte(ops), &sl.Operators); err != nil {
			return nil, fmt.Errorf("listing slaves: operator sessions of %s: %w", sl.Name, err)
		}
		if err := json.Unmarshal([]byte(keys), &sl.HostKeys); err != nil {
			return nil, fmt.Errorf("listing slaves: host keys of %s: %w", sl.Name, err)
		}
		sl.FirstSeen, sl.LastSeen = fromNanos(first), fromNanos(last)
		slaves = append(slaves, sl)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing slaves: %w", err)
	}
	return slaves, nil
}

// LiveTunnels returns the tunnels reported by slaves not marked dead,
// sorted by device, forward and slave.
func (s *Store) LiveTunnels(ctx context.Context) ([]Tunnel, error) {
	return s.liveTunnels(ctx, `SELECT t.slave, t.device, t.forward, t.port, t.remote, t.since,
		t.last_probe_ok, t.last_probe_at, t.last_probe_detail
		FROM tunnels t JOIN slaves s ON s.name = t.slave WHERE s.alive = 1
		ORDER BY t.device, t.forward, t.slave, t.port`)
}

// DeviceTunnels is LiveTunnels of one device, through the index on
// tunnels' device: a device's page need not read the whole fleet's.
func (s *Store) DeviceTunnels(ctx context.Context, device string) ([]Tunnel, error) {
	return s.liveTunnels(ctx, `SELECT t.slave, t.device, t.forward, t.port, t.remote, t.since,
		t.last_probe_ok, t.last_probe_at, t.last_probe_detail
		FROM tunnels t JOIN slaves s ON s.name = t.slave WHERE s.alive = 1 AND t.device = ?
		ORDER BY t.device, t.forward, t.slave, t.port`, device)
}

func (s *Store) liveTunnels(ctx context.Context, q string, args ...any) ([]Tunnel, error) {
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("listing tunnels: %w", err)
	}
	defer rows.Close()
	tunnels := []Tunnel{}
	for rows.Next() {
		var t Tunnel
		var since int64
		var ok sql.NullBool
		var probeAt sql.NullInt64
		var detail sql.NullString
		if err := rows.Scan(&t.Slave, &t.Device, &t.Forward, &t.Port, &t.Remote, &since, &ok, &probeAt, &detail); err != nil {
			return nil, fmt.Errorf("listing tunnels: %w", err)
		}
		if since != 0 {
			t.Since = fromNanos(since)
		}
		if ok.Valid {
			t.Probe = &Probe{OK: ok.Bool, At: fromNanos(probeAt.Int64), Detail: detail.String}
		}
		tunnels = append(tunnels, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing tunnels: %w", err)
	}
	return tunnels, nil
}

// OnlineDevices counts the devices with at least one tunnel on a slave not
// marked dead.
func (s *Store) OnlineDevices(ctx context.Context) (int, error) {
	var n int
	err := s.db.QueryRowContext(ctx, `SELECT count(DISTINCT t.device) FROM tunnels t
		JOIN slaves s ON s.name = t.slave WHERE s.alive = 1`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("counting online devices: %w", err)
	}
	return n, nil
}

// SlotGrant is one device sent to one slave.
type SlotGrant struct {
	Device string
	Slave  string
}

// RecordSlots notes that each grant's device was sent to its slave: the
// device's last_slave, which dispatch sticks to, and a slot event. All in
// one transaction, so a master under a storm of slot requests commits them
// in groups. Grants of devices that no longer exist are skipped.
func (s *Store) RecordSlots(ctx context.Context, grants []SlotGrant) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("recording slots: %w", err)
	}
	defer tx.Rollback()
	upd, err := tx.PrepareContext(ctx, `UPDATE devices SET last_slave = ? WHERE name = ?`)
	if err != nil {
		return fmt.Errorf("recording slots: %w", err)
	}
	defer upd.Close()
	now := s.now().UTC()
	for _, g := range grants {
		res, err := upd.ExecContext(ctx, g.Slave, g.Device)
		if err != nil {
			return fmt.Errorf("recording slot of %s: %w", g.Device, err)
		}
		if k, err := res.RowsAffected(); err != nil {
			return fmt.Errorf("recording slot of %s: %w", g.Device, err)
		} else if k == 0 {
			continue
		}
		if err := addSlaveEvent(ctx, tx, now, EventSlot, g.Slave, g.Device, "granted slave "+g.Slave); err != nil {
			return fmt.Errorf("recording slot of %s: %w", g.Device, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("recording slots: %w", err)
	}
	return nil
}

// tunnelBatch is how many tunnels one INSERT writes: one statement per row
// cost a round trip each, 2,000 of them per heartbeat of a full slave
// (on PostgreSQL 128 ms a heartbeat, holding the registry's write lock;
// BenchmarkRecordHeartbeat2000). 9 values a row stays far below SQLite's
// 32,766 bound variables a statement.
const tunnelBatch = 250

// tunnelInserts holds the INSERT of n tunnels by n: a heartbeat needs at
// most two (full batches and the rest), and building a 250-row statement
// and its placeholders anew every heartbeat is work for nothing.
var tunnelInserts sync.Map

func tunnelInsert(n int) string {
	if q, ok := tunnelInserts.Load(n); ok {
		return q.(string)
	}
	const row = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"
	q := `INSERT INTO tunnels (slave, device, forward, port, remote, since, last_probe_ok, last_probe_at, last_probe_detail) VALUES ` +
		row + strings.Repeat(", "+row, n-1)
	tunnelInserts.Store(n, q)
	return q
}

// insertTunnels writes slave's tunnels, tunnelBatch rows a statement.
func insertTunnels(ctx context.Context, tx *txx, slave string, tunnels []Tunnel) error {
	args := make([]any, 0, 9*min(len(tunnels), tunnelBatch))
	for start := 0; start < len(tunnels); start += tunnelBatch {
		batch := tunnels[start:min(start+tunnelBatch, len(tunnels))]
		args = args[:0]
		for _, t := range batch {
			var ok, probeAt, detail any // NULL when never probed
			if t.Probe != nil {
				ok, probeAt, detail = boolInt(t.Probe.OK), t.Probe.At.UnixNano(), t.Probe.Detail
			}
			var since int64
			if !t.Since.IsZero() {
				since = t.Since.UnixNano()
			}
			args = append(args, slave, t.Device, t.Forward, t.Port, t.Remote, since, ok, probeAt, detail)
		}
		if _, err := tx.ExecContext(ctx, tunnelInsert(len(batch)), args...); err != nil {
			return err
		}
	}
	return nil
}
