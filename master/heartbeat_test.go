package master

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

func TestSlaveReport(t *testing.T) {
	at := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	since := at.Add(-time.Hour)
	hb := wire.Heartbeat{
		Host: "slave1.example.net", Port: 2222, User: "mas4h-tunnel", Capacity: 100, CPU: 12.5, MemUsed: 40,
		HostKeys: []string{hostKey + " root@slave1"}, Seq: 7, VIP: "198.18.0.10", Node: 2,
		Tunnels: []wire.Tunnel{
			{Device: "d1", Forward: "ssh", Port: 20000, Remote: "192.0.2.7:50000", Since: since,
				LastProbe: &wire.Probe{OK: true, At: at, Detail: "SSH-2.0-OpenSSH_9.2"}},
			{Device: "d2", Forward: "web", Port: 20001},
		},
		Events: []wire.SlaveEvent{{At: since, Kind: "connect", Device: "d1", Detail: "session from 192.0.2.7"}},
	}
	got, err := slaveReport("s1", hb, at)
	if err != nil {
		t.Fatal(err)
	}
	want := registry.SlaveReport{
		Name: "s1", Host: "slave1.example.net", Port: 2222, User: "mas4h-tunnel", Capacity: 100, CPU: 12.5, Mem: 40,
		HostKeys: []string{hostKey}, At: at, VIP: "198.18.0.10", Node: 2,
		Tunnels: []registry.Tunnel{
			{Slave: "s1", Device: "d1", Forward: "ssh", Port: 20000, Remote: "192.0.2.7:50000", Since: since,
				Probe: &registry.Probe{OK: true, At: at, Detail: "SSH-2.0-OpenSSH_9.2"}},
			{Slave: "s1", Device: "d2", Forward: "web", Port: 20001},
		},
		Events: []registry.Event{{At: since, Kind: "connect", Device: "d1", Detail: "slave s1: session from 192.0.2.7"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("report:\n got %+v\nwant %+v", got, want)
	}
	if hb.HostKeys[0] != hostKey+" root@slave1" {
		t.Error("slaveReport changed the heartbeat it was given")
	}

	// The least a slave sends: no keys, tunnels or events, no VIP.
	got, err = slaveReport("s2", wire.Heartbeat{Host: "::1", Port: 22, User: "_tunnel", Capacity: 1}, at)
	if err != nil || len(got.HostKeys) != 0 || len(got.Tunnels) != 0 || len(got.Events) != 0 || got.VIP != "" {
		t.Errorf("minimal heartbeat = %+v, %v", got, err)
	}
}

func TestSlaveReportRefusesHostileInput(t *testing.T) {
	many := func(n int, f func(i int) wire.Tunnel) []wire.Tunnel {
		out := make([]wire.Tunnel, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	tunnel := func(int) wire.Tunnel { return wire.Tunnel{Device: "d", Forward: "ssh", Port: 20000} }
	long := strings.Repeat("x", 256)
	for _, tc := range []struct {
		name string
		mut  func(*wire.Heartbeat)
		want string // in the error
	}{
		{"no host", func(h *wire.Heartbeat) { h.Host = "" }, "host must be"},
		{"host as an option", func(h *wire.Heartbeat) { h.Host = "-oProxyCommand=x" }, "host must be"},
		{"host with a space", func(h *wire.Heartbeat) { h.Host = "a b" }, "host must be"},
		{"host with a newline", func(h *wire.Heartbeat) { h.Host = "a\nHostName evil" }, "host must be"},
		{"host too long", func(h *wire.Heartbeat) { h.Host = strings.Repeat("a", 254) }, "host must be"},
		{"host not ASCII", func(h *wire.Heartbeat) { h.Host = "exämple.net" }, "host must be"},
		{"port 0", func(h *wire.Heartbeat) { h.Port = 0 }, "port must be 1-65535"},
		{"port too big", func(h *wire.Heartbeat) { h.Port = 65536 }, "port must be 1-65535"},
		{"shell in user", func(h *wire.Heartbeat) { h.User = "root; rm" }, "user must be"},
		{"no user", func(h *wire.Heartbeat) { h.User = "" }, "user must be"},
		{"user as an option", func(h *wire.Heartbeat) { h.User = "-oX" }, "user must be"},
		{"user too long", func(h *wire.Heartbeat) { h.User = strings.Repeat("u", 33) }, "user must be"},
		{"capacity 0", func(h *wire.Heartbeat) { h.Capacity = 0 }, "capacity must be"},
		{"negative capacity", func(h *wire.Heartbeat) { h.Capacity = -5 }, "capacity must be"},
		{"VIP not an IP", func(h *wire.Heartbeat) { h.VIP, h.Node = "not-an-ip", 1 }, "vip must be"},
		{"VIP IPv6", func(h *wire.Heartbeat) { h.VIP, h.Node = "2001:db8::1", 1 }, "vip must be"},
		{"node without VIP", func(h *wire.Heartbeat) { h.Node = 2 }, "vip must be"},
		{"VIP without node", func(h *wire.Heartbeat) { h.VIP = "198.18.0.10" }, "node must be 1-32"},
		{"node too big", func(h *wire.Heartbeat) { h.VIP, h.Node = "198.18.0.10", 33 }, "node must be 1-32"},
		{"garbage host key", func(h *wire.Heartbeat) { h.HostKeys = []string{"garbage"} }, "host key 1 is not"},
		{"host key with options", func(h *wire.Heartbeat) { h.HostKeys = []string{`command="sh" ` + hostKey} }, "host key 1 is not"},
		{"two keys in one", func(h *wire.Heartbeat) { h.HostKeys = []string{hostKey + "\n" + hostKey} }, "host key 1 is not"},
		{"second host key bad", func(h *wire.Heartbeat) { h.HostKeys = []string{hostKey, "ssh-ed25519 !!!"} }, "host key 2 is not"},
		{"too many host keys", func(h *wire.Heartbeat) {
			h.HostKeys = strings.Split(strings.Repeat(hostKey+"|", maxHostKeys+1), "|")[:maxHostKeys+1]
		}, "17 host keys, at most 16"},
		{"too many tunnels", func(h *wire.Heartbeat) { h.Tunnels = many(maxTunnelsPerBeat+1, tunnel) }, "200001 tunnels, at most 200000"},
		{"tunnel without device", func(h *wire.Heartbeat) { h.Tunnels = []wire.Tunnel{{Port: 1}} }, "bad device name"},
		{"tunnel device too long", func(h *wire.Heartbeat) { h.Tunnels = []wire.Tunnel{{Device: long}} }, "bad device name"},
		{"tunnel device not UTF-8", func(h *wire.Heartbeat) { h.Tunnels = []wire.Tunnel{{Device: "d\xff"}} }, "bad device name"},
		{"tunnel port negative", func(h *wire.Heartbeat) { h.Tunnels = []wire.Tunnel{{Device: "d", Port: -1}} }, "bad port"},
		{"tunnel port too big", func(h *wire.Heartbeat) { h.Tunnels = []wire.Tunnel{{Device: "d", Port: 65536}} }, "bad port"},
		{"tunnel forward too long", func(h *wire.Heartbeat) { h.Tunnels = []wire.Tunnel{{Device: "d", Forward: long}} }, "bad port, forward"},
		{"tunnel remote too long", func(h *wire.Heartbeat) { h.Tunnels = []wire.Tunnel{{Device: "d", Remote: long}} }, "bad port, forward or remote"},
		{"probe detail too long", func(h *wire.Heartbeat) {
			h.Tunnels = []wire.Tunnel{{Device: "d", LastProbe: &wire.Probe{Detail: strings.Repeat("x", maxProbeDetail+1)}}}
		}, "probe detail too long"},
		{"too many events", func(h *wire.Heartbeat) { h.Events = make([]wire.SlaveEvent, maxEventsPerBeat+1) }, "10001 events, at most 10000"},
		{"event kind with a space", func(h *wire.Heartbeat) { h.Events = []wire.SlaveEvent{{Kind: "Bad Kind"}} }, "event kind must be"},
		{"empty event kind", func(h *wire.Heartbeat) { h.Events = []wire.SlaveEvent{{Kind: ""}} }, "event kind must be"},
		{"event kind too long", func(h *wire.Heartbeat) { h.Events = []wire.SlaveEvent{{Kind: strings.Repeat("a", 33)}} }, "event kind must be"},
		{"event kind with a newline", func(h *wire.Heartbeat) { h.Events = []wire.SlaveEvent{{Kind: "deny\nslave-up"}} }, "event kind must be"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hb := heartbeatOf(10)
			tc.mut(&hb)
			_, err := slaveReport("s1", hb, time.Now())
			if err == nil {
				t.Fatal("accepted")
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, "heartbeat of slave s1: ") || !strings.Contains(msg, tc.want) {
				t.Errorf("error %q: want the prefix \"heartbeat of slave s1: \" and %q", msg, tc.want)
			}
			if len(msg) > 200 {
				t.Errorf("error is %d bytes: hostile input echoed whole", len(msg))
			}
		})
	}
}

func TestVIPPeers(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	liveSince := now.Add(-15 * time.Second)
	slaves := []registry.Slave{
		{Name: "s1", VIP: "198.18.0.10", Node: 1, Alive: true, LastSeen: now},
		{Name: "s2", VIP: "198.18.0.10", Node: 2, Alive: true, LastSeen: now},
		{Name: "s3", VIP: "198.18.0.10", Node: 3, Alive: true, LastSeen: liveSince},                      // at the edge: dead
		{Name: "s4", VIP: "198.18.0.10", Node: 4, Alive: false, LastSeen: now},                           // marked dead
		{Name: "s5", VIP: "198.18.9.9", Node: 1, Alive: true, LastSeen: now},                             // another VIP
		{Name: "s6", VIP: "198.18.0.10", Node: 0, Alive: true, LastSeen: now},                            // no node
		{Name: "s7", Alive: true, LastSeen: now},                                                         // no VIP
		{Name: "s8", VIP: "198.18.0.10", Node: 8, Alive: true, LastSeen: liveSince.Add(time.Nanosecond)}, // just live
	}
	for _, tc := range []struct {
		self, vip string
		want      []wire.Peer
	}{
		{"s1", "198.18.0.10", []wire.Peer{{Slave: "s2", Node: 2, Alive: true}, {Slave: "s3", Node: 3}, {Slave: "s4", Node: 4}, {Slave: "s8", Node: 8, Alive: true}}},
		{"s5", "198.18.9.9", []wire.Peer{}},
		{"new", "198.18.9.9", []wire.Peer{{Slave: "s5", Node: 1, Alive: true}}},
	} {
		if got := vipPeers(slaves, tc.self, tc.vip, liveSince); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("peers of %s on %s = %+v, want %+v", tc.self, tc.vip, got, tc.want)
		}
	}
}
