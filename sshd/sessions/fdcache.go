package sessions

import (
	"sync"
	"time"
)

// discoverSettle is how old a process must be before what its fds held is
// remembered: in its first moments a session forks, re-executes itself,
// drops the listener's sockets and opens its forwards.
const discoverSettle = 2 * time.Second

// discoverCache remembers, per process (pid and start time), what discovery
// read from its fds, so that a probe cycle reads the fds of new processes
// only: reading every session's fds was most of a cycle's cost. A reused
// pid has another start time and is read afresh. A listening socket that no
// remembered process explains (a session that opened a forward later, say)
// makes one cycle reread every process it looks at; the listening sockets
// still unexplained then belong to processes discovery does not own and are
// remembered as foreign until they close.
type discoverCache struct {
	mu      sync.Mutex
	procs   map[int]*cachedFDs
	foreign map[uint64]bool // listening socket inodes of no process discovery owns
	now     func() time.Time
}

type cachedFDs struct {
	startTick uint64
	fds       procFDs
	settled   bool // read when the process was at least discoverSettle old
}

func newDiscoverCache() *discoverCache {
	return &discoverCache{procs: map[int]*cachedFDs{}, foreign: map[uint64]bool{}, now: time.Now}
}

func (c *discoverCache) sessions(d Discoverer, procs map[int]procInfo, socks map[uint64]sockInfo, boot time.Time) []Session {
	c.mu.Lock()
	defer c.mu.Unlock()
	for pid, e := range c.procs {
		if p, ok := procs[pid]; !ok || p.startTick != e.startTick {
			delete(c.procs, pid)
		}
	}
	now := c.now()
	fresh := map[int]bool{} // read in this call
	for pass := 0; ; pass++ {
		asked := map[int]bool{}
		fds := func(pid int) procFDs {
			asked[pid] = true
			e := c.procs[pid]
			if e == nil || !e.settled || (pass > 0 && !fresh[pid]) {
				p := procs[pid]
				e = &cachedFDs{startTick: p.startTick, fds: scanFDs(d.ProcRoot, pid, d.LogPath),
					settled: !boot.IsZero() && now.Sub(p.started(boot)) >= discoverSettle}
				c.procs[pid] = e
				fresh[pid] = true
			}
			return e.fds
		}
		sessions := d.join(procs, socks, boot, fds)

		explained := map[uint64]bool{}
		for pid := range asked {
			for _, ino := range c.procs[pid].fds.sockets {
				explained[ino] = true
			}
		}
		var unexplained []uint64
		for ino, sk := range socks {
			if sk.listen && !explained[ino] && !c.foreign[ino] {
				unexplained = append(unexplained, ino)
			}
		}
		if len(unexplained) > 0 && pass == 0 {
			continue // something new listens: look at every process again
		}
		for _, ino := range unexplained {
			c.foreign[ino] = true
		}
		for ino := range c.foreign {
			if sk, ok := socks[ino]; !ok || !sk.listen {
				delete(c.foreign, ino)
			}
		}
		return sessions
	}
}
