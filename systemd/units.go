// Package systemd holds mas4h's systemd unit files, embedded so that
// `mas4h install` can lay them out on a host that has only the binary.
// The .service files beside this one are the source: `make install` and
// `make deb` copy them as they are.
package systemd

import "embed"

// Units holds every mas4h-*.service file of this directory.
//
//go:embed *.service
var Units embed.FS
