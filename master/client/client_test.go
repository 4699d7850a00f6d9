package client_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master"
	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

const (
	adminTok = "admin-token-0123456789abcdef"
	slaveTok = "slave-token-0123456789abcdef"
)

func newMaster(t *testing.T, mutate func(*master.Config)) string {
	t.Helper()
	st, err := registry.Open(context.Background(), filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := master.Config{Store: st, AdminToken: adminTok, SlaveToken: slaveTok}
	if mutate != nil {
		mutate(&cfg)
	}
	srv, err := master.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(srv.Close)
	t.Cleanup(ts.Close)
	return ts.URL
}

// newKey returns a fresh key as an authorized key and as a signer.
func newKey(t *testing.T) (string, ssh.Signer) {
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return registry.AuthorizedKey(s.PublicKey()), s
}

func stranger(t *testing.T) ssh.Signer {
	_, s := newKey(t)
	return s
}

func mustNew(t *testing.T, url, token string) *client.Client {
	t.Helper()
	c, err := client.New(url, token)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestClientAgainstTheRealAPI(t *testing.T) {
	url := newMaster(t, nil)
	ctx := context.Background()
	admin := mustNew(t, url+"/api/v1/", adminTok) // the prefix is tolerated
	slave := mustNew(t, url, slaveTok)
	device := mustNew(t, url, "")

	if err := device.Healthz(ctx); err != nil {
		t.Fatal(err)
	}
	key, signer := newKey(t)
	d, err := admin.AddDevice(ctx, wire.AddDeviceRequest{Name: "pi-1", PublicKey: key, Forwards: []string{"ssh=localhost:22", "web=localhost:80"}})
	if err != nil || d.Name != "pi-1" || len(d.Forwards) != 2 {
		t.Fatalf("AddDevice = %+v, %v", d, err)
	}
	_, err = admin.AddDevice(ctx, wire.AddDeviceRequest{Name: "pi-1", PublicKey: registry.AuthorizedKey(stranger(t).PublicKey())})
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusConflict || !strings.Contains(ae.Message, "taken") {
		t.Errorf("duplicate AddDevice = %v", err)
	}
	if list, err := admin.Devices(ctx); err != nil || len(list) != 1 {
		t.Errorf("Devices = %+v, %v", list, err)
	}
	if _, err := admin.Device(ctx, "nope"); client.StatusOf(err) != http.StatusNotFound {
		t.Errorf("Device(nope) = %v", err)
	}

	// No slave yet: 503 with Retry-After.
	_, err = device.Slot(ctx, signer)
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable || ae.RetryAfter < 5*time.Second || ae.RetryAfter > 15*time.Second {
		t.Errorf("Slot without slaves = %#v", err)
	}
	reply, err := slave.Heartbeat(ctx, "s1", wire.Heartbeat{Host: "127.0.0.1", Port: 2222, User: "mas4h-tunnel", Capacity: 10, Tunnels: []wire.Tunnel{}})
	if err != nil || reply.IntervalSeconds != 5 {
		t.Fatalf("Heartbeat = %+v, %v", reply, err)
	}
	slot, err := device.Slot(ctx, signer)
	if err != nil || slot.Slave != "s1" || slot.Device != "pi-1" || len(slot.Forwards) != 2 {
		t.Fatalf("Slot = %+v, %v", slot, err)
	}
	if _, err := device.Slot(ctx, stranger(t)); client.StatusOf(err) != http.StatusForbidden {
		t.Errorf("Slot(stranger) = %v", err)
	}
	v, err := slave.Validate(ctx, wire.ValidateRequest{PublicKey: key})
	if err != nil || v.Device != "pi-1" || v.TTLSeconds != 300 {
		t.Errorf("Validate = %+v, %v", v, err)
	}
	// Roles: the slave token cannot administer.
	if _, err := slave.Devices(ctx); client.StatusOf(err) != http.StatusForbidden {
		t.Errorf("Devices with the slave token = %v", err)
	}
	if _, err := mustNew(t, url, "wrong-token-0123456789").Status(ctx); client.StatusOf(err) != http.StatusUnauthorized {
		t.Errorf("Status with a wrong token = %v", err)
	}

	st, err := admin.Status(ctx)
	if err != nil || len(st.Slaves) != 1 || st.Devices.Total != 1 {
		t.Errorf("Status = %+v, %v", st, err)
	}
	if ts, err := admin.Tunnels(ctx); err != nil || len(ts) != 0 {
		t.Errorf("Tunnels = %+v, %v", ts, err)
	}
	evs, err := admin.Events(ctx, client.EventQuery{Device: "pi-1", Kinds: []string{"slot"}, Since: time.Now().Add(-time.Hour)})
	if err != nil || len(evs) != 1 || evs[0].Slave != "s1" {
		t.Errorf("Events = %+v, %v", evs, err)
	}
	if d, err := admin.RevokeDevice(ctx, "pi-1"); err != nil || d.Status != "revoked" {
		t.Errorf("RevokeDevice = %+v, %v", d, err)
	}
	reply, err = slave.Heartbeat(ctx, "s1", wire.Heartbeat{Host: "127.0.0.1", Port: 2222, User: "mas4h-tunnel", Capacity: 10, Seq: reply.Seq})
	if err != nil || len(reply.Revocations) != 1 || reply.Revocations[0].Device != "pi-1" {
		t.Errorf("Heartbeat after revoke = %+v, %v", reply, err)
	}
	if err := admin.RemoveDevice(ctx, "pi-1"); err != nil {
		t.Errorf("RemoveDevice = %v", err)
	}
	if err := admin.RemoveDevice(ctx, "pi-1"); client.StatusOf(err) != http.StatusNotFound {
		t.Errorf("second RemoveDevice = %v", err)
	}
}

func TestClientRateLimitError(t *testing.T) {
	url := newMaster(t, func(c *master.Config) { c.SlotRate, c.SlotBurst = 0.2, 1 })
	c := mustNew(t, url, "")
	ctx := context.Background()
	c.Slot(ctx, stranger(t))
	_, err := c.Slot(ctx, stranger(t))
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusTooManyRequests || ae.RetryAfter < time.Second {
		t.Errorf("second slot = %#v", err)
	}
}

func TestClientDeadMaster(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := mustNew(t, "http://"+addr, adminTok)
	_, err = c.Status(context.Background())
	if !client.IsUnreachable(err) || !strings.Contains(err.Error(), "master at http://"+addr+" is unreachable") {
		t.Errorf("dead master: %v", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("error spans lines: %q", err)
	}

	// A master that accepts but never answers: the timeout.
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(2 * time.Second):
		}
	}))
	defer hang.Close()
	c, _ = client.New(hang.URL, "", client.WithTimeout(100*time.Millisecond))
	if err := c.Healthz(context.Background()); !client.IsUnreachable(err) || !strings.Contains(err.Error(), "no answer within") {
		t.Errorf("hanging master: %v", err)
	}
	// The caller's deadline came first: the error says what was waited, not
	// the client's timeout (it said "no answer within 10s" after 1 s).
	c, _ = client.New(hang.URL, "", client.WithTimeout(10*time.Second))
	dctx, dcancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer dcancel()
	err = c.Healthz(dctx)
	m := regexp.MustCompile(`no answer within ([0-9.]+m?s)`).FindStringSubmatch(fmt.Sprint(err))
	if m == nil {
		t.Fatalf("caller's deadline of 300ms: %v", err)
	}
	if d, _ := time.ParseDuration(m[1]); d < 300*time.Millisecond || d >= 10*time.Second {
		t.Errorf("caller's deadline of 300ms: %v, want the ~300ms waited", err)
	}
	// The caller's cancellation is not the master's fault.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := c.Healthz(ctx); client.IsUnreachable(err) || !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled call: %v", err)
	}
}

func TestClientNonJSONError(t *testing.T) {
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		w.Write([]byte("<html>bad gateway</html>"))
	}))
	defer proxy.Close()
	c := mustNew(t, proxy.URL, "")
	err := c.Healthz(context.Background())
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != 502 || ae.Message != "Bad Gateway" {
		t.Errorf("502 from a proxy = %#v", err)
	}
}

func TestNewRefusesBadURLs(t *testing.T) {
	for _, u := range []string{"", "master:8080", "ftp://x", "http://", "http://u:p@x", "http://x/?q=1"} {
		if _, err := client.New(u, ""); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
}

// The agent holds a crypto.Signer of any type a device key may be: each
// signs a slot request the master accepts (RSA with rsa-sha2-512).
func TestSlotSignedWithEveryKeyType(t *testing.T) {
	url := newMaster(t, nil)
	ctx := context.Background()
	admin := mustNew(t, url, adminTok)
	device := mustNew(t, url, "")
	if _, err := mustNew(t, url, slaveTok).Heartbeat(ctx, "s1", wire.Heartbeat{Host: "127.0.0.1", Port: 2222, User: "mas4h-tunnel", Capacity: 10, Tunnels: []wire.Tunnel{}}); err != nil {
		t.Fatal(err)
	}
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	for name, k := range map[string]crypto.Signer{"ed25519": ed, "ecdsa": ec, "rsa": rk} {
		pub, _ := ssh.NewPublicKey(k.Public())
		if _, err := admin.AddDevice(ctx, wire.AddDeviceRequest{Name: "d-" + name, PublicKey: registry.AuthorizedKey(pub)}); err != nil {
			t.Fatal(err)
		}
		if s, err := device.Slot(ctx, k); err != nil || s.Device != "d-"+name {
			t.Errorf("%s: Slot = %+v, %v", name, s, err)
		}
	}
}

// Plain http:// to anything but the loopback is cleartext (callers warn);
// https:// and the loopback are not.
func TestCleartext(t *testing.T) {
	for u, want := range map[string]bool{
		"http://master.example.net:8080": true,
		"http://192.0.2.7:8080":          true,
		"http://[2001:db8::1]:8080":      true,
		"http://127.0.0.1:8080":          false,
		"http://127.9.9.9:8080":          false,
		"http://[::1]:8080":              false,
		"http://localhost:8080":          false,
		"https://master.example.net":     false,
		"https://192.0.2.7:8443/api/v1":  false,
	} {
		c, err := client.New(u, "")
		if err != nil {
			t.Fatalf("New(%q): %v", u, err)
		}
		if got := len(c.Cleartext()) == 1; got != want {
			t.Errorf("Cleartext(%q) = %v, want %v", u, got, want)
		}
	}
}
