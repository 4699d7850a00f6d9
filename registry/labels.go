package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/mas4h/mas4h/names"
)

// Labels are a device's K=V tags (site=lyon, role=router). Operators'
// allow lists select devices by them, so keys and values are held to a
// small alphabet: they appear in selectors, URLs and command lines.
var (
	labelKeyRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9._/-]{0,62}$`)
	labelValueRE = regexp.MustCompile(`^[A-Za-z0-9._-]{0,63}$`)
	// A glob selects device names: the device alphabet and path.Match's
	// metacharacters (* ? [ ] ^ and - inside brackets). No backslash: a
	// device name has nothing to escape.
	globRE = regexp.MustCompile(`^[a-z0-9._*?\[\]^-]{1,63}$`)
)

// MaxLabels bounds a device's labels.
const MaxLabels = 64

// MaxAllow bounds an operator's allow list.
const MaxAllow = 256

// ValidateLabel checks one label's key and value.
func ValidateLabel(key, value string) error {
	if !labelKeyRE.MatchString(key) {
		return fmt.Errorf("label key must be 1-63 characters of a-z 0-9 . _ / - starting with a letter or digit, got %s: %w", quoteTrunc(key), ErrInvalid)
	}
	if !labelValueRE.MatchString(value) {
		return fmt.Errorf("label %s: value must be 0-63 characters of A-Z a-z 0-9 . _ -, got %s: %w", key, quoteTrunc(value), ErrInvalid)
	}
	return nil
}

// ParseLabel reads "K=V" (the CLI's --label).
func ParseLabel(s string) (key, value string, err error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return "", "", fmt.Errorf("label must be KEY=VALUE (e.g. site=lyon), got %s: %w", quoteTrunc(s), ErrInvalid)
	}
	if err := ValidateLabel(k, v); err != nil {
		return "", "", err
	}
	return k, v, nil
}

// checkLabels validates a whole label set.
func checkLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("%d labels, at most %d per device: %w", len(labels), MaxLabels, ErrInvalid)
	}
	for _, k := range sortedKeys(labels) {
		if err := ValidateLabel(k, labels[k]); err != nil {
			return err
		}
	}
	return nil
}

// FormatLabels writes labels as "k1=v1,k2=v2", keys sorted.
func FormatLabels(labels map[string]string) string {
	parts := make([]string, 0, len(labels))
	for _, k := range sortedKeys(labels) {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Selector picks devices: by a glob over their names (path.Match, e.g.
// pi-*), or by a label (site=lyon). Exactly one of Glob and Key is set.
type Selector struct {
	Glob  string
	Key   string
	Value string
}

// String is the selector as ParseSelector reads it.
func (s Selector) String() string {
	if s.Key != "" {
		return s.Key + "=" + s.Value
	}
	return s.Glob
}

// ParseSelector reads a selector: KEY=VALUE selects by label, anything
// else is a device name glob. Both are checked strictly: a selector that
// can never match (a bad glob, a key or value outside the label alphabet)
// is refused, not stored.
func ParseSelector(s string) (Selector, error) {
	if k, v, ok := strings.Cut(s, "="); ok {
		if err := ValidateLabel(k, v); err != nil {
			return Selector{}, fmt.Errorf("selector %s: %w", quoteTrunc(s), err)
		}
		return Selector{Key: k, Value: v}, nil
	}
	if !globRE.MatchString(s) {
		return Selector{}, fmt.Errorf("selector must be a device name glob (1-63 of a-z 0-9 . _ - and * ? [ ]) such as pi-*, or a label KEY=VALUE such as site=lyon; got %s: %w", quoteTrunc(s), ErrInvalid)
	}
	if _, err := path.Match(s, ""); err != nil {
		return Selector{}, fmt.Errorf("selector %s: malformed glob (unbalanced [ ]?): %w", quoteTrunc(s), ErrInvalid)
	}
	return Selector{Glob: s}, nil
}

// ParseSelectors reads several selectors (an allow list), dropping
// repeats and keeping their order.
func ParseSelectors(ss []string) ([]Selector, error) {
	if len(ss) > MaxAllow {
		return nil, fmt.Errorf("%d selectors, at most %d: %w", len(ss), MaxAllow, ErrInvalid)
	}
	out := make([]Selector, 0, len(ss))
	seen := map[string]bool{}
	for _, s := range ss {
		sel, err := ParseSelector(s)
		if err != nil {
			return nil, err
		}
		if seen[sel.String()] {
			continue
		}
		seen[sel.String()] = true
		out = append(out, sel)
	}
	return out, nil
}

// MatchSelector reports whether sel selects the device name with labels.
func MatchSelector(sel Selector, name string, labels map[string]string) bool {
	if sel.Key != "" {
		v, ok := labels[sel.Key]
		return ok && v == sel.Value
	}
	ok, err := path.Match(sel.Glob, name)
	return err == nil && ok
}

// MatchAny reports whether any of sels selects the device (an allow list
// is an OR of its selectors; an empty one selects nothing).
func MatchAny(sels []Selector, name string, labels map[string]string) bool {
	for _, s := range sels {
		if MatchSelector(s, name, labels) {
			return true
		}
	}
	return false
}

// marshalLabels is labels as the devices.labels column holds them.
func marshalLabels(labels map[string]string) (string, error) {
	if len(labels) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(labels)
	if err != nil {
		return "", fmt.Errorf("encoding labels: %w", err)
	}
	return string(b), nil
}

// unmarshalLabels reads the devices.labels column; an empty set is nil.
func unmarshalLabels(s string) (map[string]string, error) {
	if s == "" || s == "{}" {
		return nil, nil
	}
	var m map[string]string
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		return nil, err
	}
	return m, nil
}

// SetDeviceLabels sets (adds or replaces) and removes labels of device
// name, in one transaction with a labels event. Every key and value is
// checked first; on any error nothing changes. Removing an absent key is
// not an error. Operators whose reach the change narrows get a "changed"
// revocation, so that slaves end their sessions and their next login
// gets lines without the device.
func (s *Store) SetDeviceLabels(ctx context.Context, name string, set map[string]string, remove []string) (Device, error) {
	d, err := s.setDeviceLabels(ctx, name, set, remove)
	if err != nil {
		if names.Device(name) != nil {
			name = quoteTrunc(name)
		}
		return Device{}, fmt.Errorf("labelling device %s: %w", name, err)
	}
	return d, nil
}

func (s *Store) setDeviceLabels(ctx context.Context, name string, set map[string]string, remove []string) (Device, error) {
	if len(set)+len(remove) == 0 {
		return Device{}, fmt.Errorf("no label to set or remove: %w", ErrInvalid)
	}
	if len(set) > MaxLabels || len(remove) > MaxLabels {
		return Device{}, fmt.Errorf("at most %d labels per change: %w", MaxLabels, ErrInvalid)
	}
	if err := checkLabels(set); err != nil {
		return Device{}, err
	}
	for _, k := range remove {
		if !labelKeyRE.MatchString(k) {
			return Device{}, fmt.Errorf("label key to remove must be 1-63 characters of a-z 0-9 . _ / - starting with a letter or digit, got %s: %w", quoteTrunc(k), ErrInvalid)
		}
		if _, ok := set[k]; ok {
			return Device{}, fmt.Errorf("label %s is both set and removed: %w", k, ErrInvalid)
		}
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return Device{}, err
	}
	defer tx.Rollback()
	d, err := deviceWhere(ctx, tx, "name", name)
	if err != nil {
		return Device{}, err
	}
	before := d.Labels
	after := make(map[string]string, len(before)+len(set))
	for k, v := range before {
		after[k] = v
	}
	var changes []string
	for _, k := range sortedKeys(set) {
		if old, ok := after[k]; !ok || old != set[k] {
			changes = append(changes, k+"="+set[k])
		}
		after[k] = set[k]
	}
	for _, k := range remove {
		if _, ok := after[k]; ok {
			changes = append(changes, k+"-")
			delete(after, k)
		}
	}
	if len(after) > MaxLabels {
		return Device{}, fmt.Errorf("the device would have %d labels, at most %d: %w", len(after), MaxLabels, ErrInvalid)
	}
	if len(changes) == 0 {
		return d, nil
	}
	js, err := marshalLabels(after)
	if err != nil {
		return Device{}, err
	}
	now := s.now().UTC()
	if _, err := tx.ExecContext(ctx, `UPDATE devices SET labels = ?, updated_at = ? WHERE name = ?`, js, now.UnixNano(), name); err != nil {
		return Device{}, err
	}
	if err := addEvent(ctx, tx, now, EventLabels, name, strings.Join(changes, " ")); err != nil {
		return Device{}, err
	}
	ops, err := operatorsWhere(ctx, tx, "", "")
	if err != nil {
		return Device{}, err
	}
	for _, op := range ops {
		sels, err := ParseSelectors(op.Allow)
		if err != nil {
			return Device{}, fmt.Errorf("allow list of operator %s: %w", op.Name, err)
		}
		if op.Status == StatusActive && MatchAny(sels, name, before) && !MatchAny(sels, name, after) {
			if err := addOperatorRevocation(ctx, tx, now, op, RevocationChanged); err != nil {
				return Device{}, err
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return Device{}, err
	}
	d.Labels, _ = unmarshalLabels(js)
	d.UpdatedAt = fromNanos(now.UnixNano())
	return d, nil
}

// DevicesMatching returns the devices any of sels selects, sorted by
// name; no selector: every device.
func (s *Store) DevicesMatching(ctx context.Context, sels []Selector) ([]Device, error) {
	all, err := s.Devices(ctx)
	if err != nil || len(sels) == 0 {
		return all, err
	}
	out := []Device{}
	for _, d := range all {
		if MatchAny(sels, d.Name, d.Labels) {
			out = append(out, d)
		}
	}
	return out, nil
}
