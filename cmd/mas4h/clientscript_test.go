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
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
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
