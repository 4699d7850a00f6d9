package authkeys

import (
	"context"
	"io"

	"github.com/mas4h/mas4h/sshd/authkeys/hookclient"
)

// Main runs the hook on its command line (hookclient.CommandLine: [--state-dir
// DIR] [--cache-only] [--budget-ms N] [--] USER FINGERPRINT KEYTYPE KEY,
// sshd's %u %f %t %k). It is `mas4h authkeys`: the hook itself when the lean
// mas4h-authkeys binary is not installed, and with --cache-only the lean
// hook's fallback, which it execs when the daemon cannot answer. It returns
// the exit status; any failure is a silent 1 (sshd reads stdout as keys).
func Main(ctx context.Context, args []string, stdout io.Writer) int {
	cl, err := hookclient.ParseCommandLine(args)
	if err != nil {
		return 1
	}
	ctx, cancel := context.WithTimeout(ctx, cl.Budget)
	defer cancel()
	if err := RunHook(ctx, PathsFor(cl.StateDir), cl.CacheOnly, cl.Args, stdout); err != nil {
		return 1
	}
	return 0
}
