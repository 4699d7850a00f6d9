// Command mas4h-authkeys is the slave's sshd AuthorizedKeysCommand, built
// alone and static (CGO_ENABLED=0) so that it starts fast: sshd runs it as a
// fresh process twice per device authentication. It only asks the slave
// daemon (package hookclient); when the daemon cannot answer it execs the
// full mas4h binary next to it, `mas4h authkeys --cache-only`, to answer
// from the daemon's SQLite cache.
// Usage (from sshd_config): mas4h-authkeys --state-dir DIR -- %u %f %t %k
package main

import (
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/sshd/authkeys/hookclient"
)

func main() {
	p := hookclient.Process{Start: time.Now(), Stdout: os.Stdout, Executable: os.Executable, Exec: execve}
	os.Exit(hookclient.Run(p, os.Args[1:]))
}

// execve replaces the process with argv, keeping sshd's environment and
// stdout. It returns only when it failed.
func execve(argv []string) error {
	return unix.Exec(argv[0], argv, os.Environ())
}
