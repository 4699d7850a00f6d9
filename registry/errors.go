package registry

import (
	"errors"
	"fmt"

	"github.com/mattn/go-sqlite3"
)

// Sentinel errors. Every error the package returns for one of these causes
// wraps the sentinel with context, so callers branch with errors.Is and users
// still read what went wrong and with which name, key or range.
var (
	// ErrNotFound: no device (or other row) by that name or fingerprint.
	ErrNotFound = errors.New("not found")
	// ErrExists: the device name is already taken.
	ErrExists = errors.New("already exists")
	// ErrDuplicateKey: the public key is already enrolled for another device.
	// One key identifies one device, because sshd hands the hook only the key.
	ErrDuplicateKey = errors.New("duplicate key")
	// ErrRangeFull: no free port is left in the lease range.
	ErrRangeFull = errors.New("port range full")
	// ErrSchemaTooNew: the database was written by a newer mas4h.
	ErrSchemaTooNew = errors.New("schema too new")
	// ErrInvalid: input failed validation (name, key, forward, range, filter).
	ErrInvalid = errors.New("invalid input")
)

// quoteTrunc quotes user input for an error message, cut short so that a
// hostile megabyte-long argument does not become a megabyte-long log line.
func quoteTrunc(s string) string {
	const max = 80
	if len(s) <= max {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%q…", s[:max])
}

// Unwritable reports whether err is the database refusing a write for want
// of room or of a writable file (SQLite: disk full, I/O error, read-only,
// cannot open), or out of reach (PostgreSQL: Unavailable): not the
// request's fault. The operator has to free space or fix the file; a
// PostgreSQL connection comes back by itself once the server answers.
func Unwritable(err error) bool {
	if Unavailable(err) {
		return true
	}
	var se sqlite3.Error
	if !errors.As(err, &se) {
		return false
	}
	switch se.Code {
	case sqlite3.ErrFull, sqlite3.ErrIoErr, sqlite3.ErrReadonly, sqlite3.ErrCantOpen:
		return true
	}
	return false
}
