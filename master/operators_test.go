package master

import (
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// operatorKey makes an operator's key pair.
func operatorKey(t *testing.T) (ssh.Signer, string) {
	t.Helper()
	_, ak := newKey(t)
	s, _ := signers.Load(ak)
	return s.(ssh.Signer), ak
}

// labelled enrols a device with labels and returns its authorized key.
func (e *testEnv) labelled(name string, labels map[string]string, forwards ...string) string {
	e.t.Helper()
	_, ak := newKey(e.t)
	e.want("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: name, PublicKey: ak, Forwards: forwards, Labels: labels}, http.StatusCreated, nil)
	return ak
}

// accessReq is signer's signed request for device's forward, at the fake
// clock's now, for this master.
func (e *testEnv) accessReq(signer ssh.Signer, device, forward string) wire.AccessRequest {
	e.t.Helper()
	req, err := client.SignAccessRequest(signer, e.ts.URL, e.clock.Now(), device, forward)
	if err != nil {
		e.t.Fatal(err)
	}
	return req
}

// opFleet: lyon-1 (site=lyon, ssh and web), paris-1 (site=paris), both
// online on slave s1, which takes operators as mas4h-operator; alice may
// reach site=lyon.
func opFleet(t *testing.T, mutate func(*Config)) (*testEnv, ssh.Signer) {
	e := newEnv(t, mutate)
	e.labelled("lyon-1", map[string]string{"site": "lyon"}, "ssh=localhost:22", "web=localhost:80")
	e.labelled("paris-1", map[string]string{"site": "paris"})
	hb := heartbeatOf(100,
		wire.Tunnel{Device: "lyon-1", Forward: "ssh", Port: 20000},
		wire.Tunnel{Device: "paris-1", Forward: "ssh", Port: 20002})
	hb.OperatorUser = "mas4h-operator"
	e.beat("s1", hb)
	signer, ak := operatorKey(t)
	e.want("POST", "/operators", adminTok, wire.OperatorSpec{Name: "alice", PublicKey: ak, Allow: []string{"site=lyon"}}, http.StatusCreated, nil)
	return e, signer
}

func TestOperatorAdminAPI(t *testing.T) {
	e := newEnv(t, nil)
	devAK := e.labelled("pi-lyon", map[string]string{"site": "lyon"})
	e.labelled("pi-paris", map[string]string{"site": "paris"})
	_, ak := operatorKey(t)

	// Bad input: a clear 400, and nothing is enrolled.
	for _, spec := range []any{
		wire.OperatorSpec{Name: "Alice", PublicKey: ak},
		wire.OperatorSpec{Name: "alice", PublicKey: "ssh-ed25519 garbage"},
		wire.OperatorSpec{Name: "alice", PublicKey: ak, Allow: []string{"site=lyon", "pi-["}},
		wire.OperatorSpec{Name: "alice", PublicKey: ak, Allow: []string{"site=$(reboot)"}},
		`{"name":"alice","public_key":"` + ak + `","role":"admin"}`,
	} {
		if got := e.status("POST", "/operators", adminTok, spec); got != http.StatusBadRequest {
			t.Errorf("POST /operators %v = %d, want 400", spec, got)
		}
	}
	if got := e.status("POST", "/operators", adminTok, wire.OperatorSpec{Name: "alice", PublicKey: devAK}); got != http.StatusConflict {
		t.Errorf("an operator with a device's key = %d, want 409", got)
	}
	var list []wire.Operator
	e.want("GET", "/operators", adminTok, nil, http.StatusOK, &list)
	if len(list) != 0 {
		t.Fatalf("operators after refusals: %+v", list)
	}
	if got := e.status("POST", "/operators", slaveTok, wire.OperatorSpec{Name: "alice", PublicKey: ak}); got != http.StatusForbidden {
		t.Errorf("a slave enrolling an operator = %d, want 403", got)
	}

	var op wire.Operator
	e.want("POST", "/operators", adminTok, wire.OperatorSpec{Name: "alice", PublicKey: ak, Allow: []string{"site=lyon"}}, http.StatusCreated, &op)
	if op.Name != "alice" || op.Status != "active" || !reflect.DeepEqual(op.Allow, []string{"site=lyon"}) || !reflect.DeepEqual(op.Devices, []string{"pi-lyon"}) {
		t.Fatalf("enrolled = %+v", op)
	}
	if got := e.status("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: "pi-x", PublicKey: ak}); got != http.StatusConflict {
		t.Errorf("a device with an operator's key = %d, want 409", got)
	}
	e.want("POST", "/operators/alice/allow", adminTok, wire.Selector{Selector: "pi-*"}, http.StatusOK, &op)
	if !reflect.DeepEqual(op.Devices, []string{"pi-lyon", "pi-paris"}) {
		t.Errorf("after allow pi-*: %+v", op)
	}
	e.want("POST", "/operators/alice/allow", adminTok, wire.Selector{Selector: "bad glob["}, http.StatusBadRequest, nil)
	e.want("POST", "/operators/alice/deny", adminTok, wire.Selector{Selector: "site=paris"}, http.StatusNotFound, nil)
	e.want("POST", "/operators/bob/allow", adminTok, wire.Selector{Selector: "pi-*"}, http.StatusNotFound, nil)

	seq := e.beat("s1", heartbeatOf(10)).Seq
	e.want("POST", "/operators/alice/deny", adminTok, wire.Selector{Selector: "pi-*"}, http.StatusOK, &op)
	if !reflect.DeepEqual(op.Devices, []string{"pi-lyon"}) {
		t.Errorf("after deny pi-*: %+v", op)
	}
	hb := heartbeatOf(10)
	hb.Seq = seq
	r := e.beat("s1", hb)
	if len(r.Revocations) != 1 || r.Revocations[0].Operator != "alice" || r.Revocations[0].Reason != "changed" || r.Revocations[0].Device != "" {
		t.Fatalf("revocations after deny: %+v", r.Revocations)
	}

	// Labels: a device moving out of site=lyon leaves alice's reach.
	var dev wire.Device
	e.want("POST", "/devices/pi-lyon/labels", adminTok, wire.Labels{Set: map[string]string{"site": "paris", "floor": "2"}}, http.StatusOK, &dev)
	if !reflect.DeepEqual(dev.Labels, map[string]string{"site": "paris", "floor": "2"}) {
		t.Errorf("labels = %v", dev.Labels)
	}
	e.want("POST", "/devices/pi-lyon/labels", adminTok, wire.Labels{Set: map[string]string{"site": "a b"}}, http.StatusBadRequest, nil)
	e.want("POST", "/devices/pi-lyon/labels", adminTok, wire.Labels{Remove: []string{"floor"}}, http.StatusOK, &dev)
	e.want("POST", "/devices/nope/labels", adminTok, wire.Labels{Remove: []string{"floor"}}, http.StatusNotFound, nil)
	var now wire.Operator
	e.want("GET", "/operators/alice", adminTok, nil, http.StatusOK, &now)
	if len(now.Devices) != 0 {
		t.Errorf("alice still reaches %v", now.Devices)
	}
	var devs []wire.Device
	e.want("GET", "/devices?selector=site=paris", adminTok, nil, http.StatusOK, &devs)
	if len(devs) != 2 {
		t.Errorf("site=paris: %+v", devs)
	}
	e.want("GET", "/devices?selector=pi-l*&selector=nothing", adminTok, nil, http.StatusOK, &devs)
	if len(devs) != 1 || devs[0].Name != "pi-lyon" {
		t.Errorf("pi-l*: %+v", devs)
	}
	e.want("GET", "/devices?selector=%5B", adminTok, nil, http.StatusBadRequest, nil)

	hb.Seq = r.Seq
	e.want("POST", "/operators/alice/revoke", adminTok, nil, http.StatusOK, &op)
	if op.Status != "revoked" {
		t.Errorf("revoked = %+v", op)
	}
	e.want("DELETE", "/operators/alice", adminTok, nil, http.StatusOK, nil)
	e.want("GET", "/operators/alice", adminTok, nil, http.StatusNotFound, nil)
	r = e.beat("s1", hb)
	var reasons []string
	for _, rv := range r.Revocations {
		if rv.Operator == "alice" {
			reasons = append(reasons, rv.Reason)
		}
	}
	// Changed (pi-lyon left site=lyon), revoked, removed.
	if !reflect.DeepEqual(reasons, []string{"changed", "revoked", "removed"}) {
		t.Errorf("alice's revocations: %+v", r.Revocations)
	}
	var kinds []string
	for _, ev := range e.events("?operator=alice") {
		kinds = append(kinds, ev.Kind)
	}
	want := []string{"operator-enrol", "operator-allow", "operator-allow", "operator-revoke", "operator-rm"}
	if !reflect.DeepEqual(kinds, want) {
		t.Errorf("alice's events: %v, want %v", kinds, want)
	}
}

func TestAccess(t *testing.T) {
	e, alice := opFleet(t, nil)
	var a wire.Access
	e.want("POST", "/access", "", e.accessReq(alice, "lyon-1", ""), http.StatusOK, &a)
	want := wire.Access{Operator: "alice", Device: "lyon-1", Forward: "ssh", Slave: "s1", Host: "127.0.0.1", Port: 2222,
		User: "mas4h-operator", HostKeys: []string{hostKey}, RemotePort: 20000}
	if !reflect.DeepEqual(a, want) {
		t.Fatalf("access = %+v, want %+v", a, want)
	}
	e.want("POST", "/access", "", e.accessReq(alice, "lyon-1", "web"), http.StatusOK, &a)
	if a.RemotePort != 20001 || a.Forward != "web" {
		t.Errorf("web: %+v", a)
	}

	// Past the allow list, and a device that does not exist, look alike.
	_, paris := e.do("POST", "/access", "", e.accessReq(alice, "paris-1", ""))
	_, nope := e.do("POST", "/access", "", e.accessReq(alice, "nope", ""))
	if strings.ReplaceAll(string(paris), "paris-1", "X") != strings.ReplaceAll(string(nope), "nope", "X") {
		t.Errorf("not allowed: %s; unknown: %s", paris, nope)
	}
	if got := e.status("POST", "/access", "", e.accessReq(alice, "paris-1", "")); got != http.StatusNotFound {
		t.Errorf("paris-1 = %d", got)
	}
	var we wire.Error
	e.want("POST", "/access", "", e.accessReq(alice, "lyon-1", "vnc"), http.StatusNotFound, &we)
	if !strings.Contains(we.Error, "no forward vnc (it has: ssh, web)") {
		t.Errorf("no such forward: %q", we.Error)
	}

	// Replayed, or re-targeted at another device: refused.
	req := e.accessReq(alice, "lyon-1", "")
	e.want("POST", "/access", "", req, http.StatusOK, nil)
	e.want("POST", "/access", "", req, http.StatusForbidden, nil)
	req = e.accessReq(alice, "lyon-1", "")
	req.Device = "paris-1"
	e.want("POST", "/access", "", req, http.StatusForbidden, &we)
	if we.Error != notAccepted {
		t.Errorf("re-targeted: %q", we.Error)
	}
	// A slot statement is no access statement, even with the same fields.
	slot, err := client.SignSlotRequest(alice, e.ts.URL, e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	req = wire.AccessRequest{Device: "lyon-1", PublicKey: slot.PublicKey, Master: slot.Master, Timestamp: slot.Timestamp, Nonce: slot.Nonce, Signature: slot.Signature}
	e.want("POST", "/access", "", req, http.StatusForbidden, nil)
	// Stale, and unsigned.
	old, _ := client.SignAccessRequest(alice, e.ts.URL, e.clock.Now().Add(-10*time.Minute), "lyon-1", "")
	e.want("POST", "/access", "", old, http.StatusForbidden, &we)
	if !strings.Contains(we.Error, "check your clock") {
		t.Errorf("stale: %q", we.Error)
	}
	req = e.accessReq(alice, "lyon-1", "")
	req.Signature = ""
	e.want("POST", "/access", "", req, http.StatusBadRequest, nil)
	e.want("POST", "/access", "", `{"device":"../x","public_key":"k"}`, http.StatusBadRequest, nil)

	// A device's key is no operator's.
	devSigner, devAK := operatorKey(t)
	e.want("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: "lyon-2", PublicKey: devAK, Labels: map[string]string{"site": "lyon"}}, http.StatusCreated, nil)
	e.want("POST", "/access", "", e.accessReq(devSigner, "lyon-1", ""), http.StatusForbidden, &we)
	if !strings.Contains(we.Error, "not an operator's") {
		t.Errorf("device key: %q", we.Error)
	}

	// Offline: lyon-2 has no tunnel.
	e.want("POST", "/access", "", e.accessReq(alice, "lyon-2", ""), http.StatusConflict, &we)
	if !strings.Contains(we.Error, "lyon-2 is offline") {
		t.Errorf("offline: %q", we.Error)
	}
	e.want("POST", "/slaves/s1/heartbeat", slaveTok, wire.Heartbeat{Host: "127.0.0.1", Port: 2222, User: "mas4h-tunnel", HostKeys: []string{hostKey}, Capacity: 100,
		Tunnels: []wire.Tunnel{{Device: "lyon-1", Forward: "ssh", Port: 20000}}, Events: []wire.SlaveEvent{{Kind: "disconnect", Device: "lyon-2", Detail: "tunnel down"}}}, http.StatusOK, nil)
	// That heartbeat said no operator user: the slave takes no operators.
	e.want("POST", "/access", "", e.accessReq(alice, "lyon-1", ""), http.StatusServiceUnavailable, &we)
	if !strings.Contains(we.Error, "takes no operators") {
		t.Errorf("no operator user: %q", we.Error)
	}
	e.want("POST", "/access", "", e.accessReq(alice, "lyon-2", ""), http.StatusConflict, &we)
	if !strings.Contains(we.Error, "offline since") || !strings.Contains(we.Error, "last on slave s1") {
		t.Errorf("offline after a disconnect: %q", we.Error)
	}

	// Revoked.
	e.want("POST", "/operators/alice/revoke", adminTok, nil, http.StatusOK, nil)
	e.want("POST", "/access", "", e.accessReq(alice, "lyon-1", ""), http.StatusForbidden, &we)
	if we.Error != "operator alice is revoked" {
		t.Errorf("revoked: %q", we.Error)
	}

	for reason, n := range map[string]float64{"not_allowed": 3, "bad_signature": 4, "unknown_key": 1, "offline": 2, "revoked": 1} {
		if got := e.metric(`mas4h_operator_access_denials_total{reason="` + reason + `"}`); got != n {
			t.Errorf("denials %s = %v, want %v", reason, got, n)
		}
	}
	denies := e.events("?kind=operator-deny&operator=alice")
	if len(denies) == 0 || denies[0].Device != "paris-1" || !strings.Contains(denies[0].Detail, "not on the allow list") {
		t.Errorf("operator-deny events: %+v", denies)
	}
}

func TestAccessBoundToMasterAndRateLimited(t *testing.T) {
	e, alice := opFleet(t, func(c *Config) {
		c.PublicURLs = []string{"https://master.example"}
		c.SlotRate, c.SlotBurst = 0.001, 2
	})
	// Signed for this test server's URL, which is not the public one.
	var we wire.Error
	e.want("POST", "/access", "", e.accessReq(alice, "lyon-1", ""), http.StatusForbidden, &we)
	if !strings.Contains(we.Error, "not this master") {
		t.Errorf("other master: %q", we.Error)
	}
	req, _ := client.SignAccessRequest(alice, "https://master.example", e.clock.Now(), "lyon-1", "")
	e.want("POST", "/access", "", req, http.StatusOK, nil)
	resp, _ := e.do("POST", "/access", "", e.accessReq(alice, "lyon-1", ""))
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Errorf("third request = %d (Retry-After %q), want 429", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
}

func TestValidateOperatorRole(t *testing.T) {
	e, alice := opFleet(t, nil)
	s1 := e.addSlave("s1")
	e.addSlave("s2")
	opAK := registry.AuthorizedKey(alice.PublicKey())
	var v wire.OperatorValidation
	e.want("POST", "/validate", s1, wire.ValidateRequest{PublicKey: opAK, Role: "operator"}, http.StatusOK, &v)
	want := []wire.OpenPort{{Device: "lyon-1", Forward: "ssh", Port: 20000}, {Device: "lyon-1", Forward: "web", Port: 20001}}
	if v.Operator != "alice" || !reflect.DeepEqual(v.Open, want) || v.TTLSeconds != 300 || v.Fingerprint != registry.Fingerprint(alice.PublicKey()) {
		t.Fatalf("validation = %+v", v)
	}
	e.want("POST", "/validate", s1, wire.ValidateRequest{Fingerprint: v.Fingerprint, Role: "operator"}, http.StatusOK, &v)

	// The refusals all read alike.
	devices := map[string]wire.Device{}
	var list []wire.Device
	e.want("GET", "/devices", adminTok, nil, http.StatusOK, &list)
	for _, d := range list {
		devices[d.Name] = d
	}
	_, stranger := newKey(t)
	var bodies []string
	for _, req := range []wire.ValidateRequest{
		{PublicKey: devices["lyon-1"].PublicKey, Role: "operator"}, // a device's key as the operator user
		{PublicKey: opAK},                 // an operator's key as the tunnel user
		{PublicKey: opAK, Role: "device"}, // the same, said
		{PublicKey: stranger, Role: "operator"},
	} {
		_, body := e.do("POST", "/validate", s1, req)
		bodies = append(bodies, string(body))
		if got := e.status("POST", "/validate", s1, req); got != http.StatusForbidden {
			t.Errorf("validate %+v = %d, want 403", req, got)
		}
	}
	for _, b := range bodies[1:] {
		if b != bodies[0] {
			t.Errorf("refusals differ: %q vs %q", b, bodies[0])
		}
	}
	if _, err := e.store.Device(t.Context(), "alice"); err == nil {
		t.Error("an operator's key got enrolled as a device")
	}
	e.want("POST", "/validate", s1, wire.ValidateRequest{PublicKey: opAK, Role: "admin"}, http.StatusBadRequest, nil)
	// A leaked credential of s1 cannot ask in s2's name.
	e.want("POST", "/validate", s1, wire.ValidateRequest{PublicKey: opAK, Role: "operator", Slave: "s2"}, http.StatusForbidden, nil)
	e.want("POST", "/validate", adminTok, wire.ValidateRequest{PublicKey: opAK, Role: "operator"}, http.StatusForbidden, nil)

	e.want("POST", "/operators/alice/revoke", adminTok, nil, http.StatusOK, nil)
	e.want("POST", "/validate", s1, wire.ValidateRequest{PublicKey: opAK, Role: "operator"}, http.StatusForbidden, nil)
}

func TestHeartbeatOperators(t *testing.T) {
	e, _ := opFleet(t, nil)
	now := e.clock.Now()
	hb := heartbeatOf(100, wire.Tunnel{Device: "lyon-1", Forward: "ssh", Port: 20000})
	hb.OperatorUser = "mas4h-operator"
	hb.Operators = []wire.OperatorSession{{Operator: "alice", Fingerprint: "SHA256:x", Remote: "192.0.2.7:50000", Since: now,
		Open: []wire.OperatorAccess{{Device: "lyon-1", Forward: "ssh", Port: 20000, Since: now}}}}
	hb.Events = []wire.SlaveEvent{{At: now, Kind: wire.EventOperatorConnect, Operator: "alice", Device: "lyon-1", Detail: "ssh from 192.0.2.7"}}
	e.beat("s1", hb)
	live := e.srv.live.Operators()
	if len(live) != 1 || live[0].Slave != "s1" || live[0].Operator != "alice" || len(live[0].Open) != 1 {
		t.Fatalf("live operators = %+v", live)
	}
	if got := e.metric("mas4h_operator_sessions"); got != 1 {
		t.Errorf("operator_sessions = %v", got)
	}
	evs := e.events("?operator=alice&device=lyon-1")
	if len(evs) != 1 || evs[0].Kind != wire.EventOperatorConnect || evs[0].Slave != "s1" || evs[0].Operator != "alice" {
		t.Errorf("events = %+v", evs)
	}

	for name, mutate := range map[string]func(*wire.Heartbeat){
		"sessions without operator user": func(h *wire.Heartbeat) { h.OperatorUser = "" },
		"operator user is tunnel user":   func(h *wire.Heartbeat) { h.OperatorUser = h.User },
		"bad operator user":              func(h *wire.Heartbeat) { h.OperatorUser = "-oProxy" },
		"bad operator name":              func(h *wire.Heartbeat) { h.Operators[0].Operator = "Alice\n" },
		"bad device":                     func(h *wire.Heartbeat) { h.Operators[0].Open[0].Device = "../x" },
		"bad event operator":             func(h *wire.Heartbeat) { h.Events[0].Operator = "x y" },
		"too many ports": func(h *wire.Heartbeat) {
			h.Operators[0].Open = make([]wire.OperatorAccess, maxOpenPerSession+1)
		},
	} {
		bad := hb
		bad.Operators = []wire.OperatorSession{hb.Operators[0]}
		bad.Operators[0].Open = append([]wire.OperatorAccess{}, hb.Operators[0].Open...)
		bad.Events = append([]wire.SlaveEvent{}, hb.Events...)
		mutate(&bad)
		if got := e.status("POST", "/slaves/s1/heartbeat", slaveTok, bad); got != http.StatusBadRequest {
			t.Errorf("%s: %d, want 400", name, got)
		}
	}
	// A dead slave's sessions are not live.
	e.clock.Advance(time.Minute)
	if live := e.srv.live.Operators(); len(live) != 0 {
		t.Errorf("after silence: %+v", live)
	}
}

func TestDashboardShowsOperatorAccess(t *testing.T) {
	e, _ := opFleet(t, nil)
	start := e.clock.Now()
	hb := heartbeatOf(100, wire.Tunnel{Device: "lyon-1", Forward: "ssh", Port: 20000})
	hb.OperatorUser = "mas4h-operator"
	hb.Events = []wire.SlaveEvent{
		{At: start, Kind: wire.EventOperatorConnect, Operator: "bob", Device: "lyon-1"},
		{At: start.Add(90 * time.Second), Kind: wire.EventOperatorDisconnect, Operator: "bob", Device: "lyon-1"},
		{At: start.Add(2 * time.Minute), Kind: wire.EventOperatorConnect, Operator: "alice", Device: "lyon-1"},
	}
	hb.Operators = []wire.OperatorSession{{Operator: "alice", Remote: "192.0.2.9:4000", Since: start.Add(2 * time.Minute),
		Open: []wire.OperatorAccess{{Device: "lyon-1", Forward: "ssh", Port: 20000}}}}
	e.clock.Advance(5 * time.Minute)
	e.beat("s1", hb)

	c := e.browser()
	login(t, c, e.ts.URL, adminTok, "/")
	_, body := get(t, c, e.ts.URL+"/")
	for _, want := range []string{`data-operator="alice"`, "192.0.2.9:4000", "lyon-1:ssh", "3m00s ago"} {
		if !strings.Contains(body, want) {
			t.Errorf("overview lacks %q", want)
		}
	}
	_, body = get(t, c, e.ts.URL+"/ui/devices/lyon-1")
	i, j := strings.Index(body, `id="access"`), strings.Index(body, `id="history"`)
	if i < 0 || j < i {
		t.Fatalf("no access section:\n%s", body)
	}
	access := body[i:j]
	for _, want := range []string{"alice", "connected now", "bob", "2025-06-01 12:00:00Z", "2025-06-01 12:01:30Z", "1m30s"} {
		if !strings.Contains(access, want) {
			t.Errorf("access section lacks %q:\n%s", want, access)
		}
	}
	if strings.Index(access, "alice") > strings.Index(access, "bob") {
		t.Errorf("access not newest first:\n%s", access)
	}
}
