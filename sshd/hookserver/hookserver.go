// Package hookserver is the slave daemon's side of sshd's
// AuthorizedKeysCommand: a unix socket in the state dir where the hook asks
// whether a key may log in, and the one place that decides it (Authorizer).
// Root may also ask it for the slave's live tunnels (`mas4h tunnels
// --state-dir`).
package hookserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/sshd/authkeys"
	"github.com/mas4h/mas4h/sshd/statedir"
)

const (
	requestBudget = 2 * time.Second // the hook gives up well before
	maxRequest    = 64 << 10
)

// Deciders answer the requests.
type Deciders struct {
	// Authorize decides one authentication attempt.
	Authorize func(ctx context.Context, req authkeys.HookRequest) authkeys.HookReply
	// Tunnels lists the live tunnels, for root.
	Tunnels func(ctx context.Context) []wire.Tunnel
}

// Server answers on the hook's socket.
type Server struct {
	slave string
	d     Deciders
	log   *slog.Logger
	l     net.Listener
}

// Listen opens the hook's socket at path, root:gid 0660 (inside a 0750
// directory: only sshd's user and root can ask). A socket left by an earlier
// daemon is replaced; the caller holds the state dir's lock.
func Listen(path string, gid int, slave string, d Deciders, log *slog.Logger) (*Server, error) {
	os.Remove(path)
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on hook socket %s: %w", path, err)
	}
	if err := os.Chown(path, 0, gid); err != nil {
		l.Close()
		return nil, fmt.Errorf("hook socket: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("hook socket: %w", err)
	}
	return &Server{slave: slave, d: d, log: log.With("component", "hook"), l: l}, nil
}

// Serve answers until ctx ends (or Close), one goroutine a connection.
func (s *Server) Serve(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { s.l.Close() })
	defer stop()
	for {
		conn, err := s.l.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				s.log.Error("hook socket accept failed", "err", err)
			}
			return
		}
		go s.handle(ctx, conn)
	}
}

// Close stops accepting.
func (s *Server) Close() error { return s.l.Close() }

func (s *Server) handle(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(requestBudget))
	var req authkeys.HookRequest
	dec := json.NewDecoder(io.LimitReader(conn, maxRequest))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		s.log.Warn("malformed hook request", "err", err)
		return
	}
	enc := json.NewEncoder(conn)
	if req.Op == "tunnels" {
		if uid, ok := peerUID(conn); !ok || uid != 0 {
			enc.Encode(TunnelsReply{Error: "only root may list tunnels"})
			return
		}
		enc.Encode(TunnelsReply{Slave: s.slave, Tunnels: s.d.Tunnels(ctx)})
		return
	}
	enc.Encode(s.d.Authorize(ctx, req))
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
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil || cred == nil {
		return 0, false
	}
	return int(cred.Uid), true
}

// LocalTunnels asks the slave daemon of stateDir for its live tunnels.
func LocalTunnels(ctx context.Context, stateDir string) (TunnelsReply, error) {
	socket := statedir.Dir(stateDir).Socket()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return TunnelsReply{}, fmt.Errorf("no slave daemon answers on %s (is mas4h slave running with --state-dir %s?): %w", socket, stateDir, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if err := json.NewEncoder(conn).Encode(authkeys.HookRequest{Op: "tunnels"}); err != nil {
		return TunnelsReply{}, fmt.Errorf("asking the slave daemon on %s: %w", socket, err)
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
