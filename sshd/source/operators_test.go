package source

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// operatorMaster is a fakeMaster that also validates operator keys.
type operatorMaster struct {
	*fakeMaster
	omu   sync.Mutex
	ops   map[string]wire.OperatorValidation // by authorized key or fingerprint
	asked int
	roles []string
}

func (f *operatorMaster) ValidateOperator(_ context.Context, req wire.ValidateRequest) (wire.OperatorValidation, error) {
	f.omu.Lock()
	defer f.omu.Unlock()
	f.asked++
	f.roles = append(f.roles, req.Role)
	v, ok := f.ops[req.PublicKey+req.Fingerprint]
	if !ok {
		return wire.OperatorValidation{}, fmt.Errorf("%w: 403", ErrNotAccepted)
	}
	return v, nil
}

func (f *operatorMaster) calls() int {
	f.omu.Lock()
	defer f.omu.Unlock()
	return f.asked
}

// An operator's grant is asked for with Role operator, cached for its
// TTL, asked again after; a revocation in a heartbeat reply drops it and
// tells the slave; a refusal is remembered for a few seconds.
func TestMasterOperators(t *testing.T) {
	g := newMasterRig(t, t.TempDir())
	api := &operatorMaster{fakeMaster: g.api, ops: map[string]wire.OperatorValidation{}}
	g.m = NewMaster(api, "s1", g.clock.Now, discard())
	if err := g.m.Start(context.Background(), g.cache); err != nil {
		t.Fatal(err)
	}
	k := testkit.NewKey(t, "alice").Public
	fp := registry.Fingerprint(k)
	v := wire.OperatorValidation{Operator: "alice", Fingerprint: fp, PublicKey: registry.AuthorizedKey(k), TTLSeconds: 60,
		Open: []wire.OpenPort{{Device: "pi-lyon", Forward: "ssh", Port: 20001}}}
	api.ops[registry.AuthorizedKey(k)] = v
	api.ops[fp] = v
	ctx := context.Background()
	gr, found, err := g.m.Operator(ctx, fp, k)
	if err != nil || !found || gr.Operator != "alice" || len(gr.Open) != 1 || api.roles[0] != RoleOperator {
		t.Fatalf("operator: %+v %v %v (roles %v)", gr, found, err, api.roles)
	}
	if op, ok := gr.Port(20001); !ok || op.Device != "pi-lyon" {
		t.Errorf("port 20001: %+v %v", op, ok)
	}
	g.m.Operator(ctx, fp, nil)
	if n := api.calls(); n != 1 {
		t.Errorf("%d validations within the TTL, want 1", n)
	}
	g.clock.now = g.clock.now.Add(61 * time.Second)
	g.m.Operator(ctx, fp, nil)
	if n := api.calls(); n != 2 {
		t.Errorf("%d validations after the TTL, want 2", n)
	}

	// A device's key (or any other) is refused, and the refusal remembered.
	stranger := testkit.NewKey(t, "pi").Public
	for range 2 {
		if _, found, err := g.m.Operator(ctx, registry.Fingerprint(stranger), stranger); found || err != nil {
			t.Fatalf("stranger: %v %v", found, err)
		}
	}
	if n := api.calls(); n != 3 {
		t.Errorf("%d validations after two refusals, want 3", n)
	}

	// Revoked: dropped from the cache, the slave told.
	delete(api.ops, registry.AuthorizedKey(k))
	delete(api.ops, fp)
	g.api.reply = wire.HeartbeatReply{Seq: 3, Revocations: []wire.Revocation{{Seq: 3, Operator: "alice", Fingerprint: fp, Reason: "revoked"}}}
	h := &recorder{}
	if err := g.m.beat(ctx, h); err != nil {
		t.Fatal(err)
	}
	if len(h.gone) != 1 || h.gone[0] != "operator alice: operator revoked" {
		t.Fatalf("gone %v", h.gone)
	}
	if _, found, _ := g.m.Operator(ctx, fp, nil); found {
		t.Error("a revoked operator is still served")
	}
}

// A master client that cannot validate operators refuses them (an error:
// no answer), never admits them.
func TestMasterOperatorsWithoutAPI(t *testing.T) {
	g := newMasterRig(t, t.TempDir())
	var k ssh.PublicKey = testkit.NewKey(t, "alice").Public
	if _, found, err := g.m.Operator(context.Background(), registry.Fingerprint(k), k); found || err == nil {
		t.Errorf("found %v, err %v", found, err)
	}
}

// A device revoked or removed drops every cached grant naming it or its
// ports (a freed port may be leased to another device next), and only
// those; an operator whose reach changed (narrowed) is forgotten and its
// sessions end, as for a revocation.
func TestMasterOperatorGrantsFollowDevices(t *testing.T) {
	g := newMasterRig(t, t.TempDir())
	api := &operatorMaster{fakeMaster: g.api, ops: map[string]wire.OperatorValidation{}}
	g.m = NewMaster(api, "s1", g.clock.Now, discard())
	ctx := context.Background()
	if err := g.m.Start(ctx, g.cache); err != nil {
		t.Fatal(err)
	}
	grant := func(name string, open ...wire.OpenPort) string {
		k := testkit.NewKey(t, name).Public
		fp := registry.Fingerprint(k)
		v := wire.OperatorValidation{Operator: name, Fingerprint: fp, PublicKey: registry.AuthorizedKey(k), TTLSeconds: 600, Open: open}
		api.ops[fp] = v
		if _, found, err := g.m.Operator(ctx, fp, nil); !found || err != nil {
			t.Fatalf("%s: %v %v", name, found, err)
		}
		return fp
	}
	lyon := wire.OpenPort{Device: "pi-lyon", Forward: "ssh", Port: 20001}
	paris := wire.OpenPort{Device: "pi-paris", Forward: "ssh", Port: 20002}
	alice := grant("alice", lyon, paris)
	bob := grant("bob", paris)
	carol := grant("carol", wire.OpenPort{Device: "nas", Forward: "web", Port: 20003})
	asked := api.calls()
	again := func(fp string) int {
		g.m.Operator(ctx, fp, nil)
		n := api.calls() - asked
		asked = api.calls()
		return n
	}

	// pi-lyon removed (its port in the revocation): alice's grant goes.
	g.api.reply = wire.HeartbeatReply{Seq: 3, Revocations: []wire.Revocation{{Seq: 3, Device: "pi-lyon", Fingerprint: "SHA256:x", Ports: []int{20001}, Reason: "removed"}}}
	h := &recorder{}
	if err := g.m.beat(ctx, h); err != nil {
		t.Fatal(err)
	}
	if n := again(alice); n != 1 {
		t.Errorf("alice's grant naming a removed device: %d validations, want 1 (asked again)", n)
	}
	if n := again(bob) + again(carol); n != 0 {
		t.Errorf("grants not naming it: %d validations, want 0 (cached)", n)
	}
	// A revocation naming a port only (a device the slave knew under
	// that port): the grant holding the port goes.
	g.api.reply = wire.HeartbeatReply{Seq: 4, Revocations: []wire.Revocation{{Seq: 4, Device: "old-nas", Ports: []int{20003}, Reason: "revoked"}}}
	if err := g.m.beat(ctx, h); err != nil {
		t.Fatal(err)
	}
	if n := again(carol); n != 1 {
		t.Errorf("carol's grant naming a revoked port: %d validations, want 1", n)
	}

	// bob's reach narrowed: forgotten, and the slave ends his sessions.
	g.api.reply = wire.HeartbeatReply{Seq: 5, Revocations: []wire.Revocation{{Seq: 5, Operator: "bob", Fingerprint: bob, Reason: "changed"}}}
	if err := g.m.beat(ctx, h); err != nil {
		t.Fatal(err)
	}
	if len(h.gone) != 3 || h.gone[2] != "operator bob: operator changed" {
		t.Fatalf("gone %q", h.gone)
	}
	if n := again(bob); n != 1 {
		t.Errorf("bob's grant after changed: %d validations, want 1", n)
	}
}

// A grant that reaches nothing (every selector denied) is remembered as
// briefly as a refusal: an allow list widened again sends no revocation,
// and the operator is let in once it passes, not after the TTL.
func TestMasterOperatorEmptyGrantIsShortLived(t *testing.T) {
	g := newMasterRig(t, t.TempDir())
	api := &operatorMaster{fakeMaster: g.api, ops: map[string]wire.OperatorValidation{}}
	g.m = NewMaster(api, "s1", g.clock.Now, discard())
	if err := g.m.Start(context.Background(), g.cache); err != nil {
		t.Fatal(err)
	}
	k := testkit.NewKey(t, "alice").Public
	fp := registry.Fingerprint(k)
	api.ops[fp] = wire.OperatorValidation{Operator: "alice", Fingerprint: fp, PublicKey: registry.AuthorizedKey(k), TTLSeconds: 300}
	ctx := context.Background()
	if gr, found, err := g.m.Operator(ctx, fp, nil); err != nil || !found || len(gr.Open) != 0 {
		t.Fatalf("operator reaching nothing: %+v %v %v", gr, found, err)
	}
	g.m.Operator(ctx, fp, nil)
	if n := api.calls(); n != 1 {
		t.Errorf("%d validations at once, want 1 (the empty grant is cached)", n)
	}
	api.omu.Lock()
	api.ops[fp] = wire.OperatorValidation{Operator: "alice", Fingerprint: fp, PublicKey: registry.AuthorizedKey(k), TTLSeconds: 300,
		Open: []wire.OpenPort{{Device: "pi-lyon", Forward: "ssh", Port: 20001}}}
	api.omu.Unlock()
	g.clock.now = g.clock.now.Add(negativeCacheFor + time.Second)
	gr, found, err := g.m.Operator(ctx, fp, nil)
	if err != nil || !found || len(gr.Open) != 1 || api.calls() != 2 {
		t.Errorf("after %v: %+v %v %v (%d validations), want the widened grant", negativeCacheFor, gr, found, err, api.calls())
	}
}
