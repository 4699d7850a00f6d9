package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/backoff"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authkeys"
)

// MasterAPI is the part of the master's API a slave uses.
type MasterAPI interface {
	Heartbeat(ctx context.Context, slave string, hb wire.Heartbeat) (wire.HeartbeatReply, error)
	Validate(ctx context.Context, req wire.ValidateRequest) (wire.Validation, error)
	// Revocations answers once there are revocations after after, or
	// when wait has passed.
	Revocations(ctx context.Context, slave string, after int64, wait time.Duration) (wire.RevocationsReply, error)
}

// ErrNoRevocationFeed is what a MasterAPI returns (wrapped) when the master
// has no revocations endpoint (an older master): heartbeats alone then
// bring revocations.
var ErrNoRevocationFeed = errors.New("the master has no revocation feed")

// ErrNotAccepted is what a MasterAPI returns (wrapped) when the master
// refuses a key (HTTP 403), as opposed to not answering at all.
var ErrNotAccepted = errors.New("key not accepted by the master")

// Defaults of a slave under a master; the master's heartbeat replies
// override interval and TTL.
const (
	DefaultHeartbeatInterval = 5 * time.Second
	DefaultCacheTTL          = 5 * time.Minute
	negativeCacheFor         = 5 * time.Second
	// maxNegative bounds the refusals remembered: unknown keys are what
	// anyone can send, as many as they like.
	maxNegative     = 10000
	revocationWait  = 25 * time.Second // how long one ask for revocations waits on the master
	validateTimeout = time.Second      // inside the hook's 1.2 s socket budget
	maxQueuedEvents = 1000
	refreshPerBeat  = 50
)

// Master serves devices validated by the master and cached with a TTL in
// the slave's cache. Positive answers are cached and refreshed before they
// expire; negative ones only for a few seconds, in memory. While the master
// is unreachable, cached devices keep connecting and unknown ones are
// refused. Revocations arrive with heartbeat replies.
type Master struct {
	api   MasterAPI
	slave string
	log   *slog.Logger
	now   func() time.Time

	cache *authkeys.Cache
	ops   *operatorCache

	applyMu sync.Mutex // one batch of revocations applied at a time

	mu       sync.Mutex
	ttl      time.Duration
	interval time.Duration
	seq      int64
	negative map[string]time.Time
	events   []wire.SlaveEvent
	lastBeat time.Time // when the master last answered a heartbeat
}

// NewMaster follows the master behind api as slave. now is the clock (nil:
// time.Now).
func NewMaster(api MasterAPI, slave string, now func() time.Time, log *slog.Logger) *Master {
	if now == nil {
		now = time.Now
	}
	return &Master{api: api, slave: slave, now: now, log: log.With("component", "master"),
		ttl: DefaultCacheTTL, interval: DefaultHeartbeatInterval, negative: map[string]time.Time{}, ops: newOperatorCache()}
}

// LastContact implements Source: when the master last answered a
// heartbeat; zero before the first answer.
func (m *Master) LastContact() (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.lastBeat, true
}

const seqMetaKey = "master_seq"

// Start implements Source.
func (m *Master) Start(ctx context.Context, cache *authkeys.Cache) error {
	m.cache = cache
	v, err := cache.Meta(ctx, seqMetaKey)
	if err != nil {
		return err
	}
	if v != "" {
		m.seq, _ = strconv.ParseInt(v, 10, 64)
	}
	return nil
}

// Lookup implements Source.
func (m *Master) Lookup(ctx context.Context, fp string, key ssh.PublicKey) (registry.Device, bool, error) {
	now := m.now()
	dev, expires, cached, err := m.cache.Get(ctx, fp)
	if err != nil {
		m.log.Error("reading cache", "err", err)
	}
	if cached && now.Before(expires) {
		return dev, true, nil
	}
	m.mu.Lock()
	until, refused := m.negative[fp]
	m.mu.Unlock()
	if refused && now.Before(until) && !cached {
		return registry.Device{}, false, nil
	}
	fresh, err := m.validate(ctx, fp, key)
	switch {
	case err == nil:
		return fresh, true, nil
	case errors.Is(err, ErrNotAccepted):
		return registry.Device{}, false, nil
	case cached:
		m.log.Warn("master unreachable; answering from the cache", "device", dev.Name, "err", err)
		return dev, true, nil
	default:
		return registry.Device{}, false, fmt.Errorf("asking the master: %w", err)
	}
}

// validate asks the master about one key (by its fingerprint alone when
// key is nil: the slave then asks about a session's key, which only an
// enrolled key can have) and records the answer.
func (m *Master) validate(ctx context.Context, fp string, key ssh.PublicKey) (registry.Device, error) {
	ctx, cancel := context.WithTimeout(ctx, validateTimeout)
	defer cancel()
	req := wire.ValidateRequest{Fingerprint: fp}
	if key != nil {
		fp = registry.Fingerprint(key)
		req = wire.ValidateRequest{PublicKey: registry.AuthorizedKey(key)}
	}
	v, err := m.api.Validate(ctx, req)
	if errors.Is(err, ErrNotAccepted) {
		m.rememberRefusal(fp)
		if derr := m.cache.Delete(context.WithoutCancel(ctx), fp, ""); derr != nil {
			m.log.Error("dropping refused key from cache", "err", derr)
		}
		return registry.Device{}, err
	}
	if err != nil {
		return registry.Device{}, err
	}
	dev := deviceFromValidation(v)
	if dev.Fingerprint != fp || (key != nil && dev.PublicKey != registry.AuthorizedKey(key)) {
		return registry.Device{}, fmt.Errorf("master answered for another key (%s)", dev.Fingerprint)
	}
	if pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(dev.PublicKey)); err != nil || registry.Fingerprint(pk) != fp {
		return registry.Device{}, fmt.Errorf("master answered with a key that is not %s", fp)
	}
	ttl := time.Duration(v.TTLSeconds) * time.Second
	if ttl <= 0 {
		m.mu.Lock()
		ttl = m.ttl
		m.mu.Unlock()
	}
	if err := m.cache.Put(context.WithoutCancel(ctx), dev, m.now().Add(ttl)); err != nil {
		m.log.Error("caching device", "device", dev.Name, "err", err)
	}
	return dev, nil
}

func deviceFromValidation(v wire.Validation) registry.Device {
	d := registry.Device{Name: v.Device, Fingerprint: v.Fingerprint, PublicKey: v.PublicKey, Status: v.Status}
	if k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(v.PublicKey)); err == nil {
		d.KeyType = k.Type()
	}
	for _, f := range v.Forwards {
		d.Forwards = append(d.Forwards, registry.Forward{Name: f.Name, Target: f.Target, RemotePort: f.RemotePort, Probe: f.Probe})
	}
	return d
}

// maxRetry caps the wait between asks of the revocation feed to a master
// that does not answer.
const maxRetry = 30 * time.Second

// Follow implements Source: the heartbeat loop. Heartbeats go every
// interval (spread by ±10%, so that slaves restarted together do not beat
// in step), whether the master answers or not: a heartbeat is one small
// request, and a master that comes back must hear from its slaves within
// one interval — with a backoff growing to 30 s, a master back from an
// outage saw its slaves dead for 20 s and more and dispatched nothing.
func (m *Master) Follow(ctx context.Context, h Handler) {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); m.watchRevocations(ctx, h) }()
	defer wg.Wait()
	failing, connected := false, false
	for {
		err := m.beat(ctx, h)
		if ctx.Err() != nil {
			return
		}
		m.mu.Lock()
		wait := m.interval
		m.mu.Unlock()
		if err != nil {
			if !failing {
				connected = false
				m.log.Warn("master unreachable; serving cached devices and retrying every heartbeat interval", "err", err, "interval", wait)
			}
			failing = true
		} else {
			if !connected {
				m.log.Info("heartbeats reach the master", "interval", wait)
			}
			failing, connected = false, true
			m.refresh(ctx, h)
		}
		wait += time.Duration((rand.Float64()*0.2 - 0.1) * float64(wait))
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func (m *Master) beat(ctx context.Context, h Handler) error {
	hb := h.Status(ctx)
	m.mu.Lock()
	hb.Seq = m.seq
	hb.Events, m.events = m.events, nil
	m.mu.Unlock()
	bctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	reply, err := m.api.Heartbeat(bctx, m.slave, hb)
	if err != nil {
		m.mu.Lock()
		m.events = append(hb.Events, m.events...) // send them next time
		if len(m.events) > maxQueuedEvents {
			m.events = m.events[len(m.events)-maxQueuedEvents:]
		}
		m.mu.Unlock()
		return err
	}
	if err := m.apply(ctx, h, "heartbeat", hb.Seq, reply.Seq, reply.Revocations); err != nil {
		return err
	}
	if hb.VIP != "" {
		h.Peers(ctx, reply.Peers)
	}
	m.mu.Lock()
	m.lastBeat = m.now()
	if reply.IntervalSeconds > 0 {
		m.interval = time.Duration(reply.IntervalSeconds * float64(time.Second))
	}
	if reply.CacheTTLSeconds > 0 {
		m.ttl = time.Duration(reply.CacheTTLSeconds) * time.Second
	}
	m.mu.Unlock()
	return nil
}

// apply takes revocations the master sent (via the heartbeat or the feed)
// in answer to sent (the sequence
// number the slave asked from), and the number to ask from next: each
// device leaves the cache and the slave is told, once (the heartbeat loop
// and the revocation feed may both bring it). A next number below sent is
// a master whose registry was replaced: the slave starts over from it.
func (m *Master) apply(ctx context.Context, h Handler, via string, sent, next int64, revs []wire.Revocation) error {
	m.applyMu.Lock()
	defer m.applyMu.Unlock()
	m.mu.Lock()
	cur := m.seq
	m.mu.Unlock()
	for _, r := range revs {
		if cur > 0 && r.Seq <= cur {
			continue // applied already
		}
		if r.Operator != "" {
			// Revoked, removed, or changed (its reach narrowed): its grants
			// are forgotten and every session of it ends, changed included.
			// sshd fixed a session's permitopen at login, so a session kept
			// could go on opening a port taken off the allow list; the
			// operator logs in again and gets the new lines.
			m.ops.drop(r.Operator, r.Fingerprint)
			m.log.Info("operator revocation from the master", "operator", r.Operator, "reason", r.Reason, "via", via)
			h.OperatorGone(ctx, r.Operator, r.Fingerprint, "operator "+r.Reason)
			continue
		}
		dev := registry.Device{Name: r.Device, Fingerprint: r.Fingerprint}
		for _, p := range r.Ports {
			dev.Forwards = append(dev.Forwards, registry.Forward{RemotePort: p})
		}
		if err := m.cache.Delete(ctx, r.Fingerprint, r.Device); err != nil {
			m.log.Error("dropping revoked device from cache", "device", r.Device, "err", err)
		}
		m.ops.dropDevice(r.Device, r.Ports)
		reason := "device revoked"
		if r.Reason == "removed" {
			reason = "device removed"
		}
		m.log.Info("revocation from the master", "device", r.Device, "ports", r.Ports, "reason", r.Reason, "via", via)
		h.Gone(ctx, dev, reason)
	}
	if next < sent || next > cur {
		cur = next
	} else {
		return nil
	}
	m.mu.Lock()
	m.seq = cur
	m.mu.Unlock()
	return m.cache.SetMeta(ctx, seqMetaKey, strconv.FormatInt(cur, 10))
}

// watchRevocations asks the master for revocations and waits there for
// them, so that a revoked device is refused a round trip after the revoke
// instead of a heartbeat later. Until the first heartbeat has told the
// slave where the master's sequence stands, and while the master does not
// answer, it waits; an older master without the feed is left to the
// heartbeats.
func (m *Master) watchRevocations(ctx context.Context, h Handler) {
	retry := backoff.Backoff{Min: time.Second, Max: maxRetry}
	for {
		m.mu.Lock()
		after := m.seq
		m.mu.Unlock()
		wait := time.Second
		if after > 0 {
			r, err := m.api.Revocations(ctx, m.slave, after, revocationWait)
			switch {
			case ctx.Err() != nil:
				return
			case errors.Is(err, ErrNoRevocationFeed):
				m.log.Info("the master has no revocation feed; revocations come with heartbeats", "err", err)
				return
			case err != nil:
				wait = retry.Next()
			default:
				retry.Reset()
				wait = 50 * time.Millisecond // the ask itself waited on the master
				if err := m.apply(ctx, h, "feed", after, r.Seq, r.Revocations); err != nil {
					m.log.Error("applying revocations", "err", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// refresh revalidates cached devices whose entry expires within a fifth of
// the TTL, so that a connecting device rarely waits for the master.
func (m *Master) refresh(ctx context.Context, h Handler) {
	all, _, err := m.cache.Snapshot(ctx)
	if err != nil {
		m.log.Error("reading cache", "err", err)
		return
	}
	m.mu.Lock()
	horizon := m.now().Add(m.ttl / 5)
	m.mu.Unlock()
	n := 0
	for _, cd := range all {
		if cd.Expires.IsZero() || cd.Expires.After(horizon) || n >= refreshPerBeat {
			continue
		}
		n++
		key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(cd.Device.PublicKey))
		if err != nil {
			continue
		}
		_, err = m.validate(ctx, cd.Device.Fingerprint, key)
		if errors.Is(err, ErrNotAccepted) {
			m.log.Info("master no longer accepts a cached device", "device", cd.Device.Name)
			ports := make([]int, 0, len(cd.Device.Forwards))
			for _, f := range cd.Device.Forwards {
				ports = append(ports, f.RemotePort)
			}
			m.ops.dropDevice(cd.Device.Name, ports)
			h.Gone(ctx, cd.Device, "device no longer accepted by the master")
		}
	}
}

// Report implements Source: events travel with the next heartbeat.
func (m *Master) Report(ctx context.Context, kind, device, detail string) {
	m.ReportOperator(ctx, kind, "", device, detail)
}

// ReportOperator implements Source.
func (m *Master) ReportOperator(ctx context.Context, kind, operator, device, detail string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.events = append(m.events, wire.SlaveEvent{At: m.now().UTC(), Kind: kind, Device: device, Operator: operator, Detail: detail})
	if len(m.events) > maxQueuedEvents {
		m.events = m.events[1:]
	}
}

// rememberRefusal notes that the master refused fp, for a few seconds. The
// memory is bounded: past maxNegative entries the expired ones go, and if
// that is not enough, all of them (a flood of unknown keys is then asked
// about again, which is the master's rate limit's business).
func (m *Master) rememberRefusal(fp string) {
	now := m.now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.negative) >= maxNegative {
		for k, until := range m.negative {
			if !now.Before(until) {
				delete(m.negative, k)
			}
		}
		if len(m.negative) >= maxNegative {
			clear(m.negative)
		}
	}
	m.negative[fp] = now.Add(negativeCacheFor)
}
