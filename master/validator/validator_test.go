package validator

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/registry"
)

func newKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	return testkit.NewKey(t, "").Public
}

func TestParse(t *testing.T) {
	for spec, want := range map[string]string{
		"":                           "<nil>",
		"registry":                   "<nil>",
		"exec:/usr/bin/true":         "exec validator",
		"https://auth.example/check": "webhook validator",
	} {
		v, err := Parse(spec, nil)
		if err != nil {
			t.Errorf("Parse(%q) = %v", spec, err)
			continue
		}
		got := "<nil>"
		if v != nil {
			got = v.String()
		}
		if got != want {
			t.Errorf("Parse(%q) = %s, want %s", spec, got, want)
		}
	}
	for _, spec := range []string{"http://auth.example/check", "exec:relative/path", "ldap://x", "https://", "sometimes"} {
		if _, err := Parse(spec, nil); err == nil {
			t.Errorf("Parse(%q) accepted", spec)
		}
	}
	if _, err := Parse("http://x", nil); err == nil || !strings.Contains(err.Error(), "https") {
		t.Errorf("plain http refusal = %v", err)
	}
}

func TestDeviceName(t *testing.T) {
	long := strings.Repeat("a", 70)
	for in, want := range map[string]string{
		"pi-1":                "pi-1",
		"Kitchen Pi":          "kitchen-pi",
		"AA:BB:CC:DD:EE:FF":   "aa-bb-cc-dd-ee-ff",
		"user@example.com":    "user-example.com",
		"__x":                 "x",
		long:                  long[:63],
		"Ünïcode":             "-n-code",
		"serial/../../etc/pw": "serial-..-..-etc-pw",
	} {
		got, err := DeviceName(in)
		if want == "-n-code" {
			// Leading '-' is dropped: only what follows is left.
			want = "n-code"
		}
		if err != nil || got != want {
			t.Errorf("DeviceName(%q) = %q, %v; want %q", in, got, err, want)
		}
		if err == nil && registry.ValidateDeviceName(got) != nil {
			t.Errorf("DeviceName(%q) = %q is not a valid name", in, got)
		}
	}
	for _, in := range []string{"", "---", "!!!", "   "} {
		if got, err := DeviceName(in); err == nil {
			t.Errorf("DeviceName(%q) = %q, want an error", in, got)
		}
	}
}

func script(t *testing.T, body string) *Exec {
	t.Helper()
	path := filepath.Join(t.TempDir(), "v")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return &Exec{Path: path}
}

func TestExec(t *testing.T) {
	k := newKey(t)
	ctx := context.Background()
	ok := script(t, `read -r line; [ "$line" = "`+registry.AuthorizedKey(k)+`" ] || exit 3
[ "$MAS4H_FINGERPRINT" = "`+registry.Fingerprint(k)+`" ] || exit 4
echo '{"device_key": "dev-7", "group": "lab"}'`)
	dk, extra, err := ok.Validate(ctx, k)
	if err != nil || dk != "dev-7" || extra["group"] != "lab" {
		t.Fatalf("Validate = %q, %v, %v", dk, extra, err)
	}
	for name, body := range map[string]string{
		"non-zero exit":   `echo '{"device_key": "x"}'; exit 1`,
		"bad JSON":        `echo 'device_key=x'`,
		"empty key":       `echo '{"device_key": ""}'`,
		"key not string":  `echo '{"device_key": 7}'`,
		"no key":          `echo '{}'`,
		"huge output":     `head -c 200000 /dev/zero | tr '\0' ' '; echo '{"device_key": "x"}'`,
		"stderr is noted": `echo "nope: unknown" >&2; exit 2`,
	} {
		_, _, err := script(t, body).Validate(ctx, k)
		if !errors.Is(err, ErrDenied) {
			t.Errorf("%s: err = %v, want ErrDenied", name, err)
		}
		if name == "stderr is noted" && !strings.Contains(err.Error(), "nope: unknown") {
			t.Errorf("stderr not in error: %v", err)
		}
	}
	if _, _, err := (&Exec{Path: "/nonexistent/validator"}).Validate(ctx, k); !errors.Is(err, ErrDenied) {
		t.Errorf("missing program: %v", err)
	}
	slow := script(t, "sleep 5")
	slow.Timeout = 200 * time.Millisecond
	start := time.Now()
	_, _, err = slow.Validate(ctx, k)
	if !errors.Is(err, ErrDenied) || time.Since(start) > 2*time.Second {
		t.Errorf("slow validator: %v after %s", err, time.Since(start))
	}
}

func TestWebhook(t *testing.T) {
	k := newKey(t)
	var got webhookRequest
	mux := http.NewServeMux()
	mux.HandleFunc("/ok", func(w http.ResponseWriter, r *http.Request) {
		json.NewDecoder(r.Body).Decode(&got)
		w.Write([]byte(`{"device_key": "hook-dev", "tier": 2}`))
	})
	mux.HandleFunc("/no", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"device_key":"x"}`, http.StatusForbidden)
	})
	mux.HandleFunc("/garbage", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("<html>")) })
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(time.Second):
		}
	})
	ts := httptest.NewTLSServer(mux)
	defer ts.Close()
	ctx := context.Background()

	w := &Webhook{URL: ts.URL + "/ok", Client: ts.Client()}
	dk, extra, err := w.Validate(ctx, k)
	if err != nil || dk != "hook-dev" || extra["tier"] != float64(2) {
		t.Fatalf("Validate = %q, %v, %v", dk, extra, err)
	}
	if got.PublicKey != registry.AuthorizedKey(k) || got.Fingerprint != registry.Fingerprint(k) {
		t.Errorf("webhook got %+v", got)
	}
	for _, path := range []string{"/no", "/garbage", "/missing"} {
		if _, _, err := (&Webhook{URL: ts.URL + path, Client: ts.Client()}).Validate(ctx, k); !errors.Is(err, ErrDenied) {
			t.Errorf("%s: %v, want ErrDenied", path, err)
		}
	}
	slow := &Webhook{URL: ts.URL + "/slow", Client: ts.Client(), Timeout: 200 * time.Millisecond}
	start := time.Now()
	if _, _, err := slow.Validate(ctx, k); !errors.Is(err, ErrDenied) || time.Since(start) > 2*time.Second {
		t.Errorf("slow webhook: %v after %s", err, time.Since(start))
	}
	// The default client verifies TLS against the system roots: the test
	// server's self-signed certificate is refused.
	if _, _, err := (&Webhook{URL: ts.URL + "/ok"}).Validate(ctx, k); !errors.Is(err, ErrDenied) {
		t.Errorf("self-signed server with the default client: %v, want ErrDenied", err)
	}
}
