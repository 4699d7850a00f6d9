// Package bench is the harness behind cmd/mas4h-bench: it drives a real
// mas4h slave, the real OpenSSH sshd and ssh client on loopback, and measures
// what an operator of a fleet cares about — how long sshd waits for the
// authkeys hook, and how fast a reconnect storm of devices gets its tunnels
// up through mas4h compared with a hand-kept authorized_keys file.
package bench
