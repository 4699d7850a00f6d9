package sshd

import (
	"context"
	"net"
	"os"
	"time"

	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/mem"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/sshd/sessions"
)

// Heartbeat is this slave's report to the master: where devices reach it,
// its host keys (for devices to pin), its load and its live tunnels.
func (s *Slave) Heartbeat(ctx context.Context) wire.Heartbeat {
	hb := wire.Heartbeat{
		Host:     s.publicHost(),
		Port:     s.port,
		User:     s.user.Name,
		Capacity: s.cfg.Capacity,
		Tunnels:  []wire.Tunnel{},
	}
	if s.cfg.VIP != nil {
		hb.VIP, hb.Node = s.cfg.VIP.VIP.String(), s.cfg.VIP.Node
	}
	for _, k := range s.HostKeys {
		hb.HostKeys = append(hb.HostKeys, k.Public)
	}
	if tunnels, err := s.Tunnels(ctx); err != nil {
		s.log.Error("listing tunnels for the heartbeat", "err", err)
	} else {
		hb.Tunnels = tunnels
	}
	if p, err := cpu.PercentWithContext(ctx, 0, false); err == nil && len(p) == 1 {
		hb.CPU = p[0]
	}
	if vm, err := mem.VirtualMemoryWithContext(ctx); err == nil {
		hb.MemUsed = vm.UsedPercent
	}
	return hb
}

// publicHost is the address devices are told to dial: --public-host, else
// the listen address when it is a specific one, else the host name.
func (s *Slave) publicHost() string {
	if s.cfg.PublicHost != "" {
		return s.cfg.PublicHost
	}
	host, _, _ := net.SplitHostPort(s.cfg.SSHListen)
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return host
	}
	name, err := os.Hostname()
	if err != nil {
		return host
	}
	return name
}

// Tunnels lists this slave's live forwards with their last probe, as the
// monitor saw them in its latest cycle.
func (s *Slave) Tunnels(ctx context.Context) ([]wire.Tunnel, error) {
	return s.mon.snapshot(ctx, s.cfg.Name, time.Second), nil
}

func (s *Slave) discoverer() sessions.Discoverer {
	return sessions.Discoverer{ProcRoot: s.cfg.ProcRoot, TunnelUID: s.user.UID,
		LogPath: SSHDLogPath(s.cfg.StateDir), SSHPort: s.port}
}
