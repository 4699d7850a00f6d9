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

// OperatorLookup finds the operator of a key and the device ports it may
// open; found=false means the key is no active operator's
// (source.Source.Operator).
type OperatorLookup func(ctx context.Context, fingerprint string, key ssh.PublicKey) (operator string, ports []int, found bool, err error)

// Authorizer decides authentication attempts: sshd's arguments checked,
// the device looked up, authkeys.Decide's one rule applied, the session cap
// enforced, every decision counted, every denial an event or part of a
// minute's summary (Denials). It
// acts on nothing: sshd asks before the client has proven it holds the key
// (newest-wins waits for the authenticated session, in the reaper).
type Authorizer struct {
	TunnelUser string
	Lookup     Lookup
	// OperatorUser is the user operators log in as; Operator looks their
	// keys up. A key logging in as any other user is a device's.
	OperatorUser string
	Operator     OperatorLookup
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
	if a.OperatorUser != "" && req.User == a.OperatorUser {
		return a.operator(ctx, req, key)
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

// operator decides an attempt as the operator user: an active operator's
// key gets one line opening exactly the ports of the devices it may reach;
// any other key (a device's, an unknown or revoked one), or an operator
// that may reach no device, gets nothing.
func (a *Authorizer) operator(ctx context.Context, req authkeys.HookRequest, key ssh.PublicKey) (reply authkeys.HookReply) {
	if a.Operator == nil {
		return a.denyOperator(ctx, req, "", "this slave serves no operators")
	}
	name, ports, found, err := a.Operator(ctx, req.Fingerprint, key)
	switch {
	case err != nil:
		a.Log.Error("auth", "user", req.User, "fingerprint", req.Fingerprint, "verdict", "deny", "reason", "no answer", "err", err)
		return authkeys.HookReply{Reason: "no answer: " + err.Error()}
	case !found:
		return a.denyOperator(ctx, req, "", "not an operator's key")
	}
	line, err := authkeys.OperatorLine(name, key, ports)
	if err != nil {
		return a.denyOperator(ctx, req, name, err.Error())
	}
	a.Log.Info("auth", "operator", name, "fingerprint", req.Fingerprint, "ports", len(ports), "verdict", "allow")
	return authkeys.HookReply{Allow: true, Lines: []string{line}}
}

func (a *Authorizer) denyOperator(ctx context.Context, req authkeys.HookRequest, operator, reason string) authkeys.HookReply {
	if operator != "" {
		reason = "operator " + operator + ": " + reason
	}
	lvl := slog.LevelDebug
	if a.Denials.Deny(ctx, Denial{Reason: reason, Fingerprint: req.Fingerprint, User: req.User}) {
		lvl = slog.LevelWarn
	}
	a.Log.Log(ctx, lvl, "auth", "operator", operator, "fingerprint", req.Fingerprint, "user", req.User, "verdict", "deny", "reason", reason)
	return authkeys.HookReply{Reason: reason}
}
