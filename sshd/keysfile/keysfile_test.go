package keysfile

import (
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authkeys"
)

func testDevice(t *testing.T, name, status string, ports ...int) registry.Device {
	t.Helper()
	key := testkit.NewKey(t, name).Public
	d := registry.Device{Name: name, Status: status, PublicKey: registry.AuthorizedKey(key), Fingerprint: registry.Fingerprint(key)}
	for i, p := range ports {
		d.Forwards = append(d.Forwards, registry.Forward{Name: "f" + string(rune('a'+i)), Target: "localhost:22", RemotePort: p})
	}
	return d
}

func TestRenderKeysFile(t *testing.T) {
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	active := testDevice(t, "a-active", registry.StatusActive, 20001)
	revoked := testDevice(t, "b-revoked", registry.StatusRevoked, 20002)
	live := testDevice(t, "c-live", registry.StatusActive, 20003, 20004)
	gone := testDevice(t, "d-gone", registry.StatusActive, 20005)
	expired := testDevice(t, "e-expired", registry.StatusActive, 20006)
	fresh := testDevice(t, "f-fresh", registry.StatusActive, 20007)
	noPorts := testDevice(t, "g-noports", registry.StatusActive)
	portless := testDevice(t, "h-portless-session", registry.StatusActive, 20008)
	all := []authkeys.CachedDevice{
		{Device: fresh, Expires: now.Add(3 * time.Minute)},
		{Device: active}, {Device: revoked}, {Device: live}, {Device: gone},
		{Device: expired, Expires: now.Add(-time.Second)},
		{Device: noPorts}, {Device: portless},
	}
	held := map[int]bool{20004: true, 22: true}
	busy := map[string]int{portless.Fingerprint: 1} // a session that holds no port yet
	goneSet := map[string]time.Time{"d-gone": now}
	data, n, expires := render("s1", all, held, busy, goneSet, now, authkeys.AuthorizedLine)
	if n != 2 {
		t.Errorf("entries = %d, want 2 (a-active, f-fresh):\n%s", n, data)
	}
	if !expires.Equal(now.Add(3 * time.Minute)) {
		t.Errorf("expires = %v, want f-fresh's expiry", expires)
	}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "# managed by mas4h slave s1") {
		t.Fatalf("want a header and 2 lines, got:\n%s", data)
	}
	for i, d := range []registry.Device{active, fresh} { // name order, whatever the cache order
		want, err := authkeys.AuthorizedLine(d)
		if err != nil {
			t.Fatal(err)
		}
		if lines[i+1] != want {
			t.Errorf("line %d = %q, want the hook's line %q", i+1, lines[i+1], want)
		}
	}
	for _, d := range []registry.Device{revoked, live, gone, expired, portless} {
		if strings.Contains(string(data), d.PublicKey) {
			t.Errorf("%s is in the file:\n%s", d.Name, data)
		}
	}

	// Nothing held, nothing gone: every active device with ports.
	_, n, _ = render("s1", all, nil, nil, nil, now, authkeys.AuthorizedLine)
	if n != 5 {
		t.Errorf("entries with nothing held = %d, want 5", n)
	}
}
