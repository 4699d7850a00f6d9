package master

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

func TestHealthzAndUnknownRoutes(t *testing.T) {
	e := newEnv(t, nil)
	var h wire.Health
	e.want("GET", "/healthz", "", nil, http.StatusOK, &h)
	if h.Status != "ok" {
		t.Errorf("healthz = %+v", h)
	}
	var we wire.Error
	e.want("GET", "/nope", adminTok, nil, http.StatusNotFound, &we)
	if we.Error == "" {
		t.Error("404 without a JSON error")
	}
	e.want("PUT", "/devices", adminTok, nil, http.StatusMethodNotAllowed, &we)
	// Metrics are served at the root (/metrics), not under the API prefix.
	resp, _ := e.do("GET", "/metrics", "", nil)
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET %s/metrics = %d, want 404", wire.APIPrefix, resp.StatusCode)
	}
}

func TestAuth(t *testing.T) {
	e := newEnv(t, nil)
	admin := [][2]string{{"GET", "/status"}, {"GET", "/devices"}, {"POST", "/devices"}, {"GET", "/devices/x"},
		{"DELETE", "/devices/x"}, {"POST", "/devices/x/revoke"}, {"GET", "/tunnels"}, {"GET", "/events"}}
	slave := [][2]string{{"POST", "/slaves/s1/heartbeat"}, {"POST", "/validate"}}
	check := func(ep [2]string, token string, want int) {
		t.Helper()
		resp, data := e.do(ep[0], ep[1], token, "{}")
		if resp.StatusCode != want {
			t.Errorf("%s %s with token %q = %d %s, want %d", ep[0], ep[1], token, resp.StatusCode, data, want)
		}
		var we wire.Error
		if json.Unmarshal(data, &we) != nil || we.Error == "" {
			t.Errorf("%s %s: body %s is not {\"error\": ...}", ep[0], ep[1], data)
		}
		if want == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("%s %s: 401 without WWW-Authenticate", ep[0], ep[1])
		}
	}
	for _, ep := range admin {
		check(ep, "", http.StatusUnauthorized)
		check(ep, "wrong-token-0123456789", http.StatusUnauthorized)
		check(ep, slaveTok, http.StatusForbidden)
	}
	for _, ep := range slave {
		check(ep, "", http.StatusUnauthorized)
		check(ep, adminTok+"x", http.StatusUnauthorized)
		check(ep, adminTok, http.StatusForbidden)
	}
	// Not a bearer scheme.
	req, _ := http.NewRequest("GET", e.ts.URL+wire.APIPrefix+"/status", nil)
	req.Header.Set("Authorization", "Basic "+adminTok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("Basic auth = %d, want 401", resp.StatusCode)
	}
	e.want("GET", "/status", adminTok, nil, http.StatusOK, nil)
}

func TestBadBodies(t *testing.T) {
	e := newEnv(t, nil)
	_, ak := newKey(t)
	eps := []struct{ path, token string }{
		{"/slots", ""}, {"/devices", adminTok}, {"/validate", slaveTok}, {"/slaves/s1/heartbeat", slaveTok},
	}
	big := `{"public_key": "` + strings.Repeat("A", MaxHeartbeatBody+1) + `"}`
	for _, ep := range eps {
		cases := []struct {
			name string
			body string
			want int
		}{
			{"malformed JSON", `{"public_key": `, http.StatusBadRequest},
			{"not an object", `["x"]`, http.StatusBadRequest},
			{"empty body", ``, http.StatusBadRequest},
			{"unknown field", `{"public_key": "` + ak + `", "admin": true}`, http.StatusBadRequest},
			{"trailing data", `{} {}`, http.StatusBadRequest},
			{"oversized", big, http.StatusRequestEntityTooLarge},
		}
		for _, tc := range cases {
			resp, data := e.do("POST", ep.path, ep.token, tc.body)
			if resp.StatusCode != tc.want {
				t.Errorf("%s, %s: %d %.200s, want %d", ep.path, tc.name, resp.StatusCode, data, tc.want)
			}
			var we wire.Error
			if json.Unmarshal(data, &we) != nil || we.Error == "" {
				t.Errorf("%s, %s: body %.200s is not {\"error\": ...}", ep.path, tc.name, data)
			}
		}
	}
	// 64 KiB is the cap for everything but heartbeats.
	over := `{"public_key": "` + strings.Repeat("A", MaxBody) + `"}`
	for _, ep := range eps[:3] {
		resp, _ := e.do("POST", ep.path, ep.token, over)
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("%s with a %d-byte body = %d, want 413", ep.path, len(over), resp.StatusCode)
		}
	}
	// Nothing was written by any of it.
	devs, _ := e.store.Devices(context.Background())
	if len(devs) != 0 {
		t.Errorf("bad requests enrolled %d devices", len(devs))
	}
}

func TestGarbagePublicKey(t *testing.T) {
	e := newEnv(t, nil)
	for _, k := range []string{"garbage", "ssh-ed25519 !!!notbase64", "-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n-----END OPENSSH PRIVATE KEY-----", "ssh-dss AAAAB3NzaC1kc3M="} {
		for _, ep := range []struct {
			path, token string
			body        any
		}{
			{"/slots", "", wire.SlotRequest{PublicKey: k}},
			{"/slots?format=env", "", wire.SlotRequest{PublicKey: k}},
			{"/devices", adminTok, wire.AddDeviceRequest{Name: "d1", PublicKey: k}},
			{"/validate", slaveTok, wire.ValidateRequest{PublicKey: k}},
		} {
			resp, data := e.do("POST", ep.path, ep.token, ep.body)
			if resp.StatusCode != http.StatusBadRequest {
				t.Errorf("%s with key %.20q = %d %s, want 400", ep.path, k, resp.StatusCode, data)
			}
			if strings.Contains(string(data), "PRIVATE KEY") && strings.Contains(string(data), "xx") {
				t.Errorf("%s echoed key material: %s", ep.path, data)
			}
		}
	}
}

func TestSlotUnknownAndRevokedKeysLookAlike(t *testing.T) {
	e := newEnv(t, nil)
	e.beat("s1", heartbeatOf(10))
	ak := e.enrol("d1")
	e.want("POST", "/devices/d1/revoke", adminTok, nil, http.StatusOK, nil)
	_, stranger := newKey(t)

	respR, bodyR := e.do("POST", "/slots", "", e.signed(ak))
	respU, bodyU := e.do("POST", "/slots", "", e.signed(stranger))
	if respR.StatusCode != http.StatusForbidden || respU.StatusCode != http.StatusForbidden {
		t.Fatalf("revoked = %d, unknown = %d; want 403 both", respR.StatusCode, respU.StatusCode)
	}
	if string(bodyR) != string(bodyU) {
		t.Errorf("revoked and unknown keys are told apart:\n%s\n%s", bodyR, bodyU)
	}
	if !strings.Contains(string(bodyR), "key not accepted") {
		t.Errorf("403 body = %s", bodyR)
	}
	denies := e.events("?kind=deny")
	if len(denies) != 2 || denies[0].Device != "d1" || !strings.Contains(denies[0].Detail, "revoked") ||
		!strings.Contains(denies[1].Detail, "not enrolled") {
		t.Errorf("deny events = %+v", denies)
	}
}

func TestSlotNoLiveSlave(t *testing.T) {
	e := newEnv(t, nil)
	ak := e.enrol("d1")
	for _, q := range []string{"", "?format=env"} {
		resp, data := e.do("POST", "/slots"+q, "", e.signed(ak))
		if resp.StatusCode != http.StatusServiceUnavailable {
			t.Fatalf("slot%s with no slave = %d %s, want 503", q, resp.StatusCode, data)
		}
		ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if err != nil || ra < 5 || ra > 15 {
			t.Errorf("Retry-After = %q, want 5-15 seconds", resp.Header.Get("Retry-After"))
		}
		if q != "" && (!strings.Contains(string(data), "MAS4H_ERROR='") || !strings.Contains(string(data), "MAS4H_RETRY_AFTER='")) {
			t.Errorf("env error = %s", data)
		}
	}
}

func TestSlotRateLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.SlotRate, c.SlotBurst = 0.5, 3 })
	e.beat("s1", heartbeatOf(10))
	ak := e.enrol("d1")
	for i := range 3 {
		resp, data := e.do("POST", "/slots", "", e.signed(ak))
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("slot %d = %d %s", i+1, resp.StatusCode, data)
		}
	}
	resp, data := e.do("POST", "/slots", "", e.signed(ak))
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("4th slot = %d %s, want 429", resp.StatusCode, data)
	}
	if ra, _ := strconv.Atoi(resp.Header.Get("Retry-After")); ra < 1 || ra > 2 {
		t.Errorf("Retry-After = %q, want 2 s for 0.5/s", resp.Header.Get("Retry-After"))
	}
	// Tokens come back with time (the fake clock's).
	e.clock.Advance(2 * time.Second)
	e.want("POST", "/slots", "", e.signed(ak), http.StatusOK, nil)
	// Other endpoints are not limited.
	e.want("GET", "/healthz", "", nil, http.StatusOK, nil)
}

func TestSlotEnvFormatParsesInSh(t *testing.T) {
	e := newEnv(t, nil)
	e.beat("s1", heartbeatOf(10))
	ak := e.enrol("d1", "ssh=localhost:22", "web=127.0.0.1:80")
	resp, data := e.do("POST", "/slots?format=env", "", e.signed(ak))
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("slot = %d %s", resp.StatusCode, data)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "slot.env"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", "-c", `. ./slot.env; printf '%s|%s|%s|%s|%s|%s|%s|%s\n' "$MAS4H_DEVICE" "$MAS4H_SLAVE" "$MAS4H_HOST" "$MAS4H_PORT" "$MAS4H_USER" "$MAS4H_HOST_KEY_COUNT" "$MAS4H_HOST_KEY_1" "$MAS4H_FORWARDS"`)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("sh: %v: %s\n%s", err, out, data)
	}
	want := "d1|s1|127.0.0.1|2222|mas4h-tunnel|1|" + hostKey + "|20000:localhost:22 20001:127.0.0.1:80\n"
	if string(out) != want {
		t.Errorf("sourced env:\n got %q\nwant %q", out, want)
	}
	out, err = exec.Command("sh", "-c", `cd "$1" && . ./slot.env; echo $MAS4H_PORT`, "sh", dir).Output()
	if err != nil || strings.TrimSpace(string(out)) != "2222" {
		t.Errorf("echo $MAS4H_PORT = %q, %v", out, err)
	}

	// An error in env format parses too.
	_, stranger := newKey(t)
	resp, data = e.do("POST", "/slots?format=env", "", e.signed(stranger))
	if resp.StatusCode != http.StatusForbidden || string(data) != "MAS4H_ERROR='key not accepted'\n" {
		t.Errorf("env refusal = %d %q", resp.StatusCode, data)
	}
	e.want("POST", "/slots?format=yaml", "", e.signed(ak), http.StatusBadRequest, nil)
}

func TestShQuoteSurvivesHostileValues(t *testing.T) {
	for _, v := range []string{"", "plain", "it's", `'; rm -rf / #`, `$(id) ${HOME} "x" \n`, "a'b'c''"} {
		out, err := exec.Command("sh", "-c", "X="+shQuote(v)+"; printf %s \"$X\"").Output()
		if err != nil || string(out) != v {
			t.Errorf("shQuote(%q) read back as %q, %v", v, out, err)
		}
	}
}

func TestDispatchSpreadsTenDevicesOverTwoSlaves(t *testing.T) {
	e := newEnv(t, nil)
	e.beat("s1", heartbeatOf(2000))
	e.beat("s2", heartbeatOf(2000))
	count := map[string]int{}
	for i := range 10 {
		ak := e.enrol(fmt.Sprintf("d%d", i))
		s := e.slot(ak)
		count[s.Slave]++
		if s.Device != fmt.Sprintf("d%d", i) || s.Host != "127.0.0.1" || s.Port != 2222 || s.User != "mas4h-tunnel" ||
			len(s.HostKeys) != 1 || len(s.Forwards) != 1 || s.Forwards[0].Target != "localhost:22" {
			t.Errorf("slot = %+v", s)
		}
	}
	if count["s1"] != 5 || count["s2"] != 5 {
		t.Errorf("spread = %v, want 5/5", count)
	}
	var d wire.Device
	e.want("GET", "/devices/d0", adminTok, nil, http.StatusOK, &d)
	if d.Slave != "s1" {
		t.Errorf("d0's slave = %q, want s1", d.Slave)
	}
	slots := e.events("?kind=slot&device=d0")
	if len(slots) != 1 || slots[0].Detail != "granted slave s1" || slots[0].Slave != "s1" {
		t.Errorf("slot events = %+v", slots)
	}
}

func TestDispatchIsSticky(t *testing.T) {
	e := newEnv(t, nil)
	tun := func(dev string, port int) wire.Tunnel {
		return wire.Tunnel{Device: dev, Forward: "ssh", Port: port, Remote: "127.0.0.1:5000", Since: e.clock.Now()}
	}
	e.beat("s1", heartbeatOf(20))
	e.beat("s2", heartbeatOf(20))
	ak := e.enrol("d1")
	if s := e.slot(ak); s.Slave != "s1" {
		t.Fatalf("first slot on %s, want s1 (tie by name)", s.Slave)
	}
	// d1 is up on s1 (load 5%, s2 0%): it comes back to s1.
	e.beat("s1", heartbeatOf(20, tun("d1", 20000)))
	e.beat("s2", heartbeatOf(20))
	if s := e.slot(ak); s.Slave != "s1" {
		t.Errorf("within 10 points: slot on %s, want s1 (sticky)", s.Slave)
	}
	// s1 now 15% busier than s2: d1 moves.
	e.beat("s1", heartbeatOf(20, tun("d1", 20000), tun("x1", 20100), tun("x2", 20101)))
	if s := e.slot(ak); s.Slave != "s2" {
		t.Errorf("15 points busier: slot on %s, want s2", s.Slave)
	}
	// And sticks to s2 from now on.
	e.beat("s2", heartbeatOf(20, tun("d1", 20000)))
	if s := e.slot(ak); s.Slave != "s2" {
		t.Errorf("after moving: slot on %s, want s2", s.Slave)
	}
}

func TestHeartbeatDeliversRevocations(t *testing.T) {
	e := newEnv(t, nil)
	e.enrol("d1", "ssh=localhost:22", "web=localhost:80")
	e.enrol("d2")
	e.want("POST", "/devices/d2/revoke", adminTok, nil, http.StatusOK, nil)

	// A fresh slave has nothing cached: it gets the current seq, no list.
	r := e.beat("s1", heartbeatOf(10))
	if len(r.Revocations) != 0 || r.Seq != 2 {
		t.Fatalf("fresh slave's reply = %+v, want seq 2 (d2's revocation) and no revocations", r)
	}
	if r.IntervalSeconds != 5 || r.CacheTTLSeconds != 300 {
		t.Errorf("interval %v, ttl %d; want 5, 300", r.IntervalSeconds, r.CacheTTLSeconds)
	}
	seq := r.Seq
	hb := heartbeatOf(10)
	hb.Seq = seq
	if r := e.beat("s1", hb); len(r.Revocations) != 0 || r.Seq != seq {
		t.Fatalf("no news: %+v", r)
	}

	var d1 wire.Device
	e.want("POST", "/devices/d1/revoke", adminTok, nil, http.StatusOK, &d1)
	r = e.beat("s1", hb)
	if len(r.Revocations) != 1 {
		t.Fatalf("after revoke: %+v", r)
	}
	rv := r.Revocations[0]
	if rv.Device != "d1" || rv.Reason != "revoked" || rv.Fingerprint != d1.Fingerprint ||
		fmt.Sprint(rv.Ports) != "[20000 20001]" || r.Seq != rv.Seq || rv.Seq <= seq {
		t.Errorf("revocation = %+v, seq %d", rv, r.Seq)
	}
	// Until the slave says it applied it, it is sent again.
	if again := e.beat("s1", hb); len(again.Revocations) != 1 {
		t.Errorf("same seq again: %+v", again)
	}

	// rm: the device row is gone, the ports still travel.
	e.want("DELETE", "/devices/d1", adminTok, nil, http.StatusOK, nil)
	hb.Seq = r.Seq
	r = e.beat("s1", hb)
	if len(r.Revocations) != 1 || r.Revocations[0].Reason != "removed" || fmt.Sprint(r.Revocations[0].Ports) != "[20000 20001]" {
		t.Errorf("after rm: %+v", r)
	}

	// A slave ahead of the master (registry replaced) restarts from now.
	hb.Seq = 999
	if r := e.beat("s1", hb); r.Seq != 4 || len(r.Revocations) != 0 {
		t.Errorf("seq ahead: %+v, want seq 4", r)
	}
}

// A slave that joined an empty registry follows from the empty log's
// number (never 0, which means "fresh") and so hears of the first revocation.
func TestFirstRevocationReachesSlaveOfEmptyRegistry(t *testing.T) {
	e := newEnv(t, nil)
	r := e.beat("s1", heartbeatOf(10))
	if r.Seq == 0 {
		t.Fatalf("fresh slave told seq 0, which it would send back as 'fresh' forever")
	}
	e.enrol("d1")
	e.want("POST", "/devices/d1/revoke", adminTok, nil, http.StatusOK, nil)
	hb := heartbeatOf(10)
	hb.Seq = r.Seq
	if r := e.beat("s1", hb); len(r.Revocations) != 1 || r.Revocations[0].Device != "d1" {
		t.Errorf("first revocation: %+v", r)
	}
}

func TestSlaveDeadAfterThreeIntervals(t *testing.T) {
	e := newEnv(t, nil)
	ak := e.enrol("d1")
	e.beat("s1", heartbeatOf(10))
	if up := e.events("?kind=slave-up"); len(up) != 1 || up[0].Slave != "s1" || !strings.Contains(up[0].Detail, "registered") {
		t.Errorf("slave-up events = %+v", up)
	}
	ctx := context.Background()

	e.clock.Advance(15 * time.Second) // exactly three intervals: still live
	e.srv.checkSlaves(ctx)
	e.slot(ak)
	e.clock.Advance(time.Second)
	e.srv.checkSlaves(ctx)
	e.srv.checkSlaves(ctx) // idempotent
	down := e.events("?kind=slave-down")
	if len(down) != 1 || down[0].Slave != "s1" || !strings.Contains(down[0].Detail, "missed 3 heartbeats") {
		t.Fatalf("slave-down events = %+v", down)
	}
	resp, _ := e.do("POST", "/slots", "", e.signed(ak))
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("slot with the only slave dead = %d, want 503", resp.StatusCode)
	}
	var st wire.Status
	e.want("GET", "/status", adminTok, nil, http.StatusOK, &st)
	if len(st.Slaves) != 1 || st.Slaves[0].Alive {
		t.Errorf("status = %+v", st)
	}

	e.beat("s1", heartbeatOf(10))
	up := e.events("?kind=slave-up")
	if len(up) != 2 || !strings.Contains(up[1].Detail, "is back") {
		t.Errorf("slave-up events after return = %+v", up)
	}
	e.slot(ak)
}

func TestLivenessLoopMarksDeadInRealTime(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.HeartbeatInterval = 50 * time.Millisecond; c.Now = time.Now })
	e.beat("s1", heartbeatOf(10))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- e.srv.Serve(ctx, ln) }()
	deadline := time.Now().Add(3 * time.Second)
	for len(e.events("?kind=slave-down")) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("slave not marked dead within 3 s at a 50 ms interval")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Serve answers on its listener, and stops cleanly on cancel.
	resp, err := http.Get("http://" + ln.Addr().String() + wire.APIPrefix + "/healthz")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz over Serve: %v %v", resp, err)
	}
	resp.Body.Close()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve after cancel = %v, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
}

func TestRestartedMasterDispatchesAtOnce(t *testing.T) {
	e := newEnv(t, nil)
	ak := e.enrol("d1")
	e.beat("s1", heartbeatOf(10, wire.Tunnel{Device: "x", Forward: "ssh", Port: 20100}))
	e.clock.Advance(2 * time.Second)
	// A new Server on the same registry: no heartbeat yet.
	e2 := newEnvOn(t, e.store, e.clock, nil)
	if s := e2.slot(ak); s.Slave != "s1" || len(s.HostKeys) != 1 {
		t.Errorf("slot after restart = %+v", s)
	}
	var st wire.Status
	e2.want("GET", "/status", adminTok, nil, http.StatusOK, &st)
	if len(st.Slaves) != 1 || !st.Slaves[0].Alive || st.Slaves[0].Tunnels != 1 {
		t.Errorf("status after restart = %+v", st)
	}
}

func TestHeartbeatValidation(t *testing.T) {
	e := newEnv(t, nil)
	bad := []func(*wire.Heartbeat){
		func(h *wire.Heartbeat) { h.Host = "" },
		func(h *wire.Heartbeat) { h.Host = "-oProxyCommand=x" },
		func(h *wire.Heartbeat) { h.Port = 0 },
		func(h *wire.Heartbeat) { h.User = "root; rm" },
		func(h *wire.Heartbeat) { h.Capacity = 0 },
		func(h *wire.Heartbeat) { h.HostKeys = []string{"garbage"} },
		func(h *wire.Heartbeat) { h.Events = []wire.SlaveEvent{{Kind: "Bad Kind"}} },
		func(h *wire.Heartbeat) { h.Tunnels = []wire.Tunnel{{Device: "", Port: 1}} },
	}
	for i, mut := range bad {
		hb := heartbeatOf(10)
		mut(&hb)
		resp, data := e.do("POST", "/slaves/s1/heartbeat", slaveTok, hb)
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("bad heartbeat %d = %d %s, want 400", i, resp.StatusCode, data)
		}
	}
	resp, _ := e.do("POST", "/slaves/Bad..Name!/heartbeat", slaveTok, heartbeatOf(10))
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("bad slave name = %d, want 400", resp.StatusCode)
	}
	var st wire.Status
	e.want("GET", "/status", adminTok, nil, http.StatusOK, &st)
	if len(st.Slaves) != 0 {
		t.Errorf("refused heartbeats registered slaves: %+v", st.Slaves)
	}
}

func TestTunnelsStatusAndSlaveEvents(t *testing.T) {
	e := newEnv(t, nil)
	e.enrol("d1")
	e.enrol("d2")
	now := e.clock.Now()
	hb := heartbeatOf(4,
		wire.Tunnel{Device: "d1", Forward: "ssh", Port: 20000, Remote: "192.0.2.7:50000", Since: now,
			LastProbe: &wire.Probe{OK: true, At: now, Detail: "SSH-2.0-OpenSSH_9.2"}},
		wire.Tunnel{Device: "d2", Forward: "ssh", Port: 20001, Remote: "192.0.2.8:50000", Since: now})
	hb.CPU, hb.MemUsed = 12.5, 40
	hb.Events = []wire.SlaveEvent{{At: now.Add(-time.Second), Kind: "connect", Device: "d1", Detail: "session from 192.0.2.7"}}
	e.beat("s1", hb)
	e.beat("s2", heartbeatOf(4))

	var ts []wire.Tunnel
	e.want("GET", "/tunnels", adminTok, nil, http.StatusOK, &ts)
	if len(ts) != 2 || ts[0].Device != "d1" || ts[0].Slave != "s1" || ts[0].Port != 20000 || ts[0].Remote != "192.0.2.7:50000" ||
		ts[0].LastProbe == nil || !ts[0].LastProbe.OK || ts[1].LastProbe != nil || !ts[0].Since.Equal(now) {
		t.Errorf("tunnels = %+v", ts)
	}
	var st wire.Status
	e.want("GET", "/status", adminTok, nil, http.StatusOK, &st)
	if len(st.Slaves) != 2 {
		t.Fatalf("status = %+v", st)
	}
	s1 := st.Slaves[0]
	if s1.Name != "s1" || !s1.Alive || s1.Tunnels != 2 || s1.Capacity != 4 || s1.Load != 0.5 || s1.CPU != 12.5 || s1.MemUsed != 40 ||
		s1.Host != "127.0.0.1" || s1.Port != 2222 || !s1.LastSeen.Equal(now) {
		t.Errorf("s1 status = %+v", s1)
	}
	if st.Devices != (wire.DeviceCounts{Total: 2, Active: 2, Online: 2}) {
		t.Errorf("device counts = %+v", st.Devices)
	}
	conn := e.events("?kind=connect")
	if len(conn) != 1 || conn[0].Slave != "s1" || conn[0].Device != "d1" || !strings.Contains(conn[0].Detail, "slave s1") ||
		!conn[0].At.Equal(now.Add(-time.Second)) {
		t.Errorf("slave-reported events = %+v", conn)
	}

	// The next heartbeat replaces the tunnel list.
	e.beat("s1", heartbeatOf(4))
	e.want("GET", "/tunnels", adminTok, nil, http.StatusOK, &ts)
	if len(ts) != 0 {
		t.Errorf("tunnels after an empty heartbeat = %+v", ts)
	}
	// A dead slave's tunnels are not listed.
	e.beat("s1", hb)
	e.clock.Advance(16 * time.Second)
	e.beat("s2", heartbeatOf(4))
	e.srv.checkSlaves(context.Background())
	e.want("GET", "/tunnels", adminTok, nil, http.StatusOK, &ts)
	if len(ts) != 0 {
		t.Errorf("tunnels of a dead slave listed: %+v", ts)
	}
}

func TestValidate(t *testing.T) {
	e := newEnv(t, nil)
	ak := e.enrol("d1", "ssh=localhost:22", "web=localhost:80")
	var v wire.Validation
	e.want("POST", "/validate", slaveTok, wire.ValidateRequest{PublicKey: ak, Slave: "s1"}, http.StatusOK, &v)
	if v.Device != "d1" || v.Status != "active" || v.PublicKey != ak || len(v.Forwards) != 2 || v.TTLSeconds != 300 ||
		v.Forwards[1].RemotePort != 20001 || !strings.HasPrefix(v.Fingerprint, "SHA256:") {
		t.Errorf("validation = %+v", v)
	}
	var byFP wire.Validation
	e.want("POST", "/validate", slaveTok, wire.ValidateRequest{Fingerprint: v.Fingerprint}, http.StatusOK, &byFP)
	if byFP.Device != "d1" {
		t.Errorf("by fingerprint = %+v", byFP)
	}
	_, stranger := newKey(t)
	e.want("POST", "/validate", slaveTok, wire.ValidateRequest{PublicKey: stranger, Slave: "s1"}, http.StatusForbidden, nil)
	e.want("POST", "/validate", slaveTok, wire.ValidateRequest{Fingerprint: "SHA256:nope"}, http.StatusForbidden, nil)
	e.want("POST", "/validate", slaveTok, wire.ValidateRequest{}, http.StatusBadRequest, nil)
	var we wire.Error
	e.want("POST", "/validate", slaveTok, wire.ValidateRequest{PublicKey: ak, Slave: "../s1"}, http.StatusBadRequest, &we)
	if !strings.HasPrefix(we.Error, "slave: slave name must be") {
		t.Errorf("bad slave name: %q", we.Error)
	}
	e.want("POST", "/validate", slaveTok, wire.ValidateRequest{PublicKey: ak, Fingerprint: v.Fingerprint}, http.StatusBadRequest, nil)
	e.want("POST", "/devices/d1/revoke", adminTok, nil, http.StatusOK, nil)
	e.want("POST", "/validate", slaveTok, wire.ValidateRequest{PublicKey: ak}, http.StatusForbidden, nil)
	denies := e.events("?kind=deny")
	if len(denies) != 3 || denies[0].Slave != "s1" || !strings.HasPrefix(denies[0].Detail, "validation refused") || denies[2].Device != "d1" {
		t.Errorf("deny events = %+v", denies)
	}

	e2 := newEnv(t, func(c *Config) { c.CacheTTL = time.Minute })
	ak2 := e2.enrol("d2")
	e2.want("POST", "/validate", slaveTok, wire.ValidateRequest{PublicKey: ak2}, http.StatusOK, &v)
	if v.TTLSeconds != 60 {
		t.Errorf("ttl = %d, want 60", v.TTLSeconds)
	}
}

func TestDevicesEndpoints(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.PortRange = registry.PortRange{Lo: 30000, Hi: 30002} })
	_, ak := newKey(t)
	var d wire.Device
	e.want("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: "pi-1", PublicKey: ak, Forwards: []string{"ssh=localhost:22", "web=192.168.1.10:80,probe=http"}}, http.StatusCreated, &d)
	if d.Name != "pi-1" || d.Status != "active" || len(d.Forwards) != 2 || d.Forwards[0].RemotePort != 30000 ||
		d.Forwards[1].Probe != "http" || d.PublicKey != ak {
		t.Errorf("added = %+v", d)
	}
	// The JSON shape of DESIGN.md.
	raw := e.want("GET", "/devices/pi-1", adminTok, nil, http.StatusOK, nil)
	var m map[string]any
	json.Unmarshal(raw, &m)
	for _, k := range []string{"name", "fingerprint", "status", "forwards"} {
		if _, ok := m[k]; !ok {
			t.Errorf("device JSON lacks %q: %s", k, raw)
		}
	}
	fw := m["forwards"].([]any)[0].(map[string]any)
	for _, k := range []string{"name", "target", "remote_port"} {
		if _, ok := fw[k]; !ok {
			t.Errorf("forward JSON lacks %q: %s", k, raw)
		}
	}

	// A retry of the same enrolment (its first answer lost) is answered
	// with the same device, 200; the same name otherwise is a conflict.
	var again wire.Device
	e.want("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: "pi-1", PublicKey: ak, Forwards: []string{"ssh=localhost:22", "web=192.168.1.10:80,probe=http"}}, http.StatusOK, &again)
	if again.Fingerprint != d.Fingerprint || again.Forwards[1].RemotePort != d.Forwards[1].RemotePort {
		t.Errorf("the retried enrolment = %+v, want %+v", again, d)
	}
	e.want("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: "pi-1", PublicKey: ak}, http.StatusConflict, nil)
	_, ak2 := newKey(t)
	e.want("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: "pi-1", PublicKey: ak2}, http.StatusConflict, nil)
	e.want("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: "pi-2", PublicKey: ak}, http.StatusConflict, nil)
	e.want("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: "Bad Name", PublicKey: ak2}, http.StatusBadRequest, nil)
	e.want("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: "pi-2", PublicKey: ak2, Forwards: []string{"ssh=nohost"}}, http.StatusBadRequest, nil)
	e.want("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: "pi-2"}, http.StatusBadRequest, nil)
	e.want("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: "pi-2", PublicKey: ak2}, http.StatusCreated, nil)
	var we wire.Error
	_, ak3 := newKey(t)
	e.want("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: "pi-3", PublicKey: ak3}, http.StatusInsufficientStorage, &we)
	if !strings.Contains(we.Error, "port range") {
		t.Errorf("range full error = %q", we.Error)
	}

	var list []wire.Device
	e.want("GET", "/devices", adminTok, nil, http.StatusOK, &list)
	if len(list) != 2 || list[0].Name != "pi-1" || list[1].Name != "pi-2" {
		t.Errorf("list = %+v", list)
	}
	e.want("GET", "/devices/nope", adminTok, nil, http.StatusNotFound, &we)
	e.want("POST", "/devices/nope/revoke", adminTok, nil, http.StatusNotFound, nil)
	e.want("DELETE", "/devices/nope", adminTok, nil, http.StatusNotFound, nil)
	e.want("POST", "/devices/pi-1/revoke", adminTok, nil, http.StatusOK, &d)
	if d.Status != "revoked" {
		t.Errorf("revoked = %+v", d)
	}
	var rm wire.Removed
	e.want("DELETE", "/devices/pi-1", adminTok, nil, http.StatusOK, &rm)
	if rm.Removed != "pi-1" {
		t.Errorf("removed = %+v", rm)
	}
	e.want("GET", "/devices/pi-1", adminTok, nil, http.StatusNotFound, nil)
	e.want("GET", "/devices", adminTok, nil, http.StatusOK, &list)
	if len(list) != 1 {
		t.Errorf("list after rm = %+v", list)
	}
	// An empty registry lists [], not null.
	e2 := newEnv(t, nil)
	if raw := e2.want("GET", "/devices", adminTok, nil, http.StatusOK, nil); strings.TrimSpace(string(raw)) != "[]" {
		t.Errorf("empty list = %s", raw)
	}
}

func TestEventsFilters(t *testing.T) {
	e := newEnv(t, nil)
	e.enrol("d1")
	e.enrol("d2")
	e.want("POST", "/devices/d1/revoke", adminTok, nil, http.StatusOK, nil)
	all := e.events("")
	if len(all) != 3 {
		t.Fatalf("events = %+v", all)
	}
	if d1 := e.events("?device=d1"); len(d1) != 2 || d1[1].Kind != "revoke" {
		t.Errorf("device=d1: %+v", d1)
	}
	if after := e.events("?after_id=" + strconv.FormatInt(all[0].ID, 10)); len(after) != 2 {
		t.Errorf("after_id: %+v", after)
	}
	if lim := e.events("?limit=1"); len(lim) != 1 || lim[0].ID != all[0].ID {
		t.Errorf("limit=1: %+v", lim)
	}
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	if none := e.events("?since=" + future); len(none) != 0 {
		t.Errorf("since the future: %+v", none)
	}
	past := time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	if some := e.events("?since=" + past + "&kind=enrol"); len(some) != 2 {
		t.Errorf("since the past, kind enrol: %+v", some)
	}
	for _, q := range []string{"?since=yesterday", "?after_id=-1", "?after_id=x", "?limit=0", "?limit=100000"} {
		e.want("GET", "/events"+q, adminTok, nil, http.StatusBadRequest, nil)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	st, err := registry.Open(context.Background(), testkit.RegistryLocation(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, cfg := range []Config{
		{AdminToken: adminTok, SlaveToken: slaveTok},
		{Store: st, SlaveToken: slaveTok},
		{Store: st, AdminToken: adminTok, SlaveToken: adminTok},
		{Store: st, AdminToken: adminTok, SlaveToken: slaveTok, TLSCertFile: "x"},
	} {
		if _, err := New(context.Background(), cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}
