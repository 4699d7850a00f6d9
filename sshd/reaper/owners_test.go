package reaper

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authlog"
	"github.com/mas4h/mas4h/sshd/sessions"
)

// keyedRig is a rig whose sessions are known by their keys, as sshd's log
// tells the slave.
func keyedRig(cfg Config) (*rig, *authlog.Index) {
	g := newRig(cfg)
	idx := authlog.NewIndex(g.clock.Now)
	g.r.d.Keys = idx
	return g, idx
}

// keyed adds a session of pid from remote that authenticated with dev's
// key, holding ports.
func (g *rig) keyed(idx *authlog.Index, dev registry.Device, pid int, remote string, ports ...int) sessions.Session {
	s := sessions.Session{MonitorPID: pid, PIDs: []int{pid, pid + 1}, Ports: ports, Remote: remote,
		Started: g.clock.Now().Add(-time.Hour)}
	g.table.add(s)
	idx.Accept(authlog.Accepted{User: "mas4h-tunnel", Remote: netip.MustParseAddrPort(remote), KeyType: "ED25519", Fingerprint: dev.Fingerprint})
	return s
}

// A walk ends a session whose key is no device's, whose device is
// revoked, or that holds a port leased to another device or to none; the
// impostor is never listed as the port's device's tunnel.
func TestOwnershipPolicing(t *testing.T) {
	g, idx := keyedRig(Config{})
	a := g.device("a", 20001, "localhost:22")
	b := g.device("b", 20002, "localhost:22")
	revoked := g.device("old", 20003, "localhost:22")
	revoked.Status = registry.StatusRevoked
	g.leases[20003] = Lease{revoked, revoked.Forwards[0]}
	removed := registry.Device{Name: "gone", Fingerprint: "SHA256:gone"}

	g.keyed(idx, a, 100, "198.18.0.2:40000", 20001)                                                          // a on its own port: fine
	g.keyed(idx, a, 200, "198.18.0.2:40001", 20002)                                                          // a on b's port: impostor
	g.keyed(idx, revoked, 300, "198.18.0.3:40000")                                                           // revoked, holding nothing
	g.keyed(idx, removed, 400, "198.18.0.4:40000")                                                           // a key no device has
	g.keyed(idx, a, 500, "198.18.0.2:40002", 20999)                                                          // a on a port leased to no one
	g.table.add(sessions.Session{MonitorPID: 600, Ports: []int{20002}, Remote: "198.18.0.5:1", Started: t0}) // key unknown: by its port
	g.r.cycle(context.Background())
	g.r.Wait()

	killed := g.killer.pids()
	slices.Sort(killed)
	if !slices.Equal(killed, []int{200, 300, 400, 500}) {
		t.Fatalf("killed %v, want [200 300 400 500]", killed)
	}
	for _, want := range []string{"device a holds port 20002, which is leased to device b", "device old is revoked",
		"its key SHA256:gone is no enrolled device's", "device a holds port 20999, which is leased to no device"} {
		found := false
		for _, e := range g.events.evs {
			found = found || e.kind == "kill" && strings.Contains(e.detail, want)
		}
		if !found {
			t.Errorf("no kill event saying %q: %+v", want, g.events.evs)
		}
	}
	for _, tn := range g.r.Tunnels(context.Background(), time.Hour) {
		if tn.Port == 20002 && tn.Device == "b" && tn.Remote == "198.18.0.2:40001" {
			t.Errorf("the impostor is listed as b's tunnel: %+v", tn)
		}
	}
	if n := len(g.r.Tunnels(context.Background(), time.Hour)); n != 2 { // a's own, and the unknown session on b's port
		t.Errorf("%d tunnels, want 2", n)
	}
	_ = b
}

// Revoking a device ends every session of its key, including one that
// holds no port (an OpenSSH ControlMaster waiting to forward).
func TestEndDeviceByKey(t *testing.T) {
	g, idx := keyedRig(Config{})
	dev := g.device("pi", 20001, "localhost:22")
	g.keyed(idx, dev, 100, "198.18.0.2:40000", 20001)
	g.keyed(idx, dev, 200, "198.18.0.2:40001") // no port
	other := g.device("other", 20002, "localhost:22")
	g.keyed(idx, other, 300, "198.18.0.3:40000", 20002)
	g.r.EndDevice(context.Background(), dev, "device revoked")
	g.r.Wait()
	killed := g.killer.pids()
	slices.Sort(killed)
	if !slices.Equal(killed, []int{100, 200}) {
		t.Fatalf("killed %v, want [100 200]", killed)
	}
	if _, ok := idx.Lookup(netip.MustParseAddrPort("198.18.0.2:40001")); ok {
		t.Error("an ended session's key is still in the index")
	}
}

// Beyond the cap, a walk ends the oldest sessions that hold no port; the
// tunnel and the newest stay.
func TestSessionCap(t *testing.T) {
	g, idx := keyedRig(Config{MaxSessions: 2})
	dev := g.device("pi", 20001, "localhost:22")
	g.keyed(idx, dev, 100, "198.18.0.2:40000", 20001)
	for i, pid := range []int{200, 300, 400} {
		s := g.keyed(idx, dev, pid, "198.18.0.2:4100"+string(rune('0'+i)))
		s.Started = t0.Add(time.Duration(i) * time.Minute)
		g.table.remove(pid)
		g.table.add(s)
	}
	g.r.cycle(context.Background())
	g.r.Wait()
	killed := g.killer.pids()
	slices.Sort(killed)
	if !slices.Equal(killed, []int{200, 300}) {
		t.Fatalf("killed %v, want the two oldest port-less sessions [200 300]", killed)
	}
}

// Newest-wins acts for an authenticated session only, never on the new
// session itself, and at most once per device in SupersedeEvery.
func TestNewestWinsRateLimit(t *testing.T) {
	g, _ := keyedRig(Config{NewestWins: NewestWinsAlways})
	dev := g.device("pi", 20001, "localhost:22")
	g.session(100, 20001, time.Hour)
	n := sessions.Session{MonitorPID: 200, Ports: nil, Remote: newest.String(), Started: t0}
	g.table.add(n)
	a := authlog.Accepted{User: "mas4h-tunnel", Remote: newest, KeyType: "ED25519", Fingerprint: dev.Fingerprint}
	g.r.Accepted(context.Background(), a)
	g.r.Wait()
	if k := g.killer.pids(); !slices.Equal(k, []int{100}) {
		t.Fatalf("killed %v, want the older session [100]", k)
	}
	g.session(300, 20001, time.Hour) // back at once, e.g. the same key on a second machine
	g.r.Accepted(context.Background(), a)
	g.r.Wait()
	if k := g.killer.pids(); len(k) != 1 {
		t.Fatalf("newest-wins ran again within %s: killed %v", SupersedeEvery, k)
	}
	g.clock.advance(SupersedeEvery)
	g.r.Accepted(context.Background(), a)
	g.r.Wait()
	if k := g.killer.pids(); !slices.Equal(k, []int{100, 300}) {
		t.Fatalf("killed %v, want [100 300]", k)
	}
	// An unknown key or a revoked device's: nothing.
	g.session(400, 20001, time.Hour)
	g.clock.advance(SupersedeEvery)
	g.r.Accepted(context.Background(), authlog.Accepted{Remote: newest, Fingerprint: "SHA256:nobody"})
	g.r.Wait()
	if k := g.killer.pids(); len(k) != 2 {
		t.Fatalf("an unknown key's login ended a session: %v", k)
	}
}
