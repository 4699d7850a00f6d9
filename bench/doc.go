// Package bench is the harness behind cmd/mas4h-bench and cmd/mas4h-fleet:
// it drives a real mas4h slave and master, the real OpenSSH sshd and ssh
// client on loopback, and measures what an operator of a fleet cares about —
// how long sshd waits for the authkeys hook, how fast a fleet gets its
// tunnels up through mas4h compared with the same sshd reading a hand-kept
// authorized_keys file, what a tunnel costs in memory and CPU, how long a
// probe cycle takes, how fast a fleet comes back after its sessions die, how
// many slots a master hands out, and how soon a frozen device is detected.
package bench
