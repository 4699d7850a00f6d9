package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/token"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// Slaves' own credentials, end to end: a real master, real slaves and
// their sshd, real tunnels.

// startMasterOwn starts a master as installed from now on: no shared slave
// token, each slave with its own credential.
func (e *env) startMasterOwn(extra ...string) *masterProc {
	e.t.Helper()
	m := &masterProc{e: e, url: fmt.Sprintf("http://127.0.0.1:%d", freePort(e.t)),
		db: filepath.Join(e.dir, "master.db"), adminToken: filepath.Join(e.dir, "admin.token"), extra: extra}
	m.start()
	e.t.Cleanup(m.stop)
	return m
}

// addSlave issues slave name its own credential with the CLI and returns
// the file it was written to.
func (m *masterProc) addSlave(name string) string {
	m.e.t.Helper()
	f := filepath.Join(m.e.dir, "slave-"+name+".token")
	if _, stderr, code := m.admin("slave", "add", name, "--token-file-out", f); code != 0 {
		m.e.t.Fatalf("slave add %s: exit %d: %s", name, code, stderr)
	}
	return f
}

// startSlaveOwn starts slave name under this master with its own credential.
func (m *masterProc) startSlaveOwn(name string) *slaveProc {
	m.e.t.Helper()
	return m.e.startSlaveWith(name, "--master", m.url, "--token-file", m.addSlave(name), "--public-host", "127.0.0.1")
}

// beatAs sends one heartbeat in slave's name with the token in tokenFile,
// claiming host:port and hostKey, as anyone holding that file could.
func (m *masterProc) beatAs(slave, tokenFile, host string, port int, hostKey string) (int, string) {
	m.e.t.Helper()
	hb, _ := json.Marshal(wire.Heartbeat{Host: host, Port: port, User: e2eTunnelUser, Capacity: 100000,
		HostKeys: []string{hostKey}, Tunnels: []wire.Tunnel{}})
	return m.call("POST", "/api/v1/slaves/"+slave+"/heartbeat", strings.TrimSpace(string(mustRead(m.e.t, tokenFile))), hb)
}

// call sends one request with token and returns the status and body.
func (m *masterProc) call(method, path, token string, body []byte) (int, string) {
	m.e.t.Helper()
	req, _ := http.NewRequest(method, m.url+path, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		m.e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// adminGet GETs path with the admin token, failing the test unless 200.
func (m *masterProc) adminGet(path string) string {
	m.e.t.Helper()
	code, body := m.call("GET", path, strings.TrimSpace(string(mustRead(m.e.t, m.adminToken))), nil)
	if code != 200 {
		m.e.t.Fatalf("GET %s: %d %s", path, code, body)
	}
	return body
}

// metric reads one series of the master's /metrics, 0 when absent.
func (m *masterProc) metric(series string) float64 {
	m.e.t.Helper()
	for _, line := range strings.Split(m.adminGet("/metrics"), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return 0
}

func (m *masterProc) slaveList() map[string]wire.Slave {
	m.e.t.Helper()
	out, stderr, code := m.admin("slave", "list", "-o", "json")
	if code != 0 {
		m.e.t.Fatalf("slave list: exit %d: %s", code, stderr)
	}
	var list []wire.Slave
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		m.e.t.Fatalf("slave list: %v: %s", err, out)
	}
	byName := map[string]wire.Slave{}
	for _, s := range list {
		byName[s.Name] = s
	}
	return byName
}

func statusOf(m *masterProc, name string) (wire.SlaveStatus, bool) {
	for _, s := range m.status().Slaves {
		if s.Name == name {
			return s, true
		}
	}
	return wire.SlaveStatus{}, false
}

// The reproduction. Before: with the shared slave token, a
// heartbeat in s2's name from anywhere replaced s2's host, port and host
// keys, and the next slot sent devices to the attacker's address with the
// attacker's host key to pin, for as long as the heartbeats went on. Now
// s2's host keys are bound to its name, and a slave's credential speaks for
// that slave alone: every forged heartbeat is refused, and slots keep going
// to the real s2, whose tunnels come up.
func TestForgedHeartbeatCannotRedirectDevices(t *testing.T) {
	evil := testkit.NewKey(t, "attacker's sshd")
	evilKey := registry.AuthorizedKey(evil.Public)
	for _, tc := range []struct {
		name string
		// start starts the master and s2 (and s1), and returns the token
		// files the attacker tries, with the status each must get.
		start func(e *env) (*masterProc, *slaveProc, map[string]int)
	}{
		{"shared token, s2 not moved to its own credential yet", func(e *env) (*masterProc, *slaveProc, map[string]int) {
			m := e.startMaster() // --allow-shared-slave-token
			return m, m.startSlave("s2"), map[string]int{m.slaveToken: http.StatusConflict}
		}},
		{"own credentials", func(e *env) (*masterProc, *slaveProc, map[string]int) {
			m := e.startMasterOwn()
			s1 := m.addSlave("s1") // another slave's credential (s1 need not run)
			s2 := m.startSlaveOwn("s2")
			made := filepath.Join(e.dir, "made-up.token") // a credential the master never issued
			if err := token.Write(made, "s2."+strings.Repeat("0", 64)); err != nil {
				t.Fatal(err)
			}
			return m, s2, map[string]int{
				s1:                                     http.StatusForbidden,
				filepath.Join(e.dir, "slave-s2.token"): http.StatusConflict, // s2's own, stolen
				made:                                   http.StatusUnauthorized,
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			es := startEcho(t)
			m, s2, attacks := tc.start(e)
			waitSlavesAlive(t, m, 1)
			_, k := m.enrol("pi-1", fwd(es))
			real, code, body := m.slot(k)
			if code != 200 || real.Slave != "s2" || real.Port != s2.port {
				t.Fatalf("slot before the attack: %d %s", code, body)
			}

			refusedForKeys := 0
			for round := 0; round < 3; round++ {
				for file, want := range attacks {
					code, body := m.beatAs("s2", file, "127.0.0.66", 2222, evilKey)
					if code != want {
						t.Fatalf("forged heartbeat as s2 with %s: %d %s, want %d", filepath.Base(file), code, body, want)
					}
					if want == http.StatusConflict {
						refusedForKeys++
					}
					for i := 0; i < 2; i++ {
						slot, code, body := m.slot(k)
						if code != 200 {
							t.Fatalf("slot after a forged heartbeat: %d %s", code, body)
						}
						if slot.Slave != "s2" || slot.Host != "127.0.0.1" || slot.Port != s2.port || !sameKeys(slot.HostKeys, real.HostKeys) {
							t.Fatalf("devices sent to %s:%d to pin %v; the real s2 is 127.0.0.1:%d with %v",
								slot.Host, slot.Port, slot.HostKeys, s2.port, real.HostKeys)
						}
					}
				}
			}
			// The real s2 goes on: heard from, and its address unchanged.
			before, _ := statusOf(m, "s2")
			testkit.Eventually(t, 5*e2eHeartbeat, func() bool {
				st, ok := statusOf(m, "s2")
				return ok && st.Alive && st.LastSeen.After(before.LastSeen)
			}, "the real s2 is no longer heard from")
			if st, _ := statusOf(m, "s2"); st.Host != "127.0.0.1" || st.Port != s2.port {
				t.Errorf("s2 in status: %+v", st)
			}
			// The device sent to s2 reaches the real one.
			if slot, _, p := m.connect(k, es); slot.Port != s2.port || roundTrip(p) != nil {
				t.Errorf("no tunnel through the real s2: %+v", slot)
			}

			// What the admin sees: one event per new set of keys, every refusal counted, the keys pending.
			if refusedForKeys > 0 {
				var evs []wire.Event
				json.Unmarshal([]byte(m.adminGet("/api/v1/events?kind="+registry.EventSlaveKeyMismatch)), &evs)
				if len(evs) != 1 || evs[0].Slave != "s2" || !strings.Contains(evs[0].Detail, "127.0.0.66") || !strings.Contains(evs[0].Detail, evil.Fingerprint()) {
					t.Errorf("slave-key-mismatch events: %+v", evs)
				}
				if n := m.metric(`mas4h_slave_host_key_mismatches_total{slave="s2"}`); int(n) != refusedForKeys {
					t.Errorf("mismatch metric = %v, want %d", n, refusedForKeys)
				}
				if sl := m.slaveList()["s2"]; len(sl.PendingHostKeys) != 1 || sl.PendingHostKeys[0] != evil.Fingerprint() {
					t.Errorf("slave list s2 = %+v", sl)
				}
				if !m.log.Contains("heartbeat refused: host keys differ") {
					t.Errorf("no warning in the master's log")
				}
			}
		})
	}
}

func sameKeys(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n")
}

// The upgrade path from a shared slave token: behind
// --allow-shared-slave-token an old slave keeps working while a new one
// uses its own credential; the old one is then moved over (its own
// credential, restarted), after which the shared token no longer speaks for
// it; finally the master restarts without the flag, and both slaves and
// their tunnels go on.
func TestSharedSlaveTokenUpgradePath(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	m := e.startMaster() // an existing install: the shared token, now behind the flag
	if !m.log.Contains("the shared slave token is accepted") {
		t.Errorf("no warning at start about the shared token:\n%s", m.log)
	}
	old := m.startSlave("s-old") // the shared token, as before
	waitSlavesAlive(t, m, 1)
	_, k1 := m.enrol("pi-1", fwd(es))
	slot1, _, p1 := m.connect(k1, es)
	if slot1.Slave != "s-old" {
		t.Fatalf("pi-1 sent to %s", slot1.Slave)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return m.log.Contains("slave still uses the shared slave token") },
		"no warning naming the slave that uses the shared token")

	fresh := m.startSlaveOwn("s-new") // a new slave: its own credential from the start
	waitSlavesAlive(t, m, 2)
	_, k2 := m.enrol("pi-2", fwd(es))
	slot2, _, p2 := m.connect(k2, es)
	if slot2.Slave != "s-new" || slot2.Port != fresh.port {
		t.Fatalf("pi-2 sent to %+v, want s-new (the idle one)", slot2)
	}
	list := m.slaveList()
	if o, n := list["s-old"], list["s-new"]; o.Credential != wire.CredentialNone || !o.SharedToken || n.Credential != wire.CredentialOwn || n.SharedToken {
		t.Fatalf("slave list: s-old %+v, s-new %+v", o, n)
	}
	out, _, _ := m.admin("slave", "list")
	if !regexpLine(out, `^s-old\s+none, shared\s+yes`) || !regexpLine(out, `^s-new\s+own\s+yes`) {
		t.Errorf("slave list table:\n%s", out)
	}
	// The shared token cannot speak for a slave that has its own credential.
	hostKey := slot2.HostKeys[0]
	if code, body := m.beatAs("s-new", m.slaveToken, "127.0.0.1", fresh.port, hostKey); code != http.StatusForbidden {
		t.Errorf("shared token as s-new: %d %s", code, body)
	}

	// Move the old slave: its own credential, a restart (its sshd and
	// tunnel stay), and the shared token no longer works for it.
	cred := m.addSlave("s-old")
	old.kill9()
	old.mode = []string{"--master", m.url, "--token-file", cred, "--public-host", "127.0.0.1"}
	old.start()
	testkit.Eventually(t, 10*time.Second, func() bool { return m.slaveList()["s-old"].Credential == wire.CredentialOwn },
		"s-old never used its own credential")
	if code, body := m.beatAs("s-old", m.slaveToken, "127.0.0.1", old.port, slot1.HostKeys[0]); code != http.StatusForbidden {
		t.Errorf("shared token as s-old after the move: %d %s", code, body)
	}

	// Drop the flag: the master restarts without the shared token.
	shared := m.slaveToken
	m.stop()
	m.slaveToken = ""
	m.start()
	if m.log.Contains("the shared slave token is accepted") || !m.log.Contains("the shared slave token of an older install is not accepted") {
		t.Errorf("master log after dropping the flag:\n%s", m.log)
	}
	waitSlavesAlive(t, m, 2)
	if code, body := m.beatAs("s-legacy", shared, "127.0.0.1", 2222, hostKey); code != http.StatusUnauthorized {
		t.Errorf("shared token without the flag: %d %s", code, body)
	}
	// Nothing dropped on the way.
	for _, p := range []int{p1, p2} {
		if err := roundTrip(p); err != nil {
			t.Errorf("tunnel on port %d after the move: %v", p, err)
		}
	}
	_, k3 := m.enrol("pi-3", fwd(es))
	if slot, _, p3 := m.connect(k3, es); roundTrip(p3) != nil {
		t.Errorf("a new device after the move, on %s: no tunnel", slot.Slave)
	}
}
