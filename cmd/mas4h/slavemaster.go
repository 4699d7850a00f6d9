package main

import (
	"context"
	"fmt"
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

func newSlaveMasterAPI(url, tokenFile string) (source.MasterAPI, error) {
	tok, err := token.Load(tokenFile)
	if err != nil {
		return nil, err
	}
	c, err := client.New(url, tok)
	if err != nil {
		return nil, usageError{err}
	}
	return slaveMasterAPI{c}, nil
}

func (a slaveMasterAPI) Heartbeat(ctx context.Context, slave string, hb wire.Heartbeat) (wire.HeartbeatReply, error) {
	return a.c.Heartbeat(ctx, slave, hb)
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
