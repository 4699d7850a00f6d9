// Package source is where a slave learns which keys may connect and which
// devices have lost that right: the master (validation on a cache miss, a
// TTL cache, revocations and events travelling with heartbeats) or, for a
// slave without a master, a registry file on the same host. Either way the
// slave's cache mirrors what it knows, so that the hook can answer while the
// daemon is down.
package source

import (
	"context"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authkeys"
)

// Source is the slave's registry.
type Source interface {
	// Start prepares the source (first cache fill) before the hook is served.
	Start(ctx context.Context, cache *authkeys.Cache) error
	// Lookup finds the device for a key (by its fingerprint); found=false
	// means the key is not accepted. An error means no answer could be had.
	Lookup(ctx context.Context, fingerprint string, key ssh.PublicKey) (dev registry.Device, found bool, err error)
	// Operator finds the operator of a key that logs in as the operator
	// user, and what it may open; found=false means the key is not an
	// operator's (or the operator is revoked). key is nil when the slave
	// asks about a live session's key.
	Operator(ctx context.Context, fingerprint string, key ssh.PublicKey) (g Grant, found bool, err error)
	// Follow runs until ctx ends, keeping the cache in step and telling h
	// what happens.
	Follow(ctx context.Context, h Handler)
	// Report records an event (an auth denial, a killed session).
	Report(ctx context.Context, kind, device, detail string)
	// ReportOperator records an operator's event (operator-connect,
	// operator-disconnect).
	ReportOperator(ctx context.Context, kind, operator, device, detail string)
	// LastContact is when the master last answered; ok is false for a
	// source without a master.
	LastContact() (at time.Time, ok bool)
}

// Handler is what a source tells the slave while it follows the registry.
type Handler interface {
	// Gone is called for each device revoked or removed, with the device as
	// the slave knew it (ports included) and why.
	Gone(ctx context.Context, dev registry.Device, reason string)
	// OperatorGone is called for each operator revoked or removed (by name,
	// and by key when known): its sessions end.
	OperatorGone(ctx context.Context, operator, fingerprint, reason string)
	// Status is what the slave reports to the master each heartbeat: where
	// devices reach it, its load and its live tunnels.
	Status(ctx context.Context) wire.Heartbeat
	// Peers gets the other nodes of the slave's VIP, as the master sees
	// them, after each heartbeat of a slave that shares one.
	Peers(ctx context.Context, peers []wire.Peer)
}
