package reaper

import (
	"context"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshd/authkeys"
	"github.com/mas4h/mas4h/sshd/probe"
	"github.com/mas4h/mas4h/sshd/sessions"
)

// The real parts the slave gives the reaper.

// SystemClock is the wall clock.
type SystemClock struct{}

func (SystemClock) Now() time.Time                         { return time.Now() }
func (SystemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// LoopbackProber probes ports on 127.0.0.1.
type LoopbackProber struct{}

// Probe implements Prober.
func (LoopbackProber) Probe(ctx context.Context, p probe.Probe, port int, timeout time.Duration) error {
	return p.Run(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), timeout)
}

// PortHeld reports whether something listens on 127.0.0.1:port, cheaply: a
// bind that fails with "in use" (far cheaper than reading the process table
// on every authentication).
func PortHeld(port int) bool {
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return true
	}
	l.Close()
	return false
}

// Terminator ends sessions with signals (SIGTERM, then SIGKILL after
// Grace) and reads the listening sockets afterwards.
type Terminator struct {
	ProcRoot string
	Grace    time.Duration // 0: 2 s
}

// Kill implements Killer.
func (t Terminator) Kill(_ context.Context, s sessions.Session) []int {
	grace := t.Grace
	if grace <= 0 {
		grace = killGrace
	}
	sessions.Terminate(t.ProcRoot, s, grace)
	listening, err := sessions.ListeningPorts(t.ProcRoot)
	if err != nil {
		return nil
	}
	var bound []int
	for _, p := range s.Ports {
		if listening[p] {
			bound = append(bound, p)
		}
	}
	return bound
}

// Snapshotter is the slave's cache as the leases need it.
type Snapshotter interface {
	Snapshot(ctx context.Context) ([]authkeys.CachedDevice, uint64, error)
}

// CacheLeases indexes the cache's devices by leased port and by key, once
// per cache generation (decoding every device each cycle was a good part of
// a cycle's cost). A key the cache does not hold is asked about (Ask: the
// source's lookup) before it is called no device's.
type CacheLeases struct {
	Cache Snapshotter
	Ask   func(ctx context.Context, fp string) (registry.Device, bool, error)

	mu   sync.Mutex
	m    map[int]Lease
	byFP map[string]registry.Device
	gen  uint64
}

// Leases implements Leases.
func (c *CacheLeases) Leases(ctx context.Context) (map[int]Lease, error) {
	if err := c.index(ctx); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m, nil
}

// Owner implements Leases.
func (c *CacheLeases) Owner(ctx context.Context, fp string) (registry.Device, bool, error) {
	if err := c.index(ctx); err != nil {
		return registry.Device{}, false, err
	}
	c.mu.Lock()
	d, ok := c.byFP[fp]
	c.mu.Unlock()
	if ok || c.Ask == nil {
		return d, ok, nil
	}
	return c.Ask(ctx, fp)
}

// index rebuilds the maps when the cache changed.
func (c *CacheLeases) index(ctx context.Context) error {
	all, gen, err := c.Cache.Snapshot(ctx)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m != nil && gen == c.gen {
		return nil
	}
	m := map[int]Lease{}
	byFP := make(map[string]registry.Device, len(all))
	for _, cd := range all {
		byFP[cd.Device.Fingerprint] = cd.Device
		for _, f := range cd.Device.Forwards {
			m[f.RemotePort] = Lease{cd.Device, f}
		}
	}
	c.m, c.byFP, c.gen = m, byFP, gen
	return nil
}
