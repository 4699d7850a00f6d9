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

// Accounts lists root/etc/passwd.
func Accounts(root string) ([]Account, error) {
	var out []Account
	err := scanColon(filepath.Join(root, "etc/passwd"), func(f []string) bool {
		if len(f) < 7 {
			return true
		}
		uid, err1 := strconv.Atoi(f[2])
		gid, err2 := strconv.Atoi(f[3])
		if err1 == nil && err2 == nil {
			out = append(out, Account{Name: f[0], UID: uid, GID: gid, Home: f[5], Shell: f[6]})
		}
		return true
	})
	return out, err
}

// Group is a line of /etc/group.
type Group struct {
	Name    string
	GID     int
	Members []string
}

// LookupGroupID reads the group gid from root/etc/group.
func LookupGroupID(root string, gid int) (Group, bool, error) {
	var g Group
	found := false
	err := scanColon(filepath.Join(root, "etc/group"), func(f []string) bool {
		if len(f) < 4 || f[2] != strconv.Itoa(gid) {
			return true
		}
		g, found = Group{Name: f[0], GID: gid}, true
		for _, m := range strings.Split(f[3], ",") {
			if m != "" {
				g.Members = append(g.Members, m)
			}
		}
		return false
	})
	return g, found, err
}

// SystemUIDMax is the highest uid of a system account on root, as useradd
// --system reads root/etc/login.defs: SYS_UID_MAX, or UID_MIN - 1, or 999.
func SystemUIDMax(root string) int {
	defs := map[string]int{}
	b, _ := os.ReadFile(filepath.Join(root, "etc/login.defs"))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && (f[0] == "SYS_UID_MAX" || f[0] == "UID_MIN") {
			if n, err := strconv.Atoi(f[1]); err == nil && n > 0 {
				defs[f[0]] = n
			}
		}
	}
	if n, ok := defs["SYS_UID_MAX"]; ok {
		return n
	}
	if n, ok := defs["UID_MIN"]; ok {
		return n - 1
	}
	return 999
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
