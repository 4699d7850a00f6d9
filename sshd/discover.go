package sshd

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Session is one device connection to this slave's sshd: the per-connection
// process under the listener (the monitor) and its children, the ports they
// listen on for the device, and where the device connects from.
type Session struct {
	MonitorPID int       `json:"monitor_pid"`
	PIDs       []int     `json:"pids"`
	Remote     string    `json:"remote,omitempty"`
	Ports      []int     `json:"ports,omitempty"`
	Started    time.Time `json:"started"`
}

// Discoverer lists the sessions of one slave's sshd from a /proc tree. It
// owns a process when the process descends from the slave's listener, or —
// for sessions orphaned by a listener that was killed and restarted — when it
// is a tunnel-user process holding the slave's own sshd log open. The host's
// admin sshd and other slaves match neither.
type Discoverer struct {
	ProcRoot    string // "/proc", or a fixture
	ListenerPID int
	TunnelUID   int
	LogPath     string // sshd -E file of this slave
	SSHPort     int    // the slave's listen port, to find each session's remote end
}

type procInfo struct {
	pid, ppid int
	comm      string
	state     byte
	uid       int
	startTick uint64 // clock ticks after boot
}

// Sessions walks the process table once, then the fds of the owned
// processes, and joins them with one read of the socket tables.
func (d Discoverer) Sessions() ([]Session, error) {
	return d.sessions(nil)
}

// sessions is Sessions, reading through c (nil: read every fd afresh).
func (d Discoverer) sessions(c *discoverCache) ([]Session, error) {
	procs, err := readProcs(d.ProcRoot)
	if err != nil {
		return nil, err
	}
	socks, err := liveSockets(d.ProcRoot, d.SSHPort)
	if err != nil {
		return nil, err
	}
	boot := bootTime(d.ProcRoot)
	if c == nil {
		return d.join(procs, socks, boot, func(pid int) procFDs {
			return scanFDs(d.ProcRoot, pid, d.LogPath)
		}), nil
	}
	return c.sessions(d, procs, socks, boot), nil
}

// join finds the owned processes, groups them into sessions and finds
// their ports and remote ends, asking fds what each process holds.
func (d Discoverer) join(procs map[int]procInfo, socks map[uint64]sockInfo, boot time.Time, fds func(pid int) procFDs) []Session {
	children := map[int][]int{}
	for _, p := range procs {
		children[p.ppid] = append(children[p.ppid], p.pid)
	}
	owned := map[int]bool{}
	var walk func(pid int)
	walk = func(pid int) {
		for _, c := range children[pid] {
			if !owned[c] {
				owned[c] = true
				walk(c)
			}
		}
	}
	if d.ListenerPID > 0 {
		walk(d.ListenerPID)
	}
	if d.LogPath != "" {
		for pid, p := range procs {
			if owned[pid] || !isSSHDComm(p.comm) || pid == d.ListenerPID || procUID(d.ProcRoot, pid) != d.TunnelUID {
				continue
			}
			if fds(pid).holdsLog {
				owned[pid] = true
				walk(pid)
			}
		}
	}
	// Group owned processes under their session's top process.
	roots := map[int][]int{}
	for pid := range owned {
		root := pid
		for {
			pp := procs[root].ppid
			if pp == d.ListenerPID || !owned[pp] {
				break
			}
			root = pp
		}
		roots[root] = append(roots[root], pid)
	}
	sessions := make([]Session, 0, len(roots))
	for root, pids := range roots {
		sort.Ints(pids)
		s := Session{MonitorPID: root, PIDs: pids}
		if !boot.IsZero() {
			s.Started = procs[root].started(boot).UTC().Truncate(time.Second)
		}
		seen := map[int]bool{}
		for _, pid := range pids {
			for _, ino := range fds(pid).sockets {
				sk, ok := socks[ino]
				if !ok {
					continue
				}
				switch {
				case sk.listen && !seen[sk.localPort]:
					seen[sk.localPort] = true
					s.Ports = append(s.Ports, sk.localPort)
				case !sk.listen && sk.localPort == d.SSHPort && s.Remote == "":
					s.Remote = sk.remote
				}
			}
		}
		sort.Ints(s.Ports)
		sessions = append(sessions, s)
	}
	sort.Slice(sessions, func(i, j int) bool { return sessions[i].MonitorPID < sessions[j].MonitorPID })
	return sessions
}

// clockTicks is USER_HZ, 100 on every Linux architecture mas4h runs on.
const clockTicks = 100

// bootTime reads btime from /proc/stat (zero if unreadable).
func bootTime(root string) time.Time {
	b, err := os.ReadFile(filepath.Join(root, "stat"))
	if err != nil {
		return time.Time{}
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			if n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
				return time.Unix(n, 0)
			}
		}
	}
	return time.Time{}
}

func isSSHDComm(comm string) bool {
	return comm == "sshd" || comm == "sshd-session" || comm == "sshd-auth"
}

func readProcs(root string) (map[int]procInfo, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("reading process table %s: %w", root, err)
	}
	procs := make(map[int]procInfo, len(entries))
	buf := make([]byte, 1024)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if p, ok := readStat(root, pid, buf); ok {
			procs[pid] = p
		}
	}
	return procs, nil
}

// readProc reads one process's stat (uid left -1: see procUID).
func readProc(root string, pid int) (procInfo, bool) {
	return readStat(root, pid, make([]byte, 1024))
}

// readStat parses /proc/PID/stat (uid left -1: see procUID). It
// reads with bare system calls into buf: the table is walked every cycle,
// and os.ReadFile costs twice the calls. comm is in parentheses and may
// itself hold spaces or parentheses, so the fields after it are found from
// the last ')'.
func readStat(root string, pid int, buf []byte) (procInfo, bool) {
	b, ok := readSmall(root+"/"+strconv.Itoa(pid)+"/stat", buf)
	if !ok {
		return procInfo{}, false
	}
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open || end+2 >= len(b) {
		return procInfo{}, false
	}
	p := procInfo{pid: pid, comm: string(b[open+1 : end]), uid: -1}
	// Fields after comm: state ppid pgrp session tty_nr tpgid flags minflt
	// cminflt majflt cmajflt utime stime cutime cstime priority nice
	// num_threads itrealvalue starttime.
	rest, fields := b[end+2:], 0
	for ; fields < 20 && len(rest) > 0; fields++ {
		f := rest
		if sp := bytes.IndexByte(rest, ' '); sp >= 0 {
			f, rest = rest[:sp], rest[sp+1:]
		} else {
			rest = nil
		}
		switch fields {
		case 0:
			if len(f) == 0 {
				return procInfo{}, false
			}
			p.state = f[0]
		case 1:
			p.ppid = atoiBytes(f)
		case 19:
			p.startTick = uint64(atoiBytes(f))
		}
	}
	if fields < 2 {
		return procInfo{}, false
	}
	return p, true
}

// readSmall reads a small /proc file whole into buf (or a bigger buffer
// when buf fills up).
func readSmall(path string, buf []byte) ([]byte, bool) {
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, false
	}
	defer syscall.Close(fd)
	n := 0
	for {
		if n == len(buf) {
			buf = append(buf, make([]byte, len(buf))...)
		}
		m, err := syscall.Read(fd, buf[n:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, false
		}
		if m == 0 {
			return buf[:n], true
		}
		n += m
	}
}

func atoiBytes(b []byte) int {
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return n
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// procUID is the effective uid of a process, from its /proc directory (its
// files belong to root when the process is not dumpable; the directory
// never does), or -1.
func procUID(root string, pid int) int {
	var st syscall.Stat_t
	if err := syscall.Stat(root+"/"+strconv.Itoa(pid), &st); err != nil {
		return -1
	}
	return int(st.Uid)
}

// started is when the process started, from the boot time.
func (p procInfo) started(boot time.Time) time.Time {
	return boot.Add(time.Duration(p.startTick) * time.Second / clockTicks)
}

// procFDs is what discovery needs of one process's fds: its socket inodes
// and whether it holds the slave's sshd log open.
type procFDs struct {
	sockets  []uint64
	holdsLog bool
}

func scanFDs(root string, pid int, logPath string) procFDs {
	var out procFDs
	for _, l := range readFDLinks(root, pid) {
		if ino, ok := socketInode(l); ok {
			out.sockets = append(out.sockets, ino)
		} else if logPath != "" && l == logPath {
			out.holdsLog = true
		}
	}
	return out
}

func readFDLinks(root string, pid int) []string {
	dir := root + "/" + strconv.Itoa(pid) + "/fd"
	f, err := os.Open(dir)
	if err != nil {
		return nil
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return nil
	}
	links := make([]string, 0, len(names))
	buf := make([]byte, 256)
	for _, name := range names {
		n, err := syscall.Readlink(dir+"/"+name, buf)
		if err != nil || n <= 0 {
			continue
		}
		if n == len(buf) { // possibly cut: a long path
			l, err := os.Readlink(dir + "/" + name)
			if err == nil {
				links = append(links, l)
			}
			continue
		}
		links = append(links, string(buf[:n]))
	}
	return links
}

func socketInode(link string) (uint64, bool) {
	if !strings.HasPrefix(link, "socket:[") || !strings.HasSuffix(link, "]") {
		return 0, false
	}
	n, err := strconv.ParseUint(link[len("socket:["):len(link)-1], 10, 64)
	return n, err == nil
}

type sockInfo struct {
	localPort int
	remote    string
	listen    bool
}

// readSockets reads /proc/net/tcp and tcp6 once into a map by inode: the
// listening sockets, and (sshPort > 0) the connections to sshPort, the only
// ones discovery asks about. Everything else (the probes' TIME_WAIT sockets
// above all) is skipped before it costs an allocation.
func readSockets(root string, sshPort int) (map[uint64]sockInfo, error) {
	socks := map[uint64]sockInfo{}
	var br *bufio.Reader
	for _, name := range []string{"tcp", "tcp6"} {
		f, err := os.Open(filepath.Join(root, "net", name))
		if err != nil {
			if os.IsNotExist(err) && name == "tcp6" {
				continue
			}
			return nil, fmt.Errorf("reading socket table: %w", err)
		}
		if br == nil {
			br = bufio.NewReaderSize(f, 64<<10)
		} else {
			br.Reset(f)
		}
		err = parseSockets(br, sshPort, socks)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("reading socket table %s: %w", name, err)
		}
	}
	return socks, nil
}

// parseSockets adds the wanted lines of one /proc/net/tcp{,6} table to socks.
func parseSockets(br *bufio.Reader, sshPort int, socks map[uint64]sockInfo) error {
	header := true
	for {
		line, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			return errors.New("line too long")
		}
		if len(line) > 0 && !header {
			parseSocketLine(line, sshPort, socks)
		}
		header = false
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// parseSocketLine reads "sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...".
func parseSocketLine(line []byte, sshPort int, socks map[uint64]sockInfo) {
	var f [10][]byte
	n := 0
	for i := 0; i < len(line) && n < len(f); {
		for i < len(line) && (line[i] == ' ' || line[i] == '\t' || line[i] == '\n') {
			i++
		}
		j := i
		for j < len(line) && line[j] != ' ' && line[j] != '\t' && line[j] != '\n' {
			j++
		}
		if j > i {
			f[n] = line[i:j]
			n++
		}
		i = j
	}
	if n < 10 {
		return
	}
	listen := string(f[3]) == "0A"
	lport, ok := hexPort(f[1])
	if !ok || (!listen && (sshPort <= 0 || lport != sshPort)) {
		return
	}
	ino := uint64(0)
	for _, c := range f[9] {
		if c < '0' || c > '9' {
			return
		}
		ino = ino*10 + uint64(c-'0')
	}
	if ino == 0 {
		return
	}
	sk := sockInfo{localPort: lport, listen: listen}
	if !listen {
		rip, rport, ok := parseHexAddr(string(f[2]))
		if !ok {
			return
		}
		sk.remote = net.JoinHostPort(rip.String(), strconv.Itoa(rport))
	}
	socks[ino] = sk
}

// hexPort reads the port of an "ADDR:PORT" socket table address.
func hexPort(b []byte) (int, bool) {
	i := bytes.LastIndexByte(b, ':')
	if i < 0 || len(b)-i-1 < 1 || len(b)-i-1 > 4 {
		return 0, false
	}
	p := 0
	for _, c := range b[i+1:] {
		switch {
		case c >= '0' && c <= '9':
			p = p<<4 | int(c-'0')
		case c >= 'A' && c <= 'F':
			p = p<<4 | int(c-'A'+10)
		case c >= 'a' && c <= 'f':
			p = p<<4 | int(c-'a'+10)
		default:
			return 0, false
		}
	}
	return p, true
}

// parseHexAddr decodes "0100007F:4E21" (IPv4) or the 32-hex-digit IPv6 form.
// The kernel prints each 32-bit word in host (little-endian) order.
func parseHexAddr(s string) (net.IP, int, bool) {
	host, port, ok := strings.Cut(s, ":")
	if !ok {
		return nil, 0, false
	}
	p, err := strconv.ParseUint(port, 16, 16)
	if err != nil {
		return nil, 0, false
	}
	raw, err := hex.DecodeString(host)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return nil, 0, false
	}
	ip := make(net.IP, len(raw))
	for i := 0; i < len(raw); i += 4 {
		ip[i], ip[i+1], ip[i+2], ip[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
	}
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	return ip, int(p), true
}

// ListeningPorts returns the TCP ports in LISTEN state, for checking that a
// killed session's ports are really free.
func ListeningPorts(procRoot string) (map[int]bool, error) {
	socks, err := liveSockets(procRoot, 0)
	if err != nil {
		return nil, err
	}
	ports := map[int]bool{}
	for _, s := range socks {
		if s.listen {
			ports[s.localPort] = true
		}
	}
	return ports, nil
}
