package sessions

import (
	"net"
	"runtime"
	"testing"
)

// sock_diag and /proc/net/tcp describe the same sockets the same way.
func TestDiagSocketsMatchesProcNet(t *testing.T) {
	var ls []net.Listener
	for _, addr := range []string{"127.0.0.1:0", "[::1]:0", "127.0.0.1:0"} {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("listening on %s: %v", addr, err)
		}
		defer l.Close()
		ls = append(ls, l)
	}
	sshPort := ls[0].Addr().(*net.TCPAddr).Port
	var conns []net.Conn
	for _, l := range ls[:2] {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		a, err := l.Accept() // an unaccepted connection has no inode yet
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		conns = append(conns, c, a)
	}
	got, err := diagSockets(sshPort, true)
	if err != nil {
		t.Fatal(err)
	}
	want, err := readSockets("/proc", sshPort)
	if err != nil {
		t.Fatal(err)
	}
	// Ours: the listeners, and the accepted end of the connection to
	// sshPort (whose remote is our dialer). Other processes' sockets come
	// and go between the two reads, and may even share a port number.
	listening := map[int]bool{}
	for _, l := range ls {
		listening[l.Addr().(*net.TCPAddr).Port] = true
	}
	dialer := conns[0].LocalAddr().String()
	mine := func(s sockInfo) bool {
		return s.listen && listening[s.localPort] || !s.listen && s.localPort == sshPort && s.remote == dialer
	}
	n := 0
	for ino, w := range want {
		if !mine(w) {
			continue
		}
		n++
		g, ok := got[ino]
		if !g.listen && !g.tcp.Known {
			t.Errorf("inode %d: no tcp_info from sock_diag", ino)
		}
		g.tcp = TCPState{} // /proc/net/tcp has none
		if !ok || g != w {
			t.Errorf("inode %d: sock_diag %+v (found %v), /proc/net %+v", ino, g, ok, w)
		}
	}
	if n != 4 { // 3 listeners and the accepted end of the connection to sshPort
		t.Errorf("%d of our sockets in /proc/net/tcp, want 4", n)
	}
	for ino, g := range got {
		if _, ok := want[ino]; !ok && mine(g) {
			t.Errorf("sock_diag lists inode %d %+v that /proc/net/tcp does not", ino, g)
		}
	}
	runtime.KeepAlive(conns)
}

func BenchmarkSocketTables(b *testing.B) {
	var ls []net.Listener
	for range 2000 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		ls = append(ls, l)
	}
	b.Run("sock_diag", func(b *testing.B) {
		for b.Loop() {
			if s, err := diagSockets(22, true); err != nil || len(s) < 2000 {
				b.Fatal(err, len(s))
			}
		}
	})
	b.Run("proc_net", func(b *testing.B) {
		for b.Loop() {
			if s, err := readSockets("/proc", 22); err != nil || len(s) < 2000 {
				b.Fatal(err, len(s))
			}
		}
	})
	runtime.KeepAlive(ls)
}
