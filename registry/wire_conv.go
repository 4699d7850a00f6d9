package registry

import "github.com/mas4h/mas4h/master/wire"

// Wire is the device as the REST API and the CLI show it.
func (d Device) Wire() wire.Device {
	fs := make([]wire.Forward, len(d.Forwards))
	for i, f := range d.Forwards {
		fs[i] = f.Wire()
	}
	return wire.Device{
		Name:        d.Name,
		Fingerprint: d.Fingerprint,
		KeyType:     d.KeyType,
		PublicKey:   d.PublicKey,
		Status:      d.Status,
		Forwards:    fs,
		Labels:      d.Labels,
		Slave:       d.LastSlave,
		CreatedAt:   d.CreatedAt,
		UpdatedAt:   d.UpdatedAt,
	}
}

// Wire is the forward as the REST API shows it.
func (f Forward) Wire() wire.Forward {
	return wire.Forward{Name: f.Name, Target: f.Target, RemotePort: f.RemotePort, Probe: f.Probe}
}

// Wire is the event as the REST API shows it.
func (e Event) Wire() wire.Event {
	return wire.Event{ID: e.ID, At: e.At, Kind: e.Kind, Device: e.Device, Slave: e.Slave, Operator: e.Operator, Detail: e.Detail}
}

// Wire is the tunnel as the REST API shows it.
func (t Tunnel) Wire() wire.Tunnel {
	w := wire.Tunnel{Device: t.Device, Forward: t.Forward, Slave: t.Slave, Port: t.Port, Remote: t.Remote, Since: t.Since}
	if t.Probe != nil {
		w.LastProbe = &wire.Probe{OK: t.Probe.OK, At: t.Probe.At, Detail: t.Probe.Detail}
	}
	return w
}

// Wire is the revocation as heartbeat replies carry it.
func (r Revocation) Wire() wire.Revocation {
	ports := r.Ports
	if ports == nil {
		ports = []int{}
	}
	return wire.Revocation{Seq: r.Seq, Device: r.Device, Operator: r.Operator, Fingerprint: r.Fingerprint, Ports: ports, Reason: r.Reason}
}
