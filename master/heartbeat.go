package master

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	maxTunnelField    = 255  // device, forward and remote of a tunnel
	maxProbeDetail    = 4096
	// maxOperatorsPerBeat bounds the operator sessions of one heartbeat,
	// maxOpenPerSession the device ports one of them lists.
	maxOperatorsPerBeat = 10000
	maxOpenPerSession   = 1000
)

var eventKindRE = regexp.MustCompile(`^[a-z][a-z0-9-]{0,31}$`)

func (s *Server) handleHeartbeat(c *gin.Context) {
	name := c.Param("name") // checked by selfOnly
	var hb wire.Heartbeat
	if berr := decodeJSON(c, MaxHeartbeatBody, &hb); berr != nil {
		fail(c, berr.status, berr.msg)
		return
	}
	report, err := slaveReport(name, hb, s.now().UTC())
	if err != nil {
		fail(c, http.StatusBadRequest, err.Error())
		return
	}
	report.Events = s.tallySlaveEvents(name, report.Events)
	ctx := c.Request.Context()
	change, err := s.store.RecordHeartbeat(ctx, report, report.At.Add(-registry.DeadAfter*s.cfg.HeartbeatInterval))
	var mismatch *registry.HostKeyMismatchError
	if errors.As(err, &mismatch) {
		s.refuseHostKeys(c, report, mismatch)
		return
	}
	switch {
	case registry.Unwritable(err) && s.live.Known(report.Name, report.HostKeys):
		// A registry that takes no writes (disk full) must not make
		// its slaves look dead: a slave the master knows, with the host
		// keys it knows, is heard, and dispatch goes on; only the record
		// of the heartbeat is lost.
		s.storeFailed(err)
		change = registry.SlaveSteady
	case err != nil:
		s.internal(c, err)
		return
	default:
		s.storeWrote()
	}
	switch change {
	case registry.SlaveNew:
		s.log.Info("slave registered", "slave", name, "host", report.Host, "port", report.Port, "capacity", report.Capacity)
	case registry.SlaveReturned:
		s.log.Info("slave is back", "slave", name, "host", report.Host, "port", report.Port)
	}
	if len(report.HostKeys) == 0 && change != registry.SlaveSteady {
		s.log.Warn("slave sent no host keys; its devices cannot pin its host key", "slave", name)
	}
	s.live.Heard(report)

	reply, err := s.heartbeatReply(ctx, report, hb.Seq)
	if err != nil {
		s.internal(c, err)
		return
	}
	c.JSON(http.StatusOK, reply)
}

// refuseHostKeys answers a heartbeat whose host keys are not those bound
// to the slave's name: 409, and nothing of it is heard. Dispatch goes on
// with what the master knew (the slave's known host and keys) while the
// slave that holds them keeps beating, and stops once it falls silent, so
// no device is ever sent to pin keys an admin has not accepted.
func (s *Server) refuseHostKeys(c *gin.Context, r registry.SlaveReport, mm *registry.HostKeyMismatchError) {
	s.slaveAuth.KeyMismatch(r.Name)
	lvl := slog.LevelDebug // the same refused keys again
	if mm.New {
		lvl = slog.LevelWarn
	}
	s.log.Log(c.Request.Context(), lvl, "heartbeat refused: host keys differ from those bound to the slave's name",
		"slave", r.Name, "host", r.Host, "port", r.Port, "remote", remoteIP(c),
		"presented", registry.KeyFingerprints(mm.Presented), "bound", registry.KeyFingerprints(mm.Bound))
	fail(c, http.StatusConflict, mm.Error())
}

// heartbeatReply tells a slave its interval and cache TTL, the revocations
// it has not applied yet (after seq, the last one it applied), and, when it
// serves a share of a VIP, how the other nodes of that VIP are.
func (s *Server) heartbeatReply(ctx context.Context, r registry.SlaveReport, seq int64) (wire.HeartbeatReply, error) {
	reply := wire.HeartbeatReply{
		Revocations:     []wire.Revocation{},
		IntervalSeconds: s.cfg.HeartbeatInterval.Seconds(),
		CacheTTLSeconds: int(s.cfg.CacheTTL / time.Second),
	}
	if r.VIP != "" {
		slaves, err := s.store.Slaves(ctx)
		if err != nil {
			return reply, err
		}
		reply.Peers = vipPeers(slaves, r.Name, r.VIP, r.At.Add(-registry.DeadAfter*s.cfg.HeartbeatInterval))
	}
	revs, err := s.revocationsAfter(ctx, seq)
	if err != nil {
		return reply, err
	}
	reply.Seq, reply.Revocations = revs.Seq, revs.Revocations
	return reply, nil
}

// slaveReport checks the heartbeat of slave name (a valid slave name),
// received at at, and converts it for the store. It refuses what would
// reach devices broken (address, user, host keys) or bloat the registry,
// and canonicalizes host keys (comments dropped). Every error says which
// slave and what.
func slaveReport(name string, hb wire.Heartbeat, at time.Time) (registry.SlaveReport, error) {
	hostKeys, err := checkHeartbeat(hb)
	if err != nil {
		return registry.SlaveReport{}, fmt.Errorf("heartbeat of slave %s: %w", name, err)
	}
	r := registry.SlaveReport{
		Name: name, Host: hb.Host, Port: hb.Port, User: hb.User, HostKeys: hostKeys,
		Capacity: hb.Capacity, CPU: hb.CPU, Mem: hb.MemUsed, At: at, VIP: hb.VIP, Node: hb.Node,
		OperatorUser: hb.OperatorUser, Operators: hb.Operators,
		Tunnels: make([]registry.Tunnel, len(hb.Tunnels)),
		Events:  make([]registry.Event, len(hb.Events)),
	}
	for i, t := range hb.Tunnels {
		rt := registry.Tunnel{Slave: name, Device: t.Device, Forward: t.Forward, Port: t.Port, Remote: t.Remote, Since: t.Since}
		if t.LastProbe != nil {
			rt.Probe = &registry.Probe{OK: t.LastProbe.OK, At: t.LastProbe.At, Detail: t.LastProbe.Detail}
		}
		r.Tunnels[i] = rt
	}
	for i, e := range hb.Events {
		r.Events[i] = registry.Event{At: e.At, Kind: e.Kind, Device: e.Device, Operator: e.Operator, Detail: "slave " + name + ": " + e.Detail}
	}
	return r, nil
}

// checkHeartbeat checks every field of hb and returns its host keys in
// canonical form.
func checkHeartbeat(hb wire.Heartbeat) (hostKeys []string, err error) {
	if !validHost(hb.Host) {
		return nil, fmt.Errorf("host must be a host name or IP address, got %q", trunc(hb.Host))
	}
	if hb.Port < 1 || hb.Port > 65535 {
		return nil, fmt.Errorf("port must be 1-65535, got %d", hb.Port)
	}
	if !names.ValidUser(hb.User) {
		return nil, fmt.Errorf("user must be a system user name, got %q", trunc(hb.User))
	}
	if hb.Capacity < 1 {
		return nil, fmt.Errorf("capacity must be at least 1, got %d", hb.Capacity)
	}
	if hb.VIP != "" || hb.Node != 0 {
		if ip := net.ParseIP(hb.VIP); ip == nil || ip.To4() == nil {
			return nil, fmt.Errorf("vip must be an IPv4 address, got %q", trunc(hb.VIP))
		}
		if hb.Node < 1 || hb.Node > 32 {
			return nil, fmt.Errorf("node must be 1-32, got %d", hb.Node)
		}
	}
	if len(hb.HostKeys) > maxHostKeys {
		return nil, fmt.Errorf("%d host keys, at most %d", len(hb.HostKeys), maxHostKeys)
	}
	hostKeys = make([]string, len(hb.HostKeys))
	for i, k := range hb.HostKeys {
		pk, _, opts, rest, err := ssh.ParseAuthorizedKey([]byte(k))
		if err != nil || len(opts) > 0 || len(rest) > 0 {
			return nil, fmt.Errorf("host key %d is not a public key in authorized_keys form", i+1)
		}
		hostKeys[i] = registry.AuthorizedKey(pk)
	}
	if len(hb.Tunnels) > maxTunnelsPerBeat {
		return nil, fmt.Errorf("%d tunnels, at most %d", len(hb.Tunnels), maxTunnelsPerBeat)
	}
	for _, t := range hb.Tunnels {
		if t.Device == "" || len(t.Device) > maxTunnelField || !utf8.ValidString(t.Device) {
			return nil, fmt.Errorf("tunnel with bad device name %q", trunc(t.Device))
		}
		if t.Port < 0 || t.Port > 65535 || len(t.Forward) > maxTunnelField || len(t.Remote) > maxTunnelField {
			return nil, fmt.Errorf("tunnel of device %s: bad port, forward or remote", trunc(t.Device))
		}
		if t.LastProbe != nil && len(t.LastProbe.Detail) > maxProbeDetail {
			return nil, fmt.Errorf("tunnel of device %s: probe detail too long", trunc(t.Device))
		}
	}
	if len(hb.Events) > maxEventsPerBeat {
		return nil, fmt.Errorf("%d events, at most %d", len(hb.Events), maxEventsPerBeat)
	}
	for _, e := range hb.Events {
		if !eventKindRE.MatchString(e.Kind) {
			return nil, fmt.Errorf("event kind must be [a-z][a-z0-9-]*, got %q", trunc(e.Kind))
		}
		if e.Operator != "" && names.Operator(e.Operator) != nil {
			return nil, fmt.Errorf("event %s: operator must be an operator's name, got %q", e.Kind, trunc(e.Operator))
		}
	}
	if err := checkOperators(hb); err != nil {
		return nil, err
	}
	return hostKeys, nil
}

// checkOperators checks the operator user and the operator sessions of
// hb: names in their alphabets, bounded lists and fields.
func checkOperators(hb wire.Heartbeat) error {
	if hb.OperatorUser != "" {
		if !names.ValidUser(hb.OperatorUser) {
			return fmt.Errorf("operator_user must be a system user name, got %q", trunc(hb.OperatorUser))
		}
		if hb.OperatorUser == hb.User {
			return fmt.Errorf("operator_user %s is the tunnel user: operators and devices log in as different users", hb.User)
		}
	}
	if len(hb.Operators) > 0 && hb.OperatorUser == "" {
		return errors.New("operator sessions reported without an operator_user")
	}
	if len(hb.Operators) > maxOperatorsPerBeat {
		return fmt.Errorf("%d operator sessions, at most %d", len(hb.Operators), maxOperatorsPerBeat)
	}
	for _, o := range hb.Operators {
		if names.Operator(o.Operator) != nil {
			return fmt.Errorf("operator session with bad operator name %q", trunc(o.Operator))
		}
		if len(o.Fingerprint) > maxTunnelField || len(o.Remote) > maxTunnelField || !utf8.ValidString(o.Remote) || !utf8.ValidString(o.Fingerprint) {
			return fmt.Errorf("operator session of %s: bad fingerprint or remote", o.Operator)
		}
		if len(o.Open) > maxOpenPerSession {
			return fmt.Errorf("operator session of %s: %d open ports, at most %d", o.Operator, len(o.Open), maxOpenPerSession)
		}
		for _, a := range o.Open {
			if names.Device(a.Device) != nil || len(a.Forward) > maxTunnelField || a.Port < 0 || a.Port > 65535 {
				return fmt.Errorf("operator session of %s: bad device, forward or port", o.Operator)
			}
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

// vipPeers lists the slaves other than self sharing vip and whether each
// is alive (marked so, and heard from since liveSince), for take-over of a
// dead node's share. It reads the store's slaves, not this master's
// memory: a peer may report to another master.
func vipPeers(slaves []registry.Slave, self, vip string, liveSince time.Time) []wire.Peer {
	peers := []wire.Peer{}
	for _, sl := range slaves {
		if sl.Name == self || sl.VIP != vip || sl.Node == 0 {
			continue
		}
		peers = append(peers, wire.Peer{Slave: sl.Name, Node: sl.Node, Alive: sl.Alive && sl.LastSeen.After(liveSince)})
	}
	return peers
}

// checkSlaves marks dead, in the store and in memory, every slave silent
// for registry.DeadAfter intervals.
func (s *Server) checkSlaves(ctx context.Context) {
	now := s.now().UTC()
	for _, d := range s.live.Silent() {
		detail := fmt.Sprintf("slave %s missed %d heartbeats (last at %s)", d.Name, registry.DeadAfter, d.LastSeen.Format(time.RFC3339))
		changed, err := s.store.MarkSlaveDead(ctx, d.Name, d.LastSeen, now, detail)
		if err != nil {
			s.log.Error("marking slave dead", "slave", d.Name, "err", err)
			continue
		}
		s.live.MarkDead(d) // unless a heartbeat came in meanwhile
		if changed {
			s.log.Warn("slave is down", "slave", d.Name, "last_seen", d.LastSeen)
		}
	}
}
