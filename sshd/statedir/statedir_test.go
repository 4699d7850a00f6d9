package statedir

import "testing"

// The paths are part of the contract: sshd_config, systemd units, the lean
// hook and doctor name them.
func TestLayout(t *testing.T) {
	d := Dir(Default("s1"))
	for got, want := range map[string]string{
		string(d):      "/var/lib/mas4h/slave-s1",
		d.SSHDConfig(): "/var/lib/mas4h/slave-s1/sshd_config",
		d.PidFile():    "/var/lib/mas4h/slave-s1/sshd/sshd.pid",
		d.Log():        "/var/lib/mas4h/slave-s1/sshd/sshd.log",
		d.Socket():     "/var/lib/mas4h/slave-s1/run/hook.sock",
		d.Cache():      "/var/lib/mas4h/slave-s1/cache.db",
		d.KeysFile():   "/var/lib/mas4h/slave-s1/authorized_keys",
		d.HostKey():    "/var/lib/mas4h/slave-s1/sshd/ssh_host_ed25519_key",
	} {
		if got != want {
			t.Errorf("%s, want %s", got, want)
		}
	}
}
