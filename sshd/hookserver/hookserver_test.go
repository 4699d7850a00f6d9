package hookserver

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/sshd/authkeys"
	"github.com/mas4h/mas4h/sshd/authkeys/hookclient"
)

// The lean hook's client talks to the server over a real socket; the
// socket is the tunnel group's only; root lists tunnels.
func TestServeSocket(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "run"), 0o750); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "run", "hook.sock")
	asked := make(chan authkeys.HookRequest, 1)
	srv, err := Listen(path, 4242, "s1", Deciders{
		Authorize: func(_ context.Context, req authkeys.HookRequest) authkeys.HookReply {
			asked <- req
			return authkeys.HookReply{Allow: true, Device: "pi", Lines: []string{"restrict ssh-ed25519 AAAA"}}
		},
		Tunnels: func(context.Context) []wire.Tunnel { return []wire.Tunnel{{Device: "pi", Port: 20001}} },
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { srv.Serve(ctx); close(done) }()
	defer func() { cancel(); <-done }()

	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 {
		t.Errorf("socket mode %v, want 0660", fi.Mode().Perm())
	}
	req := hookclient.Request{User: "mas4h-tunnel", Fingerprint: "SHA256:x", KeyType: "ssh-ed25519", Key: "AAAA"}
	reply, err := hookclient.Ask(path, req, time.Now().Add(2*time.Second))
	if err != nil || !reply.Allow || reply.Lines[0] != "restrict ssh-ed25519 AAAA" {
		t.Fatalf("ask: %+v %v", reply, err)
	}
	if got := <-asked; got != req {
		t.Errorf("server got %+v, want %+v", got, req)
	}
	r, err := LocalTunnels(context.Background(), dir)
	if err != nil || r.Slave != "s1" || len(r.Tunnels) != 1 || r.Tunnels[0].Port != 20001 {
		t.Errorf("tunnels: %+v %v", r, err)
	}

	// Garbage and unknown fields are dropped without an answer.
	for _, junk := range []string{"not json\n", `{"user":"x","extra":1}` + "\n"} {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte(junk))
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if n, _ := c.Read(make([]byte, 64)); n != 0 {
			t.Errorf("%q answered", junk)
		}
		c.Close()
	}
	select {
	case req := <-asked:
		t.Errorf("a malformed request reached Authorize: %+v", req)
	default:
	}
}
