// Package authkeys is sshd's AuthorizedKeysCommand: it checks sshd's
// arguments, asks the slave daemon over its unix socket, falls back to the
// daemon's read-only cache, and prints the restricted authorized_keys line
// for an accepted device. It is kept small on purpose: sshd starts it twice
// per authentication, so its start-up cost is part of every connection. The
// lean `mas4h-authkeys` binary is built from it alone.
package authkeys
