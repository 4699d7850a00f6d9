// Package authkeys is the full side of sshd's AuthorizedKeysCommand: the
// daemon's check of a request (ParseHookArgs) and its one authorisation rule
// (Decide), the daemon's SQLite cache, and `mas4h authkeys`, which asks the
// daemon and falls back to that cache. The lean mas4h-authkeys binary that
// slaves install as the hook is package hookclient alone, which must not
// import this one (SQLite, cgo, x/crypto/ssh): it only asks the daemon, and
// execs `mas4h authkeys --cache-only` when the daemon cannot answer.
package authkeys
