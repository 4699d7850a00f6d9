package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/sshsig"
)

// AddOperator enrols an operator with its key and allow list (admin
// token).
func (c *Client) AddOperator(ctx context.Context, spec wire.OperatorSpec) (wire.Operator, error) {
	var o wire.Operator
	err := c.do(ctx, http.MethodPost, "/operators", nil, spec, &o)
	return o, err
}

// Operators lists the operators by name (admin token).
func (c *Client) Operators(ctx context.Context) ([]wire.Operator, error) {
	out := []wire.Operator{}
	err := c.do(ctx, http.MethodGet, "/operators", nil, nil, &out)
	return out, err
}

// Operator returns one operator, with the devices its allow list reaches
// today (admin token).
func (c *Client) Operator(ctx context.Context, name string) (wire.Operator, error) {
	var o wire.Operator
	err := c.do(ctx, http.MethodGet, "/operators/"+url.PathEscape(name), nil, nil, &o)
	return o, err
}

// Allow adds a selector (pi-*, site=lyon) to an operator's allow list
// (admin token).
func (c *Client) Allow(ctx context.Context, name, selector string) (wire.Operator, error) {
	var o wire.Operator
	err := c.do(ctx, http.MethodPost, "/operators/"+url.PathEscape(name)+"/allow", nil, wire.Selector{Selector: selector}, &o)
	return o, err
}

// Deny takes a selector off an operator's allow list; its live sessions
// end (admin token).
func (c *Client) Deny(ctx context.Context, name, selector string) (wire.Operator, error) {
	var o wire.Operator
	err := c.do(ctx, http.MethodPost, "/operators/"+url.PathEscape(name)+"/deny", nil, wire.Selector{Selector: selector}, &o)
	return o, err
}

// RevokeOperator revokes an operator: its key opens nothing any more and
// its live sessions end (admin token).
func (c *Client) RevokeOperator(ctx context.Context, name string) (wire.Operator, error) {
	var o wire.Operator
	err := c.do(ctx, http.MethodPost, "/operators/"+url.PathEscape(name)+"/revoke", nil, nil, &o)
	return o, err
}

// RemoveOperator deletes an operator; its live sessions end (admin token).
func (c *Client) RemoveOperator(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/operators/"+url.PathEscape(name), nil, nil, nil)
}

// SetLabels sets and removes labels of a device (admin token).
func (c *Client) SetLabels(ctx context.Context, device string, l wire.Labels) (wire.Device, error) {
	var d wire.Device
	err := c.do(ctx, http.MethodPost, "/devices/"+url.PathEscape(device)+"/labels", nil, l, &d)
	return d, err
}

// DevicesMatching lists the devices any of selectors picks, all of them
// without one (admin token).
func (c *Client) DevicesMatching(ctx context.Context, selectors ...string) ([]wire.Device, error) {
	out := []wire.Device{}
	var q url.Values
	if len(selectors) > 0 {
		q = url.Values{"selector": selectors}
	}
	err := c.do(ctx, http.MethodGet, "/devices", q, nil, &out)
	return out, err
}

// Access asks where forward ("" for ssh) of device is, as the operator
// whose key signer holds (a key file's or an ssh-agent's): the request
// carries an SSH signature of wire.AccessStatement, bound to the
// URL of the master it goes to, to now and to the device and forward. It needs no
// token. Refusals are *Error: 403 (not an operator, revoked), 404 (no
// such device for this operator, or no such forward), 409 (offline).
func (c *Client) Access(ctx context.Context, signer ssh.Signer, device, forward string) (wire.Access, error) {
	var a wire.Access
	err := c.do(ctx, http.MethodPost, "/access", nil, perMaster(func(base string) (any, error) {
		return SignAccessRequest(signer, base, time.Now(), device, forward)
	}), &a)
	return a, err
}

// SignAccessRequest makes the access request of signer's operator for
// device's forward at the master at masterURL, signed at now with a
// fresh nonce.
func SignAccessRequest(signer ssh.Signer, masterURL string, now time.Time, device, forward string) (wire.AccessRequest, error) {
	if signer == nil {
		return wire.AccessRequest{}, fmt.Errorf("signing the access request: no key")
	}
	nonce := make([]byte, 16)
	if _, err := rand.Read(nonce); err != nil {
		return wire.AccessRequest{}, fmt.Errorf("signing the access request: %w", err)
	}
	req := wire.AccessRequest{
		Device: device, Forward: forward,
		PublicKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))),
		Master:    masterURL, Timestamp: now.Unix(), Nonce: hex.EncodeToString(nonce),
	}
	sig, err := sshsig.Sign(signer, wire.AccessNamespace, wire.AccessStatement(req))
	if err != nil {
		return wire.AccessRequest{}, fmt.Errorf("signing the access request: %w", err)
	}
	req.Signature = string(sig)
	return req, nil
}
