package bench

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"

	masterclient "github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
)

// simFleet is the simulated cluster seen from outside the masters: which
// slave holds each device's tunnel (a device connects to the slave it
// was granted at once), and what each slave reports in its heartbeats.
type simFleet struct {
	devs    []simDevice
	slaves  []simSlave
	masters []string // base URLs
	client  *http.Client
	// grants[m][0] counts master m's grants to slaves that heartbeat to
	// it, grants[m][1] to slaves that heartbeat to another master (which
	// m knows of only through the shared registry: master/peers.go).
	grants [][2]atomic.Int64

	mu    sync.Mutex
	on    []int                     // device -> slave index, -1 when it has no tunnel
	since []time.Time               // device -> when its tunnel came up
	sets  []map[int]struct{}        // slave -> devices with a tunnel on it
	index map[string]int            // slave name -> index
	beats map[string]*latencyBucket // phase -> heartbeat latencies
	bytes []int                     // heartbeat body sizes
}

// simSlave is one fake slave: its name, credential, the master it
// reports to, and the fixed part of its heartbeat.
type simSlave struct {
	Name   string
	Cred   string
	Master int
	hb     wire.Heartbeat
}

// latencyBucket collects timings and failures of one kind in one phase.
type latencyBucket struct {
	lat   []time.Duration
	fails int
	first string
}

func (b *latencyBucket) add(d time.Duration, err error) {
	if err != nil {
		b.fails++
		if b.first == "" {
			b.first = err.Error()
		}
		return
	}
	b.lat = append(b.lat, d)
}

func newSimFleet(devs []simDevice, names, creds []string, masters []string, inflight int) *simFleet {
	f := &simFleet{devs: devs, masters: masters, grants: make([][2]atomic.Int64, len(masters)), on: make([]int, len(devs)), since: make([]time.Time, len(devs)),
		sets: make([]map[int]struct{}, len(names)), index: map[string]int{}, beats: map[string]*latencyBucket{},
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			MaxIdleConnsPerHost: inflight + len(names), IdleConnTimeout: time.Minute}}}
	for i := range f.on {
		f.on[i] = -1
	}
	f.slaves = make([]simSlave, len(names))
	for i, name := range names {
		// The host key is derived from the name, so that a rerun on the
		// same registry presents the key bound to it.
		seed := sha256.Sum256([]byte("mas4h-sim host key " + name))
		sp, _ := ssh.NewPublicKey(ed25519.NewKeyFromSeed(seed[:]).Public())
		f.slaves[i] = simSlave{Name: name, Cred: creds[i], Master: i % len(masters), hb: wire.Heartbeat{
			Host: fmt.Sprintf("slave%d.sim.invalid", i), Port: 22, User: "mas4h-tunnel",
			HostKeys: []string{strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))}, Capacity: 4000,
			OperatorUser: "mas4h-operator"}}
		f.sets[i] = map[int]struct{}{}
		f.index[name] = i
	}
	return f
}

// place records that device dev now has its tunnel on slave s (-1: none).
func (f *simFleet) place(dev, s int, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if old := f.on[dev]; old >= 0 {
		delete(f.sets[old], dev)
	}
	f.on[dev] = s
	if s >= 0 {
		f.sets[s][dev] = struct{}{}
		f.since[dev] = at
	}
}

// counts returns the tunnels each slave holds now.
func (f *simFleet) counts() []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]int, len(f.sets))
	for i, s := range f.sets {
		out[i] = len(s)
	}
	return out
}

// devicesOn lists the devices with a tunnel on slave s.
func (f *simFleet) devicesOn(s int) []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]int, 0, len(f.sets[s]))
	for d := range f.sets[s] {
		out = append(out, d)
	}
	return out
}

// heartbeat is slave s's report now, as a real slave builds it
// (sshd.parts.heartbeat, reaper.Tunnels): every live tunnel with its
// device, forward, slave, port, the device's address, since when, and
// its last probe, sorted by port.
func (f *simFleet) heartbeat(s int, now time.Time) wire.Heartbeat {
	f.mu.Lock()
	devs := make([]int, 0, len(f.sets[s]))
	for d := range f.sets[s] {
		devs = append(devs, d)
	}
	since := make([]time.Time, len(devs))
	for i, d := range devs {
		since[i] = f.since[d]
	}
	f.mu.Unlock()
	hb := f.slaves[s].hb
	hb.CPU, hb.MemUsed = 12.5, 31.2
	hb.Tunnels = make([]wire.Tunnel, len(devs))
	for i, d := range devs {
		dev := f.devs[d]
		probeAt := now.Add(-time.Duration(d%60) * time.Second).UTC()
		if probeAt.Before(since[i]) {
			probeAt = since[i]
		}
		hb.Tunnels[i] = wire.Tunnel{Device: dev.Name, Forward: "ssh", Slave: f.slaves[s].Name, Port: heartbeatPort(dev.Port),
			Remote: fmt.Sprintf("198.51.%d.%d:%d", d/250%250, d%250+1, 32768+d%28000), Since: since[i].UTC(),
			LastProbe: &wire.Probe{OK: true, At: probeAt}}
	}
	sortTunnels(hb.Tunnels)
	return hb
}

// heartbeatPort is the port a tunnel is reported on: the leased one, or,
// for a device written beyond port 65535 (see simEnrolBeyond), the same
// folded into the range a heartbeat may carry.
func heartbeatPort(p int) int {
	for p > 65535 {
		p -= 65535 - 1023
	}
	return p
}

func sortTunnels(ts []wire.Tunnel) {
	// Ports are unique but for devices folded by heartbeatPort; a stable
	// order is all that matters.
	sort.Slice(ts, func(i, j int) bool {
		return ts[i].Port < ts[j].Port || ts[i].Port == ts[j].Port && ts[i].Device < ts[j].Device
	})
}

// beat sends slave s's heartbeat and records its latency under phase.
func (f *simFleet) beat(ctx context.Context, s int, phase string) error {
	hb := f.heartbeat(s, time.Now())
	body, err := json.Marshal(hb)
	if err != nil {
		return err
	}
	sl := f.slaves[s]
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.masters[sl.Master]+wire.APIPrefix+"/slaves/"+sl.Name+"/heartbeat", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+sl.Cred)
	req.Header.Set("Content-Type", "application/json")
	t0 := time.Now()
	resp, err := f.client.Do(req)
	el := time.Since(t0)
	if err == nil {
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("heartbeat of %s: %s: %s", sl.Name, resp.Status, bytes.TrimSpace(b))
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	f.mu.Lock()
	b := f.beats[phase]
	if b == nil {
		b = &latencyBucket{}
		f.beats[phase] = b
	}
	b.add(el, err)
	if err == nil {
		f.bytes = append(f.bytes, len(body))
	}
	f.mu.Unlock()
	return err
}

// beatLoop heartbeats slave s every interval, the first after offset,
// until ctx ends; phase names the current phase for the records.
func (f *simFleet) beatLoop(ctx context.Context, s int, interval, offset time.Duration, phase func() string) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(offset):
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		f.beat(ctx, s, phase())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// slotAnswer is what one slot request got.
type slotAnswer struct {
	Slave      int           // index of the granted slave, -1 when none
	Status     int           // HTTP status, 0 on a transport error
	RetryAfter time.Duration // from a 429 or 503
	Latency    time.Duration // the HTTP request, signing excluded
	Err        error         // anything but a grant
}

// slot asks master m for device dev's slot, signed as the agent signs it.
func (f *simFleet) slot(ctx context.Context, dev, m int) slotAnswer {
	a := slotAnswer{Slave: -1}
	sr, err := masterclient.SignSlotRequest(f.devs[dev].Signer, f.masters[m], time.Now())
	if err != nil {
		a.Err = err
		return a
	}
	body, _ := json.Marshal(sr)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, f.masters[m]+wire.APIPrefix+"/slots", bytes.NewReader(body))
	if err != nil {
		a.Err = err
		return a
	}
	req.Header.Set("Content-Type", "application/json")
	t0 := time.Now()
	resp, err := f.client.Do(req)
	if err != nil {
		a.Latency, a.Err = time.Since(t0), err
		return a
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	a.Latency, a.Status = time.Since(t0), resp.StatusCode
	if err != nil {
		a.Err = err
		return a
	}
	if resp.StatusCode != http.StatusOK {
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil {
			a.RetryAfter = time.Duration(secs) * time.Second
		}
		a.Err = fmt.Errorf("POST /slots: %s: %s", resp.Status, bytes.TrimSpace(b))
		return a
	}
	var s wire.Slot
	if err := json.Unmarshal(b, &s); err != nil {
		a.Err = fmt.Errorf("POST /slots: %w", err)
		return a
	}
	i, ok := f.index[s.Slave]
	if !ok {
		a.Err = fmt.Errorf("POST /slots: granted unknown slave %q", s.Slave)
		return a
	}
	a.Slave = i
	if f.slaves[i].Master == m {
		f.grants[m][0].Add(1)
	} else {
		f.grants[m][1].Add(1)
	}
	return a
}

// Spread is how evenly tunnels (and grants, which this simulation turns
// into tunnels at once) sit on the slaves.
type Spread struct {
	Slaves int     `json:"slaves"`
	Min    int     `json:"min"`
	Max    int     `json:"max"`
	Mean   float64 `json:"mean"`
	Stddev float64 `json:"stddev"`
	Empty  int     `json:"empty_slaves"`
}

// spreadOf summarises counts, leaving out the slaves in skip.
func spreadOf(counts []int, skip map[int]bool) Spread {
	var s Spread
	var sum float64
	for i, c := range counts {
		if skip[i] {
			continue
		}
		if s.Slaves == 0 || c < s.Min {
			s.Min = c
		}
		s.Max = max(s.Max, c)
		if c == 0 {
			s.Empty++
		}
		s.Slaves++
		sum += float64(c)
	}
	if s.Slaves == 0 {
		return s
	}
	mean := sum / float64(s.Slaves)
	var v float64
	for i, c := range counts {
		if !skip[i] {
			v += (float64(c) - mean) * (float64(c) - mean)
		}
	}
	s.Mean, s.Stddev = round3(mean), round3(math.Sqrt(v/float64(s.Slaves)))
	return s
}
