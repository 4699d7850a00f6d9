package hookclient

import (
	"errors"
	"strconv"

	"github.com/mas4h/mas4h/names"
)

// CheckArgs checks the shape of sshd's %u %f %t %k: a plausible user name, a
// SHA256 fingerprint, a key type and a base64 key, none too long. It does not
// parse the key: the daemon (authkeys.ParseHookArgs) does, and refuses a key
// that does not parse, is not of the stated type or does not hash to the
// stated fingerprint.
func CheckArgs(args []string) (Request, error) {
	if len(args) != 4 {
		return Request{}, errors.New("want 4 arguments (user fingerprint key-type key), got " + strconv.Itoa(len(args)))
	}
	for _, a := range args {
		if len(a) > MaxArg {
			return Request{}, errors.New("argument of " + strconv.Itoa(len(a)) + " bytes is too long")
		}
	}
	req := Request{User: args[0], Fingerprint: args[1], KeyType: args[2], Key: args[3]}
	switch {
	case !names.ValidUser(req.User):
		return req, errors.New("user " + quote(req.User, 40) + " is not a valid user name")
	case !validKeyType(req.KeyType):
		return req, errors.New("key type " + quote(req.KeyType, 40) + " is malformed")
	case !validFingerprint(req.Fingerprint):
		return req, errors.New("fingerprint " + quote(req.Fingerprint, 60) + " is not a SHA256 fingerprint")
	case !validBase64(req.Key):
		return req, errors.New("key is not base64")
	}
	return req, nil
}

// validKeyType: ^[a-z0-9][a-z0-9@.-]{0,63}$ (ssh-ed25519,
// sk-ssh-ed25519@openssh.com, ecdsa-sha2-nistp256, …).
func validKeyType(t string) bool {
	if len(t) < 1 || len(t) > 64 || !(lower(t[0]) || digit(t[0])) {
		return false
	}
	for i := 1; i < len(t); i++ {
		if c := t[i]; !lower(c) && !digit(c) && c != '@' && c != '.' && c != '-' {
			return false
		}
	}
	return true
}

// validFingerprint: what ssh.FingerprintSHA256 and sshd's %f write, "SHA256:"
// and 32 bytes of unpadded base64.
func validFingerprint(fp string) bool {
	const prefix = "SHA256:"
	if len(fp) != len(prefix)+43 || fp[:len(prefix)] != prefix {
		return false
	}
	for i := len(prefix); i < len(fp); i++ {
		if !base64Char(fp[i]) {
			return false
		}
	}
	return true
}

// validBase64: standard base64 with padding, as sshd's %k writes it.
func validBase64(s string) bool {
	if len(s) == 0 || len(s)%4 != 0 {
		return false
	}
	pad := 0
	if s[len(s)-1] == '=' {
		pad++
		if s[len(s)-2] == '=' {
			pad++
		}
	}
	for i := 0; i < len(s)-pad; i++ {
		if !base64Char(s[i]) {
			return false
		}
	}
	return true
}

func lower(c byte) bool { return 'a' <= c && c <= 'z' }
func digit(c byte) bool { return '0' <= c && c <= '9' }
func base64Char(c byte) bool {
	return lower(c) || 'A' <= c && c <= 'Z' || digit(c) || c == '+' || c == '/'
}

// quote quotes at most n bytes of s for an error message.
func quote(s string, n int) string {
	if len(s) > n {
		s = s[:n]
	}
	return strconv.Quote(s)
}
