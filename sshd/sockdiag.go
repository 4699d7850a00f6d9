package sshd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"syscall"
)

// The kernel's sock_diag netlink interface lists TCP sockets filtered by
// state in the kernel, in binary. Reading /proc/net/tcp instead formats
// every socket of the host as text: at 5,000 tunnels (a listener, a session
// socket and the probes' TIME_WAITs per tunnel) that is ~100 ms per read,
// where a dump of the listening sockets costs a few ms.
const (
	sockDiagByFamily = 20 // SOCK_DIAG_BY_FAMILY
	netlinkInetDiag  = 4  // NETLINK_INET_DIAG (= NETLINK_SOCK_DIAG)

	tcpListen = 10
	// Connection states worth reporting for sshd's own port: everything
	// that still has an owner (not TIME_WAIT, not a half-open SYN_RECV).
	tcpConnStates = 1<<1 | 1<<4 | 1<<5 | 1<<7 | 1<<8 | 1<<9 | 1<<11
)

// diagBufs are receive buffers: a dump answers in messages of at most 32 KiB
// (the kernel's netlink dump size), and the slave dumps every second.
var diagBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// diagSockets is readSockets on the live system (this process's network
// namespace): every listening TCP socket, and (sshPort > 0) the
// connections on local port sshPort, by inode.
func diagSockets(sshPort int) (map[uint64]sockInfo, error) {
	states := uint32(1 << tcpListen)
	if sshPort > 0 {
		states |= tcpConnStates
	}
	fd, err := syscall.Socket(syscall.AF_NETLINK, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, netlinkInetDiag)
	if err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	socks := map[uint64]sockInfo{}
	bp := diagBufs.Get().(*[]byte)
	defer diagBufs.Put(bp)
	buf := *bp
	for seq, family := range []uint8{syscall.AF_INET, syscall.AF_INET6} {
		if err := diagDump(fd, uint32(seq+1), family, states, buf, func(m []byte) {
			addDiagSocket(m, family, sshPort, socks)
		}); err != nil {
			return nil, err
		}
	}
	return socks, nil
}

// diagDump sends one dump request (inet_diag_req_v2 for TCP) and hands each
// inet_diag_msg of the answer to each.
func diagDump(fd int, seq uint32, family uint8, states uint32, buf []byte, each func([]byte)) error {
	const hdr, reqLen = syscall.NLMSG_HDRLEN, 56 // nlmsghdr + inet_diag_req_v2
	req := make([]byte, hdr+reqLen)
	binary.NativeEndian.PutUint32(req[0:4], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:6], sockDiagByFamily)
	binary.NativeEndian.PutUint16(req[6:8], syscall.NLM_F_REQUEST|syscall.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:12], seq)
	req[hdr+0] = family
	req[hdr+1] = syscall.IPPROTO_TCP
	binary.NativeEndian.PutUint32(req[hdr+4:hdr+8], states)
	if err := syscall.Sendto(fd, req, 0, &syscall.SockaddrNetlink{Family: syscall.AF_NETLINK}); err != nil {
		return fmt.Errorf("sock_diag request: %w", err)
	}
	for {
		n, _, err := syscall.Recvfrom(fd, buf, 0)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("sock_diag answer: %w", err)
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			return fmt.Errorf("sock_diag answer: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != seq {
				continue
			}
			switch m.Header.Type {
			case syscall.NLMSG_DONE:
				return nil
			case syscall.NLMSG_ERROR:
				if len(m.Data) >= 4 {
					if errno := -int32(binary.NativeEndian.Uint32(m.Data[:4])); errno != 0 {
						return fmt.Errorf("sock_diag: %w", syscall.Errno(errno))
					}
				}
				return errors.New("sock_diag: error answer")
			case sockDiagByFamily:
				each(m.Data)
			}
		}
	}
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
		var ip net.IP
		if family == syscall.AF_INET {
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
		if socks, err := diagSockets(sshPort); err == nil {
			return socks, nil
		} else if !errors.Is(err, os.ErrPermission) && !errors.Is(err, syscall.EPROTONOSUPPORT) && !errors.Is(err, syscall.EAFNOSUPPORT) {
			return nil, err
		}
	}
	return readSockets(procRoot, sshPort)
}
