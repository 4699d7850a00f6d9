package master

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gin-gonic/gin"
	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/names"
	"github.com/mas4h/mas4h/registry"
)

// Fuzz targets for every JSON body the master takes (slot requests,
// heartbeats, validations, device enrolment) and for the ?format=env answer that shell clients source. Each runs
// the real handlers over a real SQLite registry, in process. What holds
// for any body: the answer is never a 500 (a panic is one), an error is a
// JSON {"error": "…"} with a 4xx, and what is accepted is stored as the
// rules say. `make fuzz` runs them (scripts/fuzz.sh); `go test` runs their
// seeds.

// fuzzEnv is a master over a fresh registry that logs nothing (a fuzz
// function may not log through the *testing.F), with one slave and one
// enrolled device, whose authorized key it returns.
func fuzzEnv(f *testing.F) (*testEnv, string) {
	e := newEnv(f, func(c *Config) { c.Logger = slog.New(slog.DiscardHandler) })
	e.beat("s1", heartbeatOf(100))
	return e, e.enrol("pi1", "ssh=localhost:22", "web=192.168.1.10:80")
}

// serve answers one request in process.
func (e *testEnv) serve(method, path, token string, body []byte) *httptest.ResponseRecorder {
	req := httptest.NewRequest(method, wire.APIPrefix+path, bytes.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	e.srv.Handler().ServeHTTP(w, req)
	return w
}

// checkAnswer fails on a status outside allowed, and on an error answer
// that is not {"error": "…"}.
func checkAnswer(t *testing.T, w *httptest.ResponseRecorder, body []byte, allowed ...int) {
	t.Helper()
	ok := false
	for _, s := range allowed {
		ok = ok || w.Code == s
	}
	if !ok {
		t.Fatalf("answer %d %s to %q, want one of %v", w.Code, trunc(w.Body.String()), trunc(string(body)), allowed)
	}
	if w.Code >= 400 && !strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
		var e wire.Error
		dec := json.NewDecoder(bytes.NewReader(w.Body.Bytes()))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e); err != nil || e.Error == "" {
			t.Fatalf("error answer %d is not {\"error\": …}: %q (%v)", w.Code, trunc(w.Body.String()), err)
		}
	}
}

func jsonSeed(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// badBodies are seeds for every target: not JSON, not an object, trailing
// data, unknown fields, wrong types, deep nesting.
var badBodies = []string{"", "{", "[]", "null", `"x"`, "{}{}", `{"x":1}`, `{"public_key":1}`, "{} x",
	strings.Repeat("[", 10000), `{"public_key":"\u0000"}`, "\xff\xfe"}

func FuzzSlotRequest(f *testing.F) {
	e, ak := fuzzEnv(f)
	// Signed as the agent signs them (each seed once: a replay is a 403).
	f.Add(jsonSeed(e.signed(ak)), false)
	f.Add(jsonSeed(e.signed(ak)), true)
	f.Add(jsonSeed(wire.SlotRequest{PublicKey: ak}), false)
	f.Add(jsonSeed(wire.SlotRequest{PublicKey: ak + " comment\nssh-ed25519 AAAA"}), true)
	f.Add(jsonSeed(wire.SlotRequest{PublicKey: strings.Replace(ak, "AAAA", "AAAB", 1)}), false)
	f.Add(jsonSeed(wire.SlotRequest{PublicKey: "-----BEGIN OPENSSH PRIVATE KEY-----"}), false)
	for _, b := range badBodies {
		f.Add([]byte(b), false)
	}
	f.Fuzz(func(t *testing.T, body []byte, env bool) {
		path := "/slots"
		if env {
			path += "?format=env"
		}
		w := e.serve("POST", path, "", body)
		// 413: the body cap; 503: the one slave is full or silent.
		checkAnswer(t, w, body, http.StatusOK, http.StatusBadRequest, http.StatusForbidden,
			http.StatusRequestEntityTooLarge, http.StatusServiceUnavailable)
		if env {
			pairs, err := parseShAssignments(w.Body.String())
			if err != nil {
				t.Fatalf("?format=env answer does not parse as quoted assignments: %v\n%q", err, w.Body.String())
			}
			for _, p := range pairs {
				if !strings.HasPrefix(p[0], "MAS4H_") {
					t.Fatalf("?format=env sets %s", p[0])
				}
			}
			return
		}
		if w.Code == http.StatusOK {
			var s wire.Slot
			if err := json.Unmarshal(w.Body.Bytes(), &s); err != nil || s.Device != "pi1" || s.Slave != "s1" {
				t.Fatalf("slot %s for %q: %v", w.Body.String(), trunc(string(body)), err)
			}
		}
	})
}

func FuzzHeartbeat(f *testing.F) {
	e, _ := fuzzEnv(f)
	hb := heartbeatOf(10, wire.Tunnel{Device: "pi1", Forward: "ssh", Port: 20000, Remote: "198.51.100.7:5555",
		Since: time.Unix(1_700_000_000, 0), LastProbe: &wire.Probe{OK: true, At: time.Unix(1_700_000_000, 0), Detail: "ok"}})
	hb.Events = []wire.SlaveEvent{{Kind: "auth-deny", Detail: "unknown key"}, {Kind: "reap", Device: "pi1", Detail: "<script>"}}
	f.Add(jsonSeed(hb))
	vip := heartbeatOf(10)
	vip.VIP, vip.Node = "192.0.2.10", 2
	f.Add(jsonSeed(vip))
	for _, host := range []string{"-oProxyCommand=x", "a b", "host;id", "", "[::1]", "::1"} {
		h := heartbeatOf(10)
		h.Host = host
		f.Add(jsonSeed(h))
	}
	h := heartbeatOf(10)
	h.HostKeys = []string{`command="id" ` + hostKey}
	f.Add(jsonSeed(h))
	h = heartbeatOf(10)
	h.User = "root\nx"
	f.Add(jsonSeed(h))
	for _, b := range badBodies {
		f.Add([]byte(b))
	}
	kindRE := regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
	f.Fuzz(func(t *testing.T, body []byte) {
		last, _ := e.store.LastEventID(t.Context())
		w := e.serve("POST", "/slaves/s1/heartbeat", slaveTok, body)
		// 409: host keys other than those bound to s1 (under -fuzz, the
		// seeds carry the coordinator's host key, each worker binds its own).
		checkAnswer(t, w, body, http.StatusOK, http.StatusBadRequest, http.StatusConflict, http.StatusRequestEntityTooLarge)
		if w.Code != http.StatusOK {
			return
		}
		slaves, err := e.store.Slaves(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		for _, sl := range slaves {
			if sl.Name != "s1" {
				continue
			}
			// What devices will be told to dial and pin.
			if !validHost(sl.Host) || sl.Port < 1 || sl.Port > 65535 || !names.ValidUser(sl.User) || sl.Capacity < 1 {
				t.Fatalf("heartbeat %q stored slave %+v", trunc(string(body)), sl)
			}
			for _, k := range sl.HostKeys {
				if pk, err := registry.ParsePublicKey([]byte(k)); err != nil || registry.AuthorizedKey(pk) != k {
					t.Fatalf("stored host key %q is not a canonical public key", k)
				}
			}
		}
		evs, err := e.store.Events(t.Context(), registry.EventFilter{AfterID: last, Limit: 20000})
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range evs {
			if !kindRE.MatchString(ev.Kind) || len(ev.Detail) > 4096+len("…") {
				t.Fatalf("heartbeat %q stored event %+v", trunc(string(body)), ev)
			}
		}
	})
}

func FuzzValidate(f *testing.F) {
	e, ak := fuzzEnv(f)
	pk, _ := registry.ParsePublicKey([]byte(ak))
	fp := registry.Fingerprint(pk)
	f.Add(jsonSeed(wire.ValidateRequest{PublicKey: ak, Slave: "s1"}))
	f.Add(jsonSeed(wire.ValidateRequest{Fingerprint: fp}))
	f.Add(jsonSeed(wire.ValidateRequest{Fingerprint: fp, PublicKey: ak}))
	f.Add(jsonSeed(wire.ValidateRequest{Fingerprint: "SHA256:" + strings.Repeat("A", 43)}))
	f.Add(jsonSeed(wire.ValidateRequest{Fingerprint: "MD5:00"}))
	f.Add(jsonSeed(wire.ValidateRequest{PublicKey: ak, Slave: "../s1"}))
	for _, b := range badBodies {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		w := e.serve("POST", "/validate", slaveTok, body)
		checkAnswer(t, w, body, http.StatusOK, http.StatusBadRequest, http.StatusForbidden, http.StatusRequestEntityTooLarge)
		if w.Code != http.StatusOK {
			return
		}
		// Only the enrolled key is accepted, and the answer is about it.
		var v wire.Validation
		if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil || v.Device != "pi1" || v.Fingerprint != fp || v.PublicKey != ak ||
			v.Status != registry.StatusActive || len(v.Forwards) != 2 {
			t.Fatalf("validation %s for %q: %v", w.Body.String(), trunc(string(body)), err)
		}
	})
}

func FuzzAddDevice(f *testing.F) {
	e, ak := fuzzEnv(f)
	_, other := newKey(f)
	f.Add(jsonSeed(wire.AddDeviceRequest{Name: "pi2", PublicKey: other, Forwards: []string{"ssh=localhost:22", "web=[::1]:80,probe=http"}}))
	f.Add(jsonSeed(wire.AddDeviceRequest{Name: "pi1", PublicKey: other}))
	f.Add(jsonSeed(wire.AddDeviceRequest{Name: "pi3", PublicKey: ak}))
	f.Add(jsonSeed(wire.AddDeviceRequest{Name: "-rf", PublicKey: other}))
	f.Add(jsonSeed(wire.AddDeviceRequest{Name: "pi4", PublicKey: other, Forwards: []string{"x=localhost:22,probe=exec:/bin/sh"}}))
	f.Add(jsonSeed(wire.AddDeviceRequest{Name: "pi5", PublicKey: other, Forwards: []string{"ssh=localhost:22", "ssh=localhost:23"}}))
	for _, b := range badBodies {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		w := e.serve("POST", "/devices", adminTok, body)
		// 409: the name or key is taken; 507: the port range is full.
		checkAnswer(t, w, body, http.StatusCreated, http.StatusBadRequest, http.StatusConflict,
			http.StatusRequestEntityTooLarge, http.StatusInsufficientStorage)
		if w.Code != http.StatusCreated {
			return
		}
		var d wire.Device
		if err := json.Unmarshal(w.Body.Bytes(), &d); err != nil {
			t.Fatal(err)
		}
		if registry.ValidateDeviceName(d.Name) != nil || len(d.Forwards) == 0 {
			t.Fatalf("enrolled %+v from %q", d, trunc(string(body)))
		}
		stored, err := e.store.Device(t.Context(), d.Name)
		if err != nil || stored.Fingerprint != d.Fingerprint || len(stored.Forwards) != len(d.Forwards) {
			t.Fatalf("enrolled %+v, stored %+v, %v", d, stored, err)
		}
		for _, fw := range stored.Forwards {
			if _, err := registry.ParseForwardSpec(fw.Name + "=" + fw.Target + probeSuffix(fw.Probe)); err != nil {
				t.Fatalf("stored forward %+v does not parse again: %v", fw, err)
			}
		}
		// Keep the registry small: the next input may reuse the name.
		if err := e.store.Remove(t.Context(), d.Name); err != nil {
			t.Fatal(err)
		}
	})
}

func probeSuffix(p string) string {
	if p == "" {
		return ""
	}
	return ",probe=" + p
}

// FuzzSlotEnv: whatever a slot holds (names, hosts, host keys, targets:
// the registry and the slaves' heartbeats check them, but this does not
// lean on that), its ?format=env rendering is assignments of MAS4H_
// variables to single-quoted values that read back as exactly the values:
// nothing can leave its quotes and run in the client's shell.
func FuzzSlotEnv(f *testing.F) {
	f.Add("pi1", "s1", "127.0.0.1", 2222, "mas4h-tunnel", "ssh-ed25519 AAAA", "localhost:22", 20000)
	f.Add("it's", "'; id #", "$(id)", 1, "`id`", "a'b\nc", "x'\\''y", -1)
	f.Add("", "", "", 0, "", "", "", 0)
	f.Add("\n", "'\n'", "\\'", 65535, "\x00", "\r\n", "'''", 7)
	f.Fuzz(func(t *testing.T, device, slave, host string, port int, user, hostKey, target string, remote int) {
		slot := wire.Slot{Device: device, Slave: slave, Host: host, Port: port, User: user, HostKeys: []string{hostKey, hostKey + "'"},
			Forwards: []wire.Forward{{Name: "ssh", Target: target, RemotePort: remote}, {Name: "x", Target: target + "'", RemotePort: remote + 1}}}
		pairs := slotEnv(slot)
		gin.SetMode(gin.ReleaseMode)
		w := httptest.NewRecorder()
		c, _ := gin.CreateTestContext(w)
		writeEnv(c, http.StatusOK, pairs)
		got, err := parseShAssignments(w.Body.String())
		if err != nil {
			t.Fatalf("%v in %q", err, w.Body.String())
		}
		if fmt.Sprint(got) != fmt.Sprint(pairs) {
			t.Fatalf("read back %q, rendered %q", got, pairs)
		}
	})
}

var shNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// parseShAssignments reads what writeEnv writes as a POSIX shell reads
// it, but only the forms that cannot run anything: lines NAME=WORD where
// WORD is single-quoted strings (in which nothing is special, newlines
// included) and \' between them. Anything else outside quotes is an
// error: in a shell it could be an expansion, a separator, a command.
func parseShAssignments(s string) ([][2]string, error) {
	var out [][2]string
	for s != "" {
		eq := strings.IndexByte(s, '=')
		if eq < 0 || !shNameRE.MatchString(s[:eq]) {
			return nil, fmt.Errorf("not NAME= at %q", trunc(s))
		}
		name := s[:eq]
		s = s[eq+1:]
		var val strings.Builder
		quoted := false
	word:
		for {
			switch {
			case strings.HasPrefix(s, "'"):
				end := strings.IndexByte(s[1:], '\'')
				if end < 0 {
					return nil, errors.New("unterminated quote")
				}
				val.WriteString(s[1 : 1+end])
				s = s[2+end:]
				quoted = true
			case strings.HasPrefix(s, `\'`):
				val.WriteByte('\'')
				s = s[2:]
			case strings.HasPrefix(s, "\n"):
				s = s[1:]
				break word
			default:
				return nil, fmt.Errorf("unquoted %q in the value of %s", trunc(s), name)
			}
		}
		if !quoted {
			return nil, fmt.Errorf("value of %s is not quoted", name)
		}
		out = append(out, [2]string{name, val.String()})
	}
	return out, nil
}

// FuzzAddOperator: any POST /operators body is a 201 with an operator
// whose name and selectors follow the rules, or a 4xx that stores nothing.
func FuzzAddOperator(f *testing.F) {
	e, deviceKey := fuzzEnv(f)
	_, ak := newKey(f)
	f.Add(jsonSeed(wire.OperatorSpec{Name: "alice", PublicKey: ak, Allow: []string{"site=lyon", "pi-*"}}))
	f.Add(jsonSeed(wire.OperatorSpec{Name: "bob", PublicKey: deviceKey})) // a device's key: refused
	f.Add(jsonSeed(wire.OperatorSpec{Name: "carol", PublicKey: ak, Allow: []string{"site=", "=x", "[", "a=b=c", "-rf"}}))
	f.Add(jsonSeed(wire.OperatorSpec{Name: "../etc", PublicKey: ak}))
	for _, b := range badBodies {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		before, err := e.store.Operators(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		w := e.serve("POST", "/operators", adminTok, body)
		checkAnswer(t, w, body, http.StatusCreated, http.StatusBadRequest, http.StatusConflict, http.StatusRequestEntityTooLarge)
		if w.Code != http.StatusCreated {
			if after, _ := e.store.Operators(t.Context()); len(after) != len(before) {
				t.Fatalf("a refused body %q stored an operator", trunc(string(body)))
			}
			return
		}
		var op wire.Operator
		if err := json.Unmarshal(w.Body.Bytes(), &op); err != nil {
			t.Fatal(err)
		}
		if registry.ValidateOperatorName(op.Name) != nil {
			t.Fatalf("stored operator %+v from %q", op, trunc(string(body)))
		}
		for _, sel := range op.Allow {
			if _, err := registry.ParseSelector(sel); err != nil {
				t.Fatalf("stored selector %q does not parse again: %v", sel, err)
			}
		}
		if err := e.store.RemoveOperator(t.Context(), op.Name); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzAccess: any POST /access body is answered with one of the statuses
// the API names; a 200 is only ever for alice's signed request for a device
// her allow list (site=lyon) reaches.
func FuzzAccess(f *testing.F) {
	e, _ := fuzzEnv(f)
	_, lyon := newKey(f)
	e.want("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: "lyon-1", PublicKey: lyon, Labels: map[string]string{"site": "lyon"}}, http.StatusCreated, nil)
	hb := heartbeatOf(100, wire.Tunnel{Device: "lyon-1", Forward: "ssh", Port: 20001}, wire.Tunnel{Device: "pi1", Forward: "ssh", Port: 20000})
	hb.OperatorUser = "mas4h-operator"
	e.beat("s1", hb)
	_, alice := newKey(f)
	e.want("POST", "/operators", adminTok, wire.OperatorSpec{Name: "alice", PublicKey: alice, Allow: []string{"site=lyon"}}, http.StatusCreated, nil)
	lyonDev, err := e.store.Device(f.Context(), "lyon-1")
	if err != nil {
		f.Fatal(err)
	}
	lyonPort := lyonDev.Forwards[0].RemotePort
	s, _ := signers.Load(alice)
	sign := func(device, forward string) wire.AccessRequest {
		req, err := client.SignAccessRequest(s.(ssh.Signer), e.ts.URL, e.clock.Now(), device, forward)
		if err != nil {
			f.Fatal(err)
		}
		return req
	}
	f.Add(jsonSeed(sign("lyon-1", "")))
	f.Add(jsonSeed(sign("pi1", "ssh"))) // not on her allow list
	f.Add(jsonSeed(sign("lyon-1", "web")))
	bad := sign("lyon-1", "")
	bad.Device = "pi1" // re-targeted after signing
	f.Add(jsonSeed(bad))
	for _, b := range badBodies {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		w := e.serve("POST", "/access", "", body)
		checkAnswer(t, w, body, http.StatusOK, http.StatusBadRequest, http.StatusForbidden, http.StatusNotFound,
			http.StatusConflict, http.StatusTooManyRequests, http.StatusRequestEntityTooLarge, http.StatusServiceUnavailable)
		if w.Code != http.StatusOK {
			return
		}
		var a wire.Access
		if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil {
			t.Fatal(err)
		}
		if a.Operator != "alice" || a.Device != "lyon-1" || a.RemotePort != lyonPort {
			t.Fatalf("access %+v for %q", a, trunc(string(body)))
		}
	})
}
