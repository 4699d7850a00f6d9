package source

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// A slave on a registry file answers operator keys from it (the devices
// the allow list selects, nothing for a device's key or a stranger's),
// records operator events with the operator and slave set, and ends the
// sessions of an operator narrowed or revoked there.
func TestLocalOperators(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := registry.Open(ctx, filepath.Join(dir, "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pr := registry.PortRange{Lo: 20000, Hi: 20099}
	lyonKey := testkit.NewKey(t, "pi-lyon").Public
	lyon, _, err := st.EnrolDevice(ctx, "pi-lyon", lyonKey, nil, map[string]string{"site": "lyon"}, pr, "")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.EnrolDevice(ctx, "pi-paris", testkit.NewKey(t, "pi-paris").Public, nil, map[string]string{"site": "paris"}, pr, ""); err != nil {
		t.Fatal(err)
	}
	aliceKey := testkit.NewKey(t, "alice").Public
	if _, err := st.AddOperator(ctx, "alice", aliceKey, []string{"site=lyon"}); err != nil {
		t.Fatal(err)
	}
	l := NewLocal(st, "s1", 0, discard())
	if err := l.Start(ctx, openCache(t, dir)); err != nil {
		t.Fatal(err)
	}

	fp := registry.Fingerprint(aliceKey)
	g, found, err := l.Operator(ctx, fp, aliceKey)
	want := []wire.OpenPort{{Device: "pi-lyon", Forward: lyon.Forwards[0].Name, Port: lyon.Forwards[0].RemotePort}}
	if err != nil || !found || g.Operator != "alice" || g.Fingerprint != fp || !reflect.DeepEqual(g.Open, want) {
		t.Fatalf("alice: %+v %v %v", g, found, err)
	}
	for _, k := range []string{registry.Fingerprint(lyonKey), "SHA256:stranger"} {
		if _, found, err := l.Operator(ctx, k, nil); found || err != nil {
			t.Errorf("%s: found %v, err %v", k, found, err)
		}
	}

	l.ReportOperator(ctx, wire.EventOperatorConnect, "alice", "pi-lyon", "ssh (port 20000)")
	evs, err := st.Events(ctx, registry.EventFilter{Operator: "alice", Kinds: []string{wire.EventOperatorConnect}})
	if err != nil || len(evs) != 1 || evs[0].Operator != "alice" || evs[0].Slave != "s1" || evs[0].Device != "pi-lyon" {
		t.Fatalf("events %+v %v", evs, err)
	}

	h := &recorder{}
	if _, err := st.DenyOperator(ctx, "alice", "site=lyon"); err != nil {
		t.Fatal(err)
	}
	if err := l.pollOperators(ctx, h); err != nil {
		t.Fatal(err)
	}
	if g, found, _ := l.Operator(ctx, fp, nil); !found || len(g.Open) != 0 {
		t.Errorf("alice narrowed to nothing: %+v %v", g, found)
	}
	if _, err := st.RevokeOperator(ctx, "alice"); err != nil {
		t.Fatal(err)
	}
	if err := l.pollOperators(ctx, h); err != nil {
		t.Fatal(err)
	}
	if want := []string{"operator alice: operator changed", "operator alice: operator revoked"}; !reflect.DeepEqual(h.gone, want) {
		t.Errorf("gone %q, want %q", h.gone, want)
	}
	if _, found, err := l.Operator(ctx, fp, nil); found || err != nil {
		t.Errorf("revoked alice: found %v, err %v", found, err)
	}
	// Device revocations in the log are not operators': poll's business.
	if _, err := st.Revoke(ctx, "pi-lyon"); err != nil {
		t.Fatal(err)
	}
	if err := l.pollOperators(ctx, h); err != nil || len(h.gone) != 2 {
		t.Errorf("after a device revocation: gone %q, err %v", h.gone, err)
	}
}
