package sshd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"
	"time"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authkeys"
)

// serveHook listens on the state dir's unix socket for the hook. The socket
// is root:tunnel-group 0660 inside a 0750 directory: only sshd's user (and
// root) can ask.
func (s *Slave) serveHook(ctx context.Context) error {
	path := authkeys.PathsFor(s.cfg.StateDir).Socket
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
	var req authkeys.HookRequest
	dec := json.NewDecoder(io.LimitReader(conn, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		s.log.Warn("malformed hook request", "err", err)
		return
	}
	if req.Op == "tunnels" {
		if uid, ok := peerUID(conn); !ok || uid != 0 {
			json.NewEncoder(conn).Encode(TunnelsReply{Error: "only root may list tunnels"})
			return
		}
		tunnels, _ := s.Tunnels(ctx)
		json.NewEncoder(conn).Encode(TunnelsReply{Slave: s.cfg.Name, Tunnels: tunnels})
		return
	}
	reply := s.Authorize(ctx, req)
	json.NewEncoder(conn).Encode(reply)
}

// TunnelsReply answers the "tunnels" request of `mas4h tunnels --state-dir`.
type TunnelsReply struct {
	Slave   string        `json:"slave,omitempty"`
	Tunnels []wire.Tunnel `json:"tunnels,omitempty"`
	Error   string        `json:"error,omitempty"`
}

// peerUID is the uid of the process on the other end of a unix socket.
func peerUID(conn net.Conn) (int, bool) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return 0, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *syscall.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return 0, false
	}
	return int(cred.Uid), true
}

// LocalTunnels asks a running slave daemon for its live tunnels.
func LocalTunnels(ctx context.Context, stateDir string) (TunnelsReply, error) {
	socket := authkeys.PathsFor(stateDir).Socket
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return TunnelsReply{}, fmt.Errorf("no slave daemon answers on %s (is mas4h slave running with --state-dir %s?): %w", socket, stateDir, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := json.NewEncoder(conn).Encode(authkeys.HookRequest{Op: "tunnels"}); err != nil {
		return TunnelsReply{}, err
	}
	var r TunnelsReply
	if err := json.NewDecoder(conn).Decode(&r); err != nil {
		return TunnelsReply{}, fmt.Errorf("reading the slave's answer: %w", err)
	}
	if r.Error != "" {
		return r, errors.New(r.Error)
	}
	return r, nil
}

// Authorize decides one authentication attempt and logs it.
func (s *Slave) Authorize(ctx context.Context, req authkeys.HookRequest) (reply authkeys.HookReply) {
	defer func(start time.Time) { s.mon.metrics.Hook(reply.Allow, time.Since(start)) }(time.Now())
	_, key, err := authkeys.ParseHookArgs([]string{req.User, req.Fingerprint, req.KeyType, req.Key})
	if err != nil {
		s.log.Warn("auth", "verdict", "deny", "reason", err.Error())
		return authkeys.HookReply{Reason: err.Error()}
	}
	dev, found, err := s.src.Lookup(ctx, req.Fingerprint, key)
	if err != nil {
		s.log.Error("auth", "fingerprint", req.Fingerprint, "verdict", "deny", "reason", "no answer", "err", err)
		return authkeys.HookReply{Reason: "no answer: " + err.Error()}
	}
	reply = authkeys.Decide(s.user.Name, req.User, key, dev, found)
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
	if s.keys != nil {
		s.keys.revoke(ctx, dev.Name) // before its sessions end, or it could log straight back in
	}
	ports := map[int]bool{}
	for _, f := range dev.Forwards {
		ports[f.RemotePort] = true
	}
	sessions, err := s.mon.sessions()
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
		s.mon.metrics.Reap(metrics.ReapRevoked)
		go func() {
			defer s.killWG.Done()
			s.mon.end(ctx, sess, dev.Name, reason, "kill")
		}()
	}
}
