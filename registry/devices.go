package registry

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mas4h/mas4h/names"
	"golang.org/x/crypto/ssh"
)

// AddDevice enrols a device with its key and forwards, leasing for each
// forward the lowest free port in pr. Without forwards the device gets
// DefaultForward. Everything (device, leases, enrol event) is written in one
// transaction, so on any error nothing is.
func (s *Store) AddDevice(ctx context.Context, name string, key ssh.PublicKey, forwards []ForwardSpec, pr PortRange) (Device, error) {
	d, _, err := s.EnrolDevice(ctx, name, key, forwards, nil, pr, "")
	return d, err
}

// EnrolDevice is AddDevice with labels, and a note put in front of the
// enrol event's detail, saying who enrolled the device (e.g.
// "auto-enrolled by exec validator"). Every error it returns starts
// "enrolling device NAME: " and
// wraps one of the package's sentinels when the input is the cause.
//
// Enrolment is idempotent, so that a client whose first answer was lost
// (a crash, a timeout) can retry: the same name with the same key,
// forwards and labels as an active device answers that device
// (created=false) and writes nothing; any difference is ErrExists.
func (s *Store) EnrolDevice(ctx context.Context, name string, key ssh.PublicKey, forwards []ForwardSpec, labels map[string]string, pr PortRange, note string) (d Device, created bool, err error) {
	e, err := newEnrolment(name, key, forwards, pr)
	if err == nil {
		err = checkLabels(labels)
		e.labels = labels
	}
	if err == nil {
		d, created, err = s.insertDevice(ctx, e, note)
	}
	if err != nil {
		if names.Device(name) != nil {
			name = quoteTrunc(name)
		}
		return Device{}, false, fmt.Errorf("enrolling device %s: %w", name, err)
	}
	return d, created, nil
}

// enrolment is a device ready to be written: every field checked, forwards
// in canonical form.
type enrolment struct {
	name        string
	fingerprint string
	keyType     string
	publicKey   string // AuthorizedKey form
	forwards    []ForwardSpec
	ports       PortRange // where its forwards lease their ports
	labels      map[string]string
}

// newEnrolment checks a device about to be enrolled, without the store:
// its name, key, port range and forwards (DefaultForward when none; names
// unique, as many as the range can hold).
func newEnrolment(name string, key ssh.PublicKey, forwards []ForwardSpec, pr PortRange) (enrolment, error) {
	if err := ValidateDeviceName(name); err != nil {
		return enrolment{}, err
	}
	if err := CheckKey(key); err != nil {
		return enrolment{}, err
	}
	if err := pr.validate(); err != nil {
		return enrolment{}, err
	}
	if len(forwards) == 0 {
		forwards = []ForwardSpec{DefaultForward()}
	}
	specs := make([]ForwardSpec, len(forwards))
	seen := make(map[string]bool, len(forwards))
	for i, f := range forwards {
		n, err := f.normalize()
		if err != nil {
			return enrolment{}, err
		}
		if seen[n.Name] {
			return enrolment{}, fmt.Errorf("forward name %q given twice: %w", n.Name, ErrInvalid)
		}
		seen[n.Name] = true
		specs[i] = n
	}
	if len(specs) > pr.Size() {
		return enrolment{}, fmt.Errorf("%d forwards do not fit in port range %s; widen --port-range: %w", len(specs), pr, ErrRangeFull)
	}
	return enrolment{
		name: name, fingerprint: Fingerprint(key), keyType: key.Type(), publicKey: AuthorizedKey(key),
		forwards: specs, ports: pr,
	}, nil
}

// insertDevice writes e (device, port leases, enrol event) in one
// transaction, so on any error nothing is. An active device that is e
// already is answered as it is (created=false).
func (s *Store) insertDevice(ctx context.Context, e enrolment, note string) (Device, bool, error) {
	d, err := s.insertNewDevice(ctx, e, note)
	if !errors.Is(err, ErrExists) {
		return d, err == nil, err
	}
	old, rerr := s.Device(ctx, e.name)
	if rerr == nil && e.is(old) {
		return old, false, nil
	}
	return Device{}, false, err
}

// is reports whether d is what e would enrol: the same key, forwards (in
// order, with their probes) and labels, and active.
func (e enrolment) is(d Device) bool {
	if d.Status != StatusActive || d.Fingerprint != e.fingerprint || len(d.Forwards) != len(e.forwards) || len(d.Labels) != len(e.labels) {
		return false
	}
	for i, f := range e.forwards {
		if g := d.Forwards[i]; g.Name != f.Name || g.Target != f.Target || g.Probe != f.Probe {
			return false
		}
	}
	for k, v := range e.labels {
		if w, ok := d.Labels[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func (s *Store) insertNewDevice(ctx context.Context, e enrolment, note string) (Device, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Device{}, err
	}
	defer tx.Rollback()

	var holder string
	err = tx.QueryRowContext(ctx, `SELECT name FROM devices WHERE name = ?`, e.name).Scan(&holder)
	switch {
	case err == nil:
		return Device{}, fmt.Errorf("name is taken (by another key, other forwards or labels, or a revoked device): %w", ErrExists)
	case !errors.Is(err, sql.ErrNoRows):
		return Device{}, err
	}
	err = tx.QueryRowContext(ctx, `SELECT name FROM devices WHERE fingerprint = ?`, e.fingerprint).Scan(&holder)
	switch {
	case err == nil:
		return Device{}, fmt.Errorf("key %s is already enrolled as device %q (one key per device): %w", e.fingerprint, holder, ErrDuplicateKey)
	case !errors.Is(err, sql.ErrNoRows):
		return Device{}, err
	}
	if err := keyNotOperators(ctx, tx, e.fingerprint); err != nil {
		return Device{}, err
	}
	labels, err := marshalLabels(e.labels)
	if err != nil {
		return Device{}, err
	}

	ports, err := leasePorts(ctx, tx, e.ports, len(e.forwards))
	if err != nil {
		return Device{}, err
	}
	now := s.now().UTC()
	var id int64
	err = tx.QueryRowContext(ctx,
		`INSERT INTO devices (name, fingerprint, key_type, public_key, status, created_at, updated_at, labels)
		 VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
		e.name, e.fingerprint, e.keyType, e.publicKey, StatusActive, now.UnixNano(), now.UnixNano(), labels).Scan(&id)
	if err != nil {
		return Device{}, err
	}
	detail := make([]string, len(e.forwards))
	for i, f := range e.forwards {
		if _, err := tx.ExecContext(ctx,
			`INSERT INTO forwards (device_id, position, name, target, probe, remote_port) VALUES (?, ?, ?, ?, ?, ?)`,
			id, i, f.Name, f.Target, f.Probe, ports[i]); err != nil {
			return Device{}, fmt.Errorf("leasing port %d for forward %s: %w", ports[i], f.Name, err)
		}
		detail[i] = fmt.Sprintf("%s %s on port %d", f.Name, f.Target, ports[i])
	}
	msg := fmt.Sprintf("key %s; forwards: %s", e.fingerprint, strings.Join(detail, ", "))
	if len(e.labels) > 0 {
		msg += "; labels: " + FormatLabels(e.labels)
	}
	if note != "" {
		msg = note + "; " + msg
	}
	if err := addEvent(ctx, tx, now, EventEnrol, e.name, msg); err != nil {
		return Device{}, fmt.Errorf("logging the enrol event: %w", err)
	}
	d, err := deviceWhere(ctx, tx, "name", e.name)
	if err != nil {
		return Device{}, fmt.Errorf("reading the device back: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return Device{}, err
	}
	return d, nil
}

// leasePorts finds the n lowest free ports of pr with one query over the
// ports already leased in it. The caller's IMMEDIATE transaction holds the
// write lock, so no one else can take them before the insert.
func leasePorts(ctx context.Context, tx *txx, pr PortRange, n int) ([]int, error) {
	rows, err := tx.QueryContext(ctx,
		`SELECT remote_port FROM forwards WHERE remote_port BETWEEN ? AND ? ORDER BY remote_port`, pr.Lo, pr.Hi)
	if err != nil {
		return nil, fmt.Errorf("reading leased ports: %w", err)
	}
	defer rows.Close()
	var used []int
	for rows.Next() {
		var p int
		if err := rows.Scan(&p); err != nil {
			return nil, fmt.Errorf("reading leased ports: %w", err)
		}
		used = append(used, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("reading leased ports: %w", err)
	}
	free := freePorts(pr, used, n)
	if len(free) < n {
		return nil, fmt.Errorf("port range %s has %d free port(s), %d needed; widen --port-range or remove devices: %w", pr, len(free), n, ErrRangeFull)
	}
	return free, nil
}

// Device returns the device named name.
func (s *Store) Device(ctx context.Context, name string) (Device, error) {
	d, err := deviceWhere(ctx, s.db, "name", name)
	if err != nil {
		return Device{}, fmt.Errorf("device %s: %w", quoteTrunc(name), err)
	}
	return d, nil
}

// DeviceByFingerprint returns the device whose key has fingerprint fp
// ("SHA256:..."), the lookup the authkeys hook makes for each login.
func (s *Store) DeviceByFingerprint(ctx context.Context, fp string) (Device, error) {
	d, err := deviceWhere(ctx, s.db, "fingerprint", fp)
	if err != nil {
		return Device{}, fmt.Errorf("device with key %s: %w", quoteTrunc(fp), err)
	}
	return d, nil
}

const deviceCols = `d.id, d.name, d.fingerprint, d.key_type, d.public_key, d.status, d.created_at, d.updated_at, d.last_slave, d.labels`

// deviceWhere loads one device and its forwards; col is a constant chosen
// by the caller, never user input.
func deviceWhere(ctx context.Context, q querier, col, val string) (Device, error) {
	var d Device
	var id, created, updated int64
	var labels string
	err := q.QueryRowContext(ctx, `SELECT `+deviceCols+` FROM devices d WHERE d.`+col+` = ?`, val).
		Scan(&id, &d.Name, &d.Fingerprint, &d.KeyType, &d.PublicKey, &d.Status, &created, &updated, &d.LastSlave, &labels)
	if errors.Is(err, sql.ErrNoRows) {
		return Device{}, ErrNotFound
	}
	if err != nil {
		return Device{}, err
	}
	d.CreatedAt, d.UpdatedAt = fromNanos(created), fromNanos(updated)
	if d.Labels, err = unmarshalLabels(labels); err != nil {
		return Device{}, fmt.Errorf("labels of %s: %w", d.Name, err)
	}
	d.Forwards = []Forward{}
	rows, err := q.QueryContext(ctx,
		`SELECT name, target, probe, remote_port FROM forwards WHERE device_id = ? ORDER BY position`, id)
	if err != nil {
		return Device{}, fmt.Errorf("reading forwards: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var f Forward
		if err := rows.Scan(&f.Name, &f.Target, &f.Probe, &f.RemotePort); err != nil {
			return Device{}, fmt.Errorf("reading forwards: %w", err)
		}
		d.Forwards = append(d.Forwards, f)
	}
	if err := rows.Err(); err != nil {
		return Device{}, fmt.Errorf("reading forwards: %w", err)
	}
	return d, nil
}

// Devices returns all devices sorted by name, with their forwards. One
// LEFT JOIN reads devices and forwards together: no query per device, and
// the two cannot disagree about a device added or removed in between.
func (s *Store) Devices(ctx context.Context) ([]Device, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+deviceCols+`, f.name, f.target, f.probe, f.remote_port
		FROM devices d LEFT JOIN forwards f ON f.device_id = d.id
		ORDER BY d.name, f.position`)
	if err != nil {
		return nil, fmt.Errorf("listing devices: %w", err)
	}
	devices, err := scanDevices(rows)
	if err != nil {
		return nil, fmt.Errorf("listing devices: %w", err)
	}
	return devices, nil
}

// Revoke marks a device revoked; its next authentication is refused. Its
// port leases are kept, so un-revoking (re-enrolling) is not needed to keep
// scripts' port numbers valid while an operator investigates. Revoking a
// revoked device returns it unchanged and logs nothing.
func (s *Store) Revoke(ctx context.Context, name string) (Device, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Device{}, fmt.Errorf("revoking device %s: %w", quoteTrunc(name), err)
	}
	defer tx.Rollback()
	d, err := deviceWhere(ctx, tx, "name", name)
	if err != nil {
		return Device{}, fmt.Errorf("revoking device %s: %w", quoteTrunc(name), err)
	}
	if d.Status == StatusRevoked {
		return d, nil
	}
	now := s.now().UTC()
	if _, err := tx.ExecContext(ctx, `UPDATE devices SET status = ?, updated_at = ? WHERE name = ?`,
		StatusRevoked, now.UnixNano(), name); err != nil {
		return Device{}, fmt.Errorf("revoking device %s: %w", name, err)
	}
	if err := addEvent(ctx, tx, now, EventRevoke, name, "key "+d.Fingerprint); err != nil {
		return Device{}, fmt.Errorf("revoking device %s: %w", name, err)
	}
	if err := addRevocation(ctx, tx, now, d, RevocationRevoked); err != nil {
		return Device{}, fmt.Errorf("revoking device %s: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return Device{}, fmt.Errorf("revoking device %s: %w", name, err)
	}
	d.Status = StatusRevoked
	d.UpdatedAt = fromNanos(now.UnixNano())
	return d, nil
}

// Remove deletes a device; its forwards go with it (ON DELETE CASCADE) and
// their ports become free for the next enrolment.
func (s *Store) Remove(ctx context.Context, name string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("removing device %s: %w", quoteTrunc(name), err)
	}
	defer tx.Rollback()
	d, err := deviceWhere(ctx, tx, "name", name)
	if err != nil {
		return fmt.Errorf("removing device %s: %w", quoteTrunc(name), err)
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM devices WHERE name = ?`, name); err != nil {
		return fmt.Errorf("removing device %s: %w", name, err)
	}
	freed := make([]string, len(d.Forwards))
	for i, f := range d.Forwards {
		freed[i] = fmt.Sprint(f.RemotePort)
	}
	detail := fmt.Sprintf("key %s; freed ports: %s", d.Fingerprint, strings.Join(freed, ", "))
	now := s.now().UTC()
	if err := addEvent(ctx, tx, now, EventRemove, name, detail); err != nil {
		return fmt.Errorf("removing device %s: %w", name, err)
	}
	if err := addRevocation(ctx, tx, now, d, RevocationRemoved); err != nil {
		return fmt.Errorf("removing device %s: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("removing device %s: %w", name, err)
	}
	return nil
}

// DeviceCounts returns how many devices there are, by status.
func (s *Store) DeviceCounts(ctx context.Context) (total, active, revoked int, err error) {
	err = s.db.QueryRowContext(ctx, `SELECT count(*),
		coalesce(sum(CASE WHEN status = 'active' THEN 1 ELSE 0 END), 0), coalesce(sum(CASE WHEN status = 'revoked' THEN 1 ELSE 0 END), 0) FROM devices`).
		Scan(&total, &active, &revoked)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("counting devices: %w", err)
	}
	return total, active, revoked, nil
}

func fromNanos(n int64) time.Time { return time.Unix(0, n).UTC() }
