package hookserver

import (
	"context"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/registry"
)

const operatorUser = "mas4h-operator"

// An operator's key as the operator user gets one line opening exactly its
// devices' ports; a device's key as the operator user, an operator's key
// as the tunnel user, an unknown key and an operator who may reach nothing
// get nothing.
func TestAuthorizeOperator(t *testing.T) {
	dev, kd := newDevice(t, "pi-lyon", registry.StatusActive)
	alice := testkit.NewKey(t, "alice").Public
	bob := testkit.NewKey(t, "bob").Public
	stranger := testkit.NewKey(t, "stranger").Public
	ops := func(_ context.Context, fp string, _ ssh.PublicKey) (string, []int, bool, error) {
		switch fp {
		case ssh.FingerprintSHA256(alice):
			return "alice", []int{20002, 20001, 20002}, true, nil
		case ssh.FingerprintSHA256(bob):
			return "bob", nil, true, nil
		}
		return "", nil, false, nil
	}
	g := newAuthRig(registryOf(dev))
	g.a.OperatorUser, g.a.Operator = operatorUser, ops

	r := g.a.Authorize(context.Background(), request(operatorUser, alice))
	want := `restrict,port-forwarding,permitopen="localhost:20001",permitopen="127.0.0.1:20001",` +
		`permitopen="localhost:20002",permitopen="127.0.0.1:20002" ` + registry.AuthorizedKey(alice)
	if !r.Allow || len(r.Lines) != 1 || r.Lines[0] != want {
		t.Fatalf("alice as the operator user: %+v, want the line\n%s", r, want)
	}
	for name, c := range map[string]struct {
		user   string
		key    ssh.PublicKey
		reason string
	}{
		"device key as operator":   {operatorUser, kd, "not an operator's key"},
		"operator key as tunnel":   {tunnelUser, alice, "unknown key"},
		"unknown key as operator":  {operatorUser, stranger, "not an operator's key"},
		"operator with no devices": {operatorUser, bob, "operator bob: operator bob may reach no device port"},
	} {
		r := g.a.Authorize(context.Background(), request(c.user, c.key))
		if r.Allow || len(r.Lines) != 0 || !strings.Contains(r.Reason, c.reason) {
			t.Errorf("%s: %+v, want a refusal saying %q", name, r, c.reason)
		}
	}

	g.a.Operator = func(context.Context, string, ssh.PublicKey) (string, []int, bool, error) {
		return "", nil, false, errors.New("master out of reach")
	}
	if r := g.a.Authorize(context.Background(), request(operatorUser, alice)); r.Allow {
		t.Errorf("no answer: %+v, want a refusal", r)
	}
	g.a.Operator = nil
	if r := g.a.Authorize(context.Background(), request(operatorUser, alice)); r.Allow {
		t.Errorf("no operator lookup: %+v, want a refusal", r)
	}
}
