package sshd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authkeys"
)

// Source is where a slave learns which keys may connect and which devices
// have lost that right: the local registry file (standalone) or the master.
type Source interface {
	// Start prepares the source (first cache fill) before the hook is served.
	Start(ctx context.Context, cache *authkeys.Cache) error
	// Lookup finds the device for a key (by its fingerprint); found=false
	// means the key is not accepted. An error means no answer could be had.
	Lookup(ctx context.Context, fingerprint string, key ssh.PublicKey) (dev registry.Device, found bool, err error)
	// Follow runs until ctx ends, keeping the cache in step and calling gone
	// for each device that was revoked or removed.
	Follow(ctx context.Context, gone func(dev registry.Device, reason string))
	// Report records an event (an auth denial, a killed session).
	Report(ctx context.Context, kind, device, detail string)
}

// Store is what the standalone source needs from the registry.
type Store interface {
	DeviceByFingerprint(ctx context.Context, fp string) (registry.Device, error)
	Devices(ctx context.Context) ([]registry.Device, error)
	Events(ctx context.Context, f registry.EventFilter) ([]registry.Event, error)
	LastEventID(ctx context.Context) (int64, error)
	AddEvent(ctx context.Context, kind, device, detail string) error
}

// LocalSource serves devices from a registry file on this host. The cache
// mirrors the whole registry so that the hook can answer while the daemon
// is down; the registry's event log says when to refresh it.
type LocalSource struct {
	Store Store
	Log   *slog.Logger
	Every time.Duration // how often to look for registry changes (default 500 ms)

	cache     *authkeys.Cache
	lastEvent int64
}

// Start implements Source.
func (l *LocalSource) Start(ctx context.Context, cache *authkeys.Cache) error {
	l.cache = cache
	if l.Every == 0 {
		l.Every = 500 * time.Millisecond
	}
	last, err := l.Store.LastEventID(ctx)
	if err != nil {
		return fmt.Errorf("reading registry: %w", err)
	}
	l.lastEvent = last
	return l.sync(ctx)
}

func (l *LocalSource) sync(ctx context.Context) error {
	devs, err := l.Store.Devices(ctx)
	if err != nil {
		return fmt.Errorf("reading registry: %w", err)
	}
	return l.cache.ReplaceAll(ctx, devs)
}

// Lookup implements Source: the registry answers; if it cannot, the cache.
func (l *LocalSource) Lookup(ctx context.Context, fp string, _ ssh.PublicKey) (registry.Device, bool, error) {
	dev, err := l.Store.DeviceByFingerprint(ctx, fp)
	if err == nil {
		return dev, true, nil
	}
	if errors.Is(err, registry.ErrNotFound) {
		return registry.Device{}, false, nil
	}
	l.Log.Error("registry lookup failed; answering from cache", "err", err)
	dev, _, found, cerr := l.cache.Get(ctx, fp)
	if cerr != nil {
		return registry.Device{}, false, fmt.Errorf("registry: %v; cache: %w", err, cerr)
	}
	return dev, found, nil
}

// Follow implements Source by polling the registry's event log.
func (l *LocalSource) Follow(ctx context.Context, gone func(registry.Device, string)) {
	t := time.NewTicker(l.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := l.poll(ctx, gone); err != nil && ctx.Err() == nil {
			l.Log.Error("following the registry", "err", err)
		}
	}
}

func (l *LocalSource) poll(ctx context.Context, gone func(registry.Device, string)) error {
	last, err := l.Store.LastEventID(ctx)
	if err != nil || last == l.lastEvent {
		return err
	}
	// Most events are this slave's own (connect, probe, ...): only those
	// that change a device are worth rereading the registry for.
	var changes []registry.Event
	for after := l.lastEvent; ; {
		page, err := l.Store.Events(ctx, registry.EventFilter{AfterID: after,
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
		gone(dev, reason)
	}
	return l.sync(ctx)
}

// Report implements Source.
func (l *LocalSource) Report(ctx context.Context, kind, device, detail string) {
	if err := l.Store.AddEvent(ctx, kind, device, detail); err != nil {
		l.Log.Error("writing event", "kind", kind, "device", device, "err", err)
	}
}
