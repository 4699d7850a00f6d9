package hookserver

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authkeys"
	"github.com/mas4h/mas4h/sshd/source"
)

const tunnelUser = "mas4h-tunnel"

func newDevice(t *testing.T, name, status string) (registry.Device, ssh.PublicKey) {
	t.Helper()
	k := testkit.NewKey(t, name).Public
	return registry.Device{Name: name, Fingerprint: registry.Fingerprint(k), PublicKey: registry.AuthorizedKey(k), KeyType: k.Type(),
		Status: status, Forwards: []registry.Forward{{Name: "ssh", Target: "localhost:22", RemotePort: 20001}}}, k
}

func request(user string, k ssh.PublicKey) authkeys.HookRequest {
	return authkeys.HookRequest{User: user, Fingerprint: ssh.FingerprintSHA256(k), KeyType: k.Type(),
		Key: base64.StdEncoding.EncodeToString(k.Marshal())}
}

// authRig is an Authorizer whose newest-wins and events are recorded.
type authRig struct {
	a      *Authorizer
	events []string
}

func newAuthRig(lookup Lookup) *authRig {
	g := &authRig{}
	g.a = &Authorizer{TunnelUser: tunnelUser, Lookup: lookup,
		Denials: NewDenials(func(_ context.Context, kind, device, detail string) {
			g.events = append(g.events, kind+" "+device+": "+detail)
		}, nil),
		Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	return g
}

// registryOf looks keys up among devs, like a registry.
func registryOf(devs ...registry.Device) Lookup {
	return func(_ context.Context, fp string, _ ssh.PublicKey) (registry.Device, bool, error) {
		for _, d := range devs {
			if d.Fingerprint == fp {
				return d, true, nil
			}
		}
		return registry.Device{}, false, nil
	}
}

func TestAuthorize(t *testing.T) {
	active, ka := newDevice(t, "pi", registry.StatusActive)
	revoked, kr := newDevice(t, "old", registry.StatusRevoked)
	_, stranger := newDevice(t, "x", registry.StatusActive)
	lookup := registryOf(active, revoked)
	bad := request(tunnelUser, ka)
	bad.Fingerprint = ssh.FingerprintSHA256(stranger) // not this key's
	for _, c := range []struct {
		name   string
		req    authkeys.HookRequest
		lookup Lookup
		allow  bool
		reason string
	}{
		{"active device", request(tunnelUser, ka), lookup, true, ""},
		{"another user", request("root", ka), lookup, false, `user "root" is not the tunnel user`},
		{"revoked device", request(tunnelUser, kr), lookup, false, "device is revoked"},
		{"unknown key", request(tunnelUser, stranger), lookup, false, "unknown key"},
		{"fingerprint of another key", bad, lookup, false, "does not match the key"},
		{"no answer", request(tunnelUser, ka), func(context.Context, string, ssh.PublicKey) (registry.Device, bool, error) {
			return registry.Device{}, false, errors.New("master unreachable and key not cached")
		}, false, "no answer"},
	} {
		t.Run(c.name, func(t *testing.T) {
			g := newAuthRig(c.lookup)
			r := g.a.Authorize(context.Background(), c.req)
			if r.Allow != c.allow {
				t.Fatalf("allow %v, want %v: %+v", r.Allow, c.allow, r)
			}
			if c.allow {
				want, _ := authkeys.AuthorizedLine(active)
				if len(r.Lines) != 1 || r.Lines[0] != want {
					t.Errorf("lines %q, want %q", r.Lines, want)
				}
				return
			}
			if len(r.Lines) != 0 || !strings.Contains(r.Reason, c.reason) {
				t.Errorf("reply %+v, want a refusal saying %q", r, c.reason)
			}
		})
	}
}

// Every refusal that got as far as a lookup is an event for the registry.
func TestAuthorizeDenialIsAnEvent(t *testing.T) {
	revoked, k := newDevice(t, "old", registry.StatusRevoked)
	g := newAuthRig(registryOf(revoked))
	g.a.Authorize(context.Background(), request(tunnelUser, k))
	if len(g.events) != 1 || !strings.HasPrefix(g.events[0], registry.EventAuthDeny+" old: device is revoked (key "+revoked.Fingerprint) {
		t.Errorf("events %q", g.events)
	}
}

// masterAPI validates the keys of its devices; nothing else.
type masterAPI struct {
	devices   map[string]registry.Device
	validated int
}

func (m *masterAPI) Validate(_ context.Context, req wire.ValidateRequest) (wire.Validation, error) {
	m.validated++
	d, ok := m.devices[req.PublicKey]
	if !ok {
		return wire.Validation{}, fmt.Errorf("%w: 403", source.ErrNotAccepted)
	}
	v := wire.Validation{Device: d.Name, Fingerprint: d.Fingerprint, PublicKey: d.PublicKey, Status: d.Status, TTLSeconds: 300}
	for _, f := range d.Forwards {
		v.Forwards = append(v.Forwards, f.Wire())
	}
	return v, nil
}

func (m *masterAPI) Revocations(context.Context, string, int64, time.Duration) (wire.RevocationsReply, error) {
	return wire.RevocationsReply{}, source.ErrNoRevocationFeed
}

func (m *masterAPI) Heartbeat(context.Context, string, wire.Heartbeat) (wire.HeartbeatReply, error) {
	return wire.HeartbeatReply{}, nil
}

// Under a master: a key the slave's cache misses is validated by the master
// and then served from the cache; a key the master does not know is refused.
func TestAuthorizeUnderMaster(t *testing.T) {
	dev, k := newDevice(t, "pi", registry.StatusActive)
	_, stranger := newDevice(t, "x", registry.StatusActive)
	api := &masterAPI{devices: map[string]registry.Device{dev.PublicKey: dev}}
	cache, err := authkeys.OpenCache(filepath.Join(t.TempDir(), "cache.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	src := source.NewMaster(api, "s1", time.Now, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := src.Start(context.Background(), cache); err != nil {
		t.Fatal(err)
	}
	g := newAuthRig(src.Lookup)
	for i := 0; i < 2; i++ {
		if r := g.a.Authorize(context.Background(), request(tunnelUser, k)); !r.Allow {
			t.Fatalf("attempt %d refused: %s", i, r.Reason)
		}
	}
	if api.validated != 1 {
		t.Errorf("%d validations for two logins, want 1 (the second from the cache)", api.validated)
	}
	if _, _, found, _ := cache.Get(context.Background(), dev.Fingerprint); !found {
		t.Error("the validated device is not in the cache the hook falls back to")
	}
	if r := g.a.Authorize(context.Background(), request(tunnelUser, stranger)); r.Allow || r.Reason != "unknown key" {
		t.Errorf("unknown key under a master: %+v", r)
	}
}

// A key that holds --max-sessions-per-device sessions already is refused
// with a reason and an event; below the cap it logs in.
func TestAuthorizeSessionCap(t *testing.T) {
	dev, k := newDevice(t, "pi", registry.StatusActive)
	g := newAuthRig(registryOf(dev))
	live := 0
	g.a.MaxSessions = 2
	g.a.Sessions = func(_ context.Context, fp string) int {
		if fp != dev.Fingerprint {
			t.Errorf("sessions asked for %s", fp)
		}
		return live
	}
	for live = 0; live < 2; live++ {
		if r := g.a.Authorize(context.Background(), request(tunnelUser, k)); !r.Allow {
			t.Fatalf("%d live sessions: refused: %s", live, r.Reason)
		}
	}
	r := g.a.Authorize(context.Background(), request(tunnelUser, k))
	if r.Allow || !strings.Contains(r.Reason, "session cap: device pi has 2 sessions, at most 2") {
		t.Fatalf("at the cap: %+v", r)
	}
	if len(g.events) != 1 || !strings.Contains(g.events[0], registry.EventAuthDeny+" pi: session cap") {
		t.Errorf("events %q", g.events)
	}
}
