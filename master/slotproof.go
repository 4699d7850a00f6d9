package master

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/sshsig"
)

// A slot request proves that the device holds its key's private half: it
// signs wire.SlotStatement (this master's URL, a timestamp, a nonce and the
// hash of the request's payload) in the sshsig format. Knowing a device's
// public key, which sits in enrolment tickets and dashboards, is then not
// enough to learn its slot, its targets or whether it is enrolled.

// proofError is a slot request whose proof is refused. Refusals that
// depend on the key (a bad signature, a replay) all answer notAccepted,
// like unknown and revoked keys; the others (a missing signature, a clock
// off by more than wire.SlotSkew, another master's URL) say what is wrong,
// which tells a stranger nothing about the key.
type proofError struct {
	status int
	msg    string // for the device
	reason string // for the log and events
}

func (e *proofError) Error() string { return e.reason }

var nonceRE = regexp.MustCompile(`^[A-Za-z0-9_-]{16,64}$`)

// maxMasterURL bounds the master field of a signed request.
const maxMasterURL = 512

// slotProof checks the proofs of signed requests: slot requests (check)
// and operators' access requests (verify).
type slotProof struct {
	allowUnsigned bool
	names         masterNames
	replays       *replayCache
}

func newSlotProof(cfg Config, log *slog.Logger) (*slotProof, error) {
	names, err := newMasterNames(cfg.PublicURLs, cfg.TLSCertFile)
	if err != nil {
		return nil, err
	}
	if cfg.AllowUnsignedSlots {
		log.Warn("slot requests without a signature are accepted (--allow-unsigned-slots): whoever knows a device's public key learns its slave and leased ports; unsigned answers carry no LAN targets")
	}
	if !names.enforced() {
		log.Warn("slot signatures cannot be bound to this master's name: give --public-url (or serve TLS), or a signature made for another master is accepted here")
	}
	return &slotProof{allowUnsigned: cfg.AllowUnsignedSlots, names: names, replays: newReplayCache(defaultReplayCap)}, nil
}

// check verifies req's proof for key. unsigned is true for a request
// without signature that the master accepts (AllowUnsignedSlots).
func (p *slotProof) check(req wire.SlotRequest, key ssh.PublicKey, now time.Time) (unsigned bool, err error) {
	if req.Signature == "" {
		if req.Master != "" || req.Timestamp != 0 || req.Nonce != "" {
			return false, &proofError{400, "master, timestamp and nonce come with a signature", "unsigned request with proof fields"}
		}
		if !p.allowUnsigned {
			return false, &proofError{400, "a signature is required (SSH signature, namespace " + wire.SlotNamespace +
				"): update the device's agent or client script, or start the master with --allow-unsigned-slots", "unsigned request"}
		}
		return true, nil
	}
	sg := signedFields{master: req.Master, timestamp: req.Timestamp, nonce: req.Nonce, signature: req.Signature}
	return false, p.verify(sg, wire.SlotNamespace, wire.SlotStatement(req), key, now, "the device's")
}

// signedFields are the proof of a signed request (a slot request, an
// access request): whom it is for, when, a nonce, and the signature over
// the statement made of them and the request's body.
type signedFields struct {
	master    string
	timestamp int64
	nonce     string
	signature string
}

// verify checks a signed request's proof: the fields' shape, the clock
// (wire.SlotSkew), this master's name, the signature by key over
// statement in namespace, and that the statement is new (the replay cache
// is shared by every kind of signed request: the statements of different
// namespaces start differently and never collide). whose names the clock
// to check in the message ("the device's", "your").
func (p *slotProof) verify(sg signedFields, namespace string, statement []byte, key ssh.PublicKey, now time.Time, whose string) error {
	switch {
	case sg.signature == "":
		return &proofError{400, "a signature is required (SSH signature, namespace " + namespace + ")", "unsigned request"}
	case !nonceRE.MatchString(sg.nonce):
		return &proofError{400, "nonce must be 16 to 64 of A-Z a-z 0-9 _ -", "bad nonce"}
	case sg.master == "" || len(sg.master) > maxMasterURL || strings.ContainsFunc(sg.master, func(r rune) bool { return r < 0x21 || r == 0x7f }):
		return &proofError{400, "master must be the master's URL, as the client reaches it", "bad master field"}
	case sg.timestamp == 0:
		return &proofError{400, "timestamp (Unix seconds) is required with a signature", "no timestamp"}
	}
	if d := now.Sub(time.Unix(sg.timestamp, 0)); d > wire.SlotSkew || d < -wire.SlotSkew {
		return &proofError{403, fmt.Sprintf("the signature's timestamp is %s from the master's clock (at most %s): check %s clock",
			d.Round(time.Second).Abs(), wire.SlotSkew, whose), fmt.Sprintf("timestamp %d off by %s", sg.timestamp, d.Round(time.Second))}
	}
	if ok, why := p.names.match(sg.master); !ok {
		return &proofError{403, "the signature names master " + sg.master + ", which is not this master", why}
	}
	signer, err := sshsig.Verify(sg.signature, namespace, statement)
	if err != nil {
		return &proofError{403, notAccepted, "signature: " + err.Error()}
	}
	if !bytes.Equal(signer.Marshal(), key.Marshal()) {
		return &proofError{403, notAccepted, "signed by another key, " + ssh.FingerprintSHA256(signer)}
	}
	if !p.replays.first(sha256.Sum256(statement), time.Unix(sg.timestamp, 0).Add(wire.SlotSkew), now) {
		return &proofError{403, notAccepted, "replayed statement"}
	}
	return nil
}

// masterNames says which master URLs a signature may name: those
// configured (PublicURLs), else the host names the TLS certificate is
// valid for. A plain-HTTP master without PublicURLs cannot tell its names
// (the Host header is the client's to choose) and accepts any.
type masterNames struct {
	urls []string          // canonical, from PublicURLs
	cert *x509.Certificate // the serving certificate, when no URLs
}

func newMasterNames(publicURLs []string, certFile string) (masterNames, error) {
	var n masterNames
	for _, u := range publicURLs {
		c, err := canonicalURL(u)
		if err != nil {
			return n, fmt.Errorf("public URL %q: %w", u, err)
		}
		n.urls = append(n.urls, c)
	}
	if len(n.urls) > 0 || certFile == "" {
		return n, nil
	}
	data, err := os.ReadFile(certFile)
	if err != nil {
		return n, fmt.Errorf("reading the TLS certificate: %w", err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE" {
		return n, fmt.Errorf("%s holds no PEM certificate", certFile)
	}
	if n.cert, err = x509.ParseCertificate(b.Bytes); err != nil {
		return n, fmt.Errorf("parsing %s: %w", certFile, err)
	}
	return n, nil
}

// enforced reports whether signatures are bound to this master's names.
func (n masterNames) enforced() bool { return len(n.urls) > 0 || n.cert != nil }

func (n masterNames) match(master string) (bool, string) {
	c, err := canonicalURL(master)
	if err != nil {
		return false, "master field: " + err.Error()
	}
	switch {
	case len(n.urls) > 0:
		for _, u := range n.urls {
			if u == c {
				return true, ""
			}
		}
		return false, "signed for " + c + ", not one of the public URLs"
	case n.cert != nil:
		u, _ := url.Parse(c)
		if err := n.cert.VerifyHostname(u.Hostname()); err != nil {
			return false, "signed for " + c + ", a name the TLS certificate does not hold"
		}
	}
	return true, ""
}

// canonicalURL is u as the Go client uses it: scheme and host lower case,
// no default port, no trailing slash or /api/v1.
func canonicalURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", errors.New("not an http:// or https:// URL of a host")
	}
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if (u.Scheme == "https" && port == "443") || (u.Scheme == "http" && port == "80") {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		host = net.JoinHostPort(strings.Trim(host, "[]"), port)
	}
	path := strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), wire.APIPrefix)
	return u.Scheme + "://" + host + strings.TrimSuffix(path, "/"), nil
}

// replayCache remembers the statements accepted while their timestamps
// are fresh, so that each is accepted once. It lives in this master's
// memory: with several masters on one PostgreSQL registry, a statement
// could be replayed once to each other master within wire.SlotSkew (a
// shared table is the fix when that matters).
type replayCache struct {
	mu      sync.Mutex
	max     int
	seen    map[[32]byte]time.Time // statement hash → when it may be forgotten
	swept   time.Time
	refused int // statements refused because the cache was full, for tests and logs
}

// defaultReplayCap bounds the cache: only validly signed statements of
// enrolled-or-not keys enter it, at the rate the limiter allows; a million
// entries cost some 100 MB.
const defaultReplayCap = 1 << 20

func newReplayCache(max int) *replayCache {
	return &replayCache{max: max, seen: map[[32]byte]time.Time{}}
}

// first records h until expires and reports whether it is new. When the
// cache is full of unexpired statements it refuses (fails closed).
func (c *replayCache) first(h [32]byte, expires, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.seen[h]; ok {
		return false
	}
	if len(c.seen) >= c.max || now.Sub(c.swept) >= time.Minute {
		for k, t := range c.seen {
			if !now.Before(t) {
				delete(c.seen, k)
			}
		}
		c.swept = now
	}
	if len(c.seen) >= c.max {
		c.refused++
		return false
	}
	c.seen[h] = expires
	return true
}

func (c *replayCache) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}
