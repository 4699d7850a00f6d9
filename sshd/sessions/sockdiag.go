package sessions

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"
)

// The kernel's sock_diag netlink interface lists TCP sockets filtered by
// state in the kernel, in binary. Reading /proc/net/tcp instead formats
// every socket of the host as text: at 5,000 tunnels (a listener, a session
// socket and the probes' TIME_WAITs per tunnel) that is ~100 ms per read,
// where a dump of the listening sockets costs a few ms.
const (
	tcpListen = 10
	// Connection states worth reporting for sshd's own port: everything
	// that still has an owner (not TIME_WAIT, not a half-open SYN_RECV).
	tcpConnStates = 1<<1 | 1<<4 | 1<<5 | 1<<7 | 1<<8 | 1<<9 | 1<<11
)

// diagBufs are receive buffers: a dump answers in messages of at most 32 KiB
// (the kernel's netlink dump size), and the slave dumps every second.
var diagBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// diagSockets is readSockets on the live system (this process's network
// namespace): every listening TCP socket (when listeners), and (sshPort > 0)
// the connections on local port sshPort with their tcp_info, by inode. The
// connections come in a dump of their own, filtered by port in the kernel:
// tcp_info is a few hundred bytes a socket, worth asking for the sessions'
// connections only, not for thousands of listeners.
func diagSockets(sshPort int, listeners bool) (map[uint64]sockInfo, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	socks := map[uint64]sockInfo{}
	bp := diagBufs.Get().(*[]byte)
	defer diagBufs.Put(bp)
	buf := *bp
	seq := uint32(0)
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		if listeners {
			seq++
			if err := diagDump(fd, diagRequest{seq: seq, family: family, states: 1 << tcpListen}, buf, func(m []byte) {
				addDiagSocket(m, family, sshPort, socks)
			}); err != nil {
				return nil, err
			}
		}
		if sshPort > 0 {
			seq++
			req := diagRequest{seq: seq, family: family, states: tcpConnStates, ext: 1 << (inetDiagInfo - 1), filter: sourcePortFilter(sshPort)}
			if err := diagDump(fd, req, buf, func(m []byte) {
				addDiagSocket(m, family, sshPort, socks)
			}); err != nil {
				return nil, err
			}
		}
	}
	return socks, nil
}

// diagRequest is one inet_diag_req_v2 dump request for TCP sockets.
type diagRequest struct {
	seq    uint32
	family uint8
	states uint32
	ext    uint8  // INET_DIAG_* extensions wanted, as bits
	filter []byte // a filter program (INET_DIAG_REQ_BYTECODE), or nil
}

// encode is the request as sent: nlmsghdr, inet_diag_req_v2, and the
// filter program as an INET_DIAG_REQ_BYTECODE attribute.
func (r diagRequest) encode() []byte {
	const hdr, reqLen = unix.NLMSG_HDRLEN, 56 // nlmsghdr + inet_diag_req_v2
	n := hdr + reqLen
	if r.filter != nil {
		n += 4 + len(r.filter) // struct rtattr, then the program (a multiple of 4 bytes)
	}
	req := make([]byte, n)
	binary.NativeEndian.PutUint32(req[0:4], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:6], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(req[6:8], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:12], r.seq)
	req[hdr+0] = r.family
	req[hdr+1] = unix.IPPROTO_TCP
	req[hdr+2] = r.ext
	binary.NativeEndian.PutUint32(req[hdr+4:hdr+8], r.states)
	if r.filter != nil {
		a := req[hdr+reqLen:]
		binary.NativeEndian.PutUint16(a[0:2], uint16(4+len(r.filter)))
		binary.NativeEndian.PutUint16(a[2:4], inetDiagReqBytecode)
		copy(a[4:], r.filter)
	}
	return req
}

// diagDump sends one dump request and hands each inet_diag_msg of the
// answer (with its attributes) to each.
func diagDump(fd int, r diagRequest, buf []byte, each func([]byte)) error {
	if err := unix.Sendto(fd, r.encode(), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sock_diag request: %w", err)
	}
	for {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("sock_diag answer: %w", err)
		}
		if done, err := diagAnswer(buf[:n], r.seq, each); done || err != nil {
			return err
		}
	}
}

// diagAnswer reads one datagram of the answer to dump seq, handing each of
// its inet_diag_msgs to each; done says the dump ended (NLMSG_DONE, or an
// NLMSG_ERROR, returned as its errno).
func diagAnswer(b []byte, seq uint32, each func([]byte)) (done bool, err error) {
	msgs, err := netlinkMessages(b)
	if err != nil {
		return true, fmt.Errorf("sock_diag answer: %w", err)
	}
	for _, m := range msgs {
		if m.seq != seq {
			continue
		}
		switch m.typ {
		case unix.NLMSG_DONE:
			return true, nil
		case unix.NLMSG_ERROR:
			if len(m.data) >= 4 {
				if errno := -int32(binary.NativeEndian.Uint32(m.data[:4])); errno != 0 {
					return true, fmt.Errorf("sock_diag: %w", unix.Errno(errno))
				}
			}
			return true, errors.New("sock_diag: error answer")
		case unix.SOCK_DIAG_BY_FAMILY:
			each(m.data)
		}
	}
	return false, nil
}

// addDiagSocket decodes one inet_diag_msg: family, state, timer, retrans;
// the socket id (sport, dport big-endian; src, dst 16 bytes each; if;
// cookie); expires, rqueue, wqueue, uid, inode.
func addDiagSocket(m []byte, family uint8, sshPort int, socks map[uint64]sockInfo) {
	if len(m) < 72 {
		return
	}
	state := m[1]
	lport := int(binary.BigEndian.Uint16(m[4:6]))
	inode := uint64(binary.NativeEndian.Uint32(m[68:72]))
	if inode == 0 {
		return
	}
	listen := state == tcpListen
	if !listen && (sshPort <= 0 || lport != sshPort) {
		return
	}
	sk := sockInfo{localPort: lport, listen: listen}
	if !listen {
		sk.tcp = diagTCPInfo(m)
		var ip net.IP
		if family == unix.AF_INET {
			ip = net.IP(append([]byte(nil), m[24:28]...))
		} else {
			ip = net.IP(append([]byte(nil), m[24:40]...))
		}
		sk.remote = net.JoinHostPort(ip.String(), strconv.Itoa(int(binary.BigEndian.Uint16(m[6:8]))))
	}
	socks[inode] = sk
}

// liveSockets reads the socket tables under procRoot: through sock_diag
// when procRoot is this host's /proc (falling back to the text tables if
// netlink is refused, e.g. by a seccomp filter), from the files otherwise
// (test fixtures).
func liveSockets(procRoot string, sshPort int) (map[uint64]sockInfo, error) {
	if procRoot == "/proc" {
		if socks, err := diagSockets(sshPort, true); err == nil {
			return socks, nil
		} else if !errors.Is(err, os.ErrPermission) && !errors.Is(err, unix.EPROTONOSUPPORT) && !errors.Is(err, unix.EAFNOSUPPORT) {
			return nil, err
		}
	}
	return readSockets(procRoot, sshPort)
}

// netlinkMessage is one message of a netlink answer.
type netlinkMessage struct {
	typ  uint16
	seq  uint32
	data []byte
}

// netlinkMessages splits a netlink answer into its messages (nlmsghdr:
// length, type, flags, seq, pid; each message padded to 4 bytes).
func netlinkMessages(b []byte) ([]netlinkMessage, error) {
	var out []netlinkMessage
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return nil, fmt.Errorf("netlink message of %d bytes in %d", l, len(b))
		}
		out = append(out, netlinkMessage{
			typ:  binary.NativeEndian.Uint16(b[4:6]),
			seq:  binary.NativeEndian.Uint32(b[8:12]),
			data: b[unix.NLMSG_HDRLEN:l],
		})
		b = b[min((l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1), len(b)):]
	}
	return out, nil
}
