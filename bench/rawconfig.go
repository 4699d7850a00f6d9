package bench

import (
	"bufio"
	"bytes"
	"fmt"
	"strings"
)

// RawConfig derives the baseline sshd_config from the one mas4h generated:
// the same file, except that keys come from a plain AuthorizedKeysFile (no
// AuthorizedKeysCommand), and the pid file and listen address are the
// baseline's own. Everything else — host key, algorithms, MaxStartups,
// restrictions — stays, so the two sides differ only in where keys come from.
func RawConfig(mas4h []byte, authorizedKeys, pidFile, listen string) ([]byte, error) {
	var out bytes.Buffer
	out.WriteString("# mas4h-bench raw baseline, derived from mas4h's generated sshd_config\n")
	seen := map[string]bool{}
	inMatch := false
	sc := bufio.NewScanner(bytes.NewReader(mas4h))
	for sc.Scan() {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") || inMatch {
			out.WriteString(line + "\n")
			continue
		}
		kw := strings.ToLower(f[0])
		switch kw {
		case "authorizedkeysfile":
			line = "AuthorizedKeysFile " + authorizedKeys
		case "authorizedkeyscommand", "authorizedkeyscommanduser":
			seen[kw] = true
			continue
		case "pidfile":
			line = "PidFile " + pidFile
		case "listenaddress":
			if seen[kw] {
				continue // one listen address is enough for the baseline
			}
			line = "ListenAddress " + listen
		case "match":
			// A Match block runs to the end of the file: it stays as it is
			// (the tunnel user's PermitListen applies to both sides).
			inMatch = true
		}
		seen[kw] = true
		out.WriteString(line + "\n")
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("deriving baseline sshd_config: %w", err)
	}
	for _, kw := range []string{"authorizedkeysfile", "authorizedkeyscommand", "pidfile", "listenaddress"} {
		if !seen[kw] {
			return nil, fmt.Errorf("deriving baseline sshd_config: mas4h's config has no %s line", kw)
		}
	}
	return out.Bytes(), nil
}
