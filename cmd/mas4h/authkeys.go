package main

import (
	"errors"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/sshd"
)

// newAuthkeysCmd is sshd's AuthorizedKeysCommand. Its arguments come from a
// remote party (the user name, the key), so cobra's flag parsing is off: the
// only flag is a leading --state-dir, and "--" ends it. Any failure is a
// silent non-zero exit — sshd reads stdout as authorized_keys lines.
func newAuthkeysCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:                "authkeys [--state-dir DIR] [--] USER FINGERPRINT KEYTYPE KEY",
		Short:              "sshd's AuthorizedKeysCommand (%u %f %t %k); not for interactive use",
		DisableFlagParsing: true,
		Hidden:             false,
		RunE: func(cmd *cobra.Command, args []string) error {
			stateDir, rest, err := parseAuthkeysArgs(args)
			if err != nil {
				return exitError{code: exitFail}
			}
			err = sshd.RunHook(cmd.Context(), sshd.PathsFor(stateDir), rest, g.stdout)
			if err != nil {
				return exitError{code: exitFail}
			}
			return nil
		},
	}
}

func parseAuthkeysArgs(args []string) (stateDir string, rest []string, err error) {
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
