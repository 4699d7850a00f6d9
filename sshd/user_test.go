package sshd

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// accountsRoot is a root with these /etc/passwd and /etc/group lines, and
// Debian's login.defs range.
func accountsRoot(t *testing.T, passwd, group string) string {
	root := t.TempDir()
	etc := filepath.Join(root, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range map[string]string{"passwd": passwd, "group": group, "login.defs": "UID_MIN\t\t\t 1000\nUID_MAX\t\t\t60000\n"} {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCheckTunnelAccount(t *testing.T) {
	const passwd = `root:x:0:0:root:/root:/bin/bash
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
mas4h-tunnel:x:994:993:mas4h reverse tunnels:/nonexistent:/usr/sbin/nologin
pkg:x:993:992::/nonexistent:/bin/false
alice:x:1000:1000:Alice:/home/alice:/bin/bash
svc:x:1001:1001::/nonexistent:/usr/sbin/nologin
postgres:x:101:104::/var/lib/postgresql:/bin/bash
empty:x:102:105::/nonexistent:
shared:x:103:106::/nonexistent:/usr/sbin/nologin
other:x:104:106::/nonexistent:/usr/sbin/nologin
member:x:105:107::/nonexistent:/usr/sbin/nologin
`
	const group = "mas4h-tunnel:x:993:\npkg:x:992:\nshared:x:106:\nmember:x:107:member,alice\n"
	root := accountsRoot(t, passwd, group)
	for name, why := range map[string]string{
		"mas4h-tunnel": "",
		"pkg":          "",
		"root":         "is root",
		"nobody":       "is nobody",
		"alice":        "is an ordinary account (uid 1000; system accounts end at uid 999)",
		"svc":          "is an ordinary account (uid 1001",
		"postgres":     "has a login shell, /bin/bash",
		"empty":        "has a login shell, /bin/sh",
		"shared":       "shares its primary group (gid 106) with other",
		"member":       "with other members (alice)",
		"ldapuser":     "is not a local account",
	} {
		a, err := CheckTunnelAccount(root, name)
		if why == "" {
			if err != nil || a.Name != name {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		var tu *TunnelUserError
		if !errors.As(err, &tu) || !strings.Contains(err.Error(), why) {
			t.Errorf("%s: %v, want a TunnelUserError saying %q", name, err, why)
			continue
		}
		// The message says what to do.
		if !strings.Contains(err.Error(), "Omit --tunnel-user") || !strings.Contains(err.Error(), "useradd --system") {
			t.Errorf("%s: the error says nothing about what to do: %v", name, err)
		}
	}
}

func TestCheckOperatorAccount(t *testing.T) {
	const passwd = `mas4h-tunnel:x:994:993::/nonexistent:/usr/sbin/nologin
mas4h-operator:x:994:992::/nonexistent:/usr/sbin/nologin
other-uid:x:995:991::/nonexistent:/usr/sbin/nologin
same-group:x:994:993::/nonexistent:/usr/sbin/nologin
shell:x:994:990::/nonexistent:/bin/bash
`
	root := accountsRoot(t, passwd, "mas4h-tunnel:x:993:\nmas4h-operator:x:992:\n")
	tunnel := TunnelUser{Name: "mas4h-tunnel", UID: 994, GID: 993}
	for name, why := range map[string]string{
		"mas4h-operator": "",
		"other-uid":      "has uid 995, not the tunnel user mas4h-tunnel's uid 994",
		"same-group":     "has the tunnel user's group",
		"shell":          "has a login shell",
		"missing":        "is not a local account",
	} {
		err := CheckOperatorAccount(root, name, tunnel)
		if why == "" {
			if err != nil {
				t.Errorf("%s: %v", name, err)
			}
			continue
		}
		var oe *OperatorUserError
		if !errors.As(err, &oe) || !strings.Contains(err.Error(), why) {
			t.Errorf("%s: %v, want an OperatorUserError saying %q", name, err, why)
		}
	}
}
