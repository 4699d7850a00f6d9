package sessions

import (
	"encoding/binary"
	"fmt"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TCPState is the kernel's view of a session's device connection — its
// struct tcp_info, read through sock_diag with the rest of the walk — so
// that liveness can be judged without touching the device. sshd's
// ClientAlive requests make a live client answer every few seconds: a client
// that stops answering (frozen) shows as data sent and never answered, a
// dead link as data sent and never acknowledged. Ages are as of the dump.
type TCPState struct {
	// Known is false when the kernel gave no tcp_info (the /proc/net/tcp
	// fallback, for fixtures or where netlink is refused): judge by probes.
	Known bool
	// State is the TCP state (1 = established).
	State uint8
	// LastDataRecv is how long ago the device's end last sent data (an SSH
	// packet: a keepalive answer, channel data); pure ACKs do not count.
	LastDataRecv time.Duration
	// LastDataSent is how long ago sshd last sent new data (a keepalive
	// request, channel data); retransmissions and window probes do not count.
	LastDataSent time.Duration
	// LastAckRecv is how long ago the device's kernel last acknowledged
	// anything (it keeps doing so while the client process is stopped).
	LastAckRecv time.Duration
	// Unacked is the number of segments sent and not acknowledged yet.
	Unacked uint32
	// Retransmits counts the retransmission timeouts of the oldest
	// unacknowledged segment in a row; Backoff the doublings of its timeout.
	Retransmits, Backoff uint8
	// Probes counts unanswered zero-window (or keepalive) probes.
	Probes uint8
	// TotalRetrans is the segments retransmitted over the connection's life.
	TotalRetrans uint32
	// RTT is the smoothed round-trip time.
	RTT time.Duration
	// BytesAcked and BytesReceived count the connection's life (zero on
	// kernels older than 4.1).
	BytesAcked, BytesReceived uint64
}

// TCP states this package names.
const tcpEstablished = 1

// Established reports whether the connection is in the ESTABLISHED state.
func (t TCPState) Established() bool { return t.State == tcpEstablished }

// sock_diag constants that x/sys/unix does not carry (linux/inet_diag.h).
const (
	inetDiagReqBytecode = 1 // request attribute: a filter program
	inetDiagInfo        = 2 // answer attribute (and idiag_ext bit 1<<(2-1)): struct tcp_info
	inetDiagBCSGE       = 2 // filter op: source port >=
	inetDiagBCSLE       = 3 // filter op: source port <=
	inetDiagMsgLen      = 72
	minTCPInfoLen       = 104 // up to tcpi_total_retrans: every kernel mas4h runs on has it
)

// decodeTCPInfo reads a struct tcp_info as the kernel sent it. Kernels
// send the length they know: an older kernel's shorter struct leaves the
// newer fields zero; a newer kernel's longer one is cut to what x/sys knows.
// A field the attribute does not hold whole stays zero (the 64-bit fields
// sit at multiples of 8): half a byte counter is no count.
func decodeTCPInfo(b []byte) TCPState {
	if len(b) < minTCPInfoLen {
		return TCPState{}
	}
	var ti unix.TCPInfo
	copy(unsafe.Slice((*byte)(unsafe.Pointer(&ti)), unix.SizeofTCPInfo), b[:len(b)&^7])
	ms := func(v uint32) time.Duration { return time.Duration(v) * time.Millisecond }
	return TCPState{
		Known:         true,
		State:         ti.State,
		LastDataRecv:  ms(ti.Last_data_recv),
		LastDataSent:  ms(ti.Last_data_sent),
		LastAckRecv:   ms(ti.Last_ack_recv),
		Unacked:       ti.Unacked,
		Retransmits:   ti.Retransmits,
		Backoff:       ti.Backoff,
		Probes:        ti.Probes,
		TotalRetrans:  ti.Total_retrans,
		RTT:           time.Duration(ti.Rtt) * time.Microsecond,
		BytesAcked:    ti.Bytes_acked,
		BytesReceived: ti.Bytes_received,
	}
}

// diagTCPInfo finds the INET_DIAG_INFO attribute among those that follow
// an inet_diag_msg (struct rtattr: length, type; each padded to 4 bytes).
func diagTCPInfo(m []byte) TCPState {
	if len(m) < inetDiagMsgLen {
		return TCPState{}
	}
	b := m[inetDiagMsgLen:]
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4])
		if l < 4 || l > len(b) {
			return TCPState{}
		}
		if typ == inetDiagInfo {
			return decodeTCPInfo(b[4:l])
		}
		b = b[min((l+3)&^3, len(b)):]
	}
	return TCPState{}
}

// sourcePortFilter is a sock_diag filter program that keeps the sockets
// whose local port is port (source port >= port, then <= port; a failed
// test jumps past the end, which rejects). Older kernels lack an equality
// op; these two have been there since the filter language began.
func sourcePortFilter(port int) []byte {
	const opLen = 8 // two inet_diag_bc_op: the test, then the port in "no"
	b := make([]byte, 2*opLen)
	put := func(off int, code uint8, yes, no uint16) {
		b[off], b[off+1] = code, uint8(yes)
		binary.NativeEndian.PutUint16(b[off+2:off+4], no)
		binary.NativeEndian.PutUint16(b[off+6:off+8], uint16(port))
	}
	put(0, inetDiagBCSGE, opLen, 2*opLen+4)
	put(opLen, inetDiagBCSLE, opLen, opLen+4)
	return b
}

// SampleTCP reads the TCP state of every connection on this host's local
// port sshPort (this process's network namespace), by socket inode, in one
// filtered sock_diag dump per address family: cheap enough to run every
// second between the slower walks of the process table (Session.Conn is
// the key). Without sock_diag it returns an error, and liveness falls back
// to probes.
func SampleTCP(sshPort int) (map[uint64]TCPState, error) {
	socks, err := diagSockets(sshPort, false)
	if err != nil {
		return nil, err
	}
	out := make(map[uint64]TCPState, len(socks))
	for ino, sk := range socks {
		if !sk.listen {
			out[ino] = sk.tcp
		}
	}
	return out, nil
}

// WithTCP returns the sessions with each one's TCP state replaced by the
// sample's (TCPState{} when its connection is not in the sample: it closed,
// or the sample failed).
func WithTCP(list []Session, sample map[uint64]TCPState) []Session {
	out := make([]Session, len(list))
	for i, s := range list {
		s.TCP = sample[s.Conn]
		out[i] = s
	}
	return out
}

// SampleTCP is the package's SampleTCP for the table's sshd port. A table
// over a fixture tree has no live sockets to ask about: it returns an
// error, and liveness falls back to probes.
func (t *Table) SampleTCP() (map[uint64]TCPState, error) {
	if t.d.ProcRoot != "/proc" {
		return nil, fmt.Errorf("sampling tcp_info: %s is not this host's /proc", t.d.ProcRoot)
	}
	return SampleTCP(t.d.SSHPort)
}
