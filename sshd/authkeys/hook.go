package authkeys

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"regexp"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/registry"
)

// The hook must answer sshd within 2 s whatever the daemon does. It gives the
// daemon most of that and keeps the rest for the cache.
const (
	hookSocketBudget = 1600 * time.Millisecond // room for newest-wins: a probe and a kill
	hookTotalBudget  = 1900 * time.Millisecond
	maxHookArg       = 16 << 10 // an RSA-16384 key is ~2.8 KB of base64
)

// HookRequest is what sshd tells the hook (%u %f %t %k) and what the hook
// forwards to the daemon over its unix socket.
type HookRequest struct {
	Op          string `json:"op,omitempty"` // "" (authorize) or "tunnels" (root only)
	User        string `json:"user"`
	Fingerprint string `json:"fingerprint"`
	KeyType     string `json:"key_type"`
	Key         string `json:"key"`
}

// HookReply is the daemon's answer: the authorized_keys lines to print, or a
// reason for refusing (logged by the daemon, never printed to sshd).
type HookReply struct {
	Allow  bool     `json:"allow"`
	Device string   `json:"device,omitempty"`
	Lines  []string `json:"lines,omitempty"`
	Reason string   `json:"reason,omitempty"`
}

// UserRE is the user names mas4h accepts: what useradd accepts, minus
// anything a shell or sshd_config would read specially.
var UserRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)

var (
	keyTypeRE = regexp.MustCompile(`^[a-z0-9][a-z0-9@.-]{0,63}$`)
)

// ParseHookArgs checks sshd's arguments: user, SHA256 fingerprint, key type
// and base64 key. The key must parse, be of the stated type and hash to the
// stated fingerprint; anything else is refused without asking anyone.
func ParseHookArgs(args []string) (HookRequest, ssh.PublicKey, error) {
	if len(args) != 4 {
		return HookRequest{}, nil, fmt.Errorf("want 4 arguments (user fingerprint key-type key), got %d", len(args))
	}
	for _, a := range args {
		if len(a) > maxHookArg {
			return HookRequest{}, nil, fmt.Errorf("argument of %d bytes is too long", len(a))
		}
	}
	req := HookRequest{User: args[0], Fingerprint: args[1], KeyType: args[2], Key: args[3]}
	if !UserRE.MatchString(req.User) {
		return req, nil, fmt.Errorf("user %.40q is not a valid user name", req.User)
	}
	if !keyTypeRE.MatchString(req.KeyType) {
		return req, nil, fmt.Errorf("key type %.40q is malformed", req.KeyType)
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
		Socket: filepath.Join(stateDir, "run", "hook.sock"),
		Cache:  filepath.Join(stateDir, "cache.db"),
	}
}

// ErrDenied means the hook found no key to give sshd. The hook exits non-zero
// with no output; the daemon (when it was asked) logged why.
var ErrDenied = errors.New("no key for this request")

// RunHook is `mas4h authkeys`: it validates sshd's arguments, asks the slave
// daemon, falls back to the daemon's cache when the daemon is down or hung,
// and writes the authorized_keys lines to out. Every failure is a denial.
func RunHook(ctx context.Context, paths HookPaths, args []string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, hookTotalBudget)
	defer cancel()
	req, key, err := ParseHookArgs(args)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrDenied, err)
	}
	reply, err := askDaemon(ctx, paths.Socket, req)
	if err != nil {
		reply, err = askCache(ctx, paths.Cache, req, key)
		if err != nil {
			return fmt.Errorf("%w: daemon and cache both unavailable: %v", ErrDenied, err)
		}
	}
	if !reply.Allow || len(reply.Lines) == 0 {
		return fmt.Errorf("%w: %s", ErrDenied, reply.Reason)
	}
	w := bufio.NewWriter(out)
	for _, l := range reply.Lines {
		fmt.Fprintln(w, l)
	}
	return w.Flush()
}

func askDaemon(ctx context.Context, socket string, req HookRequest) (HookReply, error) {
	ctx, cancel := context.WithTimeout(ctx, hookSocketBudget)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return HookReply{}, err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return HookReply{}, err
	}
	var reply HookReply
	dec := json.NewDecoder(io.LimitReader(conn, 1<<20))
	if err := dec.Decode(&reply); err != nil {
		return HookReply{}, fmt.Errorf("reading daemon reply: %w", err)
	}
	return reply, nil
}

// askCache answers from the daemon's cache file, read-only, exactly as the
// daemon would have from the same data.
func askCache(ctx context.Context, path string, req HookRequest, key ssh.PublicKey) (HookReply, error) {
	c, err := OpenCacheReadOnly(path)
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
