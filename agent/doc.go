// Package agent is the device-side keeper of a mas4h tunnel. It asks the
// master for a slot (which slave, which ports, the slave's host keys), pins
// the slave's host keys in its own known_hosts, and runs the system's SSH
// client (OpenSSH ssh or dropbear dbclient) with one -R per forward, again
// and again with jittered exponential backoff. When the master is down it
// reuses the last slot it got, so a device can reach its slave directly.
//
// The agent's own code only decides where and when; the stock client does
// the tunnel. It imports nothing that needs cgo, so the standalone
// mas4h-agent binary builds static for small devices.
package agent
