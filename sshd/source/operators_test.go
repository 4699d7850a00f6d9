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
