// Package sessions finds the sessions of one slave's sshd in the process
// and socket tables — each with its processes, start time, peer address and
// the ports it listens on for its device — and ends them. It reads /proc (or
// a fixture tree in its shape) and the kernel's sock_diag, never sshd's own
// state, so a restarted daemon knows every session without having seen it
// connect.
package sessions

import (
	"sort"
	"sync"
	"time"
)

// Session is one device connection to this slave's sshd: the per-connection
// process under the listener (the monitor) and its children, the ports they
// listen on for the device, and where the device connects from.
type Session struct {
	MonitorPID int       `json:"monitor_pid"`
	StartTick  uint64    `json:"start_tick"` // the monitor's start, in clock ticks after boot: with the pid, its identity
	PIDs       []int     `json:"pids"`
	Remote     string    `json:"remote,omitempty"`
	Ports      []int     `json:"ports,omitempty"`
	Started    time.Time `json:"started"`
	// Conn is the socket inode of the device connection (0: not found),
	// the key of SampleTCP's answer.
	Conn uint64 `json:"conn,omitempty"`
	// TCP is the device connection's TCP state as of the walk.
	TCP TCPState `json:"-"`
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

// Table lists a slave's sessions through a cache of what each process's
// fds held, one table walk at a time: the reaper walks it every cycle, and
// newest-wins and revocations ask for it while a device waits. A fresh walk
// of every process's fds costs tens of milliseconds per thousand sessions.
type Table struct {
	d        Discoverer
	listener func() int

	mu    sync.Mutex // one walk at a time
	cache *discoverCache
}

// NewTable lists the sessions d describes, asking listener for the sshd
// listener's pid at each walk (a restarted sshd has another).
func NewTable(d Discoverer, listener func() int) *Table {
	return &Table{d: d, listener: listener, cache: newDiscoverCache()}
}

// Sessions walks the tables, reading the fds of new processes only.
func (t *Table) Sessions() ([]Session, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	d := t.d
	d.ListenerPID = t.listener()
	return d.sessions(t.cache)
}

// ListeningPorts is the package's ListeningPorts for the table's /proc.
func (t *Table) ListeningPorts() (map[int]bool, error) { return ListeningPorts(t.d.ProcRoot) }

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
		s := Session{MonitorPID: root, PIDs: pids, StartTick: procs[root].startTick}
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
					s.Remote, s.Conn, s.TCP = sk.remote, ino, sk.tcp
				}
			}
		}
		sort.Ints(s.Ports)
		sessions = append(sessions, s)
	}
	sort.Slice(sessions, func(i, j int) bool { return sessions[i].MonitorPID < sessions[j].MonitorPID })
	return sessions
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
