package authkeys

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authkeys/hookclient"
	"github.com/mas4h/mas4h/sshd/statedir"
)

// HookRequest is what sshd tells the hook (%u %f %t %k) and what the hook
// forwards to the daemon over its unix socket. It is defined, with HookReply,
// by the lean hook's package, which must not import this one.
type HookRequest = hookclient.Request

// HookReply is the daemon's answer: the authorized_keys lines to print, or a
// reason for refusing (logged by the daemon, never printed to sshd).
type HookReply = hookclient.Reply

// ParseHookArgs checks sshd's arguments: user, SHA256 fingerprint, key type
// and base64 key. They must have the shape the lean hook checks before it
// asks (hookclient.CheckArgs), and the key must parse, be of the stated type
// and hash to the stated fingerprint; anything else is refused without
// asking anyone. The daemon runs it on every request, so it refuses whatever
// a hook refuses even when the lean hook only checked the shape.
func ParseHookArgs(args []string) (HookRequest, ssh.PublicKey, error) {
	req, err := hookclient.CheckArgs(args)
	if err != nil {
		return req, nil, err
	}
	blob, err := base64.StdEncoding.DecodeString(req.Key)
	if err != nil {
		return req, nil, fmt.Errorf("key is not base64: %w", err)
	}
	key, err := ssh.ParsePublicKey(blob)
	if err != nil {
		return req, nil, fmt.Errorf("key does not parse: %w", err)
	}
	if key.Type() != req.KeyType {
		return req, nil, fmt.Errorf("key is of type %s, sshd said %.40q", key.Type(), req.KeyType)
	}
	if fp := ssh.FingerprintSHA256(key); fp != req.Fingerprint {
		return req, nil, fmt.Errorf("fingerprint %.60q does not match the key (%s)", req.Fingerprint, fp)
	}
	return req, key, nil
}

// HookPaths are the files the hook reads, all below the slave's state dir.
type HookPaths struct {
	Socket string
	Cache  string
}

// PathsFor returns the hook's files for a state dir.
func PathsFor(stateDir string) HookPaths {
	return HookPaths{
		Socket: statedir.Dir(stateDir).Socket(),
		Cache:  statedir.Dir(stateDir).Cache(),
	}
}

// ErrDenied means the hook found no key to give sshd. The hook exits non-zero
// with no output; the daemon (when it was asked) logged why.
var ErrDenied = errors.New("no key for this request")

// RunHook is `mas4h authkeys`: it validates sshd's arguments, asks the slave
// daemon (unless cacheOnly), falls back to the daemon's cache when the daemon
// is down or hung, and writes the authorized_keys lines to out, all before
// ctx's deadline (the caller sets it). Every failure is a denial.
func RunHook(ctx context.Context, paths HookPaths, cacheOnly bool, args []string, out io.Writer) error {
	req, key, err := ParseHookArgs(args)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrDenied, err)
	}
	reply, err := HookReply{}, errors.New("daemon not asked (--cache-only)")
	if !cacheOnly {
		reply, err = askDaemon(ctx, paths.Socket, req)
	}
	if err != nil {
		reply, err = askCache(ctx, paths.Cache, req, key)
		if err != nil {
			return fmt.Errorf("%w: daemon and cache both unavailable: %v", ErrDenied, err)
		}
	}
	if !reply.Allow || len(reply.Lines) == 0 {
		return fmt.Errorf("%w: %s", ErrDenied, reply.Reason)
	}
	return hookclient.WriteLines(out, reply)
}

// askDaemon asks the daemon over its socket, leaving the cache its reserve
// of the budget.
func askDaemon(ctx context.Context, socket string, req HookRequest) (HookReply, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(hookclient.TotalBudget)
	}
	return hookclient.Ask(socket, req, deadline.Add(-hookclient.CacheReserve))
}

// askCache answers from the daemon's cache file, read-only, exactly as the
// daemon would have from the same data.
func askCache(ctx context.Context, path string, req HookRequest, key ssh.PublicKey) (HookReply, error) {
	busy := 500 * time.Millisecond
	if deadline, ok := ctx.Deadline(); ok {
		busy = time.Until(deadline) - 20*time.Millisecond // room to answer
	}
	c, err := OpenCacheReadOnly(path, busy)
	if err != nil {
		return HookReply{}, err
	}
	defer c.Close()
	tunnelUser, err := c.TunnelUser(ctx)
	if err != nil {
		return HookReply{}, err
	}
	// Expired entries count: the daemon is down, so no one can revalidate,
	// and a cached device keeps connecting (DESIGN.md's lifecycle promise).
	dev, _, found, err := c.Get(ctx, req.Fingerprint)
	if err != nil {
		return HookReply{}, err
	}
	return Decide(tunnelUser, req.User, key, dev, found), nil
}

// Decide is the one authorisation rule, shared by the daemon and the cache
// fallback: the right user, a known device, the same key, active, with leases.
func Decide(tunnelUser, user string, key ssh.PublicKey, dev registry.Device, found bool) HookReply {
	switch {
	case user != tunnelUser:
		return HookReply{Reason: fmt.Sprintf("user %q is not the tunnel user", user)}
	case !found:
		return HookReply{Reason: "unknown key"}
	case dev.PublicKey != registry.AuthorizedKey(key):
		return HookReply{Device: dev.Name, Reason: "key differs from the enrolled one"}
	case dev.Status != registry.StatusActive:
		return HookReply{Device: dev.Name, Reason: "device is " + dev.Status}
	}
	line, err := AuthorizedLine(dev)
	if err != nil {
		return HookReply{Device: dev.Name, Reason: err.Error()}
	}
	return HookReply{Allow: true, Device: dev.Name, Lines: []string{line}}
}
