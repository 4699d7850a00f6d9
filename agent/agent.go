package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mas4h/mas4h/atomicfile"
	"github.com/mas4h/mas4h/backoff"
	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
)

// Config is the agent's configuration, filled and checked by the command.
type Config struct {
	// Master is the master's URL, or several masters of one fleet
	// (URL,URL…): tried in a random order drawn at start, sticking to the
	// one that answers and moving on when it does not answer or answers
	// 5xx.
	Master string
	// MasterCA is a PEM file of the certificates to trust for the master
	// (a private CA, or the master's own self-signed certificate; with
	// several masters, the CA or all their certificates in one file)
	// instead of the system's; "": the system's.
	MasterCA string
	// InsecureHTTP allows an http:// master: the slot request and its
	// answer then travel in clear text, and whoever is on the path can
	// send the device to a slave of theirs.
	InsecureHTTP bool
	KeyPath      string // the device's private key (OpenSSH, PEM or dropbear format)
	StateDir     string // last slot, known_hosts, converted keys
	SSHClient    string // auto, openssh or dropbear

	Keepalive      time.Duration // ServerAliveInterval / dbclient -K (dead after 3 unanswered)
	ConnectTimeout time.Duration // OpenSSH ConnectTimeout; also the master call's timeout
	UpAfter        time.Duration // a client still running this long has its tunnel up
	MinBackoff     time.Duration
	MaxBackoff     time.Duration
	ResetAfter     time.Duration // a client up this long resets the backoff
	MaxRetryAfter  time.Duration // bound on a master's Retry-After
	RepeatLog      time.Duration // an unchanged problem is logged again at most this often
	UserAgent      string
	Version        string // logged at start
}

// keyNotAccepted is the master's answer to unknown and revoked keys and to
// bad signatures alike; its other refusals (a clock off by more than five
// minutes, a signature for another master) say what is wrong.
const keyNotAccepted = "key not accepted"

// Defaults fills the zero fields.
func (c *Config) Defaults() {
	if c.SSHClient == "" {
		c.SSHClient = ClientAuto
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.Keepalive, 10*time.Second)
	def(&c.ConnectTimeout, 15*time.Second)
	def(&c.UpAfter, 5*time.Second)
	def(&c.MinBackoff, backoff.DefaultMin)
	def(&c.MaxBackoff, backoff.DefaultMax)
	def(&c.ResetAfter, backoff.DefaultResetAfter)
	def(&c.MaxRetryAfter, 15*time.Minute)
	def(&c.RepeatLog, 10*time.Minute)
	if c.UserAgent == "" {
		c.UserAgent = "mas4h-agent"
	}
}

// Check reports what is wrong with the configuration (a usage error).
func (c *Config) Check() error {
	switch {
	case c.Master == "":
		return errors.New("--master is required")
	case c.KeyPath == "":
		return errors.New("--key is required")
	case c.StateDir == "":
		return errors.New("--state-dir is required")
	}
	switch c.SSHClient {
	case ClientAuto, ClientOpenSSH, ClientDropbear:
	default:
		return fmt.Errorf("--ssh-client must be auto, openssh or dropbear, not %q", c.SSHClient)
	}
	if _, err := client.New(c.Master, ""); err != nil {
		return err
	}
	plain := c.plainHTTP()
	if len(plain) > 0 && !c.InsecureHTTP {
		return fmt.Errorf("--master %s is plain http: the slot request and its answer (the slave to connect to and its host key) would travel in clear text, and whoever is on the path could send this device to an sshd of theirs; use https://, or accept this with --insecure-http", plain[0])
	}
	if c.MasterCA != "" && len(plain) == len(strings.Split(c.Master, ",")) {
		return errors.New("--master-ca needs an https:// master")
	}
	return nil
}

// plainHTTP returns the masters given as http://.
func (c *Config) plainHTTP() []string {
	var out []string
	for _, m := range strings.Split(c.Master, ",") {
		if m = strings.TrimSpace(m); strings.HasPrefix(strings.ToLower(m), "http://") {
			out = append(out, m)
		}
	}
	return out
}

// httpClient is the client of the master's API: TLS verified against
// MasterCA when given, the system's roots otherwise.
func (c *Config) httpClient() (*http.Client, error) {
	if c.MasterCA == "" {
		return &http.Client{}, nil
	}
	data, err := os.ReadFile(c.MasterCA)
	if err != nil {
		return nil, fmt.Errorf("--master-ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return nil, fmt.Errorf("--master-ca: %s holds no PEM certificate", c.MasterCA)
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return &http.Client{Transport: tr}, nil
}

// SlotSource gives slots to the holder of key, a crypto.Signer whose
// signature proves it; *client.Client is the real one.
type SlotSource interface {
	Slot(ctx context.Context, key any) (wire.Slot, error)
}

// Deps are the agent's seams; nil fields get the real thing.
type Deps struct {
	Source SlotSource
	Runner Runner
	Clock  Clock
	Lookup Lookup
	Rand   func() float64 // jitter, [0, 1)
}

// Agent keeps one device's tunnel up.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	src     SlotSource
	runner  Runner
	clock   Clock
	lookup  Lookup
	backoff backoff.Backoff

	client   *SSHClient
	lastSlot string // slave/host/port of the slot last used, to log moves

	// problems are the problems last logged, by area (key, master,
	// client, ...): each area's state changes are logged once.
	problems map[string]*problem
}

type problem struct {
	kind        string
	since, last time.Time // began, last logged
	attempts    int
}

// New builds an agent. cfg must have passed Check.
func New(cfg Config, log *slog.Logger, d Deps) (*Agent, error) {
	cfg.Defaults()
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	a := &Agent{cfg: cfg, log: log, src: d.Source, runner: d.Runner, clock: d.Clock, lookup: d.Lookup,
		backoff: backoff.Backoff{Min: cfg.MinBackoff, Max: cfg.MaxBackoff, ResetAfter: cfg.ResetAfter, Rand: d.Rand}}
	if a.src == nil {
		hc, err := cfg.httpClient()
		if err != nil {
			return nil, err
		}
		c, err := client.New(cfg.Master, "", client.WithUserAgent(cfg.UserAgent),
			client.WithTimeout(cfg.ConnectTimeout), client.WithHTTPClient(hc),
			client.WithShuffle(), client.WithLogger(log.With("component", "master-client")))
		if err != nil {
			return nil, err
		}
		a.src = c
	}
	if a.runner == nil {
		a.runner = ExecRunner{OnStderr: func(line string) { log.Debug("ssh client", "stderr", line) }}
	}
	if a.clock == nil {
		a.clock = realClock{}
	}
	if a.lookup == nil {
		a.lookup = execLookup{}
	}
	return a, nil
}

// Run keeps the tunnel up until ctx ends; cancellation is not an error.
// It fails only when the state dir cannot be made.
func (a *Agent) Run(ctx context.Context) error {
	if err := ensureStateDir(a.cfg.StateDir); err != nil {
		return err
	}
	a.log.Info("agent started", "version", a.cfg.Version, "master", a.cfg.Master, "key", a.cfg.KeyPath, "state_dir", a.cfg.StateDir, "ssh_client", a.cfg.SSHClient)
	for _, m := range a.cfg.plainHTTP() {
		a.log.Warn("the master is reached over plain http (--insecure-http): whoever is on the path can read this device's slot and send it to an sshd of theirs; use https://", "master", m)
	}
	for {
		minWait := a.attempt(ctx)
		if ctx.Err() != nil {
			break
		}
		d := a.backoff.Next()
		if minWait > d {
			d = min(minWait, a.cfg.MaxRetryAfter)
		}
		a.log.Debug("next attempt", "in", d.Round(time.Millisecond))
		if a.clock.Sleep(ctx, d) != nil {
			break
		}
	}
	a.log.Info("agent stopped")
	return nil
}

// fail logs a problem of an area (key, master, client...) when it differs
// from the area's last one, or when it has lasted another RepeatLog;
// otherwise at debug level only.
func (a *Agent) fail(area, kind, msg string, attrs ...any) {
	now := a.clock.Now()
	if a.problems == nil {
		a.problems = map[string]*problem{}
	}
	p := a.problems[area]
	if p == nil || p.kind != kind {
		a.problems[area] = &problem{kind: kind, since: now, last: now, attempts: 1}
		a.log.Warn(msg, attrs...)
		return
	}
	p.attempts++
	if now.Sub(p.last) >= a.cfg.RepeatLog {
		p.last = now
		a.log.Warn(msg, append(attrs, "failing_for", now.Sub(p.since).Round(time.Second).String(), "attempts", p.attempts)...)
		return
	}
	a.log.Debug(msg, attrs...)
}

// cleared ends an area's problem; the next one is logged again.
func (a *Agent) cleared(area string) { delete(a.problems, area) }

func (a *Agent) recovered() { clear(a.problems) }

// attempt is one round: key, client, slot, run. It returns a minimum wait
// before the next round (the master's Retry-After).
func (a *Agent) attempt(ctx context.Context) time.Duration {
	key, err := LoadKey(a.cfg.KeyPath)
	if err != nil {
		a.fail("key", err.Error(), "cannot use the device key; retrying", "err", err)
		return 0
	}
	a.cleared("key")
	if a.client == nil {
		c, err := DetectClient(ctx, a.cfg.SSHClient, a.lookup)
		if err != nil {
			a.fail("detect", err.Error(), "no usable SSH client; retrying", "err", err)
			return 0
		}
		a.client = &c
		a.cleared("detect")
		a.log.Info("using ssh client", "kind", c.Kind, "path", c.Path)
	}
	slot, minWait, ok := a.slot(ctx, key)
	if !ok || ctx.Err() != nil {
		return minWait
	}
	f, err := a.prepare(key, slot)
	if err != nil {
		a.fail("state", err.Error(), "cannot write the agent's state; retrying", "err", err)
		return minWait
	}
	cmd := Command{Argv: a.client.Argv(slot, f, a.cfg.Keepalive, a.cfg.ConnectTimeout)}
	if a.client.Kind == ClientDropbear {
		cmd.Env = []string{"HOME=" + f.Home}
	}
	attrs := []any{"slave", slot.Slave, "host", slot.Host, "port", slot.Port, "forwards", forwards(slot)}
	start := a.clock.Now()
	p, err := a.runner.Start(ctx, cmd)
	if err != nil {
		a.client = nil // detect again: it may have been removed
		a.fail("exec", err.Error(), "cannot start the ssh client; retrying", "err", err)
		return minWait
	}
	a.log.Debug("ssh client started", append(attrs, "pid", p.Pid(), "argv", strings.Join(cmd.Argv, " "))...)
	up := false
	select {
	case <-p.Done():
	case <-a.clock.After(a.cfg.UpAfter):
		up = true
		a.recovered()
		a.log.Info("tunnel up", append(attrs, "pid", p.Pid())...)
		<-p.Done()
	}
	res := p.Wait()
	ran := a.clock.Now().Sub(start)
	a.backoff.Ran(ran)
	if !up && ran >= a.cfg.UpAfter { // exited as the timer fired
		up = true
		a.recovered()
	}
	if ctx.Err() != nil {
		return 0
	}
	reason, hint := Classify(res.Stderr)
	attrs = append(attrs, "reason", reason, "exit", exitText(res.Err))
	if hint != "" {
		attrs = append(attrs, "why", hint)
	}
	if last := lastLine(res.Stderr); last != "" {
		attrs = append(attrs, "stderr", last)
	}
	if up {
		a.log.Warn("tunnel down; reconnecting", append(attrs, "up_for", ran.Round(time.Second).String())...)
		return minWait
	}
	msg := "ssh client failed; retrying"
	if reason == ReasonHostKey || reason == ReasonHostKeyNew {
		msg = "refusing the slave: host key mismatch; retrying"
	}
	a.fail("client", reason+" "+slot.Host+":"+strconv.Itoa(slot.Port), msg, attrs...)
	return minWait
}

// slot asks the masters (the next one after a 5xx or no answer); when
// none gives a slot (5xx, garbage or no answer) it falls back to the last
// slot. ok is false when there is nothing to connect to.
func (a *Agent) slot(ctx context.Context, key *Key) (s wire.Slot, minWait time.Duration, ok bool) {
	pub := key.Public
	s, err := a.src.Slot(ctx, key.Signer)
	if err == nil {
		if verr := validSlot(s); verr != nil {
			err = fmt.Errorf("the master's slot is unusable: %w", verr)
		}
	}
	if err == nil {
		if err := a.saveSlot(s); err != nil {
			a.log.Warn("cannot keep the slot for when the master is down", "err", err)
		}
		if _, was := a.problems["master"]; was {
			a.log.Info("the master answers again")
			a.cleared("master")
		}
		a.noteSlot(s, "master")
		return s, 0, true
	}
	if ctx.Err() != nil {
		return s, 0, false
	}
	var ae *client.Error
	kind := "garbage"
	switch {
	case errors.As(err, &ae) && ae.Status == http.StatusForbidden && ae.Message == keyNotAccepted:
		a.fail("master", "403", "the master refuses this device's key (not enrolled, or revoked); enrol it with `mas4h device add NAME --key KEY.pub`; retrying",
			"err", err, "public_key", pub)
		return s, 0, false
	case errors.As(err, &ae) && ae.Status == http.StatusForbidden:
		a.fail("master", "403 "+ae.Message, "the master refuses the slot request; retrying", "err", err)
		return s, 0, false
	case errors.As(err, &ae) && ae.Status == http.StatusTooManyRequests:
		a.fail("master", "429", "the master rate-limits slot requests; waiting as it asks", "err", err, "retry_after", ae.RetryAfter.String())
		return s, ae.RetryAfter, false
	case errors.As(err, &ae) && ae.Status < 500:
		a.fail("master", strconv.Itoa(ae.Status), "the master rejects the slot request; retrying", "err", err)
		return s, 0, false
	case errors.As(err, &ae):
		kind = strconv.Itoa(ae.Status)
		minWait = ae.RetryAfter
	case client.IsUnreachable(err):
		kind = "unreachable"
	}
	last, have := a.loadSlot()
	if !have {
		a.fail("master", kind+" no last slot", "no slot from the master and no last slot to fall back on; retrying", "err", err, "retry_after", minWait.String())
		return s, minWait, false
	}
	a.fail("master", kind, "no slot from the master; connecting to the last slave directly", "err", err, "slave", last.Slave)
	a.noteSlot(last, "last slot")
	return last, minWait, true
}

func (a *Agent) noteSlot(s wire.Slot, from string) {
	id := s.Slave + " " + s.Host + ":" + strconv.Itoa(s.Port)
	if id != a.lastSlot {
		if a.lastSlot != "" {
			a.log.Info("moving to another slave", "slave", s.Slave, "host", s.Host, "port", s.Port, "from", from)
		} else {
			a.log.Info("slot", "slave", s.Slave, "host", s.Host, "port", s.Port, "from", from, "forwards", forwards(s))
		}
		a.lastSlot = id
	}
}

// prepare writes the pinned host keys and, when the client cannot read the
// key's format, a converted copy of the key.
func (a *Agent) prepare(key *Key, slot wire.Slot) (Files, error) {
	f := a.files()
	f.Key = key.Path
	if want := a.client.KeyFormat(); want != key.Format {
		data, err := key.Encode(want)
		if err != nil {
			return f, err
		}
		f.Key = filepath.Join(a.cfg.StateDir, "key."+want.String())
		// OpenSSH's format has random check bytes: keep a copy that
		// already holds this key rather than rewrite it every attempt.
		if old, err := os.ReadFile(f.Key); err == nil {
			if k, err := ParseKey(old); err == nil && k.Format == want && k.Public == key.Public {
				data = old
			}
		}
		if _, err := atomicfile.WriteIfChanged(f.Key, data, 0o600); err != nil {
			return f, err
		}
	}
	kh := f.KnownHosts
	if a.client.Kind == ClientDropbear {
		kh = filepath.Join(f.Home, ".ssh", "known_hosts")
	}
	if _, err := atomicfile.WriteIfChanged(kh, KnownHosts(slot, a.client.Kind), 0o600); err != nil {
		return f, err
	}
	return f, nil
}

func forwards(s wire.Slot) string {
	fs := make([]string, len(s.Forwards))
	for i, f := range s.Forwards {
		fs[i] = strconv.Itoa(f.RemotePort) + ":" + f.Target
	}
	return strings.Join(fs, " ")
}

func exitText(err error) string {
	if err == nil {
		return "0"
	}
	return err.Error()
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" && strings.Trim(l, "@") != "" {
			return trunc(l)
		}
	}
	return ""
}
