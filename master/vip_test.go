package master

import (
	"net/http"
	"testing"

	"github.com/mas4h/mas4h/master/wire"
)

func vipBeat(vip string, node int) wire.Heartbeat {
	hb := heartbeatOf(100)
	hb.VIP, hb.Node = vip, node
	return hb
}

// Nodes of one VIP learn each other's liveness from heartbeat replies, so a
// survivor can take over a dead node's share.
func TestHeartbeatReplyCarriesVIPPeers(t *testing.T) {
	e := newEnv(t, nil)
	e.beat("s1", vipBeat("198.18.0.10", 1))
	e.beat("s2", vipBeat("198.18.0.10", 2))
	e.beat("s3", vipBeat("198.18.9.9", 1)) // another VIP
	e.beat("s4", heartbeatOf(100))         // no VIP
	r := e.beat("s1", vipBeat("198.18.0.10", 1))
	if len(r.Peers) != 1 || r.Peers[0] != (wire.Peer{Slave: "s2", Node: 2, Alive: true}) {
		t.Fatalf("peers %+v, want s2 node 2 alive", r.Peers)
	}
	// s2 goes silent past the liveness window.
	e.clock.Advance(4 * e.cfg.HeartbeatInterval)
	r = e.beat("s1", vipBeat("198.18.0.10", 1))
	if len(r.Peers) != 1 || r.Peers[0].Alive {
		t.Fatalf("peers %+v, want s2 dead", r.Peers)
	}
	if r := e.beat("s4", heartbeatOf(100)); len(r.Peers) != 0 {
		t.Fatalf("a slave without VIP got peers %+v", r.Peers)
	}
}

func TestHeartbeatRefusesBadVIP(t *testing.T) {
	e := newEnv(t, nil)
	for _, hb := range []wire.Heartbeat{vipBeat("not-an-ip", 1), vipBeat("198.18.0.10", 0), vipBeat("198.18.0.10", 33), vipBeat("", 2)} {
		e.want("POST", "/slaves/s1/heartbeat", slaveTok, hb, http.StatusBadRequest, nil)
	}
}
