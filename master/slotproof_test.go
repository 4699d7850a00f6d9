package master

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/sshsig"
)

// Finding 2: a public key alone no longer gets a slot.
func TestSlotNeedsProofOfPossession(t *testing.T) {
	e := newEnv(t, nil)
	e.beat("s1", heartbeatOf(10))
	ak := e.enrol("d1", "web=192.168.1.10:80")
	for _, q := range []string{"", "?format=env"} {
		resp, body := e.do("POST", "/slots"+q, "", wire.SlotRequest{PublicKey: ak})
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(body), "signature is required") {
			t.Errorf("unsigned slot%s = %d %s, want 400 asking for a signature", q, resp.StatusCode, body)
		}
		if strings.Contains(string(body), "192.168") || strings.Contains(string(body), "d1") || strings.Contains(string(body), "s1") {
			t.Errorf("unsigned slot%s leaks the slot: %s", q, body)
		}
	}
	if evs := e.events("?kind=slot"); len(evs) != 0 {
		t.Errorf("unsigned requests granted slots: %+v", evs)
	}
	// The same device, signing, gets its slot and its LAN target.
	s := e.slot(ak)
	if s.Device != "d1" || len(s.Forwards) != 1 || s.Forwards[0].Target != "192.168.1.10:80" {
		t.Errorf("signed slot = %+v", s)
	}
}

// Unknown keys, revoked keys, bad signatures and replays all get the same
// 403: whoever holds only a public key cannot tell whether it is enrolled.
func TestSlotRefusalsLookAlike(t *testing.T) {
	e := newEnv(t, nil)
	e.beat("s1", heartbeatOf(10))
	ak := e.enrol("d1")
	revoked := e.enrol("d2")
	e.want("POST", "/devices/d2/revoke", adminTok, nil, http.StatusOK, nil)
	_, stranger := newKey(t)
	_, other := newKey(t)

	replayed := e.signed(ak)
	e.want("POST", "/slots", "", replayed, http.StatusOK, nil)

	cases := map[string]func() wire.SlotRequest{
		"unknown key": func() wire.SlotRequest { return e.signed(stranger) },
		"revoked key": func() wire.SlotRequest { return e.signed(revoked) },
		"signed by another key": func() wire.SlotRequest {
			r := e.signed(other)
			r.PublicKey = ak
			return r
		},
		"signature of another statement": func() wire.SlotRequest {
			r := e.signed(ak)
			r.Nonce = strings.Repeat("a", 32)
			return r
		},
		"signature in another namespace": func() wire.SlotRequest {
			r := e.signed(ak)
			s, _ := signers.Load(ak)
			sig, _ := sshsig.Sign(s, "file", wire.SlotStatement(r))
			r.Signature = string(sig)
			return r
		},
		"garbage signature": func() wire.SlotRequest {
			r := e.signed(ak)
			r.Signature = "AAAAC3NzaC1lZDI1NTE5AAAAIA=="
			return r
		},
		"replay": func() wire.SlotRequest { return replayed },
	}
	for _, q := range []string{"", "?format=env"} {
		var first string
		for name, req := range cases {
			resp, body := e.do("POST", "/slots"+q, "", req())
			if resp.StatusCode != http.StatusForbidden {
				t.Errorf("%s%s = %d %s, want 403", name, q, resp.StatusCode, body)
				continue
			}
			if first == "" {
				first = string(body)
			}
			if string(body) != first {
				t.Errorf("%s%s answers %q; the others %q", name, q, body, first)
			}
		}
		if !strings.Contains(first, "key not accepted") {
			t.Errorf("403 body%s = %q", q, first)
		}
	}
}

// A timestamp more than five minutes off, either way, is refused; within,
// accepted.
func TestSlotTimestampSkew(t *testing.T) {
	e := newEnv(t, nil)
	e.beat("s1", heartbeatOf(10))
	ak := e.enrol("d1")
	s, _ := signers.Load(ak)
	at := func(d time.Duration) (int, string) {
		req, err := client.SignSlotRequest(s, e.ts.URL, e.clock.Now().Add(d))
		if err != nil {
			t.Fatal(err)
		}
		resp, body := e.do("POST", "/slots", "", req)
		return resp.StatusCode, string(body)
	}
	for _, d := range []time.Duration{-wire.SlotSkew - time.Second, wire.SlotSkew + time.Second, -time.Hour, 24 * time.Hour} {
		if code, body := at(d); code != http.StatusForbidden || !strings.Contains(body, "check the device's clock") {
			t.Errorf("signed %s away = %d %s, want 403 about the clock", d, code, body)
		}
	}
	for _, d := range []time.Duration{-wire.SlotSkew + time.Second, wire.SlotSkew - time.Second, 0} {
		if code, body := at(d); code != http.StatusOK {
			t.Errorf("signed %s away = %d %s, want 200", d, code, body)
		}
	}
}

// A signature names the master it was made for: one made for another
// master (a fake one that collected it, say) is refused here.
func TestSlotSignatureBoundToMaster(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.PublicURLs = []string{"https://Master.Example:443/", "https://10.0.0.1:8443"} })
	e.beat("s1", heartbeatOf(10))
	ak := e.enrol("d1")
	s, _ := signers.Load(ak)
	for url, want := range map[string]int{
		"https://master.example":              200,
		"https://master.example/api/v1":       200,
		"https://10.0.0.1:8443/":              200,
		"https://evil.example":                403,
		"https://master.example:8443":         403,
		"http://10.0.0.1:8443":                403,
		"https://master.example.evil.example": 403,
	} {
		req, err := client.SignSlotRequest(s, url, e.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		if resp, body := e.do("POST", "/slots", "", req); resp.StatusCode != want {
			t.Errorf("signed for %s = %d %s, want %d", url, resp.StatusCode, body, want)
		}
	}

	// Without public URLs, a TLS master takes the names of its certificate.
	certFile, keyFile, _ := selfSigned(t, t.TempDir())
	names, err := newMasterNames(nil, certFile)
	if err != nil {
		t.Fatal(err)
	}
	_ = keyFile
	if ok, why := names.match("https://127.0.0.1:8443"); !ok {
		t.Errorf("the certificate's own address refused: %s", why)
	}
	if ok, _ := names.match("https://evil.example:8443"); ok {
		t.Error("a name the certificate does not hold accepted")
	}
}

// Signatures made by ssh-keygen -Y sign, as the shell client makes them
// (the bare base64 between the armor lines), are accepted.
func TestSlotSignedBySSHKeygen(t *testing.T) {
	keygen, err := exec.LookPath("ssh-keygen")
	if err != nil {
		if os.Getenv("MAS4H_E2E") != "" {
			t.Fatal("ssh-keygen missing")
		}
		t.Skip("no ssh-keygen")
	}
	e := newEnv(t, nil)
	e.beat("s1", heartbeatOf(10))
	k := testkit.NewKey(t, "")
	dir := t.TempDir()
	k.Write(t, filepath.Join(dir, "key"))
	e.want("POST", "/devices", adminTok, wire.AddDeviceRequest{Name: "d1", PublicKey: k.AuthorizedKey}, http.StatusCreated, nil)
	req := wire.SlotRequest{PublicKey: k.AuthorizedKey, Master: e.ts.URL, Timestamp: e.clock.Now().Unix(), Nonce: "0123456789abcdef0123"}
	msg := filepath.Join(dir, "statement")
	os.WriteFile(msg, wire.SlotStatement(req), 0o600)
	if out, err := exec.Command(keygen, "-Y", "sign", "-f", filepath.Join(dir, "key"), "-n", wire.SlotNamespace, msg).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen -Y sign: %v: %s", err, out)
	}
	armored := string(mustReadFile(t, msg+".sig"))
	lines := strings.Split(strings.TrimSpace(armored), "\n")
	req.Signature = strings.Join(lines[1:len(lines)-1], "")
	var s wire.Slot
	e.want("POST", "/slots", "", req, http.StatusOK, &s)
	if s.Device != "d1" {
		t.Errorf("slot = %+v", s)
	}
	// The shell client writes the body hash with printf and sha256sum:
	// the statement must hash the very bytes it writes.
	sum := sha256.Sum256([]byte(`{"public_key":"` + k.AuthorizedKey + `"}`))
	if !strings.Contains(string(wire.SlotStatement(req)), fmt.Sprintf("body=%x\n", sum)) {
		t.Errorf("statement %q does not hash the printf body", wire.SlotStatement(req))
	}
}

func mustReadFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// With --allow-unsigned-slots, an unsigned request gets a slot without
// the device's name or any forward to another host; a signed one gets it
// all, and a bad signature is still refused.
func TestUnsignedSlotsCarryNoLANTargets(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.AllowUnsignedSlots = true })
	e.beat("s1", heartbeatOf(10))
	ak := e.enrol("d1", "ssh=localhost:22", "web=192.168.1.10:80", "cam=[fd00::5]:554", "lo=127.0.0.1:8080")
	for _, q := range []string{"", "?format=env"} {
		resp, body := e.do("POST", "/slots"+q, "", wire.SlotRequest{PublicKey: ak})
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("unsigned slot%s = %d %s", q, resp.StatusCode, body)
		}
		for _, leak := range []string{"192.168.1.10", "fd00", "d1"} {
			if strings.Contains(string(body), leak) {
				t.Errorf("unsigned slot%s carries %q: %s", q, leak, body)
			}
		}
		if q == "" {
			var s wire.Slot
			json.Unmarshal(body, &s)
			if s.Slave != "s1" || len(s.Forwards) != 2 || s.Forwards[0].Target != "localhost:22" || s.Forwards[1].Target != "127.0.0.1:8080" {
				t.Errorf("unsigned slot = %+v", s)
			}
		}
	}
	if s := e.slot(ak); s.Device != "d1" || len(s.Forwards) != 4 {
		t.Errorf("signed slot = %+v", s)
	}
	bad := e.signed(ak)
	bad.Nonce = strings.Repeat("b", 20)
	e.want("POST", "/slots", "", bad, http.StatusForbidden, nil)
}

// Events of slot requests are folded: a device asking N times in an
// interval adds its first grant at once and one summary row when the
// interval ends, then at most a row per interval (strangers' refusals:
// TestRefusalsAreTalliedPerSource).
func TestSlotEventsAggregated(t *testing.T) {
	e := newEnv(t, nil)
	e.beat("s1", heartbeatOf(10))
	ak := e.enrol("d1")
	const n = 50
	// interval ends an interval; the slave keeps beating.
	interval := func() {
		e.clock.Advance(DefaultSlotEventInterval)
		e.beat("s1", heartbeatOf(10))
		e.srv.flushSlotEvents(t.Context())
	}
	for range n {
		e.slot(ak)
		e.clock.Advance(100 * time.Millisecond)
	}
	if evs := e.events("?kind=slot&device=d1"); len(evs) != 1 || evs[0].Detail != "granted slave s1" {
		t.Fatalf("slot events after %d grants in one interval = %+v", n, evs)
	}
	interval()
	evs := e.events("?kind=slot&device=d1")
	if len(evs) != 2 || !strings.Contains(evs[1].Detail, fmt.Sprintf("%d more slot requests granted", n-1)) || evs[1].Slave != "s1" {
		t.Fatalf("slot events after the interval = %+v", evs)
	}
	// Another busy interval: one row.
	for range n {
		e.slot(ak)
	}
	interval()
	if evs := e.events("?kind=slot&device=d1"); len(evs) != 3 {
		t.Fatalf("%d slot events after two busy intervals, want 3", len(evs))
	}
	// A quiet interval: the next grant is written at once again.
	interval()
	interval()
	e.slot(ak)
	if evs := e.events("?kind=slot&device=d1"); len(evs) != 4 || evs[3].Detail != "granted slave s1" {
		t.Fatalf("slot events after a quiet interval = %+v", evs)
	}

}

// The replay cache forgets statements once their timestamps are stale,
// and fails closed when full of fresh ones.
func TestReplayCacheBounded(t *testing.T) {
	c := newReplayCache(3)
	now := time.Unix(1000, 0)
	h := func(i int) [32]byte { return sha256.Sum256([]byte{byte(i)}) }
	for i := range 3 {
		if !c.first(h(i), now.Add(wire.SlotSkew), now) {
			t.Fatalf("statement %d refused", i)
		}
	}
	if c.first(h(0), now.Add(wire.SlotSkew), now) {
		t.Error("a replay accepted")
	}
	if c.first(h(3), now.Add(wire.SlotSkew), now) {
		t.Error("a 4th statement accepted by a full cache")
	}
	later := now.Add(wire.SlotSkew)
	if !c.first(h(3), later.Add(wire.SlotSkew), later) || c.size() != 1 {
		t.Errorf("stale statements not forgotten: size %d", c.size())
	}
}
