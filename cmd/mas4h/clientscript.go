package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mas4h/mas4h/agent"
	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/templates"
)

// clientScript is what templates/client.sh.tmpl is rendered from. The
// shell-bound values are already single-quoted.
type clientScript struct {
	Version   string
	Device    string // validated device name, or ""
	Install   string // quoted: openwrt, systemd, launchd, cron or ''
	Master    string // quoted: URL[,URL…]
	Key       string // quoted
	StateDir  string // quoted
	SSHClient string // quoted
	// The masters' pinned trust anchor(s), PEM, for https masters (one
	// bundle for all of them); "" when every master is http.
	CAPEM          string
	CASHA256       string // hex SHA-256 of each pinned certificate (DER), comma-separated
	CASHA256Quoted string // quoted
	InsecureHTTP   string // yes or no
}

var safePathRE = regexp.MustCompile(`^/[A-Za-z0-9._/+-]*$`)

type clientScriptFlags struct {
	master, device, install, key, stateDir, sshClient string
	masterCA                                          string // PEM file of the CA to pin
	insecureHTTP                                      bool
}

// render renders the script. For https masters it pins --master-ca's
// certificates, or what each master presents: the root its chain verifies
// against in this host's trust store, or its own self-signed certificate
// (trust on first use, by the admin rendering the script; the SHA-256 is
// printed to warn so it can be compared). With several masters the script
// carries one bundle, all of their pins, and trusts it for each master
// (curl still checks that a certificate names the host it reached).
func (f clientScriptFlags) render(ctx context.Context, warn io.Writer) (string, error) {
	if f.master == "" {
		return "", usagef("--master is required")
	}
	if _, err := client.ParseMasters(f.master); err != nil {
		return "", usageError{err}
	}
	if strings.ContainsAny(f.master, "'\"\\`${} \t\n") {
		return "", usagef("--master %q: quotes, braces, $ and spaces are not allowed", f.master)
	}
	var masters []string
	var https []*url.URL
	for _, m := range strings.Split(f.master, ",") {
		m = strings.TrimSpace(m)
		masters = append(masters, m)
		u, err := url.Parse(m)
		if err != nil {
			return "", usageError{err}
		}
		if u.Scheme == "https" {
			https = append(https, u)
		} else if !f.insecureHTTP {
			return "", usagef("--master %s is plain http: the device's slot request and its answer would travel in clear text, and whoever is on the path could send the device to an sshd of theirs; use https://, or accept this with --insecure-http", m)
		}
	}
	if f.masterCA != "" {
		if len(https) == 0 {
			return "", usagef("--master-ca needs an https:// master")
		}
		https = https[:1] // one bundle for all
	}
	var pins []*x509.Certificate
	seen := map[[32]byte]bool{}
	for _, u := range https {
		certs, err := masterPins(ctx, u, f.masterCA, warn)
		if err != nil {
			return "", err
		}
		for _, c := range certs {
			if sum := sha256.Sum256(c.Raw); !seen[sum] {
				seen[sum] = true
				pins = append(pins, c)
			}
		}
	}
	if f.device != "" {
		if err := registry.ValidateDeviceName(f.device); err != nil {
			return "", usageError{err}
		}
	}
	switch f.install {
	case "", "openwrt", "systemd", "launchd", "cron":
	default:
		return "", usagef("--install must be openwrt, systemd, launchd or cron, not %q", f.install)
	}
	switch f.sshClient {
	case agent.ClientAuto, agent.ClientOpenSSH, agent.ClientDropbear:
	default:
		return "", usagef("--ssh-client must be auto, openssh or dropbear, not %q", f.sshClient)
	}
	if f.key == "" {
		f.key = "/etc/mas4h/key"
	}
	if f.stateDir == "" {
		f.stateDir = "/var/lib/mas4h-client"
		switch f.install {
		case "openwrt":
			f.stateDir = "/etc/mas4h/state" // /var is a tmpfs on OpenWrt
		case "launchd":
			f.stateDir = "/var/db/mas4h-client" // macOS's place for daemons' state
		}
	}
	for flag, p := range map[string]string{"--key": f.key, "--state-dir": f.stateDir} {
		if !safePathRE.MatchString(p) {
			return "", usagef("%s %q must be an absolute path of letters, digits and . _ / + -", flag, p)
		}
	}
	t, err := templates.Parse("client.sh.tmpl")
	if err != nil {
		return "", err
	}
	cs := clientScript{
		Version: strings.Join(strings.Fields(version), " "), Device: f.device, Install: shQuote(f.install),
		Master: shQuote(strings.Join(masters, ",")), Key: shQuote(f.key), StateDir: shQuote(f.stateDir), SSHClient: shQuote(f.sshClient),
		InsecureHTTP: "no",
	}
	if f.insecureHTTP {
		cs.InsecureHTTP = "yes"
	}
	var sums []string
	for _, c := range pins {
		cs.CAPEM += string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
		sum := sha256.Sum256(c.Raw)
		sums = append(sums, hex.EncodeToString(sum[:]))
	}
	cs.CASHA256 = strings.Join(sums, ",")
	cs.CASHA256Quoted = shQuote(cs.CASHA256)
	var b strings.Builder
	err = t.Execute(&b, cs)
	if err != nil {
		return "", fmt.Errorf("rendering the client script: %w", err)
	}
	return b.String(), nil
}

// shQuote single-quotes s for sh.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func newClientScriptCmd(g *globals) *cobra.Command {
	var f clientScriptFlags
	cmd := &cobra.Command{
		Use:   "client-script --master URL[,URL...] [--device NAME] [--master-ca FILE] [--insecure-http] [--install openwrt|systemd|launchd|cron] [--key PATH] [--ssh-client auto|openssh|dropbear]",
		Short: "Print a POSIX sh client for devices that can take no binary (OpenWrt, busybox, macOS)",
		Long: `Print a POSIX sh script (busybox ash is enough) that keeps a device's tunnel
up with only ssh or dbclient and curl or uclient-fetch: the agent's loop,
backoff, host-key pinning and last-slot fallback, reading the slot through
POST /api/v1/slots?format=env (parsed line by line, never sourced; only
PORT:HOST:PORT forwards accepted), signed with ssh-keygen -Y sign where the
device has it (OpenWrt: opkg install openssh-keygen).

The script is pinned to the master it is rendered for: it trusts only the
certificate(s) taken now, --master-ca FILE (a private CA, or the master's own
certificate), or else the root the master's chain verifies against here, or
the master's self-signed certificate, whose SHA-256 is printed to compare.

Several masters of one fleet (--master URL,URL,...) are tried in a random
order drawn at each start, sticking to the one that answers and moving on
when one does not answer or answers 5xx; each slot request is signed for
the master it goes to. The script carries one bundle of pins for all of
them: --master-ca FILE (a CA, or every master's certificate in one file),
or what each master presents now (each must answer while rendering).
On the device it talks to the master with curl --cacert or uclient-fetch
--ca-certificate, never busybox wget over https (which verifies nothing).
An http:// master needs --insecure-http, and the script warns at every start.

  mas4h client-script --master https://master:8080 --device ap-17 --install openwrt > mas4h-client.sh
  scp mas4h-client.sh root@ap-17:/tmp/ && ssh root@ap-17 'sh /tmp/mas4h-client.sh keygen'
  mas4h device add ap-17 --key -     # paste the printed public key
  ssh root@ap-17 'sh /tmp/mas4h-client.sh install'`,
		Args: exactArgs(0, "no arguments"),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := f.render(cmd.Context(), g.stderr)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(g.stdout, s)
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.master, "master", "", "the master's URL as the device reaches it, or several masters of one fleet as URL,URL,...")
	fl.StringVar(&f.device, "device", "", "the device's name (for the script's comments and hints)")
	fl.StringVar(&f.install, "install", "", "the service kind `install` sets up: openwrt (procd), systemd, launchd (macOS) or cron")
	fl.StringVar(&f.key, "key", "", "the device key's path on the device (default /etc/mas4h/key)")
	fl.StringVar(&f.stateDir, "state-dir", "", "the script's state dir on the device (default /var/lib/mas4h-client, /etc/mas4h/state on OpenWrt, /var/db/mas4h-client with launchd)")
	fl.StringVar(&f.sshClient, "ssh-client", agent.ClientAuto, "auto, openssh or dropbear")
	fl.StringVar(&f.masterCA, "master-ca", "", "PEM file of the CA (or the master's own certificate; with several masters, the CA or all their certificates) the script trusts for the masters; default: what each master presents now")
	fl.BoolVar(&f.insecureHTTP, "insecure-http", false, "allow an http:// master (clear text: whoever is on the path can redirect the tunnel); the script warns at every start")
	return cmd
}

// masterPins are the certificates the script will trust for the master at
// u: those of caFile, or else taken from the master now.
func masterPins(ctx context.Context, u *url.URL, caFile string, warn io.Writer) ([]*x509.Certificate, error) {
	if caFile != "" {
		data, err := os.ReadFile(caFile)
		if err != nil {
			return nil, usagef("--master-ca: %v", err)
		}
		var certs []*x509.Certificate
		for rest := data; ; {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			if b.Type != "CERTIFICATE" {
				continue
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, usagef("--master-ca %s: %v", caFile, err)
			}
			certs = append(certs, c)
		}
		if len(certs) == 0 {
			return nil, usagef("--master-ca %s holds no PEM certificate", caFile)
		}
		return certs, nil
	}
	host := u.Hostname()
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(host, "443")
	}
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	// Verified below, against this host's roots or the certificate itself.
	d := tls.Dialer{Config: &tls.Config{ServerName: host, InsecureSkipVerify: true}}
	conn, err := d.DialContext(dctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("reaching the master at %s to pin its certificate: %w (or give it with --master-ca FILE)", addr, err)
	}
	chain := conn.(*tls.Conn).ConnectionState().PeerCertificates
	conn.Close()
	if len(chain) == 0 {
		return nil, fmt.Errorf("the master at %s presented no certificate", addr)
	}
	leaf := chain[0]
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if chains, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Intermediates: inter}); err == nil {
		root := chains[0][len(chains[0])-1]
		sum := sha256.Sum256(root.Raw)
		fmt.Fprintf(warn, "mas4h client-script: pinned the master's CA %q (SHA-256 %x), which its certificate for %s verifies against\n", root.Subject.String(), sum, host)
		return []*x509.Certificate{root}, nil
	}
	self := x509.NewCertPool()
	self.AddCert(leaf)
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: host, Roots: self}); err != nil {
		return nil, fmt.Errorf("cannot verify the master's certificate for %s (%v): give its CA with --master-ca FILE", host, err)
	}
	sum := sha256.Sum256(leaf.Raw)
	fmt.Fprintf(warn, "mas4h client-script: pinned the master's self-signed certificate, SHA-256 %x: check that it is the master's own (openssl x509 -in CERT -noout -fingerprint -sha256), or give it with --master-ca FILE\n", sum)
	return []*x509.Certificate{leaf}, nil
}
