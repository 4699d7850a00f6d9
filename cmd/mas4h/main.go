// Command mas4h is the mass SSH reverse bouncer: master, slave, the sshd hook,
// the device agent and the operator's CLI, in one binary.
package main

import (
	"context"
	"os"
	"os/signal"

	"golang.org/x/sys/unix"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, unix.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
