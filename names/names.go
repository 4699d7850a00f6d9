// Package names is mas4h's one rule for each kind of name: devices, slaves,
// operators and system users. Names end up in file names, log lines, sshd_config,
// systemd unit instances and URLs, so each is held to a small safe alphabet.
// It imports only errors and strconv, so that the lean sshd hook can use it
// without growing.
package names

import (
	"errors"
	"strconv"
)

// Longest names.
const (
	MaxDevice   = 63
	MaxSlave    = 63
	MaxOperator = 63
	MaxUser     = 32
)

// ErrInvalid is wrapped by every error of this package.
var ErrInvalid = errors.New("invalid name")

type invalid struct{ msg string }

func (e *invalid) Error() string        { return e.msg }
func (e *invalid) Is(target error) bool { return target == ErrInvalid }

// Device checks a device name: 1-63 characters of a-z 0-9 . _ -, starting
// with a letter or digit.
func Device(name string) error {
	if !safeName(name, MaxDevice) {
		return &invalid{"device name must be 1-63 characters of a-z 0-9 . _ - starting with a letter or digit, got " + quote(name)}
	}
	return nil
}

// Slave checks a slave name, which also names its state dir
// (/var/lib/mas4h/slave-NAME) and its systemd units (mas4h-slave@NAME):
// the device alphabet.
func Slave(name string) error {
	if !safeName(name, MaxSlave) {
		return &invalid{"slave name must be 1-63 characters of a-z 0-9 . _ - starting with a letter or digit, got " + quote(name)}
	}
	return nil
}

// Operator checks an operator's name (a person: alice, bob.smith), which
// events, URLs and the slaves' logs carry: the device alphabet.
func Operator(name string) error {
	if !safeName(name, MaxOperator) {
		return &invalid{"operator name must be 1-63 characters of a-z 0-9 . _ - starting with a letter or digit, got " + quote(name)}
	}
	return nil
}

// User checks a system user name: what useradd accepts, minus anything a
// shell or sshd_config would read specially (^[a-z_][a-z0-9_-]{0,31}$).
func User(name string) error {
	if !ValidUser(name) {
		return &invalid{"user name must be 1-32 characters of a-z 0-9 _ - starting with a letter or _, got " + quote(name)}
	}
	return nil
}

// ValidUser is User as a boolean, for the lean hook's hot path.
func ValidUser(name string) bool {
	if len(name) < 1 || len(name) > MaxUser || !(lower(name[0]) || name[0] == '_') {
		return false
	}
	for i := 1; i < len(name); i++ {
		if c := name[i]; !lower(c) && !digit(c) && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

// safeName: ^[a-z0-9][a-z0-9._-]*$, at most max bytes.
func safeName(name string, max int) bool {
	if len(name) < 1 || len(name) > max || !(lower(name[0]) || digit(name[0])) {
		return false
	}
	for i := 1; i < len(name); i++ {
		if c := name[i]; !lower(c) && !digit(c) && c != '.' && c != '_' && c != '-' {
			return false
		}
	}
	return true
}

func lower(c byte) bool { return c >= 'a' && c <= 'z' }
func digit(c byte) bool { return c >= '0' && c <= '9' }

// quote quotes a name for an error message, cut to 64 bytes: a hostile
// name must not flood a log line.
func quote(s string) string {
	if len(s) > 64 {
		return strconv.Quote(s[:64]) + "…"
	}
	return strconv.Quote(s)
}
