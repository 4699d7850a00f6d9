package master

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// noShared is a master without --allow-shared-slave-token: the default.
func noShared(c *Config) { c.SlaveToken = "" }

// addSlave issues slave name a credential through the API.
func (e *testEnv) addSlave(name string) string {
	e.t.Helper()
	var sc wire.SlaveCredential
	resp, data := e.do("POST", "/slaves", adminTok, wire.AddSlaveRequest{Name: name})
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		e.t.Fatalf("POST /slaves %s = %d %s", name, resp.StatusCode, data)
	}
	e.decode(data, &sc)
	if sc.Name != name || !strings.HasPrefix(sc.Credential, name+".") {
		e.t.Fatalf("credential of %s = %+v", name, sc)
	}
	return sc.Credential
}

func (e *testEnv) decode(data []byte, out any) {
	e.t.Helper()
	if err := json.Unmarshal(data, out); err != nil {
		e.t.Fatalf("decoding %s: %v", data, err)
	}
}

// status is the answer's status alone.
func (e *testEnv) status(method, path, token string, body any) int {
	e.t.Helper()
	resp, _ := e.do(method, path, token, body)
	return resp.StatusCode
}

// beatAs heartbeats as slave with tok, from host with host key key.
func (e *testEnv) beatAs(slave, tok, host, key string) (int, string) {
	e.t.Helper()
	hb := heartbeatOf(100)
	hb.Host, hb.HostKeys = host, []string{key}
	resp, data := e.do("POST", "/slaves/"+slave+"/heartbeat", tok, hb)
	return resp.StatusCode, string(data)
}

// dispatch is where the master would send a device now: the slot a
// POST /slots would answer, without the device's side of the request.
func (e *testEnv) dispatch(device string) wire.Slot {
	e.t.Helper()
	slot, ok := e.srv.live.Pick(registry.Device{Name: device})
	if !ok {
		e.t.Fatalf("no slave for %s", device)
	}
	e.srv.live.Unpick(device, slot.Slave)
	return slot
}

// metric reads one sample of GET /metrics, 0 when absent.
func (e *testEnv) metric(series string) float64 {
	e.t.Helper()
	resp, err := e.ts.Client().Get(e.ts.URL + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				e.t.Fatalf("%s: %v", line, err)
			}
			return f
		}
	}
	return 0
}

func (e *testEnv) slaves() map[string]wire.Slave {
	e.t.Helper()
	var list []wire.Slave
	e.want("GET", "/slaves", adminTok, nil, http.StatusOK, &list)
	out := map[string]wire.Slave{}
	for _, s := range list {
		out[s.Name] = s
	}
	return out
}

func TestSlaveSpeaksOnlyForItself(t *testing.T) {
	e := newEnv(t, noShared)
	s1, s2 := e.addSlave("s1"), e.addSlave("s2")
	ak := e.enrol("d1")
	_, k := newKey(t)

	type call struct {
		method, path string
		body         any
	}
	as := func(slave string) []call {
		return []call{
			{"POST", "/slaves/" + slave + "/heartbeat", heartbeatOf(10)},
			{"GET", "/slaves/" + slave + "/revocations?after=0", nil},
			{"POST", "/validate", wire.ValidateRequest{PublicKey: ak, Slave: slave}},
		}
	}
	for _, tc := range []struct {
		who, tok, slave string
		want            int
	}{
		{"s1's credential", s1, "s1", http.StatusOK},
		{"s2's credential", s2, "s2", http.StatusOK},
		{"s1's credential as s2", s1, "s2", http.StatusForbidden},
		{"s2's credential as s1", s2, "s1", http.StatusForbidden},
		{"s1's credential as an unknown slave", s1, "s9", http.StatusForbidden},
		{"the admin token", adminTok, "s1", http.StatusForbidden},
		{"the shared token without the flag", slaveTok, "s1", http.StatusUnauthorized},
		{"the shared token without the flag, for a slave with no credential", slaveTok, "s9", http.StatusUnauthorized},
		{"no token", "", "s1", http.StatusUnauthorized},
		{"s1's name with s2's secret", "s1." + s2[len("s2."):], "s1", http.StatusUnauthorized},
		{"a credential for a slave never added", "s9." + s1[len("s1."):], "s9", http.StatusUnauthorized},
	} {
		for _, c := range as(tc.slave) {
			if got := e.status(c.method, c.path, tc.tok, c.body); got != tc.want {
				t.Errorf("%s: %s %s = %d, want %d", tc.who, c.method, c.path, got, tc.want)
			}
		}
	}
	// A 403 says why.
	resp, data := e.do("POST", "/slaves/s2/heartbeat", s1, heartbeatOf(10))
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(data), "this credential is slave s1's; it cannot speak for slave s2") {
		t.Errorf("s1 as s2: %d %s", resp.StatusCode, data)
	}
	// A slave's credential is no admin token, and the admin's own calls still work.
	for _, p := range []string{"/status", "/devices", "/slaves", "/events"} {
		if got := e.status("GET", p, s1, nil); got != http.StatusForbidden {
			t.Errorf("s1's credential on GET %s = %d, want 403", p, got)
		}
	}
	if got := e.status("POST", "/slaves", s1, wire.AddSlaveRequest{Name: "s3"}); got != http.StatusForbidden {
		t.Errorf("a slave issuing credentials: %d", got)
	}
	// Validation without a name is the caller's, and the event log says so.
	if got := e.status("POST", "/validate", s1, wire.ValidateRequest{PublicKey: k}); got != http.StatusForbidden {
		t.Fatalf("unknown key: %d", got)
	}
	evs := e.events("?kind=deny")
	if len(evs) == 0 || evs[len(evs)-1].Slave != "s1" {
		t.Errorf("deny event of an unnamed validation by s1: %+v", evs)
	}
	if e.metric(`mas4h_slave_auth_refusals_total{reason="other_slave"}`) == 0 || e.metric(`mas4h_slave_auth_refusals_total{reason="invalid"}`) == 0 ||
		e.metric(`mas4h_slave_auth_refusals_total{reason="wrong_role"}`) == 0 {
		t.Error("refusals not counted")
	}
}

func TestReissuedOrRemovedCredentialStopsWorking(t *testing.T) {
	e := newEnv(t, noShared)
	old := e.addSlave("s1")
	e.addSlave("s2")
	if code, body := e.beatAs("s1", old, "10.0.0.1", hostKey); code != http.StatusOK {
		t.Fatalf("s1: %d %s", code, body)
	}
	e.addSlave("s1") // re-added: a new credential
	newer := e.addSlave("s1")
	if code, _ := e.beatAs("s1", old, "10.0.0.1", hostKey); code != http.StatusUnauthorized {
		t.Errorf("the replaced credential: %d, want 401", code)
	}
	if code, body := e.beatAs("s1", newer, "10.0.0.1", hostKey); code != http.StatusOK {
		t.Errorf("the new credential: %d %s", code, body)
	}
	s2 := e.addSlave("s2")
	if code, body := e.beatAs("s2", s2, "10.0.0.2", hostKey); code != http.StatusOK {
		t.Fatalf("s2: %d %s", code, body)
	}
	e.want("DELETE", "/slaves/s1", adminTok, nil, http.StatusOK, nil)
	e.want("DELETE", "/slaves/s1", adminTok, nil, http.StatusNotFound, nil)
	if code, _ := e.beatAs("s1", newer, "10.0.0.1", hostKey); code != http.StatusUnauthorized {
		t.Errorf("a removed slave's credential: %d, want 401", code)
	}
	// No device goes to a removed slave.
	for i := 0; i < 5; i++ {
		if s := e.dispatch("d1"); s.Slave != "s2" {
			t.Fatalf("dispatched to %s after rm s1", s.Slave)
		}
	}
	if _, ok := e.slaves()["s1"]; ok {
		t.Error("s1 still listed after rm")
	}
}

// The reproduction: with the shared token, a heartbeat in s2's name
// from anywhere replaced s2's host and host keys, and the next slot sent
// devices to the attacker with the attacker's key to pin. Now s2's host
// keys are bound to its name: the heartbeat is refused, and dispatch keeps
// sending devices to the real s2.
func TestHeartbeatCannotRedirectASlave(t *testing.T) {
	for _, tc := range []struct {
		name string
		// attacker is the token the attacker heartbeats with; own says
		// whether s2 has its own credential.
		shared bool
		own    bool
		status int
	}{
		{"shared token, s2 not moved yet", true, false, http.StatusConflict},
		{"shared token, s2 has its own credential", true, true, http.StatusForbidden},
		{"s2's own credential, stolen", false, true, http.StatusConflict},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) {
				if !tc.shared {
					c.SlaveToken = ""
				}
			})
			real := slaveTok
			if tc.own {
				real = e.addSlave("s2")
			}
			if code, body := e.beatAs("s2", real, "198.51.100.2", hostKey); code != http.StatusOK {
				t.Fatalf("the real s2: %d %s", code, body)
			}
			_, evilKey := newKey(t)
			attacker := slaveTok
			if !tc.shared {
				attacker = real
			}
			for i := 0; i < 3; i++ {
				code, body := e.beatAs("s2", attacker, "203.0.113.66", evilKey)
				if code != tc.status {
					t.Fatalf("attacker's heartbeat as s2: %d %s, want %d", code, body, tc.status)
				}
				// The real s2 goes on beating in between.
				if code, body := e.beatAs("s2", real, "198.51.100.2", hostKey); code != http.StatusOK {
					t.Fatalf("the real s2 after the attack: %d %s", code, body)
				}
				slot := e.dispatch("d1")
				if slot.Host != "198.51.100.2" || len(slot.HostKeys) != 1 || slot.HostKeys[0] != hostKey {
					t.Fatalf("devices sent to %s with keys %v", slot.Host, slot.HostKeys)
				}
			}
			if tc.status != http.StatusConflict {
				return
			}
			// Noted once, counted every time, shown to the admin.
			if evs := e.events("?kind=" + registry.EventSlaveKeyMismatch); len(evs) != 1 || evs[0].Slave != "s2" || !strings.Contains(evs[0].Detail, "203.0.113.66") {
				t.Errorf("mismatch events: %+v", evs)
			}
			if n := e.metric(`mas4h_slave_host_key_mismatches_total{slave="s2"}`); n != 3 {
				t.Errorf("mismatch metric = %v, want 3", n)
			}
			sl := e.slaves()["s2"]
			if len(sl.PendingHostKeys) != 1 || sl.PendingSince == nil || len(sl.HostKeys) != 1 {
				t.Errorf("GET /slaves s2 = %+v", sl)
			}
		})
	}
}

func TestHostKeyChangeAcceptedByAdmin(t *testing.T) {
	e := newEnv(t, noShared)
	cred := e.addSlave("s1")
	if code, body := e.beatAs("s1", cred, "10.0.0.1", hostKey); code != http.StatusOK {
		t.Fatalf("%d %s", code, body)
	}
	k2, newKeyLine := newKey(t)
	code, body := e.beatAs("s1", cred, "10.0.0.1", newKeyLine)
	if code != http.StatusConflict || !strings.Contains(body, "mas4h slave accept-key s1") {
		t.Fatalf("new host key: %d %s", code, body)
	}
	// The wrong fingerprint accepts nothing.
	_, other := newKey(t)
	otherFP := registry.KeyFingerprints([]string{other})
	resp, data := e.do("POST", "/slaves/s1/accept-key", adminTok, wire.AcceptKeyRequest{Fingerprints: otherFP})
	if resp.StatusCode != http.StatusConflict {
		t.Fatalf("accept with a wrong fingerprint: %d %s", resp.StatusCode, data)
	}
	if code, _ := e.beatAs("s1", cred, "10.0.0.1", newKeyLine); code != http.StatusConflict {
		t.Fatalf("accepted anyway: %d", code)
	}
	// A slave cannot accept its own keys.
	if got := e.status("POST", "/slaves/s1/accept-key", cred, nil); got != http.StatusForbidden {
		t.Errorf("slave accepting its keys: %d", got)
	}
	var acc wire.AcceptedKeys
	e.want("POST", "/slaves/s1/accept-key", adminTok, wire.AcceptKeyRequest{Fingerprints: []string{registry.Fingerprint(k2)}}, http.StatusOK, &acc)
	if len(acc.HostKeys) != 1 || acc.HostKeys[0] != registry.Fingerprint(k2) {
		t.Errorf("accepted = %+v", acc)
	}
	if code, body := e.beatAs("s1", cred, "10.0.0.1", newKeyLine); code != http.StatusOK {
		t.Fatalf("after accept-key: %d %s", code, body)
	}
	if slot := e.dispatch("d1"); slot.HostKeys[0] != newKeyLine {
		t.Errorf("devices pin %v, want the accepted key", slot.HostKeys)
	}
	if code, _ := e.beatAs("s1", cred, "10.0.0.1", hostKey); code != http.StatusConflict {
		t.Errorf("the old key after accept: %d", code)
	}
	// Nothing pending any more (the old key, just refused, is): accept it
	// without fingerprints, then nothing is left.
	e.want("POST", "/slaves/s1/accept-key", adminTok, nil, http.StatusOK, nil)
	e.want("POST", "/slaves/s1/accept-key", adminTok, nil, http.StatusConflict, nil)
	e.want("POST", "/slaves/nope/accept-key", adminTok, nil, http.StatusNotFound, nil)

	// Re-adding the slave also lets its next heartbeat bind new keys.
	cred = e.addSlave("s1")
	if sl := e.slaves()["s1"]; sl.Credential != wire.CredentialIssued {
		t.Errorf("after re-add: %+v", sl)
	}
	if code, body := e.beatAs("s1", cred, "10.0.0.9", newKeyLine); code != http.StatusOK {
		t.Fatalf("after re-add: %d %s", code, body)
	}
	if sl := e.slaves()["s1"]; sl.Credential != wire.CredentialOwn || sl.Host != "10.0.0.9" || !sl.Alive {
		t.Errorf("after its first heartbeat: %+v", sl)
	}
}

// The upgrade path: behind the flag, slaves without a credential keep
// using the shared token; one moved to its own credential can no longer be
// spoken for with the shared token.
func TestSharedTokenBehindTheFlag(t *testing.T) {
	e := newEnv(t, nil) // SlaveToken set: --allow-shared-slave-token
	ak := e.enrol("d1")
	if code, body := e.beatAs("old", slaveTok, "10.0.0.1", hostKey); code != http.StatusOK {
		t.Fatalf("old slave with the shared token: %d %s", code, body)
	}
	e.want("GET", "/slaves/old/revocations?after=0", slaveTok, nil, http.StatusOK, nil)
	e.want("POST", "/validate", slaveTok, wire.ValidateRequest{PublicKey: ak, Slave: "old"}, http.StatusOK, nil)
	e.want("POST", "/validate", slaveTok, wire.ValidateRequest{PublicKey: ak}, http.StatusOK, nil)

	cred := e.addSlave("new")
	if code, body := e.beatAs("new", cred, "10.0.0.2", hostKey); code != http.StatusOK {
		t.Fatalf("new slave with its own credential: %d %s", code, body)
	}
	for _, c := range []struct{ method, path string }{
		{"POST", "/slaves/new/heartbeat"}, {"GET", "/slaves/new/revocations?after=0"},
	} {
		var body any
		if c.method == "POST" {
			body = heartbeatOf(10)
		}
		if got := e.status(c.method, c.path, slaveTok, body); got != http.StatusForbidden {
			t.Errorf("shared token for a slave with its own credential: %s %s = %d", c.method, c.path, got)
		}
	}
	if got := e.status("POST", "/validate", slaveTok, wire.ValidateRequest{PublicKey: ak, Slave: "new"}); got != http.StatusForbidden {
		t.Errorf("shared token validating as a slave with its own credential: %d", got)
	}
	list := e.slaves()
	if o := list["old"]; o.Credential != wire.CredentialNone || !o.SharedToken || !o.Registered {
		t.Errorf("old = %+v", o)
	}
	if n := list["new"]; n.Credential != wire.CredentialOwn || n.SharedToken {
		t.Errorf("new = %+v", n)
	}
	if n := e.metric("mas4h_shared_slave_token_requests_total"); n < 4 {
		t.Errorf("shared token requests = %v", n)
	}
}

func TestSlaveAdminValidation(t *testing.T) {
	e := newEnv(t, noShared)
	for _, body := range []any{wire.AddSlaveRequest{Name: "-x"}, wire.AddSlaveRequest{Name: "../x"}, `{"name":"s1","extra":1}`, ""} {
		if got := e.status("POST", "/slaves", adminTok, body); got != http.StatusBadRequest {
			t.Errorf("POST /slaves %v = %d", body, got)
		}
	}
	if got := e.status("DELETE", "/slaves/-x", adminTok, nil); got != http.StatusBadRequest {
		t.Errorf("DELETE bad name = %d", got)
	}
	if got := e.status("POST", "/slaves", "", wire.AddSlaveRequest{Name: "s1"}); got != http.StatusUnauthorized {
		t.Errorf("unauthenticated add = %d", got)
	}
	e.want("POST", "/slaves", adminTok, wire.AddSlaveRequest{Name: "s1"}, http.StatusCreated, nil)
	var sc wire.SlaveCredential
	e.want("POST", "/slaves", adminTok, wire.AddSlaveRequest{Name: "s1"}, http.StatusOK, &sc)
	if !sc.Replaced {
		t.Error("re-add not reported as replacing")
	}
	// The credential is shown once: never in the list.
	data := e.want("GET", "/slaves", adminTok, nil, http.StatusOK, nil)
	if strings.Contains(string(data), sc.Credential[len("s1."):]) {
		t.Error("GET /slaves shows the secret")
	}
}

func TestNewNeedsNoSlaveToken(t *testing.T) {
	e := newEnv(t, noShared)
	if e.srv.sharedSlave {
		t.Fatal("shared token accepted without one")
	}
	st := e.store
	if _, err := New(context.Background(), Config{Store: st, AdminToken: adminTok, SlaveToken: adminTok}); err == nil {
		t.Error("the same token for admin and shared slave accepted")
	}
}
