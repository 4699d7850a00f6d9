package master

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"regexp"
	"time"
	"unicode/utf8"

	"github.com/gin-gonic/gin"
	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/names"
	"github.com/mas4h/mas4h/registry"
)

// Bounds on what one heartbeat may carry.
const (
	maxTunnelsPerBeat = 200000
	maxEventsPerBeat  = 10000
	maxHostKeys       = 16
	maxRevocations    = 1000 // per reply; the slave catches up over the next beats
)

// slaveState is the master's live view of one slave.
type slaveState struct {
	name     string
	host     string
	port     int
	user     string
	hostKeys []string
	capacity int
	tunnels  int
	devices  map[string]bool // devices with a tunnel in its last heartbeat
	lastSeen time.Time
	alive    bool // as last recorded in the store
	// pending holds slots granted to this slave and not yet seen as a
	// tunnel in its heartbeats, by device, with when and how many forwards.
	// They count as load until seen or until they expire, so devices asking
	// one after another between two heartbeats spread out.
	pending map[string]grant
}

type grant struct {
	at       time.Time
	forwards int
}

func newSlaveState(sl registry.Slave) *slaveState {
	return &slaveState{
		name: sl.Name, host: sl.Host, port: sl.Port, user: sl.User, hostKeys: sl.HostKeys,
		capacity: sl.Capacity, tunnels: sl.Tunnels, lastSeen: sl.LastSeen, alive: sl.Alive,
		devices: map[string]bool{}, pending: map[string]grant{},
	}
}

// pendingCount drops expired grants and counts the rest.
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

// minPendingTTL is the shortest time a grant counts as load: a slave lists
// a new tunnel only once its monitor has seen it, which may take a probe
// cycle or two, and a grant forgotten before that would let the next
// devices pile onto the same slave.
const minPendingTTL = 30 * time.Second

// pendingTTL is how long a granted slot counts as load without its tunnel
// showing up: the device had that long to connect.
func (s *Server) pendingTTL() time.Duration {
	return max(registry.DeadAfter*s.cfg.HeartbeatInterval, minPendingTTL)
}

func (s *Server) handleHeartbeat(c *gin.Context) {
	name := c.Param("name")
	if err := names.Slave(name); err != nil {
		fail(c, http.StatusBadRequest, err.Error())
		return
	}
	var hb wire.Heartbeat
	if berr := decodeJSON(c, MaxHeartbeatBody, &hb); berr != nil {
		fail(c, berr.status, berr.msg)
		return
	}
	if err := checkHeartbeat(&hb); err != nil {
		fail(c, http.StatusBadRequest, fmt.Sprintf("heartbeat of slave %s: %v", name, err))
		return
	}
	now := s.now().UTC()
	report := registry.SlaveReport{
		Name: name, Host: hb.Host, Port: hb.Port, User: hb.User, HostKeys: hb.HostKeys,
		Capacity: hb.Capacity, CPU: hb.CPU, Mem: hb.MemUsed, At: now, VIP: hb.VIP, Node: hb.Node,
		Tunnels: make([]registry.Tunnel, len(hb.Tunnels)),
		Events:  make([]registry.Event, len(hb.Events)),
	}
	devices := make(map[string]bool, len(hb.Tunnels))
	for i, t := range hb.Tunnels {
		rt := registry.Tunnel{Slave: name, Device: t.Device, Forward: t.Forward, Port: t.Port, Remote: t.Remote, Since: t.Since}
		if t.LastProbe != nil {
			rt.Probe = &registry.Probe{OK: t.LastProbe.OK, At: t.LastProbe.At, Detail: t.LastProbe.Detail}
		}
		report.Tunnels[i] = rt
		devices[t.Device] = true
	}
	for i, e := range hb.Events {
		report.Events[i] = registry.Event{At: e.At, Kind: e.Kind, Device: e.Device, Detail: "slave " + name + ": " + e.Detail}
	}
	ctx := c.Request.Context()
	change, err := s.store.RecordHeartbeat(ctx, report, now.Add(-registry.DeadAfter*s.cfg.HeartbeatInterval))
	if err != nil {
		s.internal(c, err)
		return
	}
	switch change {
	case registry.SlaveNew:
		s.log.Info("slave registered", "slave", name, "host", hb.Host, "port", hb.Port, "capacity", hb.Capacity)
	case registry.SlaveReturned:
		s.log.Info("slave is back", "slave", name, "host", hb.Host, "port", hb.Port)
	}
	if len(hb.HostKeys) == 0 && change != registry.SlaveSteady {
		s.log.Warn("slave sent no host keys; its devices cannot pin its host key", "slave", name)
	}

	s.mu.Lock()
	st := s.slaves[name]
	if st == nil {
		st = &slaveState{name: name, pending: map[string]grant{}}
		s.slaves[name] = st
	}
	st.host, st.port, st.user, st.hostKeys = hb.Host, hb.Port, hb.User, hb.HostKeys
	st.capacity, st.tunnels, st.devices = hb.Capacity, len(hb.Tunnels), devices
	st.lastSeen, st.alive = now, true
	for dev := range st.pending {
		if devices[dev] {
			delete(st.pending, dev)
		}
	}
	st.pendingCount(now, s.pendingTTL())
	s.mu.Unlock()

	reply := wire.HeartbeatReply{
		Revocations:     []wire.Revocation{},
		IntervalSeconds: s.cfg.HeartbeatInterval.Seconds(),
		CacheTTLSeconds: int(s.cfg.CacheTTL / time.Second),
	}
	if hb.VIP != "" {
		peers, err := s.vipPeers(ctx, name, hb.VIP, now)
		if err != nil {
			s.internal(c, err)
			return
		}
		reply.Peers = peers
	}
	cur, err := s.store.RevocationSeq(ctx)
	if err != nil {
		s.internal(c, err)
		return
	}
	switch {
	case hb.Seq <= 0 || hb.Seq > cur:
		// A fresh slave has nothing cached to revoke; a slave ahead of
		// the master follows a registry that was replaced. Both start
		// from now.
		reply.Seq = cur
	default:
		revs, err := s.store.Revocations(ctx, hb.Seq, maxRevocations)
		if err != nil {
			s.internal(c, err)
			return
		}
		reply.Seq = hb.Seq
		for _, r := range revs {
			reply.Revocations = append(reply.Revocations, r.Wire())
			reply.Seq = r.Seq
		}
	}
	c.JSON(http.StatusOK, reply)
}

var (
	eventKindRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)
)

// checkHeartbeat refuses what would reach devices broken (address, user,
// host keys) or bloat the registry.
func checkHeartbeat(hb *wire.Heartbeat) error {
	if !validHost(hb.Host) {
		return fmt.Errorf("host must be a host name or IP address, got %q", trunc(hb.Host))
	}
	if hb.Port < 1 || hb.Port > 65535 {
		return fmt.Errorf("port must be 1-65535, got %d", hb.Port)
	}
	if !names.ValidUser(hb.User) {
		return fmt.Errorf("user must be a system user name, got %q", trunc(hb.User))
	}
	if hb.Capacity < 1 {
		return fmt.Errorf("capacity must be at least 1, got %d", hb.Capacity)
	}
	if hb.VIP != "" || hb.Node != 0 {
		if ip := net.ParseIP(hb.VIP); ip == nil || ip.To4() == nil {
			return fmt.Errorf("vip must be an IPv4 address, got %q", trunc(hb.VIP))
		}
		if hb.Node < 1 || hb.Node > 32 {
			return fmt.Errorf("node must be 1-32, got %d", hb.Node)
		}
	}
	if len(hb.HostKeys) > maxHostKeys {
		return fmt.Errorf("%d host keys, at most %d", len(hb.HostKeys), maxHostKeys)
	}
	for i, k := range hb.HostKeys {
		pk, _, opts, rest, err := ssh.ParseAuthorizedKey([]byte(k))
		if err != nil || len(opts) > 0 || len(rest) > 0 {
			return fmt.Errorf("host key %d is not a public key in authorized_keys form", i+1)
		}
		hb.HostKeys[i] = registry.AuthorizedKey(pk) // drops comments
	}
	if len(hb.Tunnels) > maxTunnelsPerBeat {
		return fmt.Errorf("%d tunnels, at most %d", len(hb.Tunnels), maxTunnelsPerBeat)
	}
	for _, t := range hb.Tunnels {
		if t.Device == "" || len(t.Device) > 255 || !utf8.ValidString(t.Device) {
			return fmt.Errorf("tunnel with bad device name %q", trunc(t.Device))
		}
		if t.Port < 0 || t.Port > 65535 || len(t.Forward) > 255 || len(t.Remote) > 255 {
			return fmt.Errorf("tunnel of device %s: bad port, forward or remote", trunc(t.Device))
		}
		if t.LastProbe != nil && len(t.LastProbe.Detail) > 4096 {
			return fmt.Errorf("tunnel of device %s: probe detail too long", trunc(t.Device))
		}
	}
	if len(hb.Events) > maxEventsPerBeat {
		return fmt.Errorf("%d events, at most %d", len(hb.Events), maxEventsPerBeat)
	}
	for _, e := range hb.Events {
		if !eventKindRE.MatchString(e.Kind) {
			return fmt.Errorf("event kind must be [a-z][a-z0-9-]*, got %q", trunc(e.Kind))
		}
	}
	return nil
}

// validHost accepts what a device can put after ssh's -p PORT: a DNS name
// or an IP address, nothing that could read as an option.
func validHost(h string) bool {
	if h == "" || len(h) > 253 || h[0] == '-' {
		return false
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == ':' || r == '_') {
			return false
		}
	}
	return true
}

func trunc(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// checkSlaves marks dead, in the store and in memory, every slave silent
// for registry.DeadAfter intervals.
func (s *Server) checkSlaves(ctx context.Context) {
	now := s.now().UTC()
	deadline := now.Add(-registry.DeadAfter * s.cfg.HeartbeatInterval)
	type gone struct {
		name string
		last time.Time
	}
	var dead []gone
	s.mu.Lock()
	for _, st := range s.slaves {
		if st.alive && st.lastSeen.Before(deadline) {
			dead = append(dead, gone{st.name, st.lastSeen})
		}
	}
	s.mu.Unlock()
	for _, d := range dead {
		detail := fmt.Sprintf("slave %s missed %d heartbeats (last at %s)", d.name, registry.DeadAfter, d.last.Format(time.RFC3339))
		changed, err := s.store.MarkSlaveDead(ctx, d.name, now, detail)
		if err != nil {
			s.log.Error("marking slave dead", "slave", d.name, "err", err)
			continue
		}
		s.mu.Lock()
		// A heartbeat may have come in meanwhile; it wins.
		if st := s.slaves[d.name]; st != nil && st.lastSeen.Equal(d.last) {
			st.alive = false
			st.pending = map[string]grant{}
		}
		s.mu.Unlock()
		if changed {
			s.log.Warn("slave is down", "slave", d.name, "last_seen", d.last)
		}
	}
}

// pick chooses the slave for dev and counts the grant as pending load on
// it, under one lock so that concurrent requests see each other's grants.
func (s *Server) pick(dev registry.Device) (wire.Slot, bool) {
	now := s.now().UTC()
	ttl := s.pendingTTL()
	s.mu.Lock()
	defer s.mu.Unlock()
	loads := make([]registry.SlaveLoad, 0, len(s.slaves))
	for _, st := range s.slaves {
		if !st.alive {
			continue
		}
		loads = append(loads, registry.SlaveLoad{
			Name: st.name, Tunnels: st.tunnels, Pending: st.pendingCount(now, ttl),
			Capacity: st.capacity, LastSeen: st.lastSeen,
		})
	}
	name, ok := registry.Dispatch(loads, dev.LastSlave, now, s.cfg.HeartbeatInterval)
	if !ok {
		return wire.Slot{}, false
	}
	n := len(dev.Forwards)
	if n == 0 {
		n = 1
	}
	for _, st := range s.slaves {
		delete(st.pending, dev.Name) // the device goes where it is sent now
	}
	st := s.slaves[name]
	if !st.devices[dev.Name] {
		st.pending[dev.Name] = grant{at: now, forwards: n}
	}
	slot := wire.Slot{
		Device: dev.Name, Slave: name, Host: st.host, Port: st.port, User: st.user,
		HostKeys: append([]string{}, st.hostKeys...),
		Forwards: make([]wire.Forward, len(dev.Forwards)),
	}
	for i, f := range dev.Forwards {
		slot.Forwards[i] = f.Wire()
	}
	return slot, true
}

// unpick takes back a pending grant whose slot could not be recorded.
func (s *Server) unpick(device, slave string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.slaves[slave]; st != nil {
		delete(st.pending, device)
	}
}

// vipPeers lists the other slaves sharing a virtual IP and whether each is
// alive (heartbeat within the liveness window), for take-over of a dead
// node's share.
func (s *Server) vipPeers(ctx context.Context, self, vip string, now time.Time) ([]wire.Peer, error) {
	slaves, err := s.store.Slaves(ctx)
	if err != nil {
		return nil, err
	}
	liveSince := now.Add(-registry.DeadAfter * s.cfg.HeartbeatInterval)
	peers := []wire.Peer{}
	for _, sl := range slaves {
		if sl.Name == self || sl.VIP != vip || sl.Node == 0 {
			continue
		}
		peers = append(peers, wire.Peer{Slave: sl.Name, Node: sl.Node, Alive: sl.Alive && sl.LastSeen.After(liveSince)})
	}
	return peers, nil
}
