package master

import (
	"context"
	"fmt"
	"net/http"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

var overviewNow = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func device(name, status string, ports ...int) registry.Device {
	d := registry.Device{Name: name, Status: status}
	for i, p := range ports {
		d.Forwards = append(d.Forwards, registry.Forward{Name: fmt.Sprint("f", i), Target: "localhost:22", RemotePort: p})
	}
	return d
}

func tunnelOf(dev, slave string, port int, since time.Duration, probe *registry.Probe) registry.Tunnel {
	return registry.Tunnel{Slave: slave, Device: dev, Forward: "f0", Port: port, Remote: "192.0.2.1:5000",
		Since: overviewNow.Add(-since), Probe: probe}
}

// A small fleet: pi-a online on s1, pi-b offline, pi-c revoked (with a
// tunnel still listed), web-1 online on s1 and s2.
func smallFleet() overviewData {
	return overviewData{
		Slaves: []registry.Slave{
			{Name: "s1", Host: "10.0.0.1", Port: 2222, Capacity: 4, Tunnels: 3, CPU: 12.4, Mem: 40.6, LastSeen: overviewNow.Add(-3 * time.Second)},
			{Name: "s2", Host: "10.0.0.2", Port: 2222, Capacity: 10, Tunnels: 1, LastSeen: overviewNow.Add(-3 * time.Second)},
			{Name: "s3", Host: "10.0.0.3", Port: 2222, Capacity: 10, Tunnels: 9, LastSeen: overviewNow.Add(-2 * time.Hour)},
		},
		Alive:    map[string]bool{"s1": true, "s2": true},
		Counts:   registry.DeviceCounts{Total: 4, Online: 2, Offline: 1, Revoked: 1},
		Matching: 4,
		Devices: []registry.Device{
			device("pi-a", registry.StatusActive, 20000), device("pi-b", registry.StatusActive, 20001),
			device("pi-c", registry.StatusRevoked, 20002), device("web-1", registry.StatusActive, 20003, 20004),
		},
		Tunnels: []registry.Tunnel{
			tunnelOf("pi-a", "s1", 20000, time.Minute, nil),
			tunnelOf("pi-c", "s1", 20002, time.Minute, nil),
			tunnelOf("web-1", "s2", 20003, 90*time.Minute, nil),
			tunnelOf("web-1", "s1", 20004, time.Hour, nil),
		},
		Events: []registry.Event{
			{At: overviewNow.Add(-time.Hour), Kind: "enrol", Device: "pi-a"},
			{At: overviewNow.Add(-time.Minute), Kind: "slot", Device: "pi-a", Slave: "s1"},
		},
	}
}

// The filters and counts run in the store (only the page's devices are
// read): the same small fleet, enrolled and connected for real, pi-c
// revoked with its tunnel still reported.
func TestOverviewFilters(t *testing.T) {
	e := newEnv(t, nil)
	for _, name := range []string{"pi-a", "pi-b", "pi-c", "web-1"} {
		e.enrol(name)
	}
	e.want("POST", "/devices/pi-c/revoke", adminTok, nil, http.StatusOK, nil)
	tun := func(dev string, port int) wire.Tunnel { return wire.Tunnel{Device: dev, Forward: "ssh", Port: port} }
	e.beat("s1", heartbeatOf(10, tun("pi-a", 20000), tun("pi-c", 20002), tun("web-1", 20003)))
	e.beat("s2", heartbeatOf(10, tun("web-1", 20004)))
	e.beat("s3", heartbeatOf(10, tun("pi-b", 20001)))
	if _, err := e.store.MarkSlaveDead(context.Background(), "s3", e.clock.Now(), e.clock.Now(), "test"); err != nil {
		t.Fatal(err) // pi-b's tunnel is on a dead slave: offline
	}
	for _, tc := range []struct {
		name, query, show string
		wantShow          string
		want              []string // devices shown
	}{
		{"all", "", "", "all", []string{"pi-a", "pi-b", "pi-c", "web-1"}},
		{"online", "", "online", "online", []string{"pi-a", "web-1"}},
		{"offline", "", "offline", "offline", []string{"pi-b"}},
		{"revoked, even with a tunnel", "", "revoked", "revoked", []string{"pi-c"}},
		{"unknown show is all", "", "<script>", "all", []string{"pi-a", "pi-b", "pi-c", "web-1"}},
		{"query", "pi-", "", "all", []string{"pi-a", "pi-b", "pi-c"}},
		{"query any case, trimmed", "  WEB ", "", "all", []string{"web-1"}},
		{"query and show", "pi", "online", "online", []string{"pi-a"}},
		{"query with LIKE's wildcards", "%", "", "all", nil},
		{"nothing matches", "zzz", "", "all", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := e.srv.overviewData(context.Background(), tc.query, tc.show)
			if err != nil {
				t.Fatal(err)
			}
			v := buildOverview(d, tc.query, tc.show, e.clock.Now())
			var got []string
			for _, d := range v.Devices {
				got = append(got, d.Name)
			}
			if !reflect.DeepEqual(got, tc.want) || v.Show != tc.wantShow || v.Matching != len(tc.want) || v.Truncated {
				t.Errorf("shown %v (show %q, matching %d, truncated %v), want %v (show %q)", got, v.Show, v.Matching, v.Truncated, tc.want, tc.wantShow)
			}
			// The counts are of the whole fleet, whatever the filter.
			if v.Total != 4 || v.Online != 2 || v.Offline != 1 || v.Revoked != 1 {
				t.Errorf("counts: total %d online %d offline %d revoked %d", v.Total, v.Online, v.Offline, v.Revoked)
			}
			// Only the shown devices' tunnels are read.
			for _, tn := range d.Tunnels {
				if !slices.Contains(got, tn.Device) {
					t.Errorf("read the tunnel of %s, not shown", tn.Device)
				}
			}
		})
	}
}

func TestViewSlaveLoad(t *testing.T) {
	for _, tc := range []struct {
		tunnels, capacity int
		alive             bool
		pct               int
		load, class       string
	}{
		{0, 10, true, 0, "0.0%", "ok"},
		{1, 1000, true, 1, "0.1%", "ok"}, // a sliver shows
		{7, 10, true, 70, "70.0%", "warn"},
		{9, 10, true, 90, "90.0%", "high"},
		{12, 10, true, 100, "120.0%", "high"}, // over capacity: the bar stops at 100
		{5, 0, true, 0, "0.0%", "ok"},         // no capacity reported
		{9, 10, false, 0, "0.0%", "ok"},       // dead
	} {
		sv := viewSlave(registry.Slave{Name: "s", Tunnels: tc.tunnels, Capacity: tc.capacity}, tc.alive, overviewNow)
		if sv.LoadPct != tc.pct || sv.Load != tc.load || sv.LoadClass != tc.class {
			t.Errorf("%d/%d alive %v: %d%% %q %q, want %d%% %q %q", tc.tunnels, tc.capacity, tc.alive,
				sv.LoadPct, sv.Load, sv.LoadClass, tc.pct, tc.load, tc.class)
		}
	}
	if sv := viewSlave(registry.Slave{Name: "s"}, false, overviewNow); sv.LastSeen != "never" {
		t.Errorf("never seen: %q", sv.LastSeen)
	}
}

func TestBuildOverviewTruncates(t *testing.T) {
	var d overviewData
	for i := range dashMaxDevices + 1 {
		d.Devices = append(d.Devices, device(fmt.Sprintf("d%04d", i), registry.StatusActive, 20000+i))
	}
	d.Matching = dashMaxDevices + 1
	v := buildOverview(d, "", "", overviewNow)
	if len(v.Devices) != dashMaxDevices || v.Matching != dashMaxDevices+1 || !v.Truncated || v.MaxDevices != dashMaxDevices {
		t.Errorf("%d shown of %d matching, truncated %v", len(v.Devices), v.Matching, v.Truncated)
	}
	d.Devices, d.Matching = d.Devices[1:2], 1
	if v := buildOverview(d, "d0001", "", overviewNow); len(v.Devices) != 1 || v.Truncated {
		t.Errorf("narrowed: %d shown, truncated %v", len(v.Devices), v.Truncated)
	}
}

func TestBuildOverviewDevicesAndEvents(t *testing.T) {
	d := smallFleet()
	d.Devices, d.Matching = d.Devices[3:], 1 // the store selected web-1 for "web"
	v := buildOverview(d, "web", "", overviewNow)
	want := deviceView{Name: "web-1", Online: true, Slaves: "s1, s2", Uptime: "1h30m", Ports: []portView{
		{Forward: "f0", Target: "localhost:22", Port: 20003, Live: true, Slave: "s2", Remote: "192.0.2.1:5000", Uptime: "1h30m"},
		{Forward: "f1", Target: "localhost:22", Port: 20004, Live: true, Slave: "s1", Remote: "192.0.2.1:5000", Uptime: "1h00m"},
	}}
	if len(v.Devices) != 1 || !reflect.DeepEqual(v.Devices[0], want) {
		t.Errorf("web-1:\n got %+v\nwant %+v", v.Devices, want)
	}
	if len(v.Events) != 2 || v.Events[0].Kind != "slot" || v.Events[0].Ago != "1m00s ago" || v.Events[1].At != "2025-06-01 11:00:00Z" {
		t.Errorf("events, newest first: %+v", v.Events)
	}
	if v := buildOverview(overviewData{}, "", "", overviewNow); v.Total != 0 || len(v.Slaves) != 0 || len(v.Events) != 0 {
		t.Errorf("empty registry: %+v", v)
	}
}

func TestViewDeviceProbe(t *testing.T) {
	ok := &registry.Probe{OK: true, At: overviewNow.Add(-time.Second), Detail: "SSH-2.0"}
	older := &registry.Probe{OK: true, At: overviewNow.Add(-time.Minute)}
	failed := &registry.Probe{OK: false, At: overviewNow.Add(-time.Hour), Detail: "connection refused"}
	d := device("d", registry.StatusActive, 20000, 20001)
	for _, tc := range []struct {
		name    string
		tunnels []registry.Tunnel
		want    probeView
	}{
		{"never probed", []registry.Tunnel{tunnelOf("d", "s1", 20000, 0, nil)}, probeView{}},
		{"the newer of two", []registry.Tunnel{tunnelOf("d", "s1", 20000, 0, older), tunnelOf("d", "s1", 20001, 0, ok)},
			probeView{Known: true, OK: true, Ago: "1s ago", Detail: "SSH-2.0"}},
		{"a failure before a newer success", []registry.Tunnel{tunnelOf("d", "s1", 20000, 0, ok), tunnelOf("d", "s1", 20001, 0, failed)},
			probeView{Known: true, Ago: "1h00m ago", Detail: "connection refused"}},
		{"offline", nil, probeView{}},
	} {
		if got := viewDevice(d, tc.tunnels, overviewNow).Probe; got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestBuildDeviceDetail(t *testing.T) {
	d := device("pi-a", registry.StatusRevoked, 20000)
	d.Fingerprint, d.KeyType, d.LastSlave, d.CreatedAt = "SHA256:x", "ssh-ed25519", "s1", overviewNow.Add(-24*time.Hour)
	fleet := smallFleet()
	v := buildDeviceDetail(d, fleet.Tunnels, fleet.Events, overviewNow)
	if !v.Device.Revoked || !v.Device.Online || v.Device.Slaves != "s1" || len(v.Device.Ports) != 1 || !v.Device.Ports[0].Live ||
		v.Fingerprint != "SHA256:x" || v.LastSlave != "s1" || v.Created != "2025-05-31 12:00:00Z" || len(v.Events) != 2 {
		t.Errorf("detail = %+v", v)
	}
}

func TestShort(t *testing.T) {
	for d, want := range map[time.Duration]string{
		-time.Second: "0s", 0: "0s", 59 * time.Second: "59s", 61 * time.Second: "1m01s",
		time.Hour + 5*time.Minute: "1h05m", 47 * time.Hour: "47h00m", 50 * time.Hour: "2d2h",
	} {
		if got := short(d); got != want {
			t.Errorf("short(%v) = %q, want %q", d, got, want)
		}
	}
}
