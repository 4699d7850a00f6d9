package registry

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
)

// Each slave speaks to the master with its own credential, issued by
// 'mas4h slave add'. The registry keeps only its SHA-256: the secret is 32
// random bytes, so a hash without salt or stretching is as hard to invert
// as the secret is to guess, and a stolen registry file holds nothing a
// slave could present.
//
// A slave's host keys are bound to its name: the first heartbeat records
// them, and a later one presenting other keys is refused (a
// slave-key-mismatch event; the keys wait as pending) until an admin
// accepts them (AcceptSlaveKeys) or issues the slave a new credential
// (SetSlaveCredential), whose first heartbeat binds its keys anew.
// Otherwise whoever can heartbeat as a slave could send its devices to
// another sshd, with that sshd's host key to pin.

// Event kinds of slave credentials and host keys.
const (
	EventSlaveAdded       = "slave-add"
	EventSlaveRemoved     = "slave-rm"
	EventSlaveKeyMismatch = "slave-key-mismatch"
	EventSlaveKeyAccepted = "slave-key-accepted"
)

// ErrNoPendingKeys: the slave has presented no host keys to accept.
var ErrNoPendingKeys = errors.New("no pending host keys")

// CredentialHash is what the registry keeps of a slave's credential secret.
func CredentialHash(secret string) [sha256.Size]byte { return sha256.Sum256([]byte(secret)) }

// HostKeyMismatchError is a heartbeat refused because the slave presented
// host keys other than those bound to its name.
type HostKeyMismatchError struct {
	Slave     string
	Bound     []string // "type base64"
	Presented []string
	// New is true when these keys differ from the ones pending before, so
	// that a slave-key-mismatch event was written; a slave beating with the
	// same wrong keys every few seconds writes one event, not thousands.
	New bool
}

func (e *HostKeyMismatchError) Error() string {
	return fmt.Sprintf("slave %s presented host keys %s, but its name is bound to %s; "+
		"if the slave's host keys changed on purpose, accept them with 'mas4h slave accept-key %s'",
		e.Slave, fingerprintList(e.Presented), fingerprintList(e.Bound), e.Slave)
}

// SlaveEntry is a slave as 'mas4h slave list' shows it: a credential, a
// registration by heartbeat, or both.
type SlaveEntry struct {
	Name         string
	Credential   bool      // it has its own credential
	CredentialAt time.Time // when that was issued
	Rebind       bool      // its next heartbeat binds its host keys (issued, not used yet)
	Registered   bool      // it has heartbeated: a row of Slaves
	Pending      []string  // host keys presented and refused, awaiting accept-key
	PendingSince time.Time
}

// SetSlaveCredential makes hash the credential of slave name, replacing any
// earlier one, and lets the next heartbeat bind the slave's host keys.
// replaced reports whether the slave had a credential before.
func (s *Store) SetSlaveCredential(ctx context.Context, name string, hash [sha256.Size]byte) (replaced bool, err error) {
	at := s.now().UTC()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, fmt.Errorf("issuing a credential for slave %s: %w", name, err)
	}
	defer tx.Rollback()
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM slave_credentials WHERE name = ?`, name).Scan(&n); err != nil {
		return false, fmt.Errorf("issuing a credential for slave %s: %w", name, err)
	}
	replaced = n > 0
	if _, err := tx.ExecContext(ctx, `INSERT INTO slave_credentials (name, secret_hash, created_at, rebind) VALUES (?, ?, ?, 1)
		ON CONFLICT (name) DO UPDATE SET secret_hash = excluded.secret_hash, created_at = excluded.created_at, rebind = 1`,
		name, hash[:], at.UnixNano()); err != nil {
		return false, fmt.Errorf("issuing a credential for slave %s: %w", name, err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE slaves SET pending_host_keys = '[]', pending_since = 0 WHERE name = ?`, name); err != nil {
		return false, fmt.Errorf("issuing a credential for slave %s: %w", name, err)
	}
	detail := fmt.Sprintf("slave %s: credential issued; its first heartbeat with it binds its host keys", name)
	if replaced {
		detail = fmt.Sprintf("slave %s: credential replaced (the old one no longer works); its next heartbeat binds its host keys", name)
	}
	if err := addSlaveEvent(ctx, tx, at, EventSlaveAdded, name, "", detail); err != nil {
		return false, fmt.Errorf("issuing a credential for slave %s: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("issuing a credential for slave %s: %w", name, err)
	}
	return replaced, nil
}

// SlaveCredentialHash returns the hash of slave name's credential, or an
// error wrapping ErrNotFound when it has none.
func (s *Store) SlaveCredentialHash(ctx context.Context, name string) ([sha256.Size]byte, error) {
	var h [sha256.Size]byte
	var b []byte
	err := s.db.QueryRowContext(ctx, `SELECT secret_hash FROM slave_credentials WHERE name = ?`, name).Scan(&b)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		return h, fmt.Errorf("slave %s has no credential: %w", quoteTrunc(name), ErrNotFound)
	case err != nil:
		return h, fmt.Errorf("reading the credential of slave %s: %w", name, err)
	case len(b) != sha256.Size:
		return h, fmt.Errorf("reading the credential of slave %s: stored hash is %d bytes", name, len(b))
	}
	copy(h[:], b)
	return h, nil
}

// RemoveSlave forgets slave name: its credential, its registration and its
// tunnels. It wraps ErrNotFound when there was neither a credential nor a
// registration.
func (s *Store) RemoveSlave(ctx context.Context, name string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("removing slave %s: %w", name, err)
	}
	defer tx.Rollback()
	var gone int64
	for _, q := range []string{`DELETE FROM slave_credentials WHERE name = ?`, `DELETE FROM slaves WHERE name = ?`} {
		res, err := tx.ExecContext(ctx, q, name)
		if err != nil {
			return fmt.Errorf("removing slave %s: %w", name, err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return fmt.Errorf("removing slave %s: %w", name, err)
		}
		gone += n
	}
	if gone == 0 {
		return fmt.Errorf("slave %s: %w", quoteTrunc(name), ErrNotFound)
	}
	if err := addSlaveEvent(ctx, tx, s.now().UTC(), EventSlaveRemoved, name, "", fmt.Sprintf("slave %s removed: its credential no longer works", name)); err != nil {
		return fmt.Errorf("removing slave %s: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("removing slave %s: %w", name, err)
	}
	return nil
}

// AcceptSlaveKeys binds the host keys slave name last presented (and was
// refused) to its name, and returns them. When fingerprints is not empty,
// the pending keys must be exactly those, so that an admin who checked the
// slave's keys on its host accepts those and not whatever was presented
// last. Errors wrap ErrNotFound (no such slave), ErrNoPendingKeys, or
// ErrInvalid (the fingerprints do not match).
func (s *Store) AcceptSlaveKeys(ctx context.Context, name string, fingerprints []string) ([]string, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("accepting host keys of slave %s: %w", name, err)
	}
	defer tx.Rollback()
	var bound, pending string
	var since int64
	err = tx.QueryRowContext(ctx, `SELECT host_keys, pending_host_keys, pending_since FROM slaves WHERE name = ?`, name).Scan(&bound, &pending, &since)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("slave %s has never sent a heartbeat: %w", quoteTrunc(name), ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("accepting host keys of slave %s: %w", name, err)
	}
	var keys, old []string
	if err := json.Unmarshal([]byte(pending), &keys); err != nil {
		return nil, fmt.Errorf("accepting host keys of slave %s: pending keys: %w", name, err)
	}
	if err := json.Unmarshal([]byte(bound), &old); err != nil {
		return nil, fmt.Errorf("accepting host keys of slave %s: bound keys: %w", name, err)
	}
	if since == 0 {
		return nil, fmt.Errorf("slave %s has presented no other host keys than its own (%s): %w", name, fingerprintList(old), ErrNoPendingKeys)
	}
	if len(fingerprints) > 0 {
		got := keyFingerprints(keys)
		if !sameSet(got, fingerprints) {
			return nil, fmt.Errorf("slave %s's pending host keys are %s, not %s; nothing accepted: %w",
				name, strings.Join(got, ", "), strings.Join(fingerprints, ", "), ErrInvalid)
		}
	}
	if _, err := tx.ExecContext(ctx, `UPDATE slaves SET host_keys = ?, pending_host_keys = '[]', pending_since = 0 WHERE name = ?`, pending, name); err != nil {
		return nil, fmt.Errorf("accepting host keys of slave %s: %w", name, err)
	}
	if err := addSlaveEvent(ctx, tx, s.now().UTC(), EventSlaveKeyAccepted, name, "",
		fmt.Sprintf("slave %s: host keys %s accepted by an admin (were %s)", name, fingerprintList(keys), fingerprintList(old))); err != nil {
		return nil, fmt.Errorf("accepting host keys of slave %s: %w", name, err)
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("accepting host keys of slave %s: %w", name, err)
	}
	return keys, nil
}

// SlaveEntries lists every slave with a credential or a registration,
// sorted by name.
func (s *Store) SlaveEntries(ctx context.Context) ([]SlaveEntry, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT n.name, c.created_at, c.rebind, s.name IS NOT NULL,
		coalesce(s.pending_host_keys, '[]'), coalesce(s.pending_since, 0)
		FROM (SELECT name FROM slaves UNION SELECT name FROM slave_credentials) n
		LEFT JOIN slave_credentials c ON c.name = n.name
		LEFT JOIN slaves s ON s.name = n.name
		ORDER BY n.name`)
	if err != nil {
		return nil, fmt.Errorf("listing slaves: %w", err)
	}
	defer rows.Close()
	out := []SlaveEntry{}
	for rows.Next() {
		var e SlaveEntry
		var created sql.NullInt64
		var rebind sql.NullBool
		var pending string
		var since int64
		if err := rows.Scan(&e.Name, &created, &rebind, &e.Registered, &pending, &since); err != nil {
			return nil, fmt.Errorf("listing slaves: %w", err)
		}
		if created.Valid {
			e.Credential, e.CredentialAt, e.Rebind = true, fromNanos(created.Int64), rebind.Bool
		}
		if since != 0 {
			if err := json.Unmarshal([]byte(pending), &e.Pending); err != nil {
				return nil, fmt.Errorf("listing slaves: pending keys of %s: %w", e.Name, err)
			}
			e.PendingSince = fromNanos(since)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing slaves: %w", err)
	}
	return out, nil
}

// bindHostKeys decides, inside a heartbeat's transaction, whether the host
// keys r presents may stand for slave r.Name. exists says whether the
// slave has a row; bound is its host_keys column, pending its
// pending_host_keys. A slave heard of for the first time, or whose
// credential was just issued, binds the keys it presents; otherwise they
// must be the bound ones, or the heartbeat is refused with a
// *HostKeyMismatchError, after the keys are noted as pending (and, when
// they are new, a slave-key-mismatch event written), which the caller must
// commit.
func bindHostKeys(ctx context.Context, tx *txx, r SlaveReport, exists bool, bound, pending string, pendingSince int64, at time.Time) error {
	var rebind sql.NullBool
	err := tx.QueryRowContext(ctx, `SELECT rebind FROM slave_credentials WHERE name = ?`, r.Name).Scan(&rebind)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return err
	}
	if rebind.Bool {
		if _, err := tx.ExecContext(ctx, `UPDATE slave_credentials SET rebind = 0 WHERE name = ?`, r.Name); err != nil {
			return err
		}
		if exists {
			return addSlaveEvent(ctx, tx, at, EventSlaveKeyAccepted, r.Name, "",
				fmt.Sprintf("slave %s: host keys %s bound with its new credential", r.Name, fingerprintList(r.HostKeys)))
		}
		return nil
	}
	if !exists {
		return nil
	}
	var old, prev []string
	if err := json.Unmarshal([]byte(bound), &old); err != nil {
		return fmt.Errorf("bound host keys: %w", err)
	}
	if sameSet(old, r.HostKeys) {
		return nil
	}
	mismatch := &HostKeyMismatchError{Slave: r.Name, Bound: old, Presented: slices.Clone(r.HostKeys)}
	if pendingSince == 0 || json.Unmarshal([]byte(pending), &prev) != nil || !sameSet(prev, r.HostKeys) {
		keys, err := json.Marshal(nonNil(r.HostKeys))
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE slaves SET pending_host_keys = ?, pending_since = ? WHERE name = ?`,
			string(keys), at.UnixNano(), r.Name); err != nil {
			return err
		}
		if err := addSlaveEvent(ctx, tx, at, EventSlaveKeyMismatch, r.Name, "",
			fmt.Sprintf("heartbeat refused: slave %s presented host keys %s from %s:%d; its name is bound to %s (accept with 'mas4h slave accept-key %s' if this is the slave's own change)",
				r.Name, fingerprintList(r.HostKeys), r.Host, r.Port, fingerprintList(old), r.Name)); err != nil {
			return err
		}
		mismatch.New = true
	}
	return mismatch
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// sameSet reports whether a and b hold the same strings, in any order.
func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	x, y := slices.Clone(a), slices.Clone(b)
	slices.Sort(x)
	slices.Sort(y)
	return slices.Equal(x, y)
}

// keyFingerprints gives the SHA256 fingerprint of each "type base64" key
// (as ssh-keygen -l shows it), or the key itself, quoted and cut short,
// when it does not parse.
func keyFingerprints(keys []string) []string {
	out := make([]string, len(keys))
	for i, k := range keys {
		pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(k))
		if err != nil {
			out[i] = quoteTrunc(k)
			continue
		}
		out[i] = Fingerprint(pk)
	}
	return out
}

// KeyFingerprints is keyFingerprints for callers that show keys to people.
func KeyFingerprints(keys []string) []string { return keyFingerprints(keys) }

func fingerprintList(keys []string) string {
	if len(keys) == 0 {
		return "(none)"
	}
	return "[" + strings.Join(keyFingerprints(keys), ", ") + "]"
}
