package main

// The slave's sshd as an outsider sees it: ssh-audit's verdict on a slave
// with default settings, the algorithms real clients negotiate with it (the
// oldest clients fleets run, as far as this host's clients can play them),
// and what a device is told about the slave after it logs in.

import (
	"bufio"
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/process"
	"github.com/mas4h/mas4h/sshd/sshdversion"
)

// hostSSHD is what the sshd the slaves run knows.
func hostSSHD(t *testing.T) sshdversion.Features {
	t.Helper()
	f, err := sshdversion.Detect(context.Background(), process.Exec{}, "/usr/sbin/sshd")
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// auditTolerated are the only algorithms ssh-audit may warn about: too new
// for Debian 12's ssh-audit 2.5.0, which calls them unknown or experimental,
// and kept on purpose (post-quantum key exchange, the Terrapin
// countermeasure).
var auditTolerated = map[string]bool{
	"sntrup761x25519-sha512@openssh.com": true,
	"kex-strict-s-v00@openssh.com":       true,
	"mlkem768x25519-sha256":              true, // OpenSSH 9.9+ only
}

// auditFinding is one [fail] or [warn] of ssh-audit, with the algorithm
// (or general item) it is about.
type auditFinding struct {
	level, subject, line string
}

var auditLine = regexp.MustCompile(`^\((\w+)\) (\S+)`)

// parseAudit reads ssh-audit's plain output (-n): a finding on a
// continuation line ("`- [warn] …") belongs to the item above it.
func parseAudit(out string) []auditFinding {
	var found []auditFinding
	subject := ""
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		l := sc.Text()
		if m := auditLine.FindStringSubmatch(l); m != nil {
			subject = m[1] + " " + m[2]
			if m[1] == "rec" { // recommendations repeat what the findings say
				subject = ""
			}
		}
		if subject == "" {
			continue
		}
		for _, level := range []string{"fail", "warn"} {
			if strings.Contains(l, "["+level+"]") {
				found = append(found, auditFinding{level: level, subject: subject, line: strings.TrimSpace(l)})
			}
		}
	}
	return found
}

// A slave with default settings: no [fail], and no [warn] but for the
// algorithms this ssh-audit does not know yet; no compression; a banner
// without the distribution's version where sshd can drop it.
func TestSSHAudit(t *testing.T) {
	e := newEnv(t, "ssh-audit")
	e.enrol("pi-audited")
	sp := e.startSlave("s1")
	f := hostSSHD(t)
	version, _ := exec.Command("ssh-audit", "-h").CombinedOutput()
	out, err := exec.Command("ssh-audit", "-n", "-p", strconv.Itoa(sp.port), "127.0.0.1").CombinedOutput()
	// ssh-audit exits non-zero for any warning or unknown algorithm: the
	// findings decide.
	t.Logf("%s against %s (%s), exit %v:\n%s", regexp.MustCompile(`ssh-audit v[0-9.]+`).Find(version), f.Version, f.Version.Release, err, out)
	if !strings.Contains(string(out), "(gen) banner: SSH-2.0-OpenSSH") {
		t.Fatalf("ssh-audit did not reach the slave's sshd:\n%s", out)
	}
	for _, fd := range parseAudit(string(out)) {
		_, name, _ := strings.Cut(fd.subject, " ")
		if fd.level == "fail" || !auditTolerated[name] {
			t.Errorf("ssh-audit: %s: %s", fd.subject, fd.line)
		}
	}
	if !regexp.MustCompile(`\(gen\) compression: disabled`).Match(out) {
		t.Error("compression is offered")
	}
	for _, kex := range []string{"ecdh-sha2-nistp256", "hmac-sha2-256 ", "hmac-sha2-512 "} {
		if strings.Contains(string(out), ") "+kex) {
			t.Errorf("%s is offered", strings.TrimSpace(kex))
		}
	}
	if f.MLKEM && !strings.Contains(string(out), "(kex) mlkem768x25519-sha256") {
		t.Errorf("%s knows mlkem768x25519-sha256 but the slave does not offer it", f.Version)
	}
	if f.DebianBanner && regexp.MustCompile(`\(gen\) banner: SSH-2.0-OpenSSH_\S+ `).Match(out) {
		t.Error("the banner names the distribution's package version")
	}
}

// negotiated are the kex, cipher and MAC a verbose OpenSSH client reports.
func negotiated(stderr string) (kex, cipher, mac string) {
	for _, l := range strings.Split(stderr, "\n") {
		if v, ok := strings.CutPrefix(l, "debug1: kex: algorithm: "); ok {
			kex = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(l, "debug1: kex: client->server cipher: "); ok {
			f := strings.Fields(v) // CIPHER MAC: M compression: C
			if len(f) >= 3 {
				cipher, mac = f[0], f[2]
			}
		}
	}
	return kex, cipher, mac
}

// The oldest clients fleets run still connect: OpenSSH 8.0 (played by this
// host's ssh offering exactly 8.0's default lists), dropbear as packaged
// here, and dropbear 2020.79's defaults (played by this dbclient offering
// only what 2020.79 builds by default: no GCM, and no -etm MAC, so
// chacha20-poly1305 is the one cipher left). A dropbear offering CTR ciphers
// only finds no MAC: the price of dropping the encrypt-and-MAC ones.
func TestOldClientsConnect(t *testing.T) {
	e := newEnv(t, "dbclient", "dropbearconvert")
	es := startEcho(t)
	dev, k := e.enrol("pi-old", "--forward", fwd(es))
	sp := e.startSlave("s1")
	spec := fmt.Sprintf("%d:localhost:%d", port(dev), es.port)
	up := func(t *testing.T, c *tunnelClient) {
		t.Helper()
		if !waitListen(t, port(dev), c, 10*time.Second) {
			t.Fatalf("tunnel did not come up: %s", c.stderr)
		}
		if err := roundTrip(port(dev)); err != nil {
			t.Fatal(err)
		}
		c.cmd.Process.Kill()
		<-c.done
		waitClosed(t, port(dev))
	}
	// OpenSSH 8.0's default client lists (myproposal.h), its CPU's choice
	// of ciphers first.
	openssh80 := func(ciphers string) []string {
		return []string{
			"-o", "KexAlgorithms=curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,diffie-hellman-group-exchange-sha256,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,diffie-hellman-group14-sha256,diffie-hellman-group14-sha1",
			"-o", "Ciphers=" + ciphers,
			"-o", "MACs=umac-64-etm@openssh.com,umac-128-etm@openssh.com,hmac-sha2-256-etm@openssh.com,hmac-sha2-512-etm@openssh.com,hmac-sha1-etm@openssh.com,umac-64@openssh.com,umac-128@openssh.com,hmac-sha2-256,hmac-sha2-512,hmac-sha1",
			"-o", "HostKeyAlgorithms=ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,ssh-ed25519,rsa-sha2-512,rsa-sha2-256,ssh-rsa",
		}
	}
	for _, c := range []struct {
		name             string
		opts             []string
		kex, cipher, mac string
	}{
		{"this host's ssh", nil, "", "chacha20-poly1305@openssh.com", "<implicit>"},
		{"OpenSSH 8.0 defaults", openssh80("chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com"),
			"curve25519-sha256", "chacha20-poly1305@openssh.com", "<implicit>"},
		// An 8.0 client told to prefer AES: CTR takes an -etm MAC.
		{"OpenSSH 8.0, CTR", openssh80("aes128-ctr,aes256-ctr"), "curve25519-sha256", "aes128-ctr", "hmac-sha2-256-etm@openssh.com"},
		{"OpenSSH 8.0, GCM", openssh80("aes256-gcm@openssh.com"), "curve25519-sha256", "aes256-gcm@openssh.com", "<implicit>"},
	} {
		t.Run(c.name, func(t *testing.T) {
			args := append(append([]string{"-v"}, c.opts...), "-N", "-R", spec, e2eTunnelUser+"@127.0.0.1")
			cl := e.startClient("ssh", sshArgs(k, sp.port, args...)...)
			up(t, cl)
			kex, cipher, mac := negotiated(cl.stderr.String())
			t.Logf("negotiated kex %s, cipher %s, MAC %s", kex, cipher, mac)
			if c.kex != "" && kex != c.kex || cipher != c.cipher || mac != c.mac {
				t.Errorf("negotiated %s/%s/%s, want %s/%s/%s", kex, cipher, mac, c.kex, c.cipher, c.mac)
			}
		})
	}
	key := k.dropbearKey(t)
	dbclient := func(extra ...string) *tunnelClient {
		args := append([]string{"-y", "-N", "-i", key, "-p", strconv.Itoa(sp.port), "-R", spec}, extra...)
		return e.startClient("dbclient", append(args, e2eTunnelUser+"@127.0.0.1")...)
	}
	t.Run("dropbear as packaged", func(t *testing.T) { up(t, dbclient()) })
	t.Run("dropbear 2020.79 defaults", func(t *testing.T) {
		up(t, dbclient("-c", "chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr", "-m", "hmac-sha1,hmac-sha2-256"))
	})
	t.Run("dropbear without chacha20-poly1305 is refused", func(t *testing.T) {
		c := dbclient("-c", "aes128-ctr,aes256-ctr", "-m", "hmac-sha1,hmac-sha2-256")
		if code := c.wait(10 * time.Second); code == 0 || code == -1 {
			t.Fatalf("dbclient status %d: %s", code, c.stderr)
		}
		if dialOK(port(dev)) {
			t.Fatal("its forward is up")
		}
		t.Logf("dbclient: %s", strings.TrimSpace(c.stderr.String()))
	})
}

// What sshd tells a client once it is logged in ("debug1: Remote: …: key
// options: …") names where its key line came from: never the slave's state
// dir, its keys file or its hook, whether the key came from the keys file or
// from the hook.
func TestClientsSeeNoStatePaths(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	dev, k := e.enrol("pi-curious", "--forward", fwd(es))
	for _, c := range []struct {
		name string
		mode []string
	}{
		{"keys file", []string{"--db", e.db}},
		{"hook", []string{"--db", e.db, "--keys-file=false"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			sp := e.startSlaveWith("s-"+strings.ReplaceAll(c.name, " ", "-"), c.mode...)
			cl := e.startClient("ssh", sshArgs(k, sp.port, "-v", "-N", "-R", fmt.Sprintf("%d:localhost:%d", port(dev), es.port), e2eTunnelUser+"@127.0.0.1")...)
			if !waitListen(t, port(dev), cl, 10*time.Second) {
				t.Fatalf("tunnel did not come up: %s", cl.stderr)
			}
			cl.cmd.Process.Kill()
			<-cl.done
			waitClosed(t, port(dev))
			var remote []string
			for _, l := range strings.Split(cl.stderr.String(), "\n") {
				if strings.Contains(l, "Remote: ") {
					remote = append(remote, l)
				}
			}
			if len(remote) == 0 {
				t.Fatalf("sshd sent no debug message; ssh -v said:\n%s", cl.stderr)
			}
			t.Logf("sshd told the client:\n%s", strings.Join(remote, "\n"))
			for _, l := range remote {
				for _, secret := range []string{sp.stateDir, "mas4h", "authorized_keys", "authkeys", e2eRoot} {
					if strings.Contains(l, secret) {
						t.Errorf("the client learnt %q: %s", secret, l)
					}
				}
			}
			if !strings.Contains(cl.stderr.String(), "key options: permitlisten port-forwarding") {
				t.Errorf("sshd did not say which key options applied (did the key line change?):\n%s", strings.Join(remote, "\n"))
			}
		})
	}
}
