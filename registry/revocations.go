package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"time"
)

// Revocation reasons.
const (
	RevocationRevoked = "revoked"
	RevocationRemoved = "removed"
	// RevocationChanged: an operator's reach narrowed (a selector denied, a
	// device's labels changed); slaves forget its cached lines and end its
	// sessions, and its next login gets the new ones.
	RevocationChanged = "changed"
)

// Revocation is one entry of the revocation log that slaves follow by
// sequence number: a device that may no longer connect, with the ports its
// live sessions hold, kept here because after rm its forwards are gone.
type Revocation struct {
	Seq         int64
	At          time.Time
	Device      string
	Operator    string // set, and Device empty, for an operator's
	Fingerprint string
	Ports       []int
	Reason      string // RevocationRevoked, RevocationRemoved or RevocationChanged
}

// addRevocation logs d's revocation inside the caller's transaction.
func addRevocation(ctx context.Context, x execContexter, at time.Time, d Device, reason string) error {
	ports := make([]int, len(d.Forwards))
	for i, f := range d.Forwards {
		ports[i] = f.RemotePort
	}
	js, err := json.Marshal(ports)
	if err != nil {
		return err
	}
	_, err = x.ExecContext(ctx, `INSERT INTO revocations (at, device, fingerprint, ports, reason) VALUES (?, ?, ?, ?, ?)`,
		at.UnixNano(), d.Name, d.Fingerprint, string(js), reason)
	if err != nil {
		return fmt.Errorf("logging revocation: %w", err)
	}
	return nil
}

// addOperatorRevocation logs that op's sessions are to end, inside the
// caller's transaction.
func addOperatorRevocation(ctx context.Context, x execContexter, at time.Time, op Operator, reason string) error {
	_, err := x.ExecContext(ctx, `INSERT INTO revocations (at, device, operator, fingerprint, ports, reason) VALUES (?, '', ?, ?, '[]', ?)`,
		at.UnixNano(), op.Name, op.Fingerprint, reason)
	if err != nil {
		return fmt.Errorf("logging revocation: %w", err)
	}
	return nil
}

// Revocations returns at most limit revocations with a sequence number
// above after, oldest first.
func (s *Store) Revocations(ctx context.Context, after int64, limit int) ([]Revocation, error) {
	if limit <= 0 {
		limit = defaultEventLimit
	}
	rows, err := s.db.QueryContext(ctx, `SELECT seq, at, device, operator, fingerprint, ports, reason FROM revocations
		WHERE seq > ? ORDER BY seq LIMIT ?`, after, limit)
	if err != nil {
		return nil, fmt.Errorf("listing revocations: %w", err)
	}
	defer rows.Close()
	out := []Revocation{}
	for rows.Next() {
		var r Revocation
		var at int64
		var ports string
		if err := rows.Scan(&r.Seq, &at, &r.Device, &r.Operator, &r.Fingerprint, &ports, &r.Reason); err != nil {
			return nil, fmt.Errorf("listing revocations: %w", err)
		}
		if err := json.Unmarshal([]byte(ports), &r.Ports); err != nil {
			return nil, fmt.Errorf("listing revocations: ports of %s: %w", r.Device, err)
		}
		r.At = fromNanos(at)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("listing revocations: %w", err)
	}
	return out, nil
}

// RevocationSeq returns the newest revocation's sequence number: what a
// fresh slave starts following from. It is never 0, which a slave sends
// when it knows nothing yet: the empty log's number is 1, and the first
// revocation's 2.
func (s *Store) RevocationSeq(ctx context.Context) (int64, error) {
	var seq int64
	if err := s.db.QueryRowContext(ctx, `SELECT coalesce(max(seq), 1) FROM revocations`).Scan(&seq); err != nil {
		return 0, fmt.Errorf("reading revocation sequence: %w", err)
	}
	return seq, nil
}
