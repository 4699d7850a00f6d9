// Package client is the Go client of the master's REST API, for the CLI,
// slaves and the device agent. It needs only net/http, the wire types and
// x/crypto/ssh (no gin, no SQLite, no cgo), so the static agent can import
// it.
package client

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/sshsig"
)

// DefaultTimeout bounds each call unless WithTimeout says otherwise.
const DefaultTimeout = 10 * time.Second

// maxResponse bounds what is read of an answer (a device list of a large
// fleet is a few MiB).
const maxResponse = 64 << 20

// Client calls a master, or one of several masters that serve one fleet
// (peers on one PostgreSQL registry, any of which answers any call). It
// sticks to the master that last answered and moves on to the next when
// one does not answer or answers 5xx (see each). It is safe for concurrent
// use.
type Client struct {
	masters []string // scheme://host[:port][/prefix], without the API prefix, in the order tried
	cur     atomic.Int64
	token   string
	http    *http.Client
	timeout time.Duration
	agent   string
	shuffle func(n int, swap func(i, j int)) // nil: the order given
	log     *slog.Logger
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient uses hc (its Transport, TLS settings and Timeout) instead
// of a default client.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.http = hc } }

// WithTimeout bounds each call; 0 leaves it to ctx.
func WithTimeout(d time.Duration) Option { return func(c *Client) { c.timeout = d } }

// WithUserAgent sets the User-Agent header.
func WithUserAgent(ua string) Option { return func(c *Client) { c.agent = ua } }

// WithShuffle tries the masters in a random order, drawn once, instead of
// the order given: a fleet's slaves and devices then spread over the
// masters. Humans (the admin CLI) keep the order they gave.
func WithShuffle() Option { return func(c *Client) { c.shuffle = mrand.Shuffle } }

// WithLogger logs which master answered (debug) and each move to another
// master (info). Without it, nothing is logged.
func WithLogger(l *slog.Logger) Option { return func(c *Client) { c.log = l } }

// ParseMasters splits a list of master URLs (URL[,URL…], as --master and
// MAS4H_MASTER take it) and checks each as New does. An empty element, a
// master given twice or a bad URL is an error that names it.
func ParseMasters(list string) ([]string, error) {
	parts := strings.Split(list, ",")
	var out []string
	seen := map[string]int{}
	for i, p := range parts {
		where := ""
		if len(parts) > 1 {
			where = fmt.Sprintf("master %d of %d: ", i+1, len(parts))
		}
		p = strings.TrimSpace(p)
		if p == "" {
			if len(parts) == 1 {
				return nil, errors.New("no master URL given")
			}
			return nil, fmt.Errorf("%sempty: give the master URLs separated by single commas, e.g. https://m1:8080,https://m2:8080", where)
		}
		base, err := parseBase(p)
		if err != nil {
			return nil, fmt.Errorf("%s%w", where, err)
		}
		if j, dup := seen[base]; dup {
			return nil, fmt.Errorf("%s%s is master %d already: give each master once", where, p, j+1)
		}
		seen[base] = i
		out = append(out, base)
	}
	return out, nil
}

// parseBase checks one master URL and returns it without a trailing slash
// or API prefix.
func parseBase(baseURL string) (string, error) {
	u, err := url.Parse(strings.TrimSpace(baseURL))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("master URL must look like http://HOST:PORT or https://HOST:PORT, got %q", baseURL)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("master URL %q: no user, query or fragment expected", baseURL)
	}
	path := strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), wire.APIPrefix)
	u.Path = strings.TrimSuffix(path, "/")
	return u.String(), nil
}

// New returns a client of the master at masters (http:// or https://, e.g.
// "https://master:8080"; a trailing /api/v1 is accepted and ignored), or of
// the first of several that answers ("https://m1:8080,https://m2:8080",
// see ParseMasters). token is the bearer token; "" for the endpoints that
// need none (slots, healthz).
func New(masters, token string, opts ...Option) (*Client, error) {
	list, err := ParseMasters(masters)
	if err != nil {
		if strings.TrimSpace(masters) == "" {
			_, err = parseBase(masters) // the message of one bad URL
		}
		return nil, err
	}
	c := &Client{masters: list, token: token, http: &http.Client{}, timeout: DefaultTimeout, agent: "mas4h"}
	for _, o := range opts {
		o(c)
	}
	if c.shuffle != nil {
		c.shuffle(len(c.masters), func(i, j int) { c.masters[i], c.masters[j] = c.masters[j], c.masters[i] })
	}
	return c, nil
}

// Cleartext returns the masters the client talks to over plain http:// to
// a host other than the loopback: its credential and every answer then
// cross the network unprotected, and a man in the middle can read and
// change them. Callers warn about each at every start.
func (c *Client) Cleartext() []string {
	var out []string
	for _, m := range c.masters {
		if cleartext(m) {
			out = append(out, m)
		}
	}
	return out
}

func cleartext(base string) bool {
	u, err := url.Parse(base)
	if err != nil || u.Scheme != "http" {
		return false
	}
	h := u.Hostname()
	if h == "localhost" {
		return false
	}
	ip, err := netip.ParseAddr(h)
	return err != nil || !ip.Unmap().IsLoopback()
}

// URL is the base URL of the master tried first by the next call: the one
// that last answered.
func (c *Client) URL() string { return c.masters[int(c.cur.Load())%len(c.masters)] }

// URLs are the masters, in the order tried.
func (c *Client) URLs() []string { return slices.Clone(c.masters) }

// Error is a non-2xx answer of the master.
type Error struct {
	Status     int           // HTTP status code
	Message    string        // the master's {"error"} message, or the status text
	RetryAfter time.Duration // from Retry-After on 429 and 503; 0 when absent
	// URL is the master that answered, when the client has several.
	URL string
}

func (e *Error) Error() string {
	if e.URL != "" {
		return fmt.Sprintf("%s: %s (HTTP %d)", e.URL, e.Message, e.Status)
	}
	return fmt.Sprintf("%s (HTTP %d)", e.Message, e.Status)
}

// UnreachableError is a call that got no HTTP answer: the master is down,
// the address is wrong, the network or TLS failed, or the call timed out.
type UnreachableError struct {
	URL string
	Err error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("master at %s is unreachable: %v", e.URL, e.Err)
}

func (e *UnreachableError) Unwrap() error { return e.Err }

// IsUnreachable reports whether err means the master did not answer.
func IsUnreachable(err error) bool {
	var ue *UnreachableError
	return errors.As(err, &ue)
}

// StatusOf returns the HTTP status of an *Error in err's chain, 0 if none.
func StatusOf(err error) int {
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// do sends a JSON request and decodes a JSON answer into out (nil: drop).
func (c *Client) do(ctx context.Context, method, path string, query url.Values, in, out any) error {
	return c.doWithin(ctx, c.timeout, method, path, query, in, out)
}

// perMaster is a request body made for the master it goes to (a signature
// over that master's URL).
type perMaster func(base string) (any, error)

// doWithin is do bounded by timeout instead of the client's, at the
// masters in turn (see each).
func (c *Client) doWithin(ctx context.Context, timeout time.Duration, method, path string, query url.Values, in, out any) error {
	return c.each(ctx, func(ctx context.Context, base string) error {
		body := in
		if mk, ok := in.(perMaster); ok {
			var err error
			if body, err = mk(base); err != nil {
				return fmt.Errorf("%s %s: %w", method, path, err)
			}
		}
		return c.once(ctx, base, timeout, method, path, query, body, out)
	})
}

// each runs call at the master that last answered and, while one does not
// answer or answers 5xx (it is down, overloaded, or has no slave live),
// at the next ones, once round: the first answer, success or 4xx (an
// answer about the request, the same from every master), is returned as
// it is. When none answers the error names each master's failure, HTTP
// answers first (so that errors.As finds a 503's Retry-After). Waiting
// between rounds is the caller's: each of its loops keeps a backoff. With
// a deadline on ctx, each master gets its share of what is left, so that
// one that hangs cannot eat the whole round.
func (c *Client) each(ctx context.Context, call func(ctx context.Context, base string) error) error {
	n := len(c.masters)
	start := int(c.cur.Load())
	var errs []error
	for k := range n {
		i := (start + k) % n
		base := c.masters[i]
		actx, cancel := ctx, context.CancelFunc(func() {})
		if dl, ok := ctx.Deadline(); ok && k < n-1 {
			actx, cancel = context.WithTimeout(ctx, time.Until(dl)/time.Duration(n-k))
		}
		err := call(actx, base)
		cancel()
		if ctx.Err() != nil || !failsOver(err) {
			if k > 0 && c.cur.CompareAndSwap(int64(start), int64(i)) && c.log != nil {
				c.log.Info("moved to another master", "master", base, "after", joinErrs(errs))
			}
			if c.log != nil && err == nil {
				c.log.Debug("master answered", "master", base)
			}
			return err
		}
		if n == 1 {
			return err
		}
		if c.log != nil {
			c.log.Debug("master failed; trying the next", "master", base, "err", err)
		}
		errs = append(errs, err)
	}
	return &RoundError{Errs: errs}
}

// failsOver says whether err is a master's failure, for which the next
// master is tried: no answer, or a 5xx.
func failsOver(err error) bool {
	return IsUnreachable(err) || StatusOf(err) >= 500
}

// RoundError is a call that no master answered: the failure of each, in
// the order tried.
type RoundError struct{ Errs []error }

func (e *RoundError) Error() string { return "no master answered: " + joinErrs(e.Errs) }

func joinErrs(errs []error) string {
	parts := make([]string, len(errs))
	for i, err := range errs {
		parts[i] = err.Error()
	}
	return strings.Join(parts, "; ")
}

// Unwrap gives the masters' errors, the HTTP answers (*Error) first.
func (e *RoundError) Unwrap() []error {
	out := slices.Clone(e.Errs)
	slices.SortStableFunc(out, func(a, b error) int {
		return cmpBool(StatusOf(b) != 0, StatusOf(a) != 0)
	})
	return out
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}

// once sends one request to the master at base.
func (c *Client) once(ctx context.Context, base string, timeout time.Duration, method, path string, query url.Values, in, out any) error {
	start := time.Now()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	target := base + wire.APIPrefix + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	var body io.Reader
	if in != nil {
		data, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("%s %s: encoding request: %w", method, path, err)
		}
		body = bytes.NewReader(data)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.agent)
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// The caller's own cancellation is not the master's fault.
		if parent := context.Cause(ctx); parent != nil && !errors.Is(parent, context.DeadlineExceeded) {
			return fmt.Errorf("%s %s: %w", method, path, parent)
		}
		err = stripURL(err)
		if errors.Is(err, context.DeadlineExceeded) {
			// What was waited, not the client's timeout: the caller's
			// deadline may have come first.
			err = fmt.Errorf("no answer within %s", time.Since(start).Round(10*time.Millisecond))
		}
		return &UnreachableError{URL: base, Err: err}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse+1))
	if err != nil {
		return &UnreachableError{URL: base, Err: fmt.Errorf("reading the answer to %s %s: %w", method, path, err)}
	}
	if len(data) > maxResponse {
		return fmt.Errorf("%s %s: answer larger than %d MiB", method, path, maxResponse>>20)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		e := apiError(resp, data)
		if len(c.masters) > 1 {
			e.URL = base
		}
		return e
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: the master's answer is not the expected JSON: %w", method, path, err)
	}
	return nil
}

func apiError(resp *http.Response, data []byte) *Error {
	e := &Error{Status: resp.StatusCode}
	var we wire.Error
	if json.Unmarshal(data, &we) == nil && we.Error != "" {
		e.Message = we.Error
	} else {
		e.Message = http.StatusText(resp.StatusCode)
		if e.Message == "" {
			e.Message = resp.Status
		}
	}
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		if secs, err := strconv.Atoi(ra); err == nil && secs >= 0 {
			e.RetryAfter = time.Duration(secs) * time.Second
		} else if t, err := http.ParseTime(ra); err == nil {
			e.RetryAfter = max(time.Until(t), 0)
		}
	}
	return e
}

// stripURL drops the *url.Error wrapper, whose message repeats the URL the
// UnreachableError already names.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

// Healthz checks that the master answers.
func (c *Client) Healthz(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/healthz", nil, nil, nil)
}

// Slot asks for a slot for the device whose private key is key (a
// crypto.Signer or an ssh.Signer: ed25519, ECDSA or RSA), proving that it
// holds it: the request carries an SSH signature of wire.SlotStatement,
// bound to the URL of the master it goes to (each master's own, when the
// client moves on to the next) and to now. It needs no token.
func (c *Client) Slot(ctx context.Context, key any) (wire.Slot, error) {
	var s wire.Slot
	err := c.do(ctx, http.MethodPost, "/slots", nil, perMaster(func(base string) (any, error) {
		return SignSlotRequest(key, base, time.Now())
	}), &s)
	return s, err
}

// RequestSlot sends a slot request as it is (an unsigned one, for a master
// that allows them, or one signed elsewhere).
func (c *Client) RequestSlot(ctx context.Context, req wire.SlotRequest) (wire.Slot, error) {
	var s wire.Slot
	err := c.do(ctx, http.MethodPost, "/slots", nil, req, &s)
	return s, err
}

// SignSlotRequest makes the slot request of key's device for the master at
// masterURL (as the device reaches it), signed at now with a fresh nonce.
func SignSlotRequest(key any, masterURL string, now time.Time) (wire.SlotRequest, error) {
	var pub ssh.PublicKey
	var err error
	switch k := key.(type) {
	case ssh.Signer:
		pub = k.PublicKey()
	case crypto.Signer:
		pub, err = ssh.NewPublicKey(k.Public())
	default:
		err = fmt.Errorf("%T is not a private key", key)
	}
	if err != nil {
		return wire.SlotRequest{}, fmt.Errorf("signing the slot request: %w", err)
	}
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return wire.SlotRequest{}, fmt.Errorf("signing the slot request: %w", err)
	}
	req := wire.SlotRequest{
		PublicKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))),
		Master:    masterURL, Timestamp: now.Unix(), Nonce: hex.EncodeToString(nonce),
	}
	sig, err := sshsig.Sign(key, wire.SlotNamespace, wire.SlotStatement(req))
	if err != nil {
		return wire.SlotRequest{}, fmt.Errorf("signing the slot request: %w", err)
	}
	req.Signature = string(sig)
	return req, nil
}

// Status is the cluster status (admin token).
func (c *Client) Status(ctx context.Context) (wire.Status, error) {
	var s wire.Status
	err := c.do(ctx, http.MethodGet, "/status", nil, nil, &s)
	return s, err
}

// Devices lists the devices by name (admin token).
func (c *Client) Devices(ctx context.Context) ([]wire.Device, error) {
	out := []wire.Device{}
	err := c.do(ctx, http.MethodGet, "/devices", nil, nil, &out)
	return out, err
}

// Device returns one device (admin token).
func (c *Client) Device(ctx context.Context, name string) (wire.Device, error) {
	var d wire.Device
	err := c.do(ctx, http.MethodGet, "/devices/"+url.PathEscape(name), nil, nil, &d)
	return d, err
}

// AddDevice enrols a device (admin token).
func (c *Client) AddDevice(ctx context.Context, req wire.AddDeviceRequest) (wire.Device, error) {
	var d wire.Device
	err := c.do(ctx, http.MethodPost, "/devices", nil, req, &d)
	return d, err
}

// RevokeDevice revokes a device (admin token).
func (c *Client) RevokeDevice(ctx context.Context, name string) (wire.Device, error) {
	var d wire.Device
	err := c.do(ctx, http.MethodPost, "/devices/"+url.PathEscape(name)+"/revoke", nil, nil, &d)
	return d, err
}

// RemoveDevice deletes a device and frees its ports (admin token).
func (c *Client) RemoveDevice(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/devices/"+url.PathEscape(name), nil, nil, nil)
}

// Tunnels lists the live tunnels (admin token).
func (c *Client) Tunnels(ctx context.Context) ([]wire.Tunnel, error) {
	out := []wire.Tunnel{}
	err := c.do(ctx, http.MethodGet, "/tunnels", nil, nil, &out)
	return out, err
}

// EventQuery filters Events; zero fields do not filter.
type EventQuery struct {
	Device string
	Slave  string
	// Operator: only that operator's events (operator-* kinds).
	Operator string
	Since    time.Time
	AfterID  int64
	Kinds    []string
	Limit    int // 0: the master's default (1000)
}

// Events lists events oldest first (admin token).
func (c *Client) Events(ctx context.Context, q EventQuery) ([]wire.Event, error) {
	v := url.Values{}
	if q.Device != "" {
		v.Set("device", q.Device)
	}
	if q.Slave != "" {
		v.Set("slave", q.Slave)
	}
	if q.Operator != "" {
		v.Set("operator", q.Operator)
	}
	if !q.Since.IsZero() {
		v.Set("since", q.Since.UTC().Format(time.RFC3339))
	}
	if q.AfterID > 0 {
		v.Set("after_id", strconv.FormatInt(q.AfterID, 10))
	}
	if len(q.Kinds) > 0 {
		v.Set("kind", strings.Join(q.Kinds, ","))
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	out := []wire.Event{}
	err := c.do(ctx, http.MethodGet, "/events", v, nil, &out)
	return out, err
}

// Heartbeat reports a slave's load and tunnels (the slave's own credential).
func (c *Client) Heartbeat(ctx context.Context, slave string, hb wire.Heartbeat) (wire.HeartbeatReply, error) {
	var r wire.HeartbeatReply
	err := c.do(ctx, http.MethodPost, "/slaves/"+url.PathEscape(slave)+"/heartbeat", nil, hb, &r)
	return r, err
}

// Revocations asks for the revocations after sequence number after (the
// slave's own credential), waiting up to wait on the master for one to happen.
func (c *Client) Revocations(ctx context.Context, slave string, after int64, wait time.Duration) (wire.RevocationsReply, error) {
	var r wire.RevocationsReply
	q := url.Values{"after": {strconv.FormatInt(after, 10)}, "wait": {strconv.Itoa(int(wait / time.Second))}}
	err := c.doWithin(ctx, wait+c.timeout, http.MethodGet, "/slaves/"+url.PathEscape(slave)+"/revocations", q, nil, &r)
	return r, err
}

// Validate asks whether a key may connect (a slave's credential). A refusal
// is an *Error with Status 403.
func (c *Client) Validate(ctx context.Context, req wire.ValidateRequest) (wire.Validation, error) {
	var v wire.Validation
	err := c.do(ctx, http.MethodPost, "/validate", nil, req, &v)
	return v, err
}

// ValidateOperator asks the master what an operator's key (by
// fingerprint, or by public key at login) may open through the slave
// req.Slave: POST /validate with Role "operator" (slave credential). A
// key that is no active operator's is refused with 403.
func (c *Client) ValidateOperator(ctx context.Context, req wire.ValidateRequest) (wire.OperatorValidation, error) {
	req.Role = "operator"
	var v wire.OperatorValidation
	err := c.do(ctx, http.MethodPost, "/validate", nil, req, &v)
	return v, err
}
