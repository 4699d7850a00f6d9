package sshd

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"fmt"
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
	procs, err := readProcs(d.ProcRoot)
	if err != nil {
		return nil, err
	}
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
	fds := map[int][]string{}
	if d.LogPath != "" {
		for pid, p := range procs {
			if owned[pid] || p.uid != d.TunnelUID || !isSSHDComm(p.comm) || pid == d.ListenerPID {
				continue
			}
			links := readFDLinks(d.ProcRoot, pid)
			fds[pid] = links
			for _, l := range links {
				if l == d.LogPath {
					owned[pid] = true
					walk(pid)
					break
				}
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
	socks, err := readSockets(d.ProcRoot)
	if err != nil {
		return nil, err
	}
	boot := bootTime(d.ProcRoot)
	sessions := make([]Session, 0, len(roots))
	for root, pids := range roots {
		sort.Ints(pids)
		s := Session{MonitorPID: root, PIDs: pids}
		if !boot.IsZero() {
			s.Started = boot.Add(time.Duration(procs[root].startTick) * time.Second / clockTicks).UTC().Truncate(time.Second)
		}
		seen := map[int]bool{}
		for _, pid := range pids {
			links, ok := fds[pid]
			if !ok {
				links = readFDLinks(d.ProcRoot, pid)
			}
			for _, l := range links {
				ino, ok := socketInode(l)
				if !ok {
					continue
				}
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
	return sessions, nil
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
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, ok := readProc(root, pid)
		if ok {
			procs[pid] = p
		}
	}
	return procs, nil
}

// readProc parses /proc/PID/stat. comm is in parentheses and may itself hold
// spaces or parentheses, so the fields after it are found from the last ')'.
func readProc(root string, pid int) (procInfo, bool) {
	dir := filepath.Join(root, strconv.Itoa(pid))
	b, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return procInfo{}, false
	}
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open || end+2 >= len(b) {
		return procInfo{}, false
	}
	rest := strings.Fields(string(b[end+2:]))
	if len(rest) < 2 {
		return procInfo{}, false
	}
	ppid, _ := strconv.Atoi(rest[1])
	p := procInfo{pid: pid, ppid: ppid, comm: string(b[open+1 : end]), state: rest[0][0], uid: -1}
	if len(rest) > 19 {
		p.startTick, _ = strconv.ParseUint(rest[19], 10, 64)
	}
	if fi, err := os.Stat(dir); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			p.uid = int(st.Uid)
		}
	}
	return p, true
}

func readFDLinks(root string, pid int) []string {
	dir := filepath.Join(root, strconv.Itoa(pid), "fd")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	links := make([]string, 0, len(entries))
	for _, e := range entries {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil {
			links = append(links, l)
		}
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

// readSockets reads /proc/net/tcp and tcp6 once into a map by inode.
func readSockets(root string) (map[uint64]sockInfo, error) {
	socks := map[uint64]sockInfo{}
	for _, name := range []string{"tcp", "tcp6"} {
		f, err := os.Open(filepath.Join(root, "net", name))
		if err != nil {
			if os.IsNotExist(err) && name == "tcp6" {
				continue
			}
			return nil, fmt.Errorf("reading socket table: %w", err)
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fl := strings.Fields(sc.Text())
			if len(fl) < 10 {
				continue
			}
			ino, err := strconv.ParseUint(fl[9], 10, 64)
			if err != nil || ino == 0 {
				continue
			}
			_, lport, ok1 := parseHexAddr(fl[1])
			rip, rport, ok2 := parseHexAddr(fl[2])
			if !ok1 || !ok2 {
				continue
			}
			socks[ino] = sockInfo{
				localPort: lport,
				remote:    net.JoinHostPort(rip.String(), strconv.Itoa(rport)),
				listen:    fl[3] == "0A",
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("reading socket table: %w", err)
		}
	}
	return socks, nil
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
	socks, err := readSockets(procRoot)
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
