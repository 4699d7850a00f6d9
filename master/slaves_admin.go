package master

import (
	"errors"
	"net/http"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/mas4h/mas4h/master/token"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/names"
	"github.com/mas4h/mas4h/registry"
)

// The admin's side of slave credentials: GET, POST /slaves,
// DELETE /slaves/{name} and POST /slaves/{name}/accept-key, behind
// 'mas4h slave list|add|rm|accept-key'.

// handleAddSlave issues slave name a credential, or a new one, which
// invalidates the old and lets the next heartbeat bind the slave's host
// keys anew. The credential is in this answer only.
func (s *Server) handleAddSlave(c *gin.Context) {
	var req wire.AddSlaveRequest
	if berr := decodeJSON(c, MaxBody, &req); berr != nil {
		fail(c, berr.status, berr.msg)
		return
	}
	if err := names.Slave(req.Name); err != nil {
		fail(c, http.StatusBadRequest, "name: "+err.Error())
		return
	}
	cred, secret, err := token.NewSlaveCredential(req.Name)
	if err != nil {
		s.internal(c, err)
		return
	}
	replaced, err := s.store.SetSlaveCredential(c.Request.Context(), req.Name, registry.CredentialHash(secret))
	if err != nil {
		s.storeFail(c, err)
		return
	}
	s.sharedUsers.forget(req.Name)
	status := http.StatusCreated
	if replaced {
		status = http.StatusOK
		s.log.Info("slave credential replaced; the old one no longer works", "slave", req.Name)
	} else {
		s.log.Info("slave credential issued", "slave", req.Name)
	}
	c.JSON(status, wire.SlaveCredential{Name: req.Name, Credential: cred, Replaced: replaced})
}

func (s *Server) handleListSlaves(c *gin.Context) {
	ctx := c.Request.Context()
	entries, err := s.store.SlaveEntries(ctx)
	if err != nil {
		s.internal(c, err)
		return
	}
	slaves, err := s.store.Slaves(ctx)
	if err != nil {
		s.internal(c, err)
		return
	}
	known := make(map[string]registry.Slave, len(slaves))
	for _, sl := range slaves {
		known[sl.Name] = sl
	}
	alive := s.live.Alive()
	out := make([]wire.Slave, len(entries))
	for i, e := range entries {
		w := wire.Slave{Name: e.Name, Credential: wire.CredentialNone, Registered: e.Registered,
			SharedToken: s.sharedUsers.has(e.Name), HostKeys: []string{}}
		if e.Credential {
			w.Credential, w.CredentialCreated = wire.CredentialOwn, timePtr(e.CredentialAt)
			if e.Rebind {
				w.Credential = wire.CredentialIssued
			}
		}
		if sl, ok := known[e.Name]; ok {
			w.Host, w.Port, w.Alive, w.LastSeen = sl.Host, sl.Port, alive[sl.Name], timePtr(sl.LastSeen)
			w.HostKeys = registry.KeyFingerprints(sl.HostKeys)
		}
		if len(e.Pending) > 0 || !e.PendingSince.IsZero() {
			w.PendingHostKeys, w.PendingSince = registry.KeyFingerprints(e.Pending), timePtr(e.PendingSince)
		}
		out[i] = w
	}
	c.JSON(http.StatusOK, out)
}

func timePtr(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

// handleRemoveSlave withdraws a slave's credential and forgets it: its
// next request is refused, and no device is sent to it any more.
func (s *Server) handleRemoveSlave(c *gin.Context) {
	name := c.Param("name")
	if err := names.Slave(name); err != nil {
		fail(c, http.StatusBadRequest, err.Error())
		return
	}
	if err := s.store.RemoveSlave(c.Request.Context(), name); err != nil {
		s.storeFail(c, err)
		return
	}
	s.live.Forget(name)
	s.sharedUsers.forget(name)
	s.log.Info("slave removed: its credential no longer works", "slave", name)
	c.JSON(http.StatusOK, wire.Removed{Removed: name})
}

// handleAcceptSlaveKey binds to slave name the host keys its heartbeats
// were refused for. The body may be empty, or name the fingerprints the
// admin expects (read on the slave's host with ssh-keygen -l).
func (s *Server) handleAcceptSlaveKey(c *gin.Context) {
	name := c.Param("name")
	if err := names.Slave(name); err != nil {
		fail(c, http.StatusBadRequest, err.Error())
		return
	}
	var req wire.AcceptKeyRequest
	if c.Request.ContentLength != 0 {
		if berr := decodeJSON(c, MaxBody, &req); berr != nil {
			fail(c, berr.status, berr.msg)
			return
		}
	}
	if len(req.Fingerprints) > maxHostKeys {
		fail(c, http.StatusBadRequest, "too many fingerprints")
		return
	}
	keys, err := s.store.AcceptSlaveKeys(c.Request.Context(), name, req.Fingerprints)
	switch {
	case errors.Is(err, registry.ErrNoPendingKeys), errors.Is(err, registry.ErrInvalid):
		fail(c, http.StatusConflict, err.Error())
		return
	case err != nil:
		s.storeFail(c, err)
		return
	}
	fps := registry.KeyFingerprints(keys)
	s.log.Info("slave host keys accepted", "slave", name, "host_keys", fps)
	c.JSON(http.StatusOK, wire.AcceptedKeys{Name: name, HostKeys: fps})
}
