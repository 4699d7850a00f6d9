package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/token"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/sshd/source"
)

// slaveMasterAPI adapts the API client to what a slave needs, telling a
// refusal (403) apart from a master that does not answer.
type slaveMasterAPI struct{ c *client.Client }

// newSlaveMasterAPI reads slave's credential from tokenFile. masters is
// one URL or several (URL,URL…), tried in a random order drawn at start;
// log hears of each move to another master. A credential
// of another slave is refused at once, with the fix; a token that is no
// slave's credential is the shared token of an older install (shared), which
// only a master with --allow-shared-slave-token accepts.
func newSlaveMasterAPI(masters, tokenFile, slave string, log *slog.Logger) (api slaveMasterAPI, shared bool, err error) {
	tok, err := token.Load(tokenFile)
	if err != nil {
		return slaveMasterAPI{}, false, err
	}
	name, _, ok := token.ParseSlaveCredential(tok)
	if ok && name != slave {
		return slaveMasterAPI{}, false, usagef("%s holds slave %s's credential, not slave %s's; issue this one its own: mas4h slave add %s", tokenFile, name, slave, slave)
	}
	c, err := client.New(masters, tok, client.WithShuffle(), client.WithLogger(log.With("component", "master-client")))
	if err != nil {
		return slaveMasterAPI{}, false, usageError{err}
	}
	return slaveMasterAPI{c}, !ok, nil
}

// Cleartext: see client.Client.Cleartext.
func (a slaveMasterAPI) Cleartext() []string { return a.c.Cleartext() }

// cleartextWarning is what a slave logs at every start when its master is
// plain http:// beyond the loopback.
const cleartextWarning = "the master is plain http: this slave's credential, the keys it validates and the revocations it follows cross the network unprotected, and a man in the middle can change them; serve the master over https (--tls-cert, --tls-key)"

// Heartbeat tells a refusal apart in the slave's log: the heartbeat loop
// reports every failure as the master being out of reach.
func (a slaveMasterAPI) Heartbeat(ctx context.Context, slave string, hb wire.Heartbeat) (wire.HeartbeatReply, error) {
	r, err := a.c.Heartbeat(ctx, slave, hb)
	switch client.StatusOf(err) {
	case http.StatusUnauthorized, http.StatusForbidden:
		return r, fmt.Errorf("the master refused this slave's credential: %w", err)
	case http.StatusConflict:
		return r, fmt.Errorf("the master refused this slave's heartbeat: %w", err)
	}
	return r, err
}

func (a slaveMasterAPI) Revocations(ctx context.Context, slave string, after int64, wait time.Duration) (wire.RevocationsReply, error) {
	r, err := a.c.Revocations(ctx, slave, after, wait)
	if err != nil && (client.StatusOf(err) == http.StatusNotFound || client.StatusOf(err) == http.StatusMethodNotAllowed) {
		return r, fmt.Errorf("%w: %v", source.ErrNoRevocationFeed, err)
	}
	return r, err
}

func (a slaveMasterAPI) Validate(ctx context.Context, req wire.ValidateRequest) (wire.Validation, error) {
	v, err := a.c.Validate(ctx, req)
	if err != nil && client.StatusOf(err) == http.StatusForbidden {
		return v, fmt.Errorf("%w: %v", source.ErrNotAccepted, err)
	}
	return v, err
}

// ValidateOperator implements source.OperatorAPI, telling a refusal (403)
// apart.
func (a slaveMasterAPI) ValidateOperator(ctx context.Context, req wire.ValidateRequest) (wire.OperatorValidation, error) {
	v, err := a.c.ValidateOperator(ctx, req)
	if err != nil && client.StatusOf(err) == http.StatusForbidden {
		return v, fmt.Errorf("%w: %v", source.ErrNotAccepted, err)
	}
	return v, err
}

var (
	_ source.MasterAPI   = slaveMasterAPI{}
	_ source.OperatorAPI = slaveMasterAPI{}
)
