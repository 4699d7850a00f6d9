package probe

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"
)

// serve answers every connection on a loopback port with fn.
func serve(t *testing.T, fn func(net.Conn)) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); fn(c) }()
		}
	}()
	return l.Addr().String()
}

func TestProbes(t *testing.T) {
	sshd := serve(t, func(c net.Conn) { c.Write([]byte("SSH-2.0-OpenSSH_9.2\r\n")); time.Sleep(time.Second) })
	slow := serve(t, func(c net.Conn) { time.Sleep(300 * time.Millisecond); c.Write([]byte("SSH-2.0-slow\r\n")) })
	silent := serve(t, func(c net.Conn) { time.Sleep(2 * time.Second) })
	closer := serve(t, func(c net.Conn) {})
	web := serve(t, func(c net.Conn) {
		buf := make([]byte, 512)
		n, _ := c.Read(buf)
		if strings.HasPrefix(string(buf[:n]), "HEAD / HTTP/1.0") {
			c.Write([]byte("HTTP/1.0 200 OK\r\n\r\n"))
		}
	})
	redis := serve(t, func(c net.Conn) {
		buf := make([]byte, 64)
		n, _ := c.Read(buf)
		if string(buf[:n]) == "PING\r\n" {
			c.Write([]byte("+PONG\r\n"))
		}
	})
	cases := []struct {
		spec, target, addr string
		ok                 bool
	}{
		{"", "localhost:22", sshd, true},
		{"ssh-banner", "x:1", slow, true},
		{"ssh-banner", "x:1", silent, false},
		{"ssh-banner", "x:1", closer, false},
		{"ssh-banner", "x:1", web, false},
		{"http", "x:1", web, true},
		{"", "x:80", web, true},
		{"http", "x:1", sshd, false},
		{"banner:^SSH-2\\.0-Open", "x:1", sshd, true},
		{"banner:^SSH-2\\.0-Dropbear", "x:1", sshd, false},
		{`send-expect:PING\r\n|^\+PONG`, "x:1", redis, true},
		{`send-expect:PONG\r\n|^\+PONG`, "x:1", redis, false},
		{"none", "x:1", closer, true},
		{"", "x:5432", closer, true}, // default none for unknown services
	}
	for _, c := range cases {
		p, err := Parse(c.spec, c.target)
		if err != nil {
			t.Fatalf("%q: %v", c.spec, err)
		}
		err = p.Run(context.Background(), c.addr, time.Second)
		if (err == nil) != c.ok {
			t.Errorf("probe %q (%s) on %s: err=%v, want ok=%v", c.spec, p.Kind, c.addr, err, c.ok)
		}
	}
}

func TestParseProbeRefuses(t *testing.T) {
	for _, spec := range []string{"nope", "banner:(", "send-expect:x", "send-expect:|x", "ssh-banner:x", `send-expect:\q|x`} {
		if _, err := Parse(spec, "x:22"); err == nil {
			t.Errorf("%q accepted", spec)
		}
	}
}
