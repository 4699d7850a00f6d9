package registry

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
)

// The dashboard's overview shows a few hundred devices of a fleet that
// may hold a hundred thousand: these read the counts in SQL and only the
// devices (and tunnels) of the page, so that the page costs about the
// same at any fleet size.

// DeviceCounts are the fleet's devices by state. A revoked device counts
// as revoked whatever its tunnels; an active one is online while it has a
// tunnel on a slave not marked dead.
type DeviceCounts struct {
	Total, Online, Offline, Revoked int
}

// liveDevice is true for a device (d) with a tunnel on a slave not marked
// dead, through the index on tunnels' device.
const liveDevice = `EXISTS (SELECT 1 FROM tunnels t JOIN slaves s ON s.name = t.slave WHERE t.device = d.name AND s.alive = 1)`

// CountDevices counts the devices by state.
func (s *Store) CountDevices(ctx context.Context) (DeviceCounts, error) {
	var c DeviceCounts
	err := s.db.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(CASE WHEN status <> 'active' THEN 1 ELSE 0 END), 0) FROM devices`).Scan(&c.Total, &c.Revoked)
	if err != nil {
		return c, fmt.Errorf("counting devices: %w", err)
	}
	// Online: the distinct active devices among the live tunnels (far
	// fewer rows than a probe per device when most of the fleet is up).
	err = s.db.QueryRowContext(ctx, `SELECT count(*) FROM devices d WHERE d.status = 'active' AND d.name IN
		(SELECT t.device FROM tunnels t JOIN slaves s ON s.name = t.slave WHERE s.alive = 1)`).Scan(&c.Online)
	if err != nil {
		return c, fmt.Errorf("counting devices: %w", err)
	}
	c.Offline = c.Total - c.Revoked - c.Online
	return c, nil
}

// DeviceQuery selects devices for a page: those whose name contains
// NameContains (devices' names are lower case; so is the match), in state
// Show (online, offline, revoked; anything else is all), the first Limit
// by name.
type DeviceQuery struct {
	NameContains string
	Show         string
	Limit        int
}

func (q DeviceQuery) where(pg bool) (string, []any) {
	var where []string
	var args []any
	if n := strings.ToLower(strings.TrimSpace(q.NameContains)); n != "" {
		if pg { // the same test: PostgreSQL has no instr
			where = append(where, "strpos(d.name, ?) > 0")
		} else {
			where = append(where, "instr(d.name, ?) > 0")
		}
		args = append(args, n)
	}
	switch q.Show {
	case "online":
		where = append(where, "d.status = 'active' AND "+liveDevice)
	case "offline":
		where = append(where, "d.status = 'active' AND NOT "+liveDevice)
	case "revoked":
		where = append(where, "d.status != 'active'")
	}
	if len(where) == 0 {
		return "", nil
	}
	return " WHERE " + strings.Join(where, " AND "), args
}

// FindDevices returns the first q.Limit devices q selects, by name, with
// their forwards, and how many q selects in all.
func (s *Store) FindDevices(ctx context.Context, q DeviceQuery) ([]Device, int, error) {
	where, args := q.where(s.db.pg)
	var matching int
	if err := s.db.QueryRowContext(ctx, `SELECT count(*) FROM devices d`+where, args...).Scan(&matching); err != nil {
		return nil, 0, fmt.Errorf("finding devices: %w", err)
	}
	if q.Limit <= 0 {
		return []Device{}, matching, nil
	}
	rows, err := s.db.QueryContext(ctx, `WITH page AS (SELECT * FROM devices d`+where+` ORDER BY d.name LIMIT ?)
		SELECT `+deviceCols+`, f.name, f.target, f.probe, f.remote_port
		FROM page d LEFT JOIN forwards f ON f.device_id = d.id
		ORDER BY d.name, f.position`, append(args, q.Limit)...)
	if err != nil {
		return nil, 0, fmt.Errorf("finding devices: %w", err)
	}
	devices, err := scanDevices(rows)
	if err != nil {
		return nil, 0, fmt.Errorf("finding devices: %w", err)
	}
	return devices, matching, nil
}

// TunnelsOf is LiveTunnels of the named devices only, sorted the same
// way.
func (s *Store) TunnelsOf(ctx context.Context, devices []string) ([]Tunnel, error) {
	out := []Tunnel{}
	const batch = 500 // well under SQLite's limit on a statement's parameters
	for len(devices) > 0 {
		n := min(len(devices), batch)
		args := make([]any, n)
		for i, d := range devices[:n] {
			args[i] = d
		}
		ts, err := s.liveTunnels(ctx, `SELECT t.slave, t.device, t.forward, t.port, t.remote, t.since,
			t.last_probe_ok, t.last_probe_at, t.last_probe_detail
			FROM tunnels t JOIN slaves s ON s.name = t.slave WHERE s.alive = 1 AND t.device IN (?`+strings.Repeat(", ?", n-1)+`)
			ORDER BY t.device, t.forward, t.slave, t.port`, args...)
		if err != nil {
			return nil, err
		}
		out = append(out, ts...)
		devices = devices[n:]
	}
	return out, nil
}

// scanDevices reads rows of deviceCols and a forward's columns (a LEFT
// JOIN, ordered by device), one Device per device, and closes rows.
func scanDevices(rows *sql.Rows) ([]Device, error) {
	defer rows.Close()
	devices := []Device{}
	lastID := int64(-1)
	for rows.Next() {
		var d Device
		var id, created, updated int64
		var labels string
		var fName, fTarget, fProbe sql.NullString
		var fPort sql.NullInt64
		if err := rows.Scan(&id, &d.Name, &d.Fingerprint, &d.KeyType, &d.PublicKey, &d.Status, &created, &updated, &d.LastSlave, &labels,
			&fName, &fTarget, &fProbe, &fPort); err != nil {
			return nil, err
		}
		if id != lastID {
			var err error
			if d.Labels, err = unmarshalLabels(labels); err != nil {
				return nil, fmt.Errorf("labels of %s: %w", d.Name, err)
			}
			d.CreatedAt, d.UpdatedAt = fromNanos(created), fromNanos(updated)
			d.Forwards = []Forward{}
			devices = append(devices, d)
			lastID = id
		}
		if fName.Valid {
			cur := &devices[len(devices)-1]
			cur.Forwards = append(cur.Forwards, Forward{Name: fName.String, Target: fTarget.String, Probe: fProbe.String, RemotePort: int(fPort.Int64)})
		}
	}
	return devices, rows.Err()
}
