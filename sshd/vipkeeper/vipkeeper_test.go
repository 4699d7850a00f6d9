package vipkeeper

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/netfilter"
)

// Node 1 of 3 takes over the buckets of the dead, the lowest live node
// taking them all, and hands them back when the peer returns; every change
// is an event and one reconcile.
func TestPeersTakeOver(t *testing.T) {
	var applied [][]int
	var events []string
	cfg := netfilter.Config{VIP: netip.MustParseAddr("198.18.0.100"), Iface: "eth0", Node: 1, Nodes: 3}
	k := New(cfg, func(_ context.Context, c netfilter.Config) (netfilter.Plan, error) {
		applied = append(applied, slices.Clone(c.TakeOver))
		return netfilter.Plan{}, nil
	}, func(_ context.Context, kind, device, detail string) { events = append(events, kind+": "+detail) },
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	apply := func() {
		select {
		case <-k.kick:
			if err := k.Apply(ctx); err != nil {
				t.Fatal(err)
			}
		default:
		}
	}
	for _, step := range []struct {
		peers []wire.Peer
		want  []int
	}{
		{[]wire.Peer{{Slave: "s2", Node: 2, Alive: true}, {Slave: "s3", Node: 3, Alive: true}}, nil},
		{[]wire.Peer{{Slave: "s2", Node: 2, Alive: false}, {Slave: "s3", Node: 3, Alive: true}}, []int{2}},
		{[]wire.Peer{{Slave: "s2", Node: 2, Alive: false}}, []int{2, 3}}, // a node the master does not know is dead
		{[]wire.Peer{{Slave: "s2", Node: 2, Alive: true}, {Slave: "s3", Node: 3, Alive: true}}, nil},
	} {
		k.Peers(ctx, step.peers)
		apply()
		k.mu.Lock()
		got := k.takeOver
		k.mu.Unlock()
		if !slices.Equal(got, step.want) {
			t.Errorf("peers %+v: taking over %v, want %v", step.peers, got, step.want)
		}
	}
	if len(applied) != 3 || len(events) != 3 || !strings.Contains(events[1], "node 1 of VIP 198.18.0.100 now serves buckets of nodes [2 3]") {
		t.Errorf("applied %v, events %q", applied, events)
	}
	// The same view again changes nothing.
	k.Peers(ctx, []wire.Peer{{Slave: "s2", Node: 2, Alive: true}, {Slave: "s3", Node: 3, Alive: true}})
	apply()
	if len(applied) != 3 {
		t.Errorf("an unchanged view reconciled again")
	}
}
