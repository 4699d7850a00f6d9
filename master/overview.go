package master

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// The dashboard's view models, built by pure functions from what the
// store and the live view say, and the time: the handlers only fetch and
// render.

type slaveView struct {
	Name      string
	Host      string
	Port      int
	Alive     bool
	Tunnels   int
	Capacity  int
	LoadPct   int    // 0-100, for the bar
	Load      string // "12.5%"
	LoadClass string // ok, warn, high
	CPU, Mem  string
	LastSeen  string // "3s ago"
}

type probeView struct {
	Known  bool
	OK     bool
	Ago    string
	Detail string
}

type portView struct {
	Forward string
	Target  string
	Port    int
	Live    bool
	Slave   string
	Remote  string
	Uptime  string
	Probe   probeView
}

type deviceView struct {
	Name      string
	Revoked   bool
	Online    bool
	Slaves    string // where its tunnels are, comma-separated
	LastSlave string // the slave the master last sent it to
	Ports     []portView
	Uptime    string // of its oldest live tunnel
	Probe     probeView
}

type eventView struct {
	At     string
	Ago    string
	Kind   string
	Device string
	Slave  string
	Detail string
}

type overviewView struct {
	pageView
	Slaves       []slaveView
	SlavesAlive  int
	Devices      []deviceView
	Total        int
	Online       int
	Offline      int
	Revoked      int
	Matching     int
	Query        string
	Show         string
	Truncated    bool
	MaxDevices   int
	Events       []eventView
	TunnelsLive  int
	CapacityLive int
	Connected    []connectedView // operators connected now
	History      historyView     // charts; set by the handler (charts.go)
}

// connectedView is one live operator session on the overview.
type connectedView struct {
	Operator string
	Slave    string
	Remote   string
	Since    string // "3m05s ago"
	Devices  string // what it has open: "pi-1:ssh, nas:web"
}

// accessView is one operator's visit to a device, on its page.
type accessView struct {
	Operator string
	Slave    string
	Start    string
	End      string // "connected now", or when it ended
	Duration string
}

type deviceDetailView struct {
	pageView
	Device      deviceView
	Fingerprint string
	KeyType     string
	LastSlave   string
	Created     string
	Events      []eventView
	Access      []accessView // who reached it, newest first
	// Availability over the last 24 h and 7 days; set by the handler.
	Availability []timeView
}

// overviewData is what the overview page shows: the counts of the whole
// fleet, and only the devices of the page (the store selects them: a
// fleet of 100,000 is never read whole).
type overviewData struct {
	Slaves []registry.Slave
	Alive  map[string]bool // the slaves live now
	Counts registry.DeviceCounts
	// Devices are the first dashMaxDevices of the Matching devices the
	// filter selects, by name; Tunnels are theirs, on live slaves.
	Devices  []registry.Device
	Matching int
	Tunnels  []registry.Tunnel
	Events   []registry.Event // the latest, oldest first
	// Operators are the operator sessions live slaves report.
	Operators []liveOperator
}

// buildOverview is the overview page at now: every slave, the fleet's
// counts, the devices the store selected for query and show (which it
// echoes back: show is one of all, online, offline, revoked; anything else
// is all), at most dashMaxDevices of them, and the events newest first.
// The page header is the caller's.
func buildOverview(d overviewData, query, show string, now time.Time) overviewView {
	v := overviewView{MaxDevices: dashMaxDevices, Query: strings.TrimSpace(query), Show: showFilter(show)}
	v.Connected = viewConnected(d.Operators, now)
	for _, sl := range d.Slaves {
		sv := viewSlave(sl, d.Alive[sl.Name], now)
		if sv.Alive {
			v.SlavesAlive++
			v.TunnelsLive += sv.Tunnels
			v.CapacityLive += sv.Capacity
		}
		v.Slaves = append(v.Slaves, sv)
	}
	v.Total, v.Online, v.Offline, v.Revoked = d.Counts.Total, d.Counts.Online, d.Counts.Offline, d.Counts.Revoked

	byDevice := map[string][]registry.Tunnel{}
	for _, t := range d.Tunnels {
		byDevice[t.Device] = append(byDevice[t.Device], t)
	}
	for _, dev := range d.Devices[:min(len(d.Devices), dashMaxDevices)] {
		v.Devices = append(v.Devices, viewDevice(dev, byDevice[dev.Name], now))
	}
	v.Matching = max(d.Matching, len(v.Devices))
	v.Truncated = v.Matching > len(v.Devices)
	v.Events = viewEvents(d.Events, now)
	return v
}

// showFilter is the overview's state filter: all, online, offline or
// revoked (anything else is all).
func showFilter(show string) string {
	switch show {
	case "online", "offline", "revoked":
		return show
	default:
		return "all"
	}
}

// viewSlave is one slave's row; a dead slave's tunnels are not counted.
func viewSlave(sl registry.Slave, alive bool, now time.Time) slaveView {
	sv := slaveView{Name: sl.Name, Host: sl.Host, Port: sl.Port, Alive: alive,
		Capacity: sl.Capacity, CPU: fmt.Sprintf("%.0f%%", sl.CPU), Mem: fmt.Sprintf("%.0f%%", sl.Mem),
		LastSeen: ago(now, sl.LastSeen)}
	if alive {
		sv.Tunnels = sl.Tunnels
	}
	load := 0.0
	if sl.Capacity > 0 {
		load = float64(sv.Tunnels) / float64(sl.Capacity)
	}
	sv.LoadPct = min(max(int(load*100+0.5), 0), 100)
	if load > 0 && sv.LoadPct == 0 {
		sv.LoadPct = 1 // a sliver, so that "some" does not look like "none"
	}
	sv.Load = fmt.Sprintf("%.1f%%", load*100)
	switch {
	case load >= 0.9:
		sv.LoadClass = "high"
	case load >= 0.7:
		sv.LoadClass = "warn"
	default:
		sv.LoadClass = "ok"
	}
	return sv
}

// buildDeviceDetail is one device's page at now, from the live tunnels
// (of all devices) and its latest events, oldest first. The page header
// is the caller's.
func buildDeviceDetail(dev registry.Device, tunnels []registry.Tunnel, events []registry.Event, now time.Time) deviceDetailView {
	var mine []registry.Tunnel
	for _, t := range tunnels {
		if t.Device == dev.Name {
			mine = append(mine, t)
		}
	}
	return deviceDetailView{
		Device: viewDevice(dev, mine, now), Fingerprint: dev.Fingerprint, KeyType: dev.KeyType, LastSlave: dev.LastSlave,
		Created: dev.CreatedAt.UTC().Format("2006-01-02 15:04:05Z"), Events: viewEvents(events, now),
	}
}

// viewDevice joins a device with its live tunnels.
func viewDevice(d registry.Device, tunnels []registry.Tunnel, now time.Time) deviceView {
	dv := deviceView{Name: d.Name, Revoked: d.Status != registry.StatusActive, Online: len(tunnels) > 0, LastSlave: d.LastSlave}
	var slaves []string
	var oldest time.Time
	var shown *registry.Probe
	for _, f := range d.Forwards {
		pv := portView{Forward: f.Name, Target: f.Target, Port: f.RemotePort}
		for _, t := range tunnels {
			if t.Port != f.RemotePort {
				continue
			}
			pv.Live, pv.Slave, pv.Remote = true, t.Slave, t.Remote
			if !t.Since.IsZero() {
				pv.Uptime = short(now.Sub(t.Since))
			}
			pv.Probe = viewProbe(t.Probe, now)
		}
		dv.Ports = append(dv.Ports, pv)
	}
	for _, t := range tunnels {
		if !slices.Contains(slaves, t.Slave) {
			slaves = append(slaves, t.Slave)
		}
		if !t.Since.IsZero() && (oldest.IsZero() || t.Since.Before(oldest)) {
			oldest = t.Since
		}
		if worthShowing(t.Probe, shown) {
			shown = t.Probe
		}
	}
	sort.Strings(slaves)
	dv.Slaves = strings.Join(slaves, ", ")
	if !oldest.IsZero() {
		dv.Uptime = short(now.Sub(oldest))
	}
	dv.Probe = viewProbe(shown, now)
	return dv
}

// worthShowing prefers, for a device's one "last probe" cell, a failing
// probe over a passing one (that is what the operator must see), then the
// newer one.
func worthShowing(p, cur *registry.Probe) bool {
	switch {
	case p == nil:
		return false
	case cur == nil:
		return true
	case p.OK != cur.OK:
		return !p.OK
	default:
		return p.At.After(cur.At)
	}
}

func viewProbe(p *registry.Probe, now time.Time) probeView {
	if p == nil {
		return probeView{}
	}
	return probeView{Known: true, OK: p.OK, Ago: ago(now, p.At), Detail: p.Detail}
}

// viewConnected lists the live operator sessions for the overview.
func viewConnected(ops []liveOperator, now time.Time) []connectedView {
	out := make([]connectedView, 0, len(ops))
	for _, o := range ops {
		open := make([]string, len(o.Open))
		for i, a := range o.Open {
			open[i] = a.Device + ":" + a.Forward
		}
		out = append(out, connectedView{Operator: o.Operator, Slave: o.Slave, Remote: o.Remote, Since: ago(now, o.Since),
			Devices: strings.Join(open, ", ")})
	}
	return out
}

// viewAccess pairs device's operator-connect and operator-disconnect
// events (oldest first) into visits, newest first: who, on which slave,
// from when, until when, for how long. A visit not closed yet is
// "connected now" while a live slave reports that operator with the
// device open, else its end is unknown (the slave went away).
func viewAccess(device string, events []registry.Event, live []liveOperator, now time.Time) []accessView {
	type key struct{ op, slave string }
	type visit struct {
		key
		start, end time.Time
	}
	var visits []visit
	open := map[key][]int{} // indexes into visits of unclosed ones
	for _, e := range events {
		k := key{e.Operator, e.Slave}
		switch e.Kind {
		case wire.EventOperatorConnect:
			open[k] = append(open[k], len(visits))
			visits = append(visits, visit{key: k, start: e.At})
		case wire.EventOperatorDisconnect:
			if idx := open[k]; len(idx) > 0 {
				visits[idx[0]].end = e.At
				open[k] = idx[1:]
			} else {
				visits = append(visits, visit{key: k, end: e.At}) // its start is older than the page
			}
		}
	}
	liveNow := map[key]bool{}
	for _, o := range live {
		for _, a := range o.Open {
			if a.Device == device {
				liveNow[key{o.Operator, o.Slave}] = true
			}
		}
	}
	out := make([]accessView, 0, len(visits))
	for i := len(visits) - 1; i >= 0; i-- {
		v := visits[i]
		av := accessView{Operator: v.op, Slave: v.slave, Start: "—", End: "—", Duration: "—"}
		if !v.start.IsZero() {
			av.Start = v.start.UTC().Format("2006-01-02 15:04:05Z")
		}
		switch {
		case !v.end.IsZero():
			av.End = v.end.UTC().Format("2006-01-02 15:04:05Z")
			if !v.start.IsZero() {
				av.Duration = short(v.end.Sub(v.start))
			}
		case liveNow[v.key]:
			av.End, av.Duration = "connected now", short(now.Sub(v.start))
		}
		out = append(out, av)
	}
	return out
}

// viewEvents turns events, oldest first, into rows newest first.
func viewEvents(events []registry.Event, now time.Time) []eventView {
	out := make([]eventView, 0, len(events))
	for i := len(events) - 1; i >= 0; i-- {
		e := events[i]
		out = append(out, eventView{At: e.At.UTC().Format("2006-01-02 15:04:05Z"), Ago: ago(now, e.At),
			Kind: e.Kind, Device: e.Device, Slave: e.Slave, Detail: e.Detail})
	}
	return out
}

// ago is a short age: "4s ago", "3m05s ago", "2h10m ago", "3d4h ago".
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return short(now.Sub(t)) + " ago"
}

// short is a duration in two units at most, for ages and uptimes.
func short(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	default:
		return fmt.Sprintf("%dd%dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
	}
}
