package master

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/validator"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// GET /events?kind= with 40,000 kinds was a 500 (SQLite's limit of bound
// variables); it is a 400 that names the limit.
func TestEventsKindCap(t *testing.T) {
	e := newEnv(t, nil)
	e.enrol("pi1")
	kinds := strings.TrimSuffix(strings.Repeat("k,", 40_000), ",")
	body := e.want("GET", "/events?kind="+kinds, adminTok, nil, http.StatusBadRequest, nil)
	if !strings.Contains(string(body), "at most 64") {
		t.Errorf("answer %s does not name the limit", body)
	}
	many := strings.TrimSuffix(strings.Repeat("enrol,", registry.MaxEventKinds), ",")
	if evs := e.events("?kind=" + many); len(evs) != 1 {
		t.Errorf("%d kinds: %d events, want 1", registry.MaxEventKinds, len(evs))
	}
}

// countingValidator accepts the keys it knows (by fingerprint, as
// device_key) and counts its runs.
type countingValidator struct {
	mu     sync.Mutex
	runs   int
	accept map[string]string
}

func (v *countingValidator) Validate(_ context.Context, key ssh.PublicKey) (string, map[string]any, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.runs++
	if name, ok := v.accept[registry.Fingerprint(key)]; ok {
		return name, nil, nil
	}
	return "", nil, fmt.Errorf("unknown: %w", validator.ErrDenied)
}

func (v *countingValidator) String() string { return "counting validator" }

func (v *countingValidator) count() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.runs
}

func randomKey(t *testing.T) string {
	t.Helper()
	_, ak := newKey(t)
	return ak
}

// Every refused key was a row: 500 random keys asking for slots and 300
// through a slave's validation are now one row each and, when the minute
// ends, one summary each that counts the rest.
func TestRefusalsAreTalliedPerSource(t *testing.T) {
	e := newEnv(t, nil)
	e.beat("s1", heartbeatOf(10))
	last, _ := e.store.LastEventID(t.Context())
	for range 500 {
		e.want("POST", "/slots", "", e.signed(randomKey(t)), http.StatusForbidden, nil)
	}
	for range 300 {
		e.want("POST", "/validate", slaveTok, wire.ValidateRequest{PublicKey: randomKey(t), Slave: "s1"}, http.StatusForbidden, nil)
	}
	evs := e.events(fmt.Sprintf("?after_id=%d&kind=deny", last))
	if len(evs) != 2 || !strings.Contains(evs[0].Detail, "slot refused") || !strings.Contains(evs[0].Detail, "(from 127.0.0.1)") ||
		!strings.Contains(evs[1].Detail, "validation refused") || evs[1].Slave != "s1" {
		t.Fatalf("800 refusals wrote %d rows, want the first slot and the first validation:\n%+v", len(evs), evs)
	}
	// The minute ends; the next refusal closes it.
	e.clock.Advance(denialInterval)
	e.want("POST", "/slots", "", e.signed(randomKey(t)), http.StatusForbidden, nil)
	evs = e.events(fmt.Sprintf("?after_id=%d&kind=deny", evs[1].ID))
	var details []string
	for _, ev := range evs {
		details = append(details, ev.Detail)
	}
	all := strings.Join(details, "\n")
	if len(evs) != 3 || !strings.Contains(all, "slot refused: 499 more like this from 127.0.0.1 in the last 1m0s; the last: key SHA256:") ||
		!strings.Contains(all, "validation refused: 299 more like this from 127.0.0.1") {
		t.Fatalf("after the minute: %d rows, want two summaries and the new minute's first:\n%s", len(evs), all)
	}
}

// A slave reported each refused key as an auth-deny event, and the master
// wrote each: a heartbeat of 10,000 of them was 10,000 rows.
func TestSlaveAuthDenyEventsAreTallied(t *testing.T) {
	e := newEnv(t, nil)
	e.beat("s1", heartbeatOf(10))
	last, _ := e.store.LastEventID(t.Context())
	hb := heartbeatOf(10)
	for i := range maxEventsPerBeat - 1 {
		hb.Events = append(hb.Events, wire.SlaveEvent{At: e.clock.Now(), Kind: registry.EventAuthDeny, Detail: fmt.Sprintf("unknown key (key SHA256:%d)", i)})
	}
	hb.Events = append(hb.Events, wire.SlaveEvent{At: e.clock.Now(), Kind: "reap", Device: "pi1", Detail: "reaped"})
	e.beat("s1", hb)
	evs := e.events(fmt.Sprintf("?after_id=%d", last))
	if len(evs) != slaveDenialBurst+1 {
		t.Fatalf("a heartbeat of %d auth-deny events and a reap wrote %d rows, want %d", maxEventsPerBeat-1, len(evs), slaveDenialBurst+1)
	}
	e.srv.refusals.slaves.Flush()
	evs = e.events(fmt.Sprintf("?after_id=%d&kind=auth-deny", evs[len(evs)-1].ID))
	if len(evs) != 1 || evs[0].Slave != "s1" || !strings.Contains(evs[0].Detail, fmt.Sprintf("slave s1: %d more auth-deny events", maxEventsPerBeat-1-slaveDenialBurst)) ||
		!strings.Contains(evs[0].Detail, "the last: unknown key (key SHA256:9998)") {
		t.Fatalf("summary = %+v", evs)
	}
}

// The validator ran for every key: now, for keys the registry does not
// know, a burst and then one a second per source, and not again for a
// minute for a key it refused; enrolled devices are never held back.
func TestValidatorIsRateLimitedPerSource(t *testing.T) {
	v := &countingValidator{accept: map[string]string{}}
	e := newEnv(t, func(c *Config) { c.Validator = v })
	e.beat("s1", heartbeatOf(10))
	for range 100 {
		e.want("POST", "/slots", "", e.signed(randomKey(t)), http.StatusForbidden, nil)
	}
	if n := v.count(); n != validatorBurst {
		t.Fatalf("100 unknown keys ran the validator %d times, want its burst, %d", n, validatorBurst)
	}
	// An enrolled device is not held back by the flood.
	ak := e.enrol("pi1")
	pk, _ := registry.ParsePublicKey([]byte(ak))
	v.mu.Lock()
	v.accept[registry.Fingerprint(pk)] = "pi1"
	v.mu.Unlock()
	e.slot(ak)
	if n := v.count(); n != validatorBurst+1 {
		t.Fatalf("an enrolled device's slot ran the validator %d times in all, want %d", n, validatorBurst+1)
	}
	// Another source has its own budget: a new device the validator knows
	// is enrolled from its own address.
	newcomer, nk := newKey(t)
	v.mu.Lock()
	v.accept[registry.Fingerprint(newcomer)] = "newcomer"
	v.mu.Unlock()
	ctx := context.WithValue(t.Context(), sourceKey{}, "198.51.100.9")
	k, _ := registry.ParsePublicKey([]byte(nk))
	if dev, err := e.srv.admit(ctx, k); err != nil || dev.Name != "newcomer" {
		t.Fatalf("a new device from another address: %+v, %v", dev, err)
	}
	// Time passes: one more a second.
	e.clock.Advance(3 * time.Second)
	before := v.count()
	for range 10 {
		e.want("POST", "/slots", "", e.signed(randomKey(t)), http.StatusForbidden, nil)
	}
	if n := v.count() - before; n != 3 {
		t.Fatalf("3 s later, 10 unknown keys ran the validator %d times, want 3", n)
	}
	// A key refused once is refused without asking for a minute.
	e.clock.Advance(time.Hour)
	same := randomKey(t)
	before = v.count()
	for range 5 {
		e.want("POST", "/slots", "", e.signed(same), http.StatusForbidden, nil)
	}
	if n := v.count() - before; n != 1 {
		t.Fatalf("one refused key asked 5 times ran the validator %d times, want 1", n)
	}
	e.clock.Advance(validatorNegativeTTL)
	e.want("POST", "/slots", "", e.signed(same), http.StatusForbidden, nil)
	if n := v.count() - before; n != 2 {
		t.Fatalf("after the negative cache's minute the validator ran %d times, want 2", n)
	}
}

func TestValidatorNegativeCacheIsBounded(t *testing.T) {
	g := newValidatorGate()
	now := time.Unix(1_700_000_000, 0)
	for i := range maxValidatorNegative + 100 {
		g.refused(fmt.Sprint("fp", i), now)
	}
	if len(g.negative) > maxValidatorNegative {
		t.Fatalf("%d refusals remembered, at most %d", len(g.negative), maxValidatorNegative)
	}
	g.refused("late", now.Add(validatorNegativeTTL))
	if !g.refusedRecently("late", now.Add(validatorNegativeTTL)) || len(g.negative) != 1 {
		t.Fatalf("expired refusals were not dropped to make room: %d left", len(g.negative))
	}
}
