package install

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Account is a line of /etc/passwd.
type Account struct {
	Name     string
	UID, GID int
	Home     string
	Shell    string
}

// LookupUser reads root/etc/passwd (not NSS: it must see the tree being
// installed into, and system users are local).
func LookupUser(root, name string) (Account, bool, error) {
	var a Account
	found := false
	err := scanColon(filepath.Join(root, "etc/passwd"), func(f []string) bool {
		if len(f) < 7 || f[0] != name {
			return true
		}
		uid, err1 := strconv.Atoi(f[2])
		gid, err2 := strconv.Atoi(f[3])
		if err1 != nil || err2 != nil {
			return true
		}
		a = Account{Name: f[0], UID: uid, GID: gid, Home: f[5], Shell: f[6]}
		found = true
		return false
	})
	return a, found, err
}

// HasGroup reports whether root/etc/group has the group name.
func HasGroup(root, name string) (bool, error) {
	found := false
	err := scanColon(filepath.Join(root, "etc/group"), func(f []string) bool {
		found = len(f) >= 3 && f[0] == name
		return !found
	})
	return found, err
}

// PasswordField returns a user's password field from root/etc/shadow
// (readable by root only).
func PasswordField(root, name string) (string, bool, error) {
	pw, found := "", false
	err := scanColon(filepath.Join(root, "etc/shadow"), func(f []string) bool {
		if len(f) < 2 || f[0] != name {
			return true
		}
		pw, found = f[1], true
		return false
	})
	return pw, found, err
}

func scanColon(path string, fn func([]string) bool) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if !fn(strings.Split(line, ":")) {
			return nil
		}
	}
	return sc.Err()
}
