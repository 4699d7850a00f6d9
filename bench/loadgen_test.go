package bench

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"golang.org/x/crypto/ssh"
)

// fakeSSHD accepts the generator's devices, grants tcpip-forward for
// ports in allow, opens one forwarded-tcpip channel per device and sends
// what it read from it to banners.
func fakeSSHD(t *testing.T, allow map[uint32]bool, banners chan<- string) string {
	t.Helper()
	hostKey := testkit.NewKey(t, "").Signer
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(ssh.ConnMetadata, ssh.PublicKey) (*ssh.Permissions, error) { return nil, nil }}
	cfg.AddHostKey(hostKey)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				conn, chans, reqs, err := ssh.NewServerConn(nc, cfg)
				if err != nil {
					return
				}
				defer conn.Close()
				go func() {
					for c := range chans {
						c.Reject(ssh.Prohibited, "no")
					}
				}()
				for r := range reqs {
					var fwd struct {
						Addr string
						Port uint32
					}
					ssh.Unmarshal(r.Payload, &fwd)
					ok := r.Type == "tcpip-forward" && fwd.Addr == "localhost" && allow[fwd.Port]
					r.Reply(ok, nil)
					if !ok {
						continue
					}
					go func() {
						payload := ssh.Marshal(&struct {
							Addr       string
							Port       uint32
							OriginAddr string
							OriginPort uint32
						}{"localhost", fwd.Port, "127.0.0.1", 40000})
						ch, creqs, err := conn.OpenChannel("forwarded-tcpip", payload)
						if err != nil {
							banners <- "open: " + err.Error()
							return
						}
						go ssh.DiscardRequests(creqs)
						buf := make([]byte, len(loadgenBanner))
						io.ReadFull(ch, buf)
						ch.Close()
						banners <- string(buf)
					}()
				}
			}()
		}
	}()
	return l.Addr().String()
}

func TestFleetForwardsAndBanner(t *testing.T) {
	banners := make(chan string, 4)
	addr := fakeSSHD(t, map[uint32]bool{10001: true, 10002: true}, banners)
	var devs []device
	for i, port := range []int{10001, 10002, 10003} { // the last one is refused
		d, err := newMemDevice("d" + string(rune('a'+i)))
		if err != nil {
			t.Fatal(err)
		}
		d.Ports = []int{port}
		devs = append(devs, d)
	}
	f := newFleet(genConfig{Addr: addr, User: "u", Sources: []net.IP{net.IPv4(127, 0, 1, 1)}, Parallel: 2,
		HandshakeTimeout: 10 * time.Second}, devs)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	t0 := time.Now()
	f.start(ctx)
	defer f.stop()
	if _, err := f.waitUpSince(ctx, t0, 2); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if b := <-banners; b != loadgenBanner {
			t.Errorf("forwarded connection read %q, want the banner", b)
		}
	}
	var c genCounters
	if !testkit.Wait(10*time.Second, func() bool { c = f.snapshot(false); return c.Failures[failForward] == 1 }) {
		t.Fatalf("refused forward not counted: %+v", c)
	}
	if c.Attempts != 3 || c.Successes != 2 {
		t.Errorf("counters %+v", c)
	}
	if f.Up() != 2 {
		t.Errorf("up %d, want 2", f.Up())
	}
	f.stop()
	if f.Up() != 0 {
		t.Errorf("after stop: up %d", f.Up())
	}
}
