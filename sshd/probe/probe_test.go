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

// FuzzParse: a probe spec parses into a probe the slave can run, holding
// what the spec says (its kind, its regex as written, its text unescaped),
// or is refused; an empty spec picks the kind from the target's port. (That
// the slave parses every spec the master accepts is registry's
// FuzzParseForwardSpec: registry uses this package.)
func FuzzParse(f *testing.F) {
	for _, c := range [][2]string{
		{"", "localhost:22"}, {"", "192.168.1.10:80"}, {"", "[::1]:8080"}, {"", "db:5432"}, {"", "x"},
		{"ssh-banner", "localhost:22"}, {"http", "web:80"}, {"none", "x:1"},
		{`banner:^SSH-2\.0-Open`, "x:22"}, {"banner:^220 ", "mail:25"}, {"banner:a{1,3}", "x:1"},
		{`send-expect:PING\r\n|^\+PONG`, "redis:6379"}, {"send-expect:a|b|c", "x:1"},
		{"banner:(", "x:1"}, {"ssh-banner:x", "x:1"}, {"nope", "x:1"},
	} {
		f.Add(c[0], c[1])
	}
	f.Fuzz(func(t *testing.T, spec, target string) {
		p, err := Parse(spec, target)
		if err != nil {
			return
		}
		kind, arg, _ := strings.Cut(spec, ":")
		switch {
		case spec == "":
			_, port, _ := net.SplitHostPort(target)
			want := map[string]string{"22": SSHBanner, "80": HTTP, "8080": HTTP, "8000": HTTP, "8888": HTTP}[port]
			if want == "" {
				want = None
			}
			if p.Kind != want || p.Expect != nil || p.Send != "" {
				t.Fatalf("default for %q: %+v, want kind %s", target, p, want)
			}
		case p.Kind != kind:
			t.Fatalf("spec %q: kind %q", spec, p.Kind)
		case kind == SSHBanner || kind == HTTP || kind == None:
			if spec != kind || p.Expect != nil || p.Send != "" {
				t.Fatalf("spec %q: %+v", spec, p)
			}
		case kind == Banner:
			if p.Expect == nil || p.Expect.String() != arg || p.Send != "" {
				t.Fatalf("spec %q: %+v", spec, p)
			}
		case kind == SendExpect:
			i := strings.LastIndex(arg, "|")
			if p.Expect == nil || p.Expect.String() != arg[i+1:] || p.Send == "" {
				t.Fatalf("spec %q: %+v", spec, p)
			}
			if !strings.Contains(arg[:i], `\`) && p.Send != arg[:i] {
				t.Fatalf("spec %q: text %q", spec, p.Send)
			}
		default:
			t.Fatalf("spec %q: unknown kind %q accepted", spec, p.Kind)
		}
		// Judging any answer settles or waits; it does not panic (Run
		// never reads for none).
		if p.Kind != None {
			p.judge([]byte(target))
		}
	})
}
