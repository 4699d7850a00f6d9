package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// testCert is a self-signed certificate (not a CA) for one host, on disk.
type testCert struct {
	cert, key string // PEM files
	x509      *x509.Certificate
	tls       tls.Certificate
}

func writeTestCert(t *testing.T, dir, host string) testCert {
	t.Helper()
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	if ip := net.ParseIP(host); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else {
		tmpl.DNSNames = []string{host}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &priv.PublicKey, priv)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(priv)
	name := fmt.Sprintf("cert-%x", serial)
	c := testCert{cert: filepath.Join(dir, name+".pem"), key: filepath.Join(dir, name+".key")}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
	os.WriteFile(c.cert, certPEM, 0o644)
	os.WriteFile(c.key, keyPEM, 0o600)
	c.x509, _ = x509.ParseCertificate(der)
	c.tls, err = tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// tlsServer serves h over TLS with c on loopback.
func tlsServer(t *testing.T, c testCert, h http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{c.tls}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

func pinOf(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return fmt.Sprintf("%x", sum)
}

// Finding 3, at render time: an https master is pinned (its self-signed
// certificate, or --master-ca), an http one needs --insecure-http, and a
// master whose certificate cannot be verified or reached is refused.
func TestClientScriptRenderPinsTheMaster(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	real := writeTestCert(t, dir, "127.0.0.1")
	srv := tlsServer(t, real, http.NotFoundHandler())

	var warn bytes.Buffer
	s, err := clientScriptFlags{master: srv.URL, sshClient: "auto"}.render(ctx, &warn)
	if err != nil {
		t.Fatal(err)
	}
	pemText := strings.TrimSpace(string(mustRead(t, real.cert)))
	if !strings.Contains(s, pemText) || !strings.Contains(s, "MAS4H_CA_SHA256='"+pinOf(real.x509)+"'") {
		t.Errorf("the script does not pin the master's certificate %s", pinOf(real.x509))
	}
	if !strings.Contains(warn.String(), pinOf(real.x509)) {
		t.Errorf("the pinned certificate's SHA-256 is not shown: %q", warn.String())
	}
	if !strings.Contains(s, "MAS4H_INSECURE_HTTP=no") {
		t.Error("an https script allows http")
	}

	// --master-ca pins that file, without asking the master.
	ca := writeTestCert(t, dir, "ca.example")
	s, err = clientScriptFlags{master: "https://unreachable.invalid:1", sshClient: "auto", masterCA: ca.cert}.render(ctx, &warn)
	if err != nil || !strings.Contains(s, pinOf(ca.x509)) || strings.Contains(s, pinOf(real.x509)) {
		t.Errorf("--master-ca: %v", err)
	}

	// A certificate for another name is not pinned.
	other := writeTestCert(t, dir, "other.example")
	srv2 := tlsServer(t, other, http.NotFoundHandler())
	if _, err := (clientScriptFlags{master: srv2.URL, sshClient: "auto"}).render(ctx, &warn); err == nil || !strings.Contains(err.Error(), "--master-ca") {
		t.Errorf("a certificate for another name: %v", err)
	}
	// Unreachable without --master-ca: refused.
	if _, err := (clientScriptFlags{master: "https://127.0.0.1:1", sshClient: "auto"}).render(ctx, &warn); err == nil {
		t.Error("an unreachable master rendered without a pin")
	}

	// http:// needs --insecure-http.
	_, err = clientScriptFlags{master: "http://master.example:8080", sshClient: "auto"}.render(ctx, &warn)
	if _, ok := err.(usageError); !ok || !strings.Contains(err.Error(), "--insecure-http") {
		t.Errorf("http without --insecure-http: %v", err)
	}
	s, err = clientScriptFlags{master: "http://master.example:8080", sshClient: "auto", insecureHTTP: true}.render(ctx, &warn)
	if err != nil || !strings.Contains(s, "MAS4H_INSECURE_HTTP=yes") || strings.Contains(s, "BEGIN CERTIFICATE") {
		t.Errorf("http with --insecure-http: %v", err)
	}
}

// Several masters: the render checks the list, and the script tries them
// in an order drawn at random at each start (every master comes first in
// some), or as written with MAS4H_MASTER_ORDER=given.
func TestClientScriptSeveralMasters(t *testing.T) {
	ctx := context.Background()
	for list, want := range map[string]string{
		"http://m1:8080,":               "master 2 of 2: empty",
		"http://m1:8080,http://m1:8080": "is master 1 already",
		"http://m1:8080,ftp://m2":       "master 2 of 2: master URL must look like",
		"https://m1:8080,http://m2":     "--master http://m2 is plain http",
	} {
		insecure := !strings.HasPrefix(list, "https://")
		if _, err := (clientScriptFlags{master: list, sshClient: "auto", insecureHTTP: insecure}).render(ctx, io.Discard); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", list, err, want)
		}
	}
	masters := []string{"http://m1.example:8080", "http://m2.example:8080", "http://m3.example:8080"}
	s, err := clientScriptFlags{master: strings.Join(masters, ","), sshClient: "auto", insecureHTTP: true}.render(ctx, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s, "MAS4H_MASTER=${MAS4H_MASTER:-'"+strings.Join(masters, ",")+"'}") {
		t.Error("the script does not carry the list")
	}
	f := filepath.Join(t.TempDir(), "c.sh")
	os.WriteFile(f, []byte(s), 0o644)
	order := func(env ...string) []string {
		cmd := exec.Command("sh", f, "masters")
		cmd.Env = append(os.Environ(), env...)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		return strings.Fields(string(out))
	}
	first := map[string]int{}
	for range 60 {
		got := order()
		sorted := slices.Clone(got)
		slices.Sort(sorted)
		if !slices.Equal(sorted, masters) {
			t.Fatalf("shuffled order %v is not the masters %v", got, masters)
		}
		first[got[0]]++
	}
	for _, m := range masters {
		if first[m] == 0 {
			t.Errorf("%s never first in 60 starts: %v", m, first)
		}
	}
	if got := order("MAS4H_MASTER_ORDER=given"); !slices.Equal(got, masters) {
		t.Errorf("given order: %v", got)
	}

	// Two https masters, each with its own self-signed certificate: the
	// script carries both pins, in one bundle.
	dir := t.TempDir()
	c1, c2 := writeTestCert(t, dir, "127.0.0.1"), writeTestCert(t, dir, "127.0.0.1")
	s1, s2 := tlsServer(t, c1, http.NotFoundHandler()), tlsServer(t, c2, http.NotFoundHandler())
	s, err = clientScriptFlags{master: s1.URL + "," + s2.URL, sshClient: "auto"}.render(ctx, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(s, "MAS4H_CA_SHA256='"+pinOf(c1.x509)+","+pinOf(c2.x509)+"'") || strings.Count(s, "BEGIN CERTIFICATE") != 2 {
		t.Errorf("two masters' own certificates are not both pinned")
	}
}
