package authkeys

import (
	"context"
	"errors"
	"io"
	"strings"
)

// Main runs the hook on its command line: [--state-dir DIR] [--] USER
// FINGERPRINT KEYTYPE KEY (sshd's %u %f %t %k). Its arguments come from a
// remote party (the user name, the key), so there is no flag parser to fool:
// the only flag is a leading --state-dir, and "--" ends it. It returns the
// exit status; any failure is a silent 1 (sshd reads stdout as keys).
func Main(ctx context.Context, args []string, stdout io.Writer) int {
	stateDir, rest, err := parseArgs(args)
	if err != nil {
		return 1
	}
	if err := RunHook(ctx, PathsFor(stateDir), rest, stdout); err != nil {
		return 1
	}
	return 0
}

func parseArgs(args []string) (stateDir string, rest []string, err error) {
	for len(args) > 0 {
		switch {
		case args[0] == "--":
			return stateDir, args[1:], checkStateDir(stateDir)
		case args[0] == "--state-dir" && len(args) > 1:
			stateDir, args = args[1], args[2:]
		case strings.HasPrefix(args[0], "--state-dir="):
			stateDir, args = strings.TrimPrefix(args[0], "--state-dir="), args[1:]
		default:
			return stateDir, args, checkStateDir(stateDir)
		}
	}
	return stateDir, nil, checkStateDir(stateDir)
}

func checkStateDir(dir string) error {
	if !strings.HasPrefix(dir, "/") {
		return errors.New("authkeys needs an absolute --state-dir")
	}
	return nil
}
