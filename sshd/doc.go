// Package sshd is the slave: the composition of small parts that each
// receive what they need. Slave.Run prepares (state dir, lock, tunnel user,
// host key, the hook binaries, the cache, the keys file, the hook socket,
// sshd_config, sshd itself) and then serves: the supervisor (sshd's
// lifecycle), the reaper (sessions, probes, newest-wins, revocations), the
// keys file, the VIP keeper and the source (the master or a local
// registry) run until the daemon stops; sshd and its sessions stay up.
//
// The parts live in the sub-packages: sessions (discovery), probe,
// reaper, keysfile, hookserver, source, supervisor, vipkeeper,
// sshdconfig, statedir, and authkeys (the hook and its cache).
package sshd
