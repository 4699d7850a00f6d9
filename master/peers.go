package master

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"time"

	"github.com/mas4h/mas4h/registry"
)

// Several masters on one PostgreSQL database are peers: each keeps its own
// live view of the slaves (dispatch reads it on every slot request) and
// brings it up to date from the database every PeerSync, so that a
// heartbeat received by one master is seen by all within that time:
//
//   - a slave's row (liveness, address, host keys, capacity, tunnel count,
//     operator user and sessions) newer than the view's replaces it, and
//     the devices of its tunnels are read again;
//   - a slave another master marked dead is dead here too;
//   - each master shares its pending grants (slots granted whose tunnels
//     no heartbeat shows yet) as a count per slave, and adds the others'
//     counts to each slave's load, so that devices asking several masters
//     at once spread out as they do on one.
//
// Rate limits, the slot-grant summaries of the event log and the
// validator gate stay per master (documented in the README).

// DefaultPeerSync is how often a master on PostgreSQL rereads the shared
// live view.
const DefaultPeerSync = time.Second

// newMasterID names this master process in master_pending: the host's
// name and a random suffix, new at every start.
func newMasterID() string {
	host, _ := os.Hostname()
	var b [6]byte
	rand.Read(b[:])
	return host + "-" + hex.EncodeToString(b[:])
}

// peerLoop runs syncPeers every cfg.PeerSync until the server stops.
func (s *Server) peerLoop() {
	defer s.writerWG.Done()
	t := time.NewTicker(s.cfg.PeerSync)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), 5*s.cfg.PeerSync+5*time.Second)
			if err := s.syncPeers(ctx); err != nil && !registry.Unavailable(err) {
				s.log.Error("reading the other masters' view", "err", err)
			}
			cancel()
		}
	}
}

// syncPeers merges the store's slaves into the live view and trades
// pending-grant counts with the other masters.
func (s *Server) syncPeers(ctx context.Context) error {
	readAt := s.now()
	slaves, err := s.store.Slaves(ctx)
	if err != nil {
		return err
	}
	stale := s.live.StaleDevices(slaves)
	devices, err := s.store.SlaveDevices(ctx, stale)
	if err != nil {
		return err
	}
	s.live.Merge(slaves, devices, readAt)
	now := s.now().UTC()
	if err := s.store.SharePending(ctx, s.id, s.live.OwnPending(), now); err != nil {
		return err
	}
	every := s.cfg.PeerSync
	if every <= 0 { // a test calling syncPeers itself
		every = DefaultPeerSync
	}
	// Counts not refreshed for three periods are a dead master's.
	peer, err := s.store.PeerPending(ctx, s.id, now.Add(-3*every))
	if err != nil {
		return err
	}
	s.live.SetPeerPending(peer)
	return nil
}
