package client_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mas4h/mas4h/master"
	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// deadURL is a master nobody listens at: connection refused.
func deadURL(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + ln.Addr().String()
	ln.Close()
	return u
}

// fake is a master that answers every call with status (and counts them).
type fake struct {
	url   string
	calls atomic.Int64
}

func newFake(t *testing.T, status int) *fake {
	f := &fake{}
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.calls.Add(1)
		if status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "7")
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		w.Write([]byte(`{"error":"` + http.StatusText(status) + ` from fake"}`))
	}))
	t.Cleanup(ts.Close)
	f.url = ts.URL
	return f
}

func TestFailoverOnConnectionRefusedAnd5xx(t *testing.T) {
	good := newFake(t, http.StatusOK)
	for name, first := range map[string]string{
		"refused": deadURL(t),
		"503":     newFake(t, http.StatusServiceUnavailable).url,
		"500":     newFake(t, http.StatusInternalServerError).url,
	} {
		c := mustNew(t, first+","+good.url, "")
		if err := c.Healthz(context.Background()); err != nil {
			t.Errorf("%s first: %v", name, err)
		}
		if c.URL() != good.url {
			t.Errorf("%s first: sticks to %s, want %s", name, c.URL(), good.url)
		}
	}
}

// A 4xx is the master's answer about the request, the same from each: it
// is returned as it is, and the next master is not asked.
func TestNoFailoverOn4xx(t *testing.T) {
	for _, status := range []int{http.StatusForbidden, http.StatusConflict, http.StatusNotFound, http.StatusTooManyRequests} {
		first, second := newFake(t, status), newFake(t, http.StatusOK)
		c := mustNew(t, first.url+","+second.url, "")
		err := c.Healthz(context.Background())
		var ae *client.Error
		if !errors.As(err, &ae) || ae.Status != status || ae.URL != first.url {
			t.Errorf("%d: %#v", status, err)
		}
		if n := second.calls.Load(); n != 0 {
			t.Errorf("%d: the second master was asked %d times", status, n)
		}
		if c.URL() != first.url {
			t.Errorf("%d: moved to %s", status, c.URL())
		}
	}
}

func TestFailoverSticks(t *testing.T) {
	dead := deadURL(t)
	a, b := newFake(t, http.StatusOK), newFake(t, http.StatusOK)
	c := mustNew(t, dead+","+a.url+","+b.url, "")
	for range 5 {
		if err := c.Healthz(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if a.calls.Load() != 5 || b.calls.Load() != 0 {
		t.Errorf("calls: a %d, b %d; want all 5 to the first that answered", a.calls.Load(), b.calls.Load())
	}
}

// When none answers, the error names each master's failure, and the HTTP
// answer (with its Retry-After) is what errors.As finds.
func TestNoMasterAnswers(t *testing.T) {
	dead := deadURL(t)
	busy := newFake(t, http.StatusServiceUnavailable)
	c := mustNew(t, dead+","+busy.url, "")
	err := c.Healthz(context.Background())
	var ae *client.Error
	if !errors.As(err, &ae) || ae.Status != 503 || ae.RetryAfter != 7*time.Second {
		t.Errorf("round error: %#v", err)
	}
	if !client.IsUnreachable(err) || !strings.Contains(err.Error(), "master at "+dead+" is unreachable") || !strings.Contains(err.Error(), busy.url+": Service Unavailable from fake (HTTP 503)") {
		t.Errorf("round error: %v", err)
	}
	// The next call starts over where the last one did.
	if c.URL() != dead {
		t.Errorf("after a failed round: %s first", c.URL())
	}
}

// A master that hangs gets its share of the caller's deadline, so that
// the next is asked in time.
func TestHangingMasterLeavesTimeForTheNext(t *testing.T) {
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer hang.Close()
	good := newFake(t, http.StatusOK)
	c := mustNew(t, hang.URL+","+good.url, "")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Healthz(ctx); err != nil {
		t.Errorf("hanging first master: %v", err)
	}
}

func TestShuffleCoversAll(t *testing.T) {
	urls := []string{"https://m1:8080", "https://m2:8080", "https://m3:8080"}
	first := map[string]int{}
	for range 300 {
		c, err := client.New(strings.Join(urls, ","), "", client.WithShuffle())
		if err != nil {
			t.Fatal(err)
		}
		got := c.URLs()
		if len(got) != 3 {
			t.Fatalf("URLs = %v", got)
		}
		first[got[0]]++
	}
	for _, u := range urls {
		if first[u] == 0 {
			t.Errorf("%s never first in 300 shuffles: %v", u, first)
		}
	}
	// Without WithShuffle: the order given.
	c := mustNew(t, strings.Join(urls, ","), "")
	if got := c.URLs(); strings.Join(got, ",") != strings.Join(urls, ",") {
		t.Errorf("unshuffled URLs = %v", got)
	}
}

func TestParseMasters(t *testing.T) {
	for in, want := range map[string]string{
		"https://m1:8080,":                  "master 2 of 2: empty",
		",https://m1:8080":                  "master 1 of 2: empty",
		"https://m1:8080,,https://m2:8080":  "master 2 of 3: empty",
		"https://m1:8080,https://m1:8080/":  "master 2 of 2: https://m1:8080/ is master 1 already",
		"https://m1:8080,m2:8080":           `master 2 of 2: master URL must look like http://HOST:PORT or https://HOST:PORT, got "m2:8080"`,
		"https://m1:8080,http://u:p@m2:80/": `master 2 of 2: master URL "http://u:p@m2:80/": no user`,
	} {
		_, err := client.New(in, "")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("New(%q) = %v, want %q", in, err, want)
		}
	}
	got, err := client.ParseMasters(" https://m1:8080/api/v1 , http://127.0.0.1:8080 ")
	if err != nil || strings.Join(got, " ") != "https://m1:8080 http://127.0.0.1:8080" {
		t.Errorf("ParseMasters = %v, %v", got, err)
	}
	c := mustNew(t, "http://m1.example.net:8080,https://m2:8080,http://127.0.0.1:8080,http://m4.example.net", "")
	if got := c.Cleartext(); strings.Join(got, " ") != "http://m1.example.net:8080 http://m4.example.net" {
		t.Errorf("Cleartext = %v", got)
	}
}

// signingMaster is a real master whose slot and access signatures must
// name its own URL (PublicURLs), with slave s1 live and device pi-1
// enrolled with key.
func signingMaster(t *testing.T, key string, slaves bool) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := "http://" + ln.Addr().String()
	st, err := registry.Open(context.Background(), filepath.Join(t.TempDir(), "registry.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv, err := master.New(context.Background(), master.Config{Store: st, AdminToken: adminTok, SlaveToken: slaveTok, PublicURLs: []string{u}})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewUnstartedServer(srv.Handler())
	ts.Listener.Close()
	ts.Listener = ln
	ts.Start()
	t.Cleanup(srv.Close)
	t.Cleanup(ts.Close)
	ctx := context.Background()
	if _, err := mustNew(t, u, adminTok).AddDevice(ctx, wire.AddDeviceRequest{Name: "pi-1", PublicKey: key}); err != nil {
		t.Fatal(err)
	}
	if slaves {
		if _, err := mustNew(t, u, slaveTok).Heartbeat(ctx, "s1", wire.Heartbeat{Host: "127.0.0.1", Port: 2222, User: "mas4h-tunnel", Capacity: 10, Tunnels: []wire.Tunnel{}}); err != nil {
			t.Fatal(err)
		}
	}
	return u
}

// After a failover the slot request is signed for the master it goes to:
// real masters that accept only signatures naming their own URL.
func TestSlotSignedForTheMasterThatAnswers(t *testing.T) {
	key, signer := newKey(t)
	busy := signingMaster(t, key, false) // no slave live: 503
	good := signingMaster(t, key, true)
	for name, first := range map[string]string{"503": busy, "refused": deadURL(t)} {
		c := mustNew(t, first+","+good, "")
		s, err := c.Slot(context.Background(), signer)
		if err != nil || s.Device != "pi-1" || s.Slave != "s1" {
			t.Errorf("%s first: Slot = %+v, %v", name, s, err)
		}
		// Stuck to the good one: signed for it again.
		if s, err := c.Slot(context.Background(), signer); err != nil || s.Slave != "s1" {
			t.Errorf("%s first, second slot: %+v, %v", name, s, err)
		}
	}
	// The check is real: a request signed for the other master is refused.
	req, err := client.SignSlotRequest(signer, busy, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mustNew(t, good, "").RequestSlot(context.Background(), req); client.StatusOf(err) != http.StatusForbidden {
		t.Errorf("slot signed for %s sent to %s: %v", busy, good, err)
	}
}
