package registry

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/names"
)

// Operator is a person who reaches devices through a slave's sshd as the
// operator user: one key, and an allow list of selectors (OR'ed) saying
// which devices' ports that key may open.
type Operator struct {
	Name        string
	Fingerprint string
	KeyType     string
	PublicKey   string // AuthorizedKey form: "type base64"
	Status      string // StatusActive or StatusRevoked
	Allow       []string
	CreatedAt   time.Time
	UpdatedAt   time.Time
}

// Wire is the operator as the admin API shows it (without Devices).
func (o Operator) Wire() wire.Operator {
	allow := o.Allow
	if allow == nil {
		allow = []string{}
	}
	return wire.Operator{Name: o.Name, Fingerprint: o.Fingerprint, PublicKey: o.PublicKey, Status: o.Status,
		Allow: allow, CreatedAt: o.CreatedAt}
}

// ValidateOperatorName checks an operator's name (names.Operator), as an
// ErrInvalid.
func ValidateOperatorName(name string) error {
	if err := names.Operator(name); err != nil {
		return fmt.Errorf("%w: %w", err, ErrInvalid)
	}
	return nil
}

// opErr wraps err with what was done to which operator, quoting a name
// that is not one.
func opErr(what, name string, err error) error {
	if names.Operator(name) != nil {
		name = quoteTrunc(name)
	}
	return fmt.Errorf("%s operator %s: %w", what, name, err)
}

// keyNotOperators refuses, inside the caller's transaction, a key that is
// an operator's: sshd hands the hook only the key, so one key is one
// identity, a device's or an operator's.
func keyNotOperators(ctx context.Context, q querier, fp string) error {
	var holder string
	err := q.QueryRowContext(ctx, `SELECT name FROM operators WHERE fingerprint = ?`, fp).Scan(&holder)
	switch {
	case err == nil:
		return fmt.Errorf("key %s is operator %q's (a key is a device's or an operator's, never both): %w", fp, holder, ErrDuplicateKey)
	case !errors.Is(err, sql.ErrNoRows):
		return err
	}
	return nil
}

// AddOperator enrols an operator with its key and allow list, in one
// transaction with an operator-enrol event. The key must be of a type
// devices may use, and neither a device's nor another operator's.
func (s *Store) AddOperator(ctx context.Context, name string, key ssh.PublicKey, allow []string) (Operator, error) {
	op, err := s.addOperator(ctx, name, key, allow)
	if err != nil {
		return Operator{}, opErr("enrolling", name, err)
	}
	return op, nil
}

func (s *Store) addOperator(ctx context.Context, name string, key ssh.PublicKey, allow []string) (Operator, error) {
	if err := ValidateOperatorName(name); err != nil {
		return Operator{}, err
	}
	if err := CheckKey(key); err != nil {
		return Operator{}, err
	}
	sels, err := ParseSelectors(allow)
	if err != nil {
		return Operator{}, err
	}
	canon := selectorStrings(sels)
	fp := Fingerprint(key)
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Operator{}, err
	}
	defer tx.Rollback()
	var holder string
	err = tx.QueryRowContext(ctx, `SELECT name FROM operators WHERE name = ?`, name).Scan(&holder)
	switch {
	case err == nil:
		return Operator{}, fmt.Errorf("name is taken: %w", ErrExists)
	case !errors.Is(err, sql.ErrNoRows):
		return Operator{}, err
	}
	if err := keyNotOperators(ctx, tx, fp); err != nil {
		return Operator{}, err
	}
	err = tx.QueryRowContext(ctx, `SELECT name FROM devices WHERE fingerprint = ?`, fp).Scan(&holder)
	switch {
	case err == nil:
		return Operator{}, fmt.Errorf("key %s is device %q's (a key is a device's or an operator's, never both): %w", fp, holder, ErrDuplicateKey)
	case !errors.Is(err, sql.ErrNoRows):
		return Operator{}, err
	}
	js, err := json.Marshal(canon)
	if err != nil {
		return Operator{}, err
	}
	now := s.now().UTC()
	if _, err := tx.ExecContext(ctx, `INSERT INTO operators (name, fingerprint, key_type, public_key, status, allow, created_at, updated_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`, name, fp, key.Type(), AuthorizedKey(key), StatusActive, string(js), now.UnixNano(), now.UnixNano()); err != nil {
		return Operator{}, err
	}
	detail := fmt.Sprintf("key %s; allow: %s", fp, allowText(canon))
	if err := insertEvent(ctx, tx, Event{At: now, Kind: EventOperatorEnrol, Operator: name, Detail: detail}); err != nil {
		return Operator{}, err
	}
	op, err := operatorWhere(ctx, tx, "name", name)
	if err != nil {
		return Operator{}, err
	}
	if err := tx.Commit(); err != nil {
		return Operator{}, err
	}
	return op, nil
}

func allowText(allow []string) string {
	if len(allow) == 0 {
		return "nothing"
	}
	b, _ := json.Marshal(allow)
	return string(b)
}

func selectorStrings(sels []Selector) []string {
	out := make([]string, len(sels))
	for i, s := range sels {
		out[i] = s.String()
	}
	return out
}

const operatorCols = `name, fingerprint, key_type, public_key, status, allow, created_at, updated_at`

func scanOperator(sc interface{ Scan(...any) error }) (Operator, error) {
	var o Operator
	var allow string
	var created, updated int64
	if err := sc.Scan(&o.Name, &o.Fingerprint, &o.KeyType, &o.PublicKey, &o.Status, &allow, &created, &updated); err != nil {
		return Operator{}, err
	}
	if err := json.Unmarshal([]byte(allow), &o.Allow); err != nil {
		return Operator{}, fmt.Errorf("allow list of operator %s: %w", o.Name, err)
	}
	if o.Allow == nil {
		o.Allow = []string{}
	}
	o.CreatedAt, o.UpdatedAt = fromNanos(created), fromNanos(updated)
	return o, nil
}

// operatorWhere loads one operator; col is a constant chosen by the
// caller, never user input.
func operatorWhere(ctx context.Context, q querier, col, val string) (Operator, error) {
	o, err := scanOperator(q.QueryRowContext(ctx, `SELECT `+operatorCols+` FROM operators WHERE `+col+` = ?`, val))
	if errors.Is(err, sql.ErrNoRows) {
		return Operator{}, ErrNotFound
	}
	return o, err
}

// operatorsWhere lists operators by name, all of them when col is "".
func operatorsWhere(ctx context.Context, q querier, col, val string) ([]Operator, error) {
	query, args := `SELECT `+operatorCols+` FROM operators`, []any{}
	if col != "" {
		query += ` WHERE ` + col + ` = ?`
		args = append(args, val)
	}
	rows, err := q.QueryContext(ctx, query+` ORDER BY name`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Operator{}
	for rows.Next() {
		o, err := scanOperator(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, o)
	}
	return out, rows.Err()
}

// Operators returns every operator, sorted by name.
func (s *Store) Operators(ctx context.Context) ([]Operator, error) {
	ops, err := operatorsWhere(ctx, s.db, "", "")
	if err != nil {
		return nil, fmt.Errorf("listing operators: %w", err)
	}
	return ops, nil
}

// Operator returns the operator named name.
func (s *Store) Operator(ctx context.Context, name string) (Operator, error) {
	o, err := operatorWhere(ctx, s.db, "name", name)
	if err != nil {
		return Operator{}, opErr("reading", name, err)
	}
	return o, nil
}

// OperatorByFingerprint returns the operator whose key has fingerprint fp.
func (s *Store) OperatorByFingerprint(ctx context.Context, fp string) (Operator, error) {
	o, err := operatorWhere(ctx, s.db, "fingerprint", fp)
	if err != nil {
		return Operator{}, fmt.Errorf("operator with key %s: %w", quoteTrunc(fp), err)
	}
	return o, nil
}

// AllowOperator adds sel to the operator's allow list (nothing changes
// when it is there already).
func (s *Store) AllowOperator(ctx context.Context, name, sel string) (Operator, error) {
	o, err := s.changeAllow(ctx, name, sel, true)
	if err != nil {
		return Operator{}, opErr("allowing", name, err)
	}
	return o, nil
}

// DenyOperator takes sel off the operator's allow list; a selector that is
// not on it is an ErrNotFound (a typo should not pass for a denial). The
// operator's live sessions end (a "changed" revocation): its next login
// gets lines for what it may still reach.
func (s *Store) DenyOperator(ctx context.Context, name, sel string) (Operator, error) {
	o, err := s.changeAllow(ctx, name, sel, false)
	if err != nil {
		return Operator{}, opErr("denying", name, err)
	}
	return o, nil
}

func (s *Store) changeAllow(ctx context.Context, name, raw string, add bool) (Operator, error) {
	sel, err := ParseSelector(raw)
	if err != nil {
		return Operator{}, err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Operator{}, err
	}
	defer tx.Rollback()
	o, err := operatorWhere(ctx, tx, "name", name)
	if err != nil {
		return Operator{}, err
	}
	i := slices.Index(o.Allow, sel.String())
	switch {
	case add && i >= 0:
		return o, nil
	case add && len(o.Allow) >= MaxAllow:
		return Operator{}, fmt.Errorf("the allow list holds %d selectors already, at most %d: %w", len(o.Allow), MaxAllow, ErrInvalid)
	case add:
		o.Allow = append(o.Allow, sel.String())
	case i < 0:
		return Operator{}, fmt.Errorf("selector %s is not on the allow list %s: %w", sel, allowText(o.Allow), ErrNotFound)
	default:
		o.Allow = slices.Delete(o.Allow, i, i+1)
	}
	js, err := json.Marshal(o.Allow)
	if err != nil {
		return Operator{}, err
	}
	now := s.now().UTC()
	if _, err := tx.ExecContext(ctx, `UPDATE operators SET allow = ?, updated_at = ? WHERE name = ?`, string(js), now.UnixNano(), name); err != nil {
		return Operator{}, err
	}
	sign := "+"
	if !add {
		sign = "-"
		if o.Status == StatusActive {
			if err := addOperatorRevocation(ctx, tx, now, o, RevocationChanged); err != nil {
				return Operator{}, err
			}
		}
	}
	if err := insertEvent(ctx, tx, Event{At: now, Kind: EventOperatorAllow, Operator: name, Detail: sign + sel.String() + "; allow: " + allowText(o.Allow)}); err != nil {
		return Operator{}, err
	}
	if err := tx.Commit(); err != nil {
		return Operator{}, err
	}
	o.UpdatedAt = fromNanos(now.UnixNano())
	return o, nil
}

// RevokeOperator marks an operator revoked: its key opens nothing any
// more, and slaves end its sessions (a revocation with Operator set).
// Revoking a revoked operator returns it unchanged and logs nothing.
func (s *Store) RevokeOperator(ctx context.Context, name string) (Operator, error) {
	o, err := s.revokeOperator(ctx, name)
	if err != nil {
		return Operator{}, opErr("revoking", name, err)
	}
	return o, nil
}

func (s *Store) revokeOperator(ctx context.Context, name string) (Operator, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Operator{}, err
	}
	defer tx.Rollback()
	o, err := operatorWhere(ctx, tx, "name", name)
	if err != nil {
		return Operator{}, err
	}
	if o.Status == StatusRevoked {
		return o, nil
	}
	now := s.now().UTC()
	if _, err := tx.ExecContext(ctx, `UPDATE operators SET status = ?, updated_at = ? WHERE name = ?`, StatusRevoked, now.UnixNano(), name); err != nil {
		return Operator{}, err
	}
	if err := insertEvent(ctx, tx, Event{At: now, Kind: EventOperatorRevoke, Operator: name, Detail: "key " + o.Fingerprint}); err != nil {
		return Operator{}, err
	}
	if err := addOperatorRevocation(ctx, tx, now, o, RevocationRevoked); err != nil {
		return Operator{}, err
	}
	if err := tx.Commit(); err != nil {
		return Operator{}, err
	}
	o.Status, o.UpdatedAt = StatusRevoked, fromNanos(now.UnixNano())
	return o, nil
}

// RemoveOperator deletes an operator; slaves end its sessions. Its events
// stay in the log.
func (s *Store) RemoveOperator(ctx context.Context, name string) error {
	if err := s.removeOperator(ctx, name); err != nil {
		return opErr("removing", name, err)
	}
	return nil
}

func (s *Store) removeOperator(ctx context.Context, name string) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	o, err := operatorWhere(ctx, tx, "name", name)
	if err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, `DELETE FROM operators WHERE name = ?`, name); err != nil {
		return err
	}
	now := s.now().UTC()
	if err := insertEvent(ctx, tx, Event{At: now, Kind: EventOperatorRemove, Operator: name, Detail: "key " + o.Fingerprint}); err != nil {
		return err
	}
	if err := addOperatorRevocation(ctx, tx, now, o, RevocationRemoved); err != nil {
		return err
	}
	return tx.Commit()
}

// ErrRevoked: the operator (or device) is revoked.
var ErrRevoked = errors.New("revoked")

// OperatorAccess is what the key with fingerprint fp may open as the
// operator user: the operator, and every leased port of every active
// device its allow list selects, by device name then forward order. An
// unknown key is ErrNotFound; a revoked operator's is ErrRevoked (with the
// operator returned, for the event log).
func (s *Store) OperatorAccess(ctx context.Context, fingerprint string) (Operator, []wire.OpenPort, error) {
	o, err := s.OperatorByFingerprint(ctx, fingerprint)
	if err != nil {
		return Operator{}, nil, err
	}
	if o.Status != StatusActive {
		return o, nil, fmt.Errorf("operator %s is %s: %w", o.Name, o.Status, ErrRevoked)
	}
	devs, err := s.OperatorDevices(ctx, o)
	if err != nil {
		return Operator{}, nil, err
	}
	open := []wire.OpenPort{}
	for _, d := range devs {
		for _, f := range d.Forwards {
			open = append(open, wire.OpenPort{Device: d.Name, Forward: f.Name, Port: f.RemotePort})
		}
	}
	return o, open, nil
}

// OperatorDevices returns the active devices o's allow list selects,
// sorted by name.
func (s *Store) OperatorDevices(ctx context.Context, o Operator) ([]Device, error) {
	sels, err := ParseSelectors(o.Allow)
	if err != nil {
		return nil, fmt.Errorf("allow list of operator %s: %w", o.Name, err)
	}
	if len(sels) == 0 {
		return []Device{}, nil
	}
	devs, err := s.DevicesMatching(ctx, sels)
	if err != nil {
		return nil, err
	}
	out := devs[:0]
	for _, d := range devs {
		if d.Status == StatusActive {
			out = append(out, d)
		}
	}
	return out, nil
}

// OperatorMayReach reports whether o (active) may reach device d (active,
// selected by its allow list).
func OperatorMayReach(o Operator, d Device) bool {
	if o.Status != StatusActive || d.Status != StatusActive {
		return false
	}
	sels, err := ParseSelectors(o.Allow)
	return err == nil && MatchAny(sels, d.Name, d.Labels)
}
