package sessions

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/internal/testkit"
	"golang.org/x/sys/unix"
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

// sockDiagSeeds holds real sock_diag answers of a Linux kernel, one
// datagram a file (DUMP.N.bin), the seed corpus of FuzzDiagAnswer and
// FuzzDiagMessage. `go test -run TestSockDiagSeeds -update` records them
// anew from this host.
const sockDiagSeeds = "testdata/sockdiag"

// diagSeed is one recorded datagram.
type diagSeed struct {
	name string
	data []byte
}

func readDiagSeeds(tb testing.TB) []diagSeed {
	tb.Helper()
	files, err := filepath.Glob(filepath.Join(sockDiagSeeds, "*.bin"))
	if err != nil || len(files) == 0 {
		tb.Fatalf("no sock_diag seeds in %s (%v): record them with go test -run TestSockDiagSeeds -update", sockDiagSeeds, err)
	}
	var out []diagSeed
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, diagSeed{filepath.Base(f), b})
	}
	return out
}

// The recorded answers are what the slave reads: each dump's datagrams
// parse, hand over the sockets they list, and the last one ends the dump.
func TestSockDiagSeeds(t *testing.T) {
	if testkit.Updating() {
		recordDiagSeeds(t)
	}
	dumps := map[string][]diagSeed{}
	for _, s := range readDiagSeeds(t) {
		dump, _, _ := strings.Cut(s.name, ".")
		dumps[dump] = append(dumps[dump], s)
	}
	for dump, seeds := range dumps {
		sort.Slice(seeds, func(i, j int) bool { return seedIndex(seeds[i].name) < seedIndex(seeds[j].name) })
		seq := binary.NativeEndian.Uint32(seeds[0].data[8:12])
		n := 0
		for i, s := range seeds {
			done, err := diagAnswer(s.data, seq, func([]byte) { n++ })
			if dump == "error" {
				if !done || !errors.Is(err, unix.EINVAL) {
					t.Errorf("%s: done %v, err %v; want the kernel's EINVAL", s.name, done, err)
				}
				continue
			}
			if err != nil || done != (i == len(seeds)-1) {
				t.Errorf("%s: done %v, err %v (datagram %d of %d)", s.name, done, err, i+1, len(seeds))
			}
		}
		if dump != "error" && n == 0 {
			t.Errorf("dump %s lists no socket", dump)
		}
	}
}

func seedIndex(name string) int {
	parts := strings.Split(name, ".")
	n, _ := strconv.Atoi(parts[len(parts)-2])
	return n
}

// recordDiagSeeds dumps, from this host's kernel, the listeners (the
// host's and the test's own) and the test's own connections: IPv4, IPv6
// and IPv4-mapped peers, with tcp_info; every extension of a connection in
// TIME_WAIT or closing; and the error a malformed filter earns.
func recordDiagSeeds(t *testing.T) {
	listen := func(network, addr string) (net.Listener, int) {
		l, err := net.Listen(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		return l, l.Addr().(*net.TCPAddr).Port
	}
	l4, port4 := listen("tcp4", "127.0.0.1:0")
	l6, port6 := listen("tcp", "[::]:0") // dual-stack: IPv4 peers show as ::ffff:a.b.c.d
	var conns []net.Conn
	dial := func(l net.Listener, addr string) {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		a, err := l.Accept()
		if err != nil {
			t.Fatal(err)
		}
		c.Write([]byte("SSH-2.0-client\r\n"))
		conns = append(conns, c, a)
	}
	dial(l4, l4.Addr().String())
	dial(l6, net.JoinHostPort("::1", strconv.Itoa(port6)))
	dial(l6, net.JoinHostPort("127.0.0.1", strconv.Itoa(port6)))
	// A connection the "sshd" end closes first: FIN_WAIT or TIME_WAIT.
	c, err := net.Dial("tcp", l4.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, err := l4.Accept()
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	c.Close()
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()

	if err := os.RemoveAll(sockDiagSeeds); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(sockDiagSeeds, 0o755); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	badFilter := []byte{0xff, 8, 12, 0, 0, 0, 0, 0} // an unknown filter op
	for i, d := range []struct {
		name string
		req  diagRequest
	}{
		{"listen-inet", diagRequest{family: unix.AF_INET, states: 1 << tcpListen}},
		{"listen-inet6", diagRequest{family: unix.AF_INET6, states: 1 << tcpListen}},
		{"conn-inet", diagRequest{family: unix.AF_INET, states: tcpConnStates, ext: 1 << (inetDiagInfo - 1), filter: sourcePortFilter(port4)}},
		{"conn-inet6", diagRequest{family: unix.AF_INET6, states: tcpConnStates, ext: 1 << (inetDiagInfo - 1), filter: sourcePortFilter(port6)}},
		{"all-inet", diagRequest{family: unix.AF_INET, states: ^uint32(0), ext: 0xff, filter: sourcePortFilter(port4)}},
		{"error", diagRequest{family: unix.AF_INET, states: ^uint32(0), filter: badFilter}},
	} {
		d.req.seq = uint32(100 + i)
		if err := unix.Sendto(fd, d.req.encode(), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64<<10)
		for n := 0; ; n++ {
			m, _, err := unix.Recvfrom(fd, buf, 0)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(sockDiagSeeds, fmt.Sprintf("%s.%d.bin", d.name, n))
			if err := os.WriteFile(path, buf[:m], 0o644); err != nil {
				t.Fatal(err)
			}
			if done, _ := diagAnswer(buf[:m], d.req.seq, func([]byte) {}); done {
				break
			}
		}
	}
	runtime.KeepAlive(conns)
}
