package hookserver

import (
	"strings"
	"testing"

	"github.com/mas4h/mas4h/registry"
)

// Every refused key was an auth-deny event; 1,000 strangers' keys and a
// revoked device's 50 tries are now one event each and, at the end of the
// minute, one summary each.
func TestDenialsAreTallied(t *testing.T) {
	revoked, kr := newDevice(t, "old", registry.StatusRevoked)
	g := newAuthRig(registryOf(revoked))
	for i := range 1000 {
		_, k := newDevice(t, "x", registry.StatusActive)
		if g.a.Authorize(t.Context(), request(tunnelUser, k)).Allow {
			t.Fatalf("stranger %d allowed", i)
		}
	}
	for range 50 {
		g.a.Authorize(t.Context(), request(tunnelUser, kr))
	}
	if len(g.events) != 2 || !strings.HasPrefix(g.events[0], "auth-deny : unknown key (key SHA256:") ||
		!strings.HasPrefix(g.events[1], "auth-deny old: device is revoked") {
		t.Fatalf("1,050 denials made %d events, want the first of each kind:\n%s", len(g.events), strings.Join(g.events, "\n"))
	}
	g.a.Denials.Close()
	if len(g.events) != 4 {
		t.Fatalf("after the minute, %d events, want 2 summaries more:\n%s", len(g.events), strings.Join(g.events, "\n"))
	}
	sums := strings.Join(g.events[2:], "\n")
	for _, want := range []string{
		`auth-deny : unknown key: 999 more like this in the last`,
		`auth-deny old: device is revoked: 49 more like this in the last`,
		`; the last: key ` + revoked.Fingerprint + `, user "mas4h-tunnel"`,
	} {
		if !strings.Contains(sums, want) {
			t.Errorf("summaries lack %q:\n%s", want, sums)
		}
	}
}
