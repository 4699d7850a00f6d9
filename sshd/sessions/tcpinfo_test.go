package sessions

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rtattr is one netlink attribute, padded to 4 bytes.
func rtattr(typ uint16, payload []byte) []byte {
	b := make([]byte, (4+len(payload)+3)&^3)
	binary.NativeEndian.PutUint16(b[0:2], uint16(4+len(payload)))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	copy(b[4:], payload)
	return b
}

// diagMsg is an inet_diag_msg for an IPv4 socket 127.0.0.1:sport ->
// 198.18.0.2:dport, followed by attrs.
func diagMsg(state uint8, sport, dport uint16, inode uint32, attrs ...[]byte) []byte {
	m := make([]byte, inetDiagMsgLen)
	m[0], m[1] = unix.AF_INET, state
	binary.BigEndian.PutUint16(m[4:6], sport)
	binary.BigEndian.PutUint16(m[6:8], dport)
	copy(m[8:12], []byte{127, 0, 0, 1})
	copy(m[24:28], []byte{198, 18, 0, 2})
	binary.NativeEndian.PutUint32(m[68:72], inode)
	for _, a := range attrs {
		m = append(m, a...)
	}
	return m
}

func tcpInfoBytes(ti unix.TCPInfo) []byte {
	return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&ti)), unix.SizeofTCPInfo)...)
}

func TestDecodeDiagTCPInfo(t *testing.T) {
	ti := unix.TCPInfo{State: tcpEstablished, Retransmits: 3, Probes: 1, Backoff: 4, Unacked: 2,
		Last_data_sent: 1500, Last_data_recv: 9000, Last_ack_recv: 7000, Rtt: 250000, Total_retrans: 11,
		Bytes_acked: 1 << 33, Bytes_received: 4242}
	full := tcpInfoBytes(ti)
	want := TCPState{Known: true, State: tcpEstablished, Retransmits: 3, Probes: 1, Backoff: 4, Unacked: 2,
		LastDataSent: 1500 * time.Millisecond, LastDataRecv: 9 * time.Second, LastAckRecv: 7 * time.Second,
		RTT: 250 * time.Millisecond, TotalRetrans: 11, BytesAcked: 1 << 33, BytesReceived: 4242}
	old := want
	old.BytesAcked, old.BytesReceived = 0, 0
	shutdown := rtattr(8, []byte{0}) // INET_DIAG_SHUTDOWN, which kernels always add
	cases := []struct {
		name string
		msg  []byte
		want TCPState
	}{
		{"info after another attribute", diagMsg(1, 2222, 40000, 7, shutdown, rtattr(inetDiagInfo, full)), want},
		{"info first", diagMsg(1, 2222, 40000, 7, rtattr(inetDiagInfo, full), shutdown), want},
		{"a newer kernel's longer struct", diagMsg(1, 2222, 40000, 7, rtattr(inetDiagInfo, append(full, make([]byte, 64)...))), want},
		{"an old kernel's 104 bytes", diagMsg(1, 2222, 40000, 7, rtattr(inetDiagInfo, full[:minTCPInfoLen])), old},
		{"too short to hold the ages", diagMsg(1, 2222, 40000, 7, rtattr(inetDiagInfo, full[:40])), TCPState{}},
		{"no info attribute", diagMsg(1, 2222, 40000, 7, shutdown), TCPState{}},
		{"no attributes", diagMsg(1, 2222, 40000, 7), TCPState{}},
		{"attribute longer than the message", append(diagMsg(1, 2222, 40000, 7), 0xff, 0x0f, 2, 0), TCPState{}},
		{"attribute length below its header", append(diagMsg(1, 2222, 40000, 7), 2, 0, 2, 0, 0, 0, 0, 0), TCPState{}},
		{"message cut inside inet_diag_msg", diagMsg(1, 2222, 40000, 7)[:60], TCPState{}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := diagTCPInfo(c.msg); got != c.want {
				t.Errorf("got  %+v\nwant %+v", got, c.want)
			}
			socks := map[uint64]sockInfo{}
			addDiagSocket(c.msg, unix.AF_INET, 2222, socks)
			if len(c.msg) < inetDiagMsgLen {
				if len(socks) != 0 {
					t.Errorf("a cut message made sockets %+v", socks)
				}
				return
			}
			sk := socks[7]
			if sk.localPort != 2222 || sk.remote != "198.18.0.2:40000" || sk.listen || sk.tcp != c.want {
				t.Errorf("socket %+v", sk)
			}
		})
	}
}

// The kernel runs the port filter: a dump for one port lists that port's
// connections only, each with its tcp_info.
func TestSourcePortFilter(t *testing.T) {
	var ls []net.Listener
	var accepted []net.Conn
	for range 2 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		c, a := connPair(t, l)
		defer c.Close()
		defer a.Close()
		ls, accepted = append(ls, l), append(accepted, a)
	}
	sshPort := ls[0].Addr().(*net.TCPAddr).Port
	want := inode(t, accepted[0])
	got, err := SampleTCP(sshPort)
	if err != nil {
		t.Fatal(err)
	}
	if s, ok := got[want]; !ok || !s.Known || !s.Established() {
		t.Fatalf("the connection on port %d is missing or has no tcp_info: %+v", sshPort, got)
	}
	if _, ok := got[inode(t, accepted[1])]; ok {
		t.Errorf("the other port's connection was listed")
	}
	socks, err := diagSockets(sshPort, false)
	if err != nil {
		t.Fatal(err)
	}
	for ino, sk := range socks {
		if sk.localPort != sshPort || sk.listen {
			t.Errorf("the filtered dump for port %d listed inode %d %+v", sshPort, ino, sk)
		}
	}
}

// connPair dials l and accepts: the accepted end stands for sshd's end of a
// device connection.
func connPair(t *testing.T, l net.Listener) (client, accepted net.Conn) {
	t.Helper()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	a, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return c, a
}

// inode is the socket inode of a connection, from its fd's link.
func inode(t *testing.T, c net.Conn) uint64 {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	raw.Control(func(fd uintptr) { err = unix.Fstat(int(fd), &st) })
	if err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// waitTCP polls the state of the connection ino until cond holds.
func waitTCP(t *testing.T, sshPort int, ino uint64, what string, cond func(TCPState) bool) TCPState {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, err := SampleTCP(sshPort)
		if err != nil {
			t.Fatal(err)
		}
		if cond(s[ino]) {
			return s[ino]
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: never seen; last %+v", what, s[ino])
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The numbers liveness relies on move as the kernel sees the connection:
// data received resets LastDataRecv; data sent and acknowledged but never
// answered shows as LastDataSent younger than LastDataRecv with nothing
// unacknowledged (a frozen client: its kernel still acknowledges).
func TestTCPStateMoves(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	sshPort := l.Addr().(*net.TCPAddr).Port
	c, a := connPair(t, l)
	defer c.Close()
	defer a.Close()
	ino := inode(t, a)
	if _, err := c.Write([]byte("SSH-2.0-client\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if _, err := a.Read(buf); err != nil {
		t.Fatal(err)
	}
	waitTCP(t, sshPort, ino, "silence growing", func(s TCPState) bool { return s.Known && s.LastDataRecv >= 300*time.Millisecond })
	if _, err := c.Write([]byte("keepalive answer")); err != nil {
		t.Fatal(err)
	}
	s := waitTCP(t, sshPort, ino, "data received resets the silence", func(s TCPState) bool { return s.LastDataRecv < 300*time.Millisecond })
	if !s.Established() || s.Unacked != 0 {
		t.Errorf("a healthy idle connection: %+v", s)
	}
	waitTCP(t, sshPort, ino, "silence growing again", func(s TCPState) bool { return s.LastDataRecv >= 300*time.Millisecond })
	if _, err := a.Write([]byte("keepalive request")); err != nil {
		t.Fatal(err)
	}
	s = waitTCP(t, sshPort, ino, "sent after the last data received", func(s TCPState) bool {
		return s.LastDataSent < s.LastDataRecv && s.LastDataSent < 300*time.Millisecond
	})
	if s.Unacked != 0 || s.Retransmits != 0 || s.LastAckRecv > s.LastDataSent {
		t.Errorf("the peer's kernel acknowledged the request: %+v", s)
	}
	runtime.KeepAlive(c)
}

// Data the peer's kernel never acknowledges (a dead link) shows as
// unacknowledged segments, retransmissions and an ageing LastAckRecv. The
// peer's acknowledgements are dropped by iptables in a throwaway network
// namespace.
func TestTCPStateUnacked(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("MAS4H_E2E") != "" {
			t.Fatal("MAS4H_E2E is set but this test needs root")
		}
		t.Skip("needs root (network namespace, iptables)")
	}
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("MAS4H_E2E") != "" {
				t.Fatalf("MAS4H_E2E is set but %s is missing", tool)
			}
			t.Skipf("needs %s", tool)
		}
	}
	ns := "mas4h-tcpinfo-" + strings.ReplaceAll(time.Now().Format("150405.000"), ".", "")
	if out, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
	run("ip", "link", "set", "lo", "up")

	type result struct {
		s   TCPState
		err string
	}
	done := make(chan result, 1)
	go func() {
		// This goroutine's thread enters the namespace and never leaves it:
		// locked and not unlocked, the thread ends with the goroutine.
		runtime.LockOSThread()
		fail := func(format string, a ...any) { done <- result{err: fmt.Sprintf(format, a...)} }
		f, err := os.Open("/run/netns/" + ns)
		if err != nil {
			fail("%v", err)
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			fail("setns: %v", err)
			return
		}
		l, err := net.Listen("tcp", "127.0.0.1:2222")
		if err != nil {
			fail("%v", err)
			return
		}
		defer l.Close()
		c, err := net.Dial("tcp", "127.0.0.1:2222")
		if err != nil {
			fail("%v", err)
			return
		}
		defer c.Close()
		a, err := l.Accept()
		if err != nil {
			fail("%v", err)
			return
		}
		defer a.Close()
		var st unix.Stat_t
		raw, _ := a.(*net.TCPConn).SyscallConn()
		raw.Control(func(fd uintptr) { err = unix.Fstat(int(fd), &st) })
		if err != nil {
			fail("%v", err)
			return
		}
		// Drop everything the client sends to the "sshd" end: its ACKs.
		if out, err := exec.Command("iptables", "-A", "INPUT", "-p", "tcp", "--dport", "2222", "-j", "DROP").CombinedOutput(); err != nil {
			fail("iptables: %v: %s", err, out)
			return
		}
		if _, err := a.Write([]byte("keepalive request")); err != nil {
			fail("%v", err)
			return
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			s, err := SampleTCP(2222)
			if err != nil {
				fail("%v", err)
				return
			}
			if x := s[st.Ino]; x.Unacked > 0 && x.Retransmits >= 2 && x.LastAckRecv > time.Second {
				done <- result{s: x}
				return
			}
			if time.Now().After(deadline) {
				fail("no unacknowledged data seen: %+v", s[st.Ino])
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	r := <-done
	if r.err != "" {
		t.Fatal(r.err)
	}
	if r.s.Backoff == 0 || r.s.LastDataSent > r.s.LastAckRecv {
		t.Errorf("a dead link: %+v", r.s)
	}
	t.Logf("dead link as sock_diag shows it: %+v", r.s)
}

// What reading the sessions' TCP states costs each second at fleet sizes
// (one filtered sock_diag dump per family; connections to other ports are
// not read). Run: go test ./sshd/sessions -bench SampleTCP -run x
func BenchmarkSampleTCP(b *testing.B) {
	for _, n := range []int{1000, 2000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			for range n {
				c, err := net.Dial("tcp", l.Addr().String())
				if err != nil {
					b.Fatal(err)
				}
				a, err := l.Accept()
				if err != nil {
					b.Fatal(err)
				}
				conns = append(conns, c, a)
			}
			port := l.Addr().(*net.TCPAddr).Port
			for b.Loop() {
				if s, err := SampleTCP(port); err != nil || len(s) < n {
					b.Fatal(err, len(s))
				}
			}
		})
	}
}
