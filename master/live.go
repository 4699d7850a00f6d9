package master

import (
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// minPendingTTL is the shortest time a grant counts as load: a slave lists
// a new tunnel only once its reaper has seen it, which may take a probe
// cycle or two, and a grant forgotten before that would let the next
// devices pile onto the same slave.
const minPendingTTL = 30 * time.Second

// pendingTTL is how long a granted slot counts as load without its tunnel
// showing up, for slaves told to beat every interval: the device had that
// long to connect.
func pendingTTL(interval time.Duration) time.Duration {
	return max(registry.DeadAfter*interval, minPendingTTL)
}

// liveSlaves is the master's memory of its slaves between heartbeats: what
// each said last, whether it is alive, and the slots granted to it that its
// heartbeats do not show yet. Dispatch reads it on every slot request, so
// it is kept in memory; the store keeps the same facts for status pages.
// It is safe for concurrent use.
type liveSlaves struct {
	now        func() time.Time
	interval   time.Duration // slaves beat this often
	pendingTTL time.Duration // how long an unseen grant counts as load

	mu     sync.Mutex
	slaves map[string]*slaveState
	// peerPending is the other masters' pending forwards by slave, as
	// they last shared them (peers.go); counted as load like our own.
	peerPending map[string]int
	// asked is each device's last grant here (slave, time), kept
	// askedTTL, so that a device asking again before its slave has beaten
	// since is sent elsewhere (Pick); picks counts grants between sweeps.
	asked map[string]askRecord
	picks int
}

type askRecord struct {
	slave string
	at    time.Time
}

// askedTTL is how long a grant is remembered for Pick's retry rule: as
// long as a slave may be silent before it is declared dead.
func (l *liveSlaves) askedTTL() time.Duration { return registry.DeadAfter * l.interval }

// noteAsked records device's grant on slave at now, and every 1,024 grants
// forgets those older than askedTTL. Called with l.mu held.
func (l *liveSlaves) noteAsked(device, slave string, now time.Time) {
	if l.asked == nil {
		l.asked = map[string]askRecord{}
	}
	l.asked[device] = askRecord{slave, now}
	if l.picks++; l.picks%1024 == 0 {
		for d, r := range l.asked {
			if now.Sub(r.at) >= l.askedTTL() {
				delete(l.asked, d)
			}
		}
	}
}

// slaveState is one slave as its last heartbeat described it.
type slaveState struct {
	name     string
	host     string
	port     int
	user     string
	hostKeys []string
	capacity int
	tunnels  int
	devices  map[string]bool // devices with a tunnel in its last heartbeat
	// operatorUser is the user operators log in as ("" until a heartbeat
	// says, or when the slave takes no operators); operators its live
	// operator sessions.
	operatorUser string
	operators    []wire.OperatorSession
	lastSeen     time.Time
	// devicesAt is the heartbeat (its time) whose tunnels devices holds:
	// one received here, or one another master received, read from the
	// store. Zero: none yet.
	devicesAt time.Time
	// heardFrom counts as a heartbeat for liveness (not shown as one): a
	// restarted master's start, for the slaves alive in the store, so that
	// it dispatches at once rather than find them all silent.
	heardFrom time.Time
	alive     bool // false once marked dead, until it beats again
	// pending holds slots granted to this slave and not yet seen as a
	// tunnel in its heartbeats, by device. They count as load until seen
	// or until they expire, so devices asking one after another between
	// two heartbeats spread out.
	pending map[string]grant
}

type grant struct {
	at       time.Time
	forwards int
}

// startGrace bounds the slaves a restarted master counts alive before they
// beat: those alive in the store and heard from within it. A master down
// longer starts from heartbeats alone.
const startGrace = 10 * time.Minute

// newLiveSlaves starts from the slaves the store knows, so that a restarted
// master dispatches to the slaves that were live before it at once,
// without waiting for their next heartbeat: a slave alive in the store and
// heard from within startGrace counts as heard now, and is found silent
// only if it does not beat within registry.DeadAfter intervals. now is the
// clock, interval the heartbeat interval slaves are told, ttl how long a
// grant counts as load without its tunnel showing up.
func newLiveSlaves(now func() time.Time, interval, ttl time.Duration, known []registry.Slave) *liveSlaves {
	l := &liveSlaves{now: now, interval: interval, pendingTTL: ttl, slaves: make(map[string]*slaveState, len(known))}
	start := now()
	for _, sl := range known {
		st := &slaveState{
			name: sl.Name, host: sl.Host, port: sl.Port, user: sl.User, hostKeys: sl.HostKeys,
			capacity: sl.Capacity, tunnels: sl.Tunnels, lastSeen: sl.LastSeen, heardFrom: sl.LastSeen, alive: sl.Alive,
			operatorUser: sl.OperatorUser, operators: sl.Operators,
			devices: map[string]bool{}, pending: map[string]grant{},
		}
		if sl.Alive && start.Sub(sl.LastSeen) <= startGrace {
			st.heardFrom = start
		}
		l.slaves[sl.Name] = st
	}
	return l
}

// pendingCount drops expired grants and counts the forwards of the rest.
func (st *slaveState) pendingCount(now time.Time, ttl time.Duration) int {
	n := 0
	for dev, g := range st.pending {
		if now.Sub(g.at) > ttl {
			delete(st.pending, dev)
			continue
		}
		n += g.forwards
	}
	return n
}

// Heard records heartbeat r, received at r.At: the slave is alive, its
// tunnels replace the previous ones, and grants whose tunnel it now lists
// stop counting as pending.
func (l *liveSlaves) Heard(r registry.SlaveReport) {
	devices := make(map[string]bool, len(r.Tunnels))
	for _, t := range r.Tunnels {
		devices[t.Device] = true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.slaves[r.Name]
	if st == nil {
		st = &slaveState{name: r.Name, pending: map[string]grant{}}
		l.slaves[r.Name] = st
	}
	st.host, st.port, st.user, st.hostKeys = r.Host, r.Port, r.User, r.HostKeys
	st.capacity, st.tunnels, st.devices = r.Capacity, len(r.Tunnels), devices
	st.operatorUser, st.operators = r.OperatorUser, r.Operators
	st.lastSeen, st.heardFrom, st.devicesAt, st.alive = r.At, r.At, r.At, true
	for dev := range st.pending {
		if devices[dev] {
			delete(st.pending, dev)
		}
	}
	st.pendingCount(r.At, l.pendingTTL)
}

// silence is a slave found silent: its name and its last heartbeat.
type silence struct {
	Name     string
	LastSeen time.Time
}

// Known reports whether slave name is known here with exactly hostKeys
// (in the same order), as its last heartbeat or the store gave them.
func (l *liveSlaves) Known(name string, hostKeys []string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.slaves[name]
	return st != nil && len(hostKeys) > 0 && slices.Equal(st.hostKeys, hostKeys)
}

// Silent lists the slaves still counted alive that have not beaten for
// registry.DeadAfter intervals, to be marked dead.
func (l *liveSlaves) Silent() []silence {
	deadline := l.now().Add(-registry.DeadAfter * l.interval)
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []silence
	for _, st := range l.slaves {
		if st.alive && st.heardFrom.Before(deadline) {
			out = append(out, silence{st.name, st.lastSeen})
		}
	}
	return out
}

// MarkDead marks a slave found silent dead and forgets its pending grants,
// unless it has beaten since: a heartbeat that arrives while the slave is
// being marked dead wins. It reports whether the slave was marked.
func (l *liveSlaves) MarkDead(s silence) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.slaves[s.Name]
	if st == nil || !st.alive || !st.lastSeen.Equal(s.LastSeen) {
		return false
	}
	st.alive = false
	st.pending = map[string]grant{}
	return true
}

// Alive returns the names of the slaves live now: not marked dead and
// heard from within registry.DeadAfter intervals.
func (l *liveSlaves) Alive() map[string]bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]bool, len(l.slaves))
	for name, st := range l.slaves {
		if st.alive && (registry.SlaveLoad{LastSeen: st.heardFrom}).Live(now, l.interval) {
			out[name] = true
		}
	}
	return out
}

// Pick chooses the slave for dev (registry.Dispatch over the live slaves,
// pending grants counted as load) and counts the grant as pending load on
// it, under one lock so that concurrent requests see each other's grants.
// A device granted again takes its pending load along to its new slave.
// ok is false when no live slave has room.
func (l *liveSlaves) Pick(dev registry.Device) (slot wire.Slot, ok bool) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	// A device that asks again while its last grant here is still pending
	// (no heartbeat of that slave shows its tunnel), or before that slave
	// has beaten since the grant, did not get through: the slave may be
	// dying before the master can tell (three missed heartbeats). It is
	// not sent back there while another slave has room; without this, a
	// dead slave's devices came back to it until it was declared dead,
	// their backoff growing meanwhile (the 100,000-device simulation: the
	// last of 2,000 devices moved 72 s after the death).
	previous, avoid := dev.LastSlave, ""
	if st := l.slaves[previous]; st != nil {
		_, pending := st.pending[dev.Name]
		last, asked := l.asked[dev.Name]
		if pending || (asked && last.slave == st.name && now.Sub(last.at) < l.askedTTL() && st.lastSeen.Before(last.at)) {
			previous, avoid = "", st.name
		}
	}
	loads := make([]registry.SlaveLoad, 0, len(l.slaves))
	for _, st := range l.slaves {
		if !st.alive || st.name == avoid {
			continue
		}
		loads = append(loads, registry.SlaveLoad{
			Name: st.name, Tunnels: st.tunnels, Pending: st.pendingCount(now, l.pendingTTL) + l.peerPending[st.name],
			Capacity: st.capacity, LastSeen: st.heardFrom,
		})
	}
	name, ok := registry.Dispatch(loads, previous, now, l.interval)
	if !ok && avoid != "" {
		// No other slave has room: the one it could not reach, after all.
		st := l.slaves[avoid]
		if st.alive {
			name, ok = registry.Dispatch([]registry.SlaveLoad{{Name: st.name, Tunnels: st.tunnels,
				Pending:  st.pendingCount(now, l.pendingTTL) + l.peerPending[st.name] - st.pending[dev.Name].forwards,
				Capacity: st.capacity, LastSeen: st.heardFrom}}, "", now, l.interval)
		}
	}
	if !ok {
		return wire.Slot{}, false
	}
	for _, st := range l.slaves {
		delete(st.pending, dev.Name) // the device goes where it is sent now
	}
	st := l.slaves[name]
	if !st.devices[dev.Name] {
		st.pending[dev.Name] = grant{at: now, forwards: max(len(dev.Forwards), 1)}
	}
	l.noteAsked(dev.Name, name, now)
	slot = wire.Slot{
		Device: dev.Name, Slave: name, Host: st.host, Port: st.port, User: st.user,
		HostKeys: append([]string{}, st.hostKeys...),
		Forwards: make([]wire.Forward, len(dev.Forwards)),
	}
	for i, f := range dev.Forwards {
		slot.Forwards[i] = f.Wire()
	}
	return slot, true
}

// reach is where an operator reaches a device: its live slave.
type reach struct {
	slave, host, user string
	port              int
	hostKeys          []string
}

// Reach finds a live slave holding a tunnel of device, preferring prefer
// (the slave the device was last sent to) when several do, for a moment,
// during a move; else the first by name.
func (l *liveSlaves) Reach(device, prefer string) (reach, bool) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var best *slaveState
	for _, st := range l.slaves {
		if !st.alive || !st.devices[device] || !(registry.SlaveLoad{LastSeen: st.lastSeen}).Live(now, l.interval) {
			continue
		}
		if best == nil || st.name == prefer || (best.name != prefer && st.name < best.name) {
			best = st
		}
	}
	if best == nil {
		return reach{}, false
	}
	return reach{slave: best.name, host: best.host, user: best.operatorUser, port: best.port,
		hostKeys: append([]string{}, best.hostKeys...)}, true
}

// liveOperator is one operator session on a live slave.
type liveOperator struct {
	Slave string
	wire.OperatorSession
}

// Operators lists the operator sessions live slaves reported last, by
// operator, then slave, then start.
func (l *liveSlaves) Operators() []liveOperator {
	now := l.now()
	l.mu.Lock()
	var out []liveOperator
	for _, st := range l.slaves {
		if !st.alive || !(registry.SlaveLoad{LastSeen: st.lastSeen}).Live(now, l.interval) {
			continue
		}
		for _, o := range st.operators {
			out = append(out, liveOperator{Slave: st.name, OperatorSession: o})
		}
	}
	l.mu.Unlock()
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		if a.Operator != b.Operator {
			return a.Operator < b.Operator
		}
		if a.Slave != b.Slave {
			return a.Slave < b.Slave
		}
		return a.Since.Before(b.Since)
	})
	return out
}

// Unpick takes back device's pending grant on slave, for a slot that could
// not be recorded.
func (l *liveSlaves) Unpick(device, slave string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if st := l.slaves[slave]; st != nil {
		delete(st.pending, device)
	}
}

// Forget drops a removed slave: no device is sent to it any more.
func (l *liveSlaves) Forget(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.slaves, name)
}

// StaleDevices names the slaves of the store whose last heartbeat is not
// the one whose devices the view holds: another master received it.
func (l *liveSlaves) StaleDevices(slaves []registry.Slave) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, sl := range slaves {
		st := l.slaves[sl.Name]
		if st == nil || !st.devicesAt.Equal(sl.LastSeen) {
			out = append(out, sl.Name)
		}
	}
	return out
}

// Merge brings the view up to the store's slaves, as read at readAt: one
// whose last heartbeat is newer than the view's is taken as heard then
// (with devices, the devices of its tunnels, when given), one marked dead
// in the store after its last heartbeat here is dead. A slave missing
// from the store is forgotten (removed through another master), unless
// this master heard it after the read began: its first heartbeat may have
// come in meanwhile.
func (l *liveSlaves) Merge(slaves []registry.Slave, devices map[string][]string, readAt time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	seen := make(map[string]bool, len(slaves))
	for _, sl := range slaves {
		seen[sl.Name] = true
		st := l.slaves[sl.Name]
		if st == nil {
			st = &slaveState{name: sl.Name, devices: map[string]bool{}, pending: map[string]grant{}}
			l.slaves[sl.Name] = st
		}
		switch {
		case sl.LastSeen.After(st.lastSeen):
			st.host, st.port, st.user, st.hostKeys = sl.Host, sl.Port, sl.User, sl.HostKeys
			st.capacity, st.tunnels = sl.Capacity, sl.Tunnels
			st.operatorUser, st.operators = sl.OperatorUser, sl.Operators
			st.lastSeen, st.alive = sl.LastSeen, sl.Alive
			if sl.LastSeen.After(st.heardFrom) {
				st.heardFrom = sl.LastSeen
			}
		case sl.LastSeen.Equal(st.lastSeen) && !sl.Alive && st.alive:
			// Another master found it silent first.
			st.alive = false
			st.pending = map[string]grant{}
		}
		if devs, ok := devices[sl.Name]; ok && sl.LastSeen.Equal(st.lastSeen) {
			st.devices = make(map[string]bool, len(devs))
			for _, d := range devs {
				st.devices[d] = true
				delete(st.pending, d)
			}
			st.devicesAt = sl.LastSeen
		}
	}
	for name, st := range l.slaves {
		if !seen[name] && st.lastSeen.Before(readAt) {
			delete(l.slaves, name)
		}
	}
}

// OwnPending counts this master's pending forwards by slave, to share.
func (l *liveSlaves) OwnPending() map[string]int {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]int, len(l.slaves))
	for name, st := range l.slaves {
		if n := st.pendingCount(now, l.pendingTTL); n > 0 {
			out[name] = n
		}
	}
	return out
}

// SetPeerPending records the other masters' pending forwards by slave.
func (l *liveSlaves) SetPeerPending(p map[string]int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.peerPending = p
}
