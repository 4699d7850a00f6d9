package sshd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/mas4h/mas4h/registry"
)

// serveHook listens on the state dir's unix socket for the hook. The socket
// is root:tunnel-group 0660 inside a 0750 directory: only sshd's user (and
// root) can ask.
func (s *Slave) serveHook(ctx context.Context) error {
	path := PathsFor(s.cfg.StateDir).Socket
	os.Remove(path) // stale from a previous daemon; the state-dir lock makes this safe
	l, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listening on hook socket %s: %w", path, err)
	}
	if err := os.Chown(path, 0, s.user.GID); err != nil {
		l.Close()
		return fmt.Errorf("hook socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return fmt.Errorf("hook socket: %w", err)
	}
	s.listenHook = l
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					s.log.Error("hook socket accept failed", "err", err)
				}
				return
			}
			go s.handleHook(ctx, conn)
		}
	}()
	return nil
}

func (s *Slave) handleHook(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(2 * time.Second))
	var req HookRequest
	dec := json.NewDecoder(io.LimitReader(conn, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		s.log.Warn("malformed hook request", "err", err)
		return
	}
	reply := s.Authorize(ctx, req)
	json.NewEncoder(conn).Encode(reply)
}

// Authorize decides one authentication attempt and logs it.
func (s *Slave) Authorize(ctx context.Context, req HookRequest) HookReply {
	_, key, err := ParseHookArgs([]string{req.User, req.Fingerprint, req.KeyType, req.Key})
	if err != nil {
		s.log.Warn("auth", "verdict", "deny", "reason", err.Error())
		return HookReply{Reason: err.Error()}
	}
	dev, found, err := s.src.Lookup(ctx, req.Fingerprint, key)
	if err != nil {
		s.log.Error("auth", "fingerprint", req.Fingerprint, "verdict", "deny", "reason", "no answer", "err", err)
		return HookReply{Reason: "no answer: " + err.Error()}
	}
	reply := Decide(s.user.Name, req.User, key, dev, found)
	if reply.Allow {
		s.log.Info("auth", "device", reply.Device, "fingerprint", req.Fingerprint, "verdict", "allow")
		s.mon.supersede(ctx, dev)
		return reply
	}
	s.log.Warn("auth", "device", reply.Device, "fingerprint", req.Fingerprint, "user", req.User, "verdict", "deny", "reason", reply.Reason)
	detail := fmt.Sprintf("%s (key %s, user %q)", reply.Reason, req.Fingerprint, req.User)
	s.src.Report(ctx, registry.EventAuthDeny, reply.Device, detail)
	return reply
}

// killDevice ends every session that holds one of the device's ports.
func (s *Slave) killDevice(ctx context.Context, dev registry.Device, reason string) {
	ports := map[int]bool{}
	for _, f := range dev.Forwards {
		ports[f.RemotePort] = true
	}
	sessions, err := s.discoverer().Sessions()
	if err != nil {
		s.log.Error("listing sessions", "device", dev.Name, "err", err)
		return
	}
	for _, sess := range sessions {
		hit := false
		for _, p := range sess.Ports {
			hit = hit || ports[p]
		}
		if !hit {
			continue
		}
		s.killWG.Add(1)
		go func() {
			defer s.killWG.Done()
			s.mon.end(ctx, sess, dev.Name, reason, "kill")
		}()
	}
}
