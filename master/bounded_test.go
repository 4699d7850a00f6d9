package master

import (
	"net/http"
	"strings"
	"testing"

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
