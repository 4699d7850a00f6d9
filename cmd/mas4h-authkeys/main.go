// Command mas4h-authkeys is the slave's sshd AuthorizedKeysCommand, built
// alone so that it starts fast: sshd runs it twice per device
// authentication, and the main mas4h binary links the master's HTTP stack,
// whose package initialisation alone costs milliseconds.
// Usage (from sshd_config): mas4h-authkeys --state-dir DIR -- %u %f %t %k
package main

import (
	"context"
	"os"

	"github.com/mas4h/mas4h/sshd/authkeys"
)

func main() {
	os.Exit(authkeys.Main(context.Background(), os.Args[1:], os.Stdout))
}
