package source

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authkeys"
)

// Store is what the local source needs from the registry.
type Store interface {
	DeviceByFingerprint(ctx context.Context, fp string) (registry.Device, error)
	Devices(ctx context.Context) ([]registry.Device, error)
	Events(ctx context.Context, f registry.EventFilter) ([]registry.Event, error)
	LastEventID(ctx context.Context) (int64, error)
	AddEvent(ctx context.Context, kind, device, detail string) error
	// Operators: what a key may open as the operator user, the revocation
	// log (operator entries end sessions) and operator events.
	OperatorAccess(ctx context.Context, fp string) (registry.Operator, []wire.OpenPort, error)
	Revocations(ctx context.Context, after int64, limit int) ([]registry.Revocation, error)
	RevocationSeq(ctx context.Context) (int64, error)
	AddOperatorEvent(ctx context.Context, kind, operator, slave, device, detail string) error
}

// DefaultPollEvery is how often a local source looks for registry changes.
const DefaultPollEvery = 500 * time.Millisecond

// Local serves devices from a registry file on this host. The cache mirrors
// the whole registry so that the hook can answer while the daemon is down;
// the registry's event log says when to refresh it.
type Local struct {
	store Store
	slave string
	log   *slog.Logger
	every time.Duration

	cache     *authkeys.Cache
	lastEvent int64
	lastRev   int64 // the revocation log's sequence number followed
}

// NewLocal follows store as slave, looking for changes every `every` (0:
// the default).
func NewLocal(store Store, slave string, every time.Duration, log *slog.Logger) *Local {
	if every <= 0 {
		every = DefaultPollEvery
	}
	return &Local{store: store, slave: slave, every: every, log: log.With("component", "registry")}
}

// Start implements Source.
func (l *Local) Start(ctx context.Context, cache *authkeys.Cache) error {
	l.cache = cache
	last, err := l.store.LastEventID(ctx)
	if err != nil {
		return fmt.Errorf("reading registry: %w", err)
	}
	l.lastEvent = last
	if l.lastRev, err = l.store.RevocationSeq(ctx); err != nil {
		return fmt.Errorf("reading registry: %w", err)
	}
	return l.sync(ctx)
}

func (l *Local) sync(ctx context.Context) error {
	devs, err := l.store.Devices(ctx)
	if err != nil {
		return fmt.Errorf("reading registry: %w", err)
	}
	return l.cache.ReplaceAll(ctx, devs)
}

// Lookup implements Source: the registry answers; if it cannot, the cache.
func (l *Local) Lookup(ctx context.Context, fp string, _ ssh.PublicKey) (registry.Device, bool, error) {
	dev, err := l.store.DeviceByFingerprint(ctx, fp)
	if err == nil {
		return dev, true, nil
	}
	if errors.Is(err, registry.ErrNotFound) {
		return registry.Device{}, false, nil
	}
	l.log.Error("registry lookup failed; answering from cache", "err", err)
	dev, _, found, cerr := l.cache.Get(ctx, fp)
	if cerr != nil {
		return registry.Device{}, false, fmt.Errorf("registry: %v; cache: %w", err, cerr)
	}
	return dev, found, nil
}

// Follow implements Source by polling the registry's event log. A local
// source has no master to report to: h's Status and Peers are not called.
func (l *Local) Follow(ctx context.Context, h Handler) {
	t := time.NewTicker(l.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := l.poll(ctx, h); err != nil && ctx.Err() == nil {
			l.log.Error("following the registry", "err", err)
		}
		if err := l.pollOperators(ctx, h); err != nil && ctx.Err() == nil {
			l.log.Error("following the registry's operator revocations", "err", err)
		}
	}
}

// poll rereads the registry when its event log shows a device enrolled,
// revoked or removed since the last look, and tells h of the ones gone.
func (l *Local) poll(ctx context.Context, h Handler) error {
	last, err := l.store.LastEventID(ctx)
	if err != nil || last == l.lastEvent {
		return err
	}
	// Most events are this slave's own (connect, probe, ...): only those
	// that change a device are worth rereading the registry for.
	var changes []registry.Event
	for after := l.lastEvent; ; {
		page, err := l.store.Events(ctx, registry.EventFilter{AfterID: after,
			Kinds: []string{registry.EventEnrol, registry.EventRevoke, registry.EventRemove}})
		if err != nil {
			return err
		}
		for _, ev := range page {
			if ev.ID <= last {
				changes = append(changes, ev)
			}
		}
		if len(page) == 0 || page[len(page)-1].ID >= last {
			break
		}
		after = page[len(page)-1].ID
	}
	l.lastEvent = last
	if len(changes) == 0 {
		return nil
	}
	for _, ev := range changes {
		if ev.Kind == registry.EventEnrol {
			continue
		}
		// The cache still holds the device as it was, ports included.
		dev, ok, err := l.cache.ByName(ctx, ev.Device)
		if err != nil || !ok {
			continue
		}
		reason := "device revoked"
		if ev.Kind == registry.EventRemove {
			reason = "device removed"
		}
		h.Gone(ctx, dev, reason)
	}
	return l.sync(ctx)
}

// Report implements Source.
func (l *Local) Report(ctx context.Context, kind, device, detail string) {
	if err := l.store.AddEvent(ctx, kind, device, detail); err != nil {
		l.log.Error("writing event", "kind", kind, "device", device, "err", err)
	}
}

// ReportOperator implements Source: the event names the operator, this
// slave and the device.
func (l *Local) ReportOperator(ctx context.Context, kind, operator, device, detail string) {
	if err := l.store.AddOperatorEvent(ctx, kind, operator, l.slave, device, detail); err != nil {
		l.log.Error("writing event", "kind", kind, "operator", operator, "device", device, "err", err)
	}
}

// Operator implements Source: the registry answers each time (it is on
// this host, and nothing is cached, so a revocation or a narrowed allow
// list holds from the next login on). An unknown key or a revoked
// operator's is not found.
func (l *Local) Operator(ctx context.Context, fp string, _ ssh.PublicKey) (Grant, bool, error) {
	o, open, err := l.store.OperatorAccess(ctx, fp)
	switch {
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, registry.ErrRevoked):
		return Grant{}, false, nil
	case err != nil:
		return Grant{}, false, fmt.Errorf("reading the registry for operator key %s: %w", fp, err)
	}
	return Grant{Operator: o.Name, Fingerprint: o.Fingerprint, PublicKey: o.PublicKey, Open: open}, true, nil
}

// pollOperators reads the registry's revocation log past the last entry
// seen and tells h of each operator revoked, removed or narrowed (device
// entries are poll's, through the event log).
func (l *Local) pollOperators(ctx context.Context, h Handler) error {
	for {
		revs, err := l.store.Revocations(ctx, l.lastRev, 0)
		if err != nil || len(revs) == 0 {
			return err
		}
		for _, r := range revs {
			l.lastRev = r.Seq
			if r.Operator == "" {
				continue
			}
			l.log.Info("operator revocation in the registry", "operator", r.Operator, "reason", r.Reason)
			h.OperatorGone(ctx, r.Operator, r.Fingerprint, "operator "+r.Reason)
		}
	}
}

// LastContact implements Source: there is no master.
func (l *Local) LastContact() (time.Time, bool) { return time.Time{}, false }
