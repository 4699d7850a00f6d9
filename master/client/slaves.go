package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/mas4h/mas4h/master/wire"
)

// AddSlave issues slave name its own credential, or a new one that
// invalidates the old (admin token). The answer is the only place the
// credential is ever shown.
func (c *Client) AddSlave(ctx context.Context, name string) (wire.SlaveCredential, error) {
	var sc wire.SlaveCredential
	err := c.do(ctx, http.MethodPost, "/slaves", nil, wire.AddSlaveRequest{Name: name}, &sc)
	return sc, err
}

// Slaves lists the slaves with a credential or a registration (admin token).
func (c *Client) Slaves(ctx context.Context) ([]wire.Slave, error) {
	out := []wire.Slave{}
	err := c.do(ctx, http.MethodGet, "/slaves", nil, nil, &out)
	return out, err
}

// RemoveSlave withdraws a slave's credential and forgets the slave (admin
// token).
func (c *Client) RemoveSlave(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/slaves/"+url.PathEscape(name), nil, nil, nil)
}

// AcceptSlaveKey binds the host keys slave name presented and was refused
// for (admin token). With fingerprints, only if they are exactly those.
func (c *Client) AcceptSlaveKey(ctx context.Context, name string, fingerprints []string) (wire.AcceptedKeys, error) {
	var a wire.AcceptedKeys
	err := c.do(ctx, http.MethodPost, "/slaves/"+url.PathEscape(name)+"/accept-key", nil, wire.AcceptKeyRequest{Fingerprints: fingerprints}, &a)
	return a, err
}
