package hookserver

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authkeys"
)

// Lookup finds the device for a key; found=false means the key is not
// accepted, an error that no answer could be had (source.Source.Lookup).
type Lookup func(ctx context.Context, fingerprint string, key ssh.PublicKey) (dev registry.Device, found bool, err error)

// Authorizer decides authentication attempts: sshd's arguments checked,
// the device looked up, authkeys.Decide's one rule applied, the session cap
// enforced, every decision counted, every denial an event or part of a
// minute's summary (Denials). It
// acts on nothing: sshd asks before the client has proven it holds the key
// (newest-wins waits for the authenticated session, in the reaper).
type Authorizer struct {
	TunnelUser string
	Lookup     Lookup
	// Sessions counts the live sessions that authenticated with a key;
	// MaxSessions (0: no cap) refuses a key that has that many already.
	Sessions    func(ctx context.Context, fingerprint string) int
	MaxSessions int
	// Denials records denial events, tallied (NewDenials).
	Denials *Denials
	Metrics *metrics.Slave // nil counts nothing
	Log     *slog.Logger
	Now     func() time.Time // nil: time.Now
}

// Authorize decides one authentication attempt.
func (a *Authorizer) Authorize(ctx context.Context, req authkeys.HookRequest) (reply authkeys.HookReply) {
	now := a.Now
	if now == nil {
		now = time.Now
	}
	defer func(start time.Time) { a.Metrics.Hook(reply.Allow, now().Sub(start)) }(now())
	_, key, err := authkeys.ParseHookArgs([]string{req.User, req.Fingerprint, req.KeyType, req.Key})
	if err != nil {
		a.Log.Warn("auth", "verdict", "deny", "reason", err.Error())
		return authkeys.HookReply{Reason: err.Error()}
	}
	dev, found, err := a.Lookup(ctx, req.Fingerprint, key)
	if err != nil {
		a.Log.Error("auth", "fingerprint", req.Fingerprint, "verdict", "deny", "reason", "no answer", "err", err)
		return authkeys.HookReply{Reason: "no answer: " + err.Error()}
	}
	reply = authkeys.Decide(a.TunnelUser, req.User, key, dev, found)
	if reply.Allow && a.MaxSessions > 0 && a.Sessions != nil {
		if n := a.Sessions(ctx, req.Fingerprint); n >= a.MaxSessions {
			reply = authkeys.HookReply{Device: dev.Name,
				Reason: fmt.Sprintf("session cap: device %s has %d sessions, at most %d (--max-sessions-per-device)", dev.Name, n, a.MaxSessions)}
		}
	}
	if reply.Allow {
		a.Log.Info("auth", "device", reply.Device, "fingerprint", req.Fingerprint, "verdict", "allow")
		return reply
	}
	// Logged like the events: the first of a kind, then the minute's sum.
	lvl := slog.LevelDebug
	if a.Denials.Deny(ctx, Denial{Device: reply.Device, Reason: reply.Reason, Fingerprint: req.Fingerprint, User: req.User}) {
		lvl = slog.LevelWarn
	}
	a.Log.Log(ctx, lvl, "auth", "device", reply.Device, "fingerprint", req.Fingerprint, "user", req.User, "verdict", "deny", "reason", reply.Reason)
	return reply
}
