package sessions

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The parsers of this package read what the kernel writes: sock_diag
// answers, /proc/net/tcp lines, /proc/PID/stat. Each is checked against a
// reference decoder written from the kernel's side of the format (the
// standard library's netlink parser, the RTA_OK/RTA_NEXT macros, the
// offsets of linux/tcp.h, the kernel's printf formats with net/netip):
// whatever the kernel could have sent must read the same both ways, and
// nothing may panic.

// FuzzDiagAnswer: a datagram of a sock_diag answer splits into the same
// messages as syscall.ParseNetlinkMessage makes of it, the dump's socket
// messages are handed over in order up to its end, and each reads as
// FuzzDiagMessage demands.
func FuzzDiagAnswer(f *testing.F) {
	for _, s := range readDiagSeeds(f) {
		f.Add(s.data)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, err := netlinkMessages(b)
		ref, rerr := syscall.ParseNetlinkMessage(b)
		if rerr != nil && err == nil {
			// Ours also takes a last message whose padding the datagram
			// lacks; with the padding, the reference must agree.
			ref, rerr = syscall.ParseNetlinkMessage(append(b[:len(b):len(b)], make([]byte, -len(b)&3)...))
			if rerr != nil {
				t.Fatalf("netlinkMessages accepted what syscall refuses (%v): %d messages", rerr, len(msgs))
			}
		}
		if err != nil {
			if rerr == nil {
				t.Fatalf("netlinkMessages refused what syscall parses: %v", err)
			}
			if done, aerr := diagAnswer(b, 0, func([]byte) { t.Fatal("a socket from a refused datagram") }); !done || aerr == nil {
				t.Fatalf("a malformed datagram: done %v, err %v", done, aerr)
			}
			return
		}
		if len(msgs) != len(ref) {
			t.Fatalf("%d messages, syscall finds %d", len(msgs), len(ref))
		}
		for i, m := range msgs {
			r := ref[i]
			if m.typ != r.Header.Type || m.seq != r.Header.Seq || !bytes.Equal(m.data, r.Data) {
				t.Fatalf("message %d: type %d seq %d %x; syscall: %+v %x", i, m.typ, m.seq, m.data, r.Header, r.Data)
			}
		}
		if len(msgs) == 0 {
			return
		}
		// The dump the first message belongs to: its socket messages up to
		// its DONE or ERROR; other dumps' messages are not its business.
		seq := msgs[0].seq
		var want [][]byte
		wantDone, wantErr := false, false
		for _, m := range msgs {
			if m.seq != seq {
				continue
			}
			if m.typ == unix.NLMSG_DONE {
				wantDone = true
				break
			}
			if m.typ == unix.NLMSG_ERROR {
				// Even errno 0: an acknowledgement is not the end of a
				// dump, and a partial list must not pass for a whole one.
				wantDone, wantErr = true, true
				break
			}
			if m.typ == unix.SOCK_DIAG_BY_FAMILY {
				want = append(want, m.data)
			}
		}
		var got [][]byte
		done, err := diagAnswer(b, seq, func(m []byte) { got = append(got, m) })
		if done != wantDone || (err != nil) != wantErr {
			t.Fatalf("done %v, err %v; want done %v, an error %v", done, err, wantDone, wantErr)
		}
		if len(got) != len(want) {
			t.Fatalf("%d sockets handed over, want %d", len(got), len(want))
		}
		for i := range got {
			if !bytes.Equal(got[i], want[i]) {
				t.Fatalf("socket message %d: %x, want %x", i, got[i], want[i])
			}
			if len(got[i]) >= 6 { // as a connection on sshd's port, to check it all
				checkDiagMessage(t, got[i], got[i][0], int(binary.BigEndian.Uint16(got[i][4:6])))
			}
		}
	})
}

// FuzzDiagMessage: one inet_diag_msg with its attributes reads as the
// kernel's struct layout says: the socket is kept only when it listens or
// is a connection on sshPort and has an inode; its port and peer are the
// bytes of the message (net/netip); its tcp_info is the first
// INET_DIAG_INFO attribute as the RTA_OK/RTA_NEXT macros find it (and as
// syscall.ParseNetlinkRouteAttr does, when it can parse), decoded by the
// offsets of linux/tcp.h.
func FuzzDiagMessage(f *testing.F) {
	for _, s := range readDiagSeeds(f) {
		msgs, err := netlinkMessages(s.data)
		if err != nil {
			f.Fatalf("%s: %v", s.name, err)
		}
		for _, m := range msgs {
			if m.typ == unix.SOCK_DIAG_BY_FAMILY && len(m.data) >= inetDiagMsgLen {
				f.Add(m.data, m.data[0] == unix.AF_INET6, binary.BigEndian.Uint16(m.data[4:6]))
			}
		}
	}
	f.Add(diagMsg(1, 2222, 40000, 7, rtattr(8, []byte{0}), rtattr(inetDiagInfo, make([]byte, 124))), false, uint16(2222))
	f.Fuzz(func(t *testing.T, m []byte, v6 bool, sshPort uint16) {
		family := uint8(unix.AF_INET)
		if v6 {
			family = unix.AF_INET6
		}
		checkDiagMessage(t, m, family, int(sshPort))
	})
}

func checkDiagMessage(t *testing.T, m []byte, family uint8, sshPort int) {
	t.Helper()
	socks := map[uint64]sockInfo{}
	addDiagSocket(m, family, sshPort, socks)
	tcp := diagTCPInfo(m)
	if len(m) < inetDiagMsgLen {
		if len(socks) != 0 || tcp != (TCPState{}) {
			t.Fatalf("a message cut at %d bytes made %+v, %+v", len(m), socks, tcp)
		}
		return
	}
	// struct inet_diag_msg: family, state, timer, retrans; sockid: sport,
	// dport (big-endian), src[16], dst[16], if, cookie[2]; expires, rqueue,
	// wqueue, uid, inode.
	state := m[1]
	sport, dport := binary.BigEndian.Uint16(m[4:6]), binary.BigEndian.Uint16(m[6:8])
	ino := uint64(binary.NativeEndian.Uint32(m[68:72]))
	wanted := ino != 0 && (state == tcpListen || sshPort > 0 && int(sport) == sshPort)
	if !wanted {
		if len(socks) != 0 {
			t.Fatalf("state %d port %d inode %d (sshPort %d) kept: %+v", state, sport, ino, sshPort, socks)
		}
		return
	}
	sk, ok := socks[ino]
	if !ok || len(socks) != 1 {
		t.Fatalf("state %d port %d inode %d (sshPort %d) not kept: %+v", state, sport, ino, sshPort, socks)
	}
	if sk.localPort != int(sport) || sk.listen != (state == tcpListen) {
		t.Fatalf("socket %+v: port %d, state %d", sk, sport, state)
	}
	if sk.listen {
		if sk.remote != "" || sk.tcp != (TCPState{}) {
			t.Fatalf("a listener with a peer or tcp_info: %+v", sk)
		}
		return
	}
	var peer netip.Addr
	if family == unix.AF_INET {
		peer = netip.AddrFrom4([4]byte(m[24:28]))
	} else {
		peer = netip.AddrFrom16([16]byte(m[24:40])).Unmap()
	}
	if ap, err := netip.ParseAddrPort(sk.remote); err != nil || ap != netip.AddrPortFrom(peer, dport) {
		t.Fatalf("peer %q (%v), the message says %v", sk.remote, err, netip.AddrPortFrom(peer, dport))
	}
	want := refTCPInfo(t, m[inetDiagMsgLen:])
	if sk.tcp != want || tcp != want {
		t.Fatalf("tcp_info\n got  %+v\n want %+v", sk.tcp, want)
	}
}

// refTCPInfo is the tcp_info of an inet_diag_msg's attributes: the first
// INET_DIAG_INFO attribute, found the way the C macros RTA_OK and RTA_NEXT
// walk them, read at the offsets of struct tcp_info in linux/tcp.h. A field
// the attribute does not hold whole reads as zero.
func refTCPInfo(t *testing.T, attrs []byte) TCPState {
	var info []byte
	found := false
	for off, rem := 0, len(attrs); rem >= 4; {
		l := int(binary.NativeEndian.Uint16(attrs[off:]))
		if l < 4 || l > rem { // !RTA_OK
			break
		}
		if binary.NativeEndian.Uint16(attrs[off+2:]) == inetDiagInfo {
			info, found = attrs[off+4:off+l], true
			break
		}
		next := (l + 3) &^ 3 // RTA_NEXT: RTA_ALIGN(rta_len)
		off, rem = off+next, rem-next
	}
	// The standard library walks them too, when every attribute is whole.
	if len(attrs)%4 == 0 {
		hdr := make([]byte, syscall.SizeofIfInfomsg) // ParseNetlinkRouteAttr skips a link message's header
		if all, err := syscall.ParseNetlinkRouteAttr(&syscall.NetlinkMessage{
			Header: syscall.NlMsghdr{Type: syscall.RTM_NEWLINK}, Data: append(hdr, attrs...)}); err == nil {
			var sinfo []byte
			sfound := false
			for _, a := range all {
				if a.Attr.Type == inetDiagInfo {
					sinfo, sfound = a.Value, true
					break
				}
			}
			if sfound != found || !bytes.Equal(sinfo, info) {
				t.Fatalf("the two references disagree on %x: %v %x, %v %x", attrs, found, info, sfound, sinfo)
			}
		}
	}
	if len(info) < minTCPInfoLen {
		return TCPState{}
	}
	u8 := func(off int) uint8 { return info[off] }
	u32 := func(off int) uint32 { return binary.NativeEndian.Uint32(info[off:]) }
	u64 := func(off int) uint64 {
		if off+8 > len(info) {
			return 0
		}
		return binary.NativeEndian.Uint64(info[off:])
	}
	ms := func(off int) time.Duration { return time.Duration(u32(off)) * time.Millisecond }
	return TCPState{
		Known:         true,
		State:         u8(0),                                     // tcpi_state
		Retransmits:   u8(2),                                     // tcpi_retransmits
		Probes:        u8(3),                                     // tcpi_probes
		Backoff:       u8(4),                                     // tcpi_backoff
		Unacked:       u32(24),                                   // tcpi_unacked
		LastDataSent:  ms(44),                                    // tcpi_last_data_sent
		LastDataRecv:  ms(52),                                    // tcpi_last_data_recv
		LastAckRecv:   ms(56),                                    // tcpi_last_ack_recv
		RTT:           time.Duration(u32(68)) * time.Microsecond, // tcpi_rtt
		TotalRetrans:  u32(100),                                  // tcpi_total_retrans
		BytesAcked:    u64(120),                                  // tcpi_bytes_acked
		BytesReceived: u64(128),                                  // tcpi_bytes_received
	}
}

// Lines of this host's /proc/net/tcp and tcp6: listeners, connections,
// TIME_WAIT, IPv6 and IPv4-mapped peers.
var procNetLines = []string{
	"   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 640 1 000000004f3e0930 100 0 0 10 0                       \n",
	"   1: 0100007F:5AB6 00000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 4410309 1 00000000b49d12a1 100 0 0 10 0                   \n",
	"   2: 0100007F:8A92 0100007F:5F55 06 00000000:00000000 03:000008D0 00000000     0        0 0 3 000000005345b6db                                      \n",
	"   7: 0100007F:08AE 0100007F:9C40 01 00000000:00000000 02:00000A2B 00000000   998        0 4426055 1 00000000293ad768 20 4 30 10 -1\n",
	"   0: 00000000000000000000000000000000:817F 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4426053 1 00000000c7f1c381 100 0 0 10 0\n",
	"   1: 00000000000000000000000001000000:817F 00000000000000000000000001000000:E626 01 00000000:00000000 00:00000000 00000000     0        0 4426055 1 00000000293ad768 20 0 0 10 -1\n",
	"   3: 0000000000000000FFFF00000100007F:817F 0000000000000000FFFF00000100007F:D5DE 01 00000000:00000000 00:00000000 00000000     0        0 4426057 1 000000003a9f0d45 21 0 0 10 -1\n",
	"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n",
}

// FuzzParseSocketLine: a line of /proc/net/tcp{,6} as the kernel prints it
// (tcp4_seq_show: "%4d: %08X:%04X %08X:%04X %02X ... %lu" with the inode
// tenth) reads the same as the reference below; whatever line is kept
// carries the inode it says, in full.
func FuzzParseSocketLine(f *testing.F) {
	for _, l := range procNetLines {
		f.Add(l, uint16(0x08AE))
	}
	f.Fuzz(func(t *testing.T, line string, sshPort uint16) {
		socks := map[uint64]sockInfo{}
		parseSocketLine([]byte(line), int(sshPort), socks)
		if len(socks) > 1 {
			t.Fatalf("one line, %d sockets", len(socks))
		}
		fields := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' || r == '\n' })
		for ino, sk := range socks {
			if len(fields) < 10 {
				t.Fatalf("a line of %d fields kept: %+v", len(fields), sk)
			}
			if n, err := strconv.ParseUint(fields[9], 10, 64); err != nil || n != ino {
				t.Fatalf("inode field %q kept as %d", fields[9], ino)
			}
		}
		want, ok := refSocketLine(fields, int(sshPort))
		if !ok {
			return
		}
		if got := socks[want.ino]; len(socks) != 1 || got != want.sockInfo {
			t.Fatalf("got %+v, want %+v", socks, want)
		}
	})
}

type refSocket struct {
	sockInfo
	ino uint64
}

// refSocketLine reads a well-formed line, or says it is not one or not
// wanted: addresses of 8 or 32 hex digits, ports of 4, a state of 2, a
// decimal inode.
func refSocketLine(f []string, sshPort int) (refSocket, bool) {
	if len(f) < 10 || len(f[3]) != 2 {
		return refSocket{}, false
	}
	state, err := strconv.ParseUint(f[3], 16, 8)
	if err != nil {
		return refSocket{}, false
	}
	local, lok := refHexAddr(f[1])
	remote, rok := refHexAddr(f[2])
	ino, err := strconv.ParseUint(f[9], 10, 64)
	if !lok || !rok || err != nil || ino == 0 || len(f[1]) != len(f[2]) {
		return refSocket{}, false
	}
	listen := state == tcpListen && f[3] == "0A"
	if !listen && (sshPort <= 0 || int(local.Port()) != sshPort) {
		return refSocket{}, false
	}
	r := refSocket{sockInfo{localPort: int(local.Port()), listen: listen}, ino}
	if !listen {
		r.remote = remote.String()
	}
	return r, true
}

// refHexAddr reads "%08X:%04X" (IPv4) or "%08X%08X%08X%08X:%04X" (IPv6):
// each 32-bit word of the address as the host's integer, the port as a
// number.
func refHexAddr(s string) (netip.AddrPort, bool) {
	if len(s) != 8+1+4 && len(s) != 32+1+4 || s[len(s)-5] != ':' {
		return netip.AddrPort{}, false
	}
	var a [16]byte
	n := (len(s) - 5) / 8
	for i := range n {
		w, err := strconv.ParseUint(s[8*i:8*i+8], 16, 32)
		if err != nil {
			return netip.AddrPort{}, false
		}
		binary.NativeEndian.PutUint32(a[4*i:], uint32(w))
	}
	port, err := strconv.ParseUint(s[len(s)-4:], 16, 16)
	if err != nil {
		return netip.AddrPort{}, false
	}
	addr := netip.AddrFrom16(a).Unmap()
	if n == 1 {
		addr = netip.AddrFrom4([4]byte(a[:4]))
	}
	return netip.AddrPortFrom(addr, uint16(port)), true
}

// FuzzParseHexAddr: parseHexAddr reads every address the kernel prints as
// net/netip reads its bytes (IPv4-mapped IPv6 as IPv4), and what it reads
// prints back, in the kernel's format, to an address it reads the same.
func FuzzParseHexAddr(f *testing.F) {
	for _, l := range procNetLines {
		if fields := strings.Fields(l); len(fields) > 2 {
			f.Add(fields[1])
			f.Add(fields[2])
		}
	}
	f.Add("0100007F:")
	f.Add("0100007G:0016")
	f.Fuzz(func(t *testing.T, s string) {
		ip, port, ok := parseHexAddr(s)
		want, wok := refHexAddr(s)
		if a, _ := netip.AddrFromSlice(ip); wok && (!ok || port != int(want.Port()) || a.Unmap() != want.Addr()) {
			t.Fatalf("%q: %v port %d ok %v, want %v", s, ip, port, ok, want)
		}
		if !ok {
			return
		}
		got, gok := netip.AddrFromSlice(ip)
		if !gok || port < 0 || port > 65535 {
			t.Fatalf("%q: address %v, port %d", s, ip, port)
		}
		printed := kernelHexAddr(got.Unmap(), len(ip) == 16 && got.Is4In6(), port)
		ip2, port2, ok2 := parseHexAddr(printed)
		if !ok2 || !ip2.Equal(ip) || port2 != port {
			t.Fatalf("%q -> %v:%d -> %q -> %v:%d (%v)", s, ip, port, printed, ip2, port2, ok2)
		}
	})
}

// kernelHexAddr prints an address and port as /proc/net/tcp{,6} does.
func kernelHexAddr(a netip.Addr, mapped bool, port int) string {
	var b []byte
	if a.Is4() && !mapped {
		b = a.AsSlice()
	} else {
		s := a.As16()
		b = s[:]
	}
	var out strings.Builder
	for i := 0; i < len(b); i += 4 {
		fmt.Fprintf(&out, "%08X", binary.NativeEndian.Uint32(b[i:]))
	}
	fmt.Fprintf(&out, ":%04X", port)
	return out.String()
}

// FuzzParseStat: a /proc/PID/stat as proc(5) describes it ("pid (comm)
// state ppid ... starttime ...", comm being anything but the last ')')
// reads as the reference splits it; nothing panics.
func FuzzParseStat(f *testing.F) {
	for _, s := range []string{
		"26752 (sshd) S 26741 26752 26752 0 -1 4194560 586 2065 0 0 0 0 2 1 20 0 1 0 821404 15831040 2295 18446744073709551615 93872818393088 93872819237773 140736339595344 0 0 0 0 4096 81925 1 0 0 17 0 0 0 0 0 0 93872819591024 93872819607184 93873429155840 140736339597740 140736339597838 140736339597838 140736339599337 0\n",
		"1 (process_api) S 0 0 0 0 -1 4194560 95238 170999907 0 20682 1305 7321 351221 166575 10 -10 13 0 25 43249664 3061 18446744073709551615 1 1 0 0 0 0 0 4096 1256 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
		"30972 (cat) R 30965 30965 18175 0 -1 4194304 98 0 0 0 0 0 0 0 20 0 1 0 830548 3133440 407 18446744073709551615 94729442054144 94729442074025 140734524244144 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 94729442090032 94729442091648 94730112634880 140734524246527 140734524246547 140734524246547 140734524248043 0\n",
		"812 ((sd-pam)) S 811 811 811 0 -1 1077936448 50 0 0 0 0 0 0 0 20 0 1 0 1234 0 0\n",
		"4242 (sshd-session) Z 1 4242 4242 0 -1 4227332 0 0 0 0 0 0 0 0 20 0 1 0 99 0 0\n",
		"77 (a) b (c) S 1 77 77 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 0 0\n",
		"9 (x) R",
		"9 (x)",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		head, _, _ := strings.Cut(s, " ")
		pid, err := strconv.Atoi(head)
		if err != nil {
			pid = 4242
		}
		got, ok := parseStat(pid, []byte(s))
		if ok && (got.pid != pid || got.uid != -1) {
			t.Fatalf("pid %d uid %d", got.pid, got.uid)
		}
		want, wok := refStat(pid, s)
		if wok && (!ok || got != want) {
			t.Fatalf("%q:\n got  %+v (%v)\n want %+v", s, got, ok, want)
		}
	})
}

// refStat reads a well-formed stat line: the pid, comm in parentheses,
// then single-space-separated fields, the state one character, ppid and
// (when there) starttime decimal.
func refStat(pid int, s string) (procInfo, bool) {
	head, _, _ := strings.Cut(s, " ")
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if head != strconv.Itoa(pid) || open != len(head)+1 || end < open || !strings.HasPrefix(s[end:], ") ") {
		return procInfo{}, false
	}
	f := strings.Split(strings.TrimSuffix(s[end+2:], "\n"), " ")
	if len(f) < 2 || len(f[0]) != 1 {
		return procInfo{}, false
	}
	ppid, err := strconv.ParseUint(f[1], 10, 31)
	if err != nil {
		return procInfo{}, false
	}
	p := procInfo{pid: pid, comm: s[open+1 : end], state: f[0][0], ppid: int(ppid), uid: -1}
	if len(f) > 19 {
		if p.startTick, err = strconv.ParseUint(f[19], 10, 64); err != nil {
			return procInfo{}, false
		}
	}
	return p, true
}
