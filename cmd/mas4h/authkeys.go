package main

import (
	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/sshd/authkeys"
)

// newAuthkeysCmd is sshd's AuthorizedKeysCommand inside the main binary:
// the daemon, then the cache. Slaves install the lean mas4h-authkeys binary
// as the hook when it sits next to mas4h (it starts faster, but has no cache
// reader), and this binary next to it: the lean hook execs
// `mas4h authkeys --cache-only --budget-ms N` when the daemon cannot answer.
func newAuthkeysCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:                "authkeys [--state-dir DIR] [--cache-only] [--budget-ms N] [--] USER FINGERPRINT KEYTYPE KEY",
		Short:              "sshd's AuthorizedKeysCommand (%u %f %t %k); not for interactive use",
		DisableFlagParsing: true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if code := authkeys.Main(cmd.Context(), args, g.stdout); code != 0 {
				return exitError{code: code}
			}
			return nil
		},
	}
}
