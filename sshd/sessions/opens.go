package sessions

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// Opens tells, for each of pids (an operator session's processes), the
// loopback ports its TCP connections lead to: the device ports an
// operator's session has open (sshd connects to 127.0.0.1:P or ::1:P for
// each direct-tcpip channel). The session's own connection, from sshd's
// listen port, is not one, even when the operator's client runs on the
// slave's loopback. It reads those processes' fds afresh (their channels
// come and go; operators are few) and one dump of the host's connections.
func (t *Table) Opens(pids []int) (map[int][]int, error) {
	if len(pids) == 0 {
		return map[int][]int{}, nil
	}
	conns, err := loopbackConns(t.d.ProcRoot, t.d.SSHPort)
	if err != nil {
		return nil, err
	}
	out := make(map[int][]int, len(pids))
	for _, pid := range pids {
		seen := map[int]bool{}
		for _, ino := range scanFDs(t.d.ProcRoot, pid, "").sockets {
			if p, ok := conns[ino]; ok && !seen[p] {
				seen[p] = true
				out[pid] = append(out[pid], p)
			}
		}
	}
	return out, nil
}

// loopbackConns maps the inode of each connected TCP socket whose remote
// end is on loopback, and whose local port is not skip (sshd's listen
// port: a client's connection), to its remote port: through sock_diag on
// the live system, from the text tables otherwise (fixtures, or netlink
// refused).
func loopbackConns(procRoot string, skip int) (map[uint64]int, error) {
	if procRoot == "/proc" {
		if m, err := diagLoopbackConns(skip); err == nil {
			return m, nil
		} else if !errors.Is(err, os.ErrPermission) && !errors.Is(err, unix.EPROTONOSUPPORT) && !errors.Is(err, unix.EAFNOSUPPORT) {
			return nil, err
		}
	}
	out := map[uint64]int{}
	for _, name := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(filepath.Join(procRoot, "net", name))
		if err != nil {
			if os.IsNotExist(err) && name == "tcp6" {
				continue
			}
			return nil, fmt.Errorf("reading socket table: %w", err)
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for first := true; sc.Scan(); first = false {
			f := bytes.Fields(sc.Bytes())
			if first || len(f) < 10 || string(f[3]) != "01" { // ESTABLISHED
				continue
			}
			ip, port, ok := parseHexAddr(string(f[2]))
			_, local, lok := parseHexAddr(string(f[1]))
			ino, err := strconv.ParseUint(string(f[9]), 10, 64)
			if ok && lok && err == nil && ino != 0 && ip.IsLoopback() && local != skip {
				out[ino] = port
			}
		}
	}
	return out, nil
}

// diagLoopbackConns is loopbackConns through sock_diag: one dump of the
// established connections per family, kept when the remote end is on
// loopback and the local port is not skip.
func diagLoopbackConns(skip int) (map[uint64]int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_INET_DIAG)
	if err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, fmt.Errorf("sock_diag: %w", err)
	}
	bp := diagBufs.Get().(*[]byte)
	defer diagBufs.Put(bp)
	out := map[uint64]int{}
	for i, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		req := diagRequest{seq: uint32(i + 1), family: family, states: 1 << 1} // ESTABLISHED
		if err := diagDump(fd, req, *bp, func(m []byte) {
			if len(m) < 72 {
				return
			}
			var ip net.IP
			if family == unix.AF_INET {
				ip = net.IP(m[24:28])
			} else {
				ip = net.IP(m[24:40])
			}
			local := int(binary.BigEndian.Uint16(m[4:6]))
			if ino := uint64(binary.NativeEndian.Uint32(m[68:72])); ino != 0 && ip.IsLoopback() && local != skip {
				out[ino] = int(binary.BigEndian.Uint16(m[6:8]))
			}
		}); err != nil {
			return nil, err
		}
	}
	return out, nil
}
