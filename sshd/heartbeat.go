package sshd

import (
	"context"
	"net"
	"os"

	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/mem"

	"github.com/mas4h/mas4h/master/wire"
)

// heartbeat is this slave's report to the master: where devices reach it,
// its host keys (for devices to pin), its load and its live tunnels.
func (p *parts) heartbeat(ctx context.Context) wire.Heartbeat {
	s := p.s
	hb := wire.Heartbeat{
		Host:     s.publicHost(),
		Port:     s.port,
		User:     p.user.Name,
		Capacity: s.cfg.Capacity,
		Tunnels:  p.tunnels(ctx),
		// The master answers POST /access for this slave's devices only
		// when it knows the user operators log in as.
		OperatorUser: s.cfg.OperatorUser,
	}
	hb.Operators = p.ops.Live()
	if s.cfg.VIP != nil {
		hb.VIP, hb.Node = s.cfg.VIP.VIP.String(), s.cfg.VIP.Node
	}
	for _, k := range p.hostKeys {
		hb.HostKeys = append(hb.HostKeys, k.Public)
	}
	if pc, err := cpu.PercentWithContext(ctx, 0, false); err == nil && len(pc) == 1 {
		hb.CPU = pc[0]
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
