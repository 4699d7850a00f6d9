package master

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/registry"
)

// Operators: the admin API that enrols them and their allow lists, the
// signed POST /access that tells an operator where a device is, and the
// validation of an operator's key for a slave (DESIGN.md, Roles).

// operatorWire is o as the admin API shows it, with the devices its
// allow list reaches today.
func (s *Server) operatorWire(ctx context.Context, o registry.Operator) (wire.Operator, error) {
	w := o.Wire()
	devs, err := s.store.OperatorDevices(ctx, o)
	if err != nil {
		return w, err
	}
	w.Devices = make([]string, len(devs))
	for i, d := range devs {
		w.Devices[i] = d.Name
	}
	return w, nil
}

func (s *Server) handleListOperators(c *gin.Context) {
	ops, err := s.store.Operators(c.Request.Context())
	if err != nil {
		s.internal(c, err)
		return
	}
	out := make([]wire.Operator, len(ops))
	for i, o := range ops {
		out[i] = o.Wire()
	}
	c.JSON(http.StatusOK, out)
}

func (s *Server) handleAddOperator(c *gin.Context) {
	var req wire.OperatorSpec
	if berr := decodeJSON(c, MaxBody, &req); berr != nil {
		fail(c, berr.status, berr.msg)
		return
	}
	if err := registry.ValidateOperatorName(req.Name); err != nil {
		fail(c, http.StatusBadRequest, "name: "+err.Error())
		return
	}
	key, ok := requiredKey(c, req.PublicKey)
	if !ok {
		return
	}
	ctx := c.Request.Context()
	op, err := s.store.AddOperator(ctx, req.Name, key, req.Allow)
	if err != nil {
		s.storeFail(c, err)
		return
	}
	s.log.Info("operator enrolled", "operator", op.Name, "fingerprint", op.Fingerprint, "allow", op.Allow)
	s.answerOperator(c, http.StatusCreated, op)
}

func (s *Server) answerOperator(c *gin.Context, status int, op registry.Operator) {
	w, err := s.operatorWire(c.Request.Context(), op)
	if err != nil {
		s.internal(c, err)
		return
	}
	c.JSON(status, w)
}

func (s *Server) handleGetOperator(c *gin.Context) {
	op, err := s.store.Operator(c.Request.Context(), c.Param("name"))
	if err != nil {
		s.storeFail(c, err)
		return
	}
	s.answerOperator(c, http.StatusOK, op)
}

func (s *Server) handleRevokeOperator(c *gin.Context) {
	op, err := s.store.RevokeOperator(c.Request.Context(), c.Param("name"))
	if err != nil {
		s.storeFail(c, err)
		return
	}
	s.revoked.notify()
	s.log.Info("operator revoked", "operator", op.Name)
	s.answerOperator(c, http.StatusOK, op)
}

func (s *Server) handleRemoveOperator(c *gin.Context) {
	name := c.Param("name")
	if err := s.store.RemoveOperator(c.Request.Context(), name); err != nil {
		s.storeFail(c, err)
		return
	}
	s.revoked.notify()
	s.log.Info("operator removed", "operator", name)
	c.JSON(http.StatusOK, wire.Removed{Removed: name})
}

func (s *Server) handleAllowOperator(c *gin.Context) { s.changeAllow(c, true) }
func (s *Server) handleDenyOperator(c *gin.Context)  { s.changeAllow(c, false) }

func (s *Server) changeAllow(c *gin.Context, allow bool) {
	var req wire.Selector
	if berr := decodeJSON(c, MaxBody, &req); berr != nil {
		fail(c, berr.status, berr.msg)
		return
	}
	ctx, name := c.Request.Context(), c.Param("name")
	var op registry.Operator
	var err error
	if allow {
		op, err = s.store.AllowOperator(ctx, name, req.Selector)
	} else {
		op, err = s.store.DenyOperator(ctx, name, req.Selector)
	}
	if err != nil {
		s.storeFail(c, err)
		return
	}
	if !allow {
		s.revoked.notify() // its sessions end, its next login gets the narrower lines
	}
	s.log.Info("operator's allow list changed", "operator", op.Name, "allow", op.Allow)
	s.answerOperator(c, http.StatusOK, op)
}

func (s *Server) handleSetLabels(c *gin.Context) {
	var req wire.Labels
	if berr := decodeJSON(c, MaxBody, &req); berr != nil {
		fail(c, berr.status, berr.msg)
		return
	}
	dev, err := s.store.SetDeviceLabels(c.Request.Context(), c.Param("name"), req.Set, req.Remove)
	if err != nil {
		s.storeFail(c, err)
		return
	}
	// A change may narrow operators' reach: their revocations are new.
	s.revoked.notify()
	s.log.Info("device labels changed", "device", dev.Name, "labels", registry.FormatLabels(dev.Labels))
	c.JSON(http.StatusOK, dev.Wire())
}

// parseSelectorQuery reads ?selector= (repeatable, OR'ed).
func parseSelectorQuery(c *gin.Context) ([]registry.Selector, bool) {
	raw := c.QueryArray("selector")
	sels, err := registry.ParseSelectors(raw)
	if err != nil {
		fail(c, http.StatusBadRequest, err.Error())
		return nil, false
	}
	return sels, true
}

// accessOffline are the events that say a device's tunnel went away, the
// newest of which says since when it is offline.
var accessOffline = []string{"disconnect", "reap", "kill"}

// handleAccess answers an operator's signed request for a device's
// forward: which slave holds its tunnel, how to reach that slave's sshd
// and as which user. The signature is checked before anything else is
// looked up, so a stranger learns nothing; an operator learns nothing of
// the devices outside its allow list (unknown and not allowed answer
// alike).
func (s *Server) handleAccess(c *gin.Context) {
	now := s.now()
	ctx := c.Request.Context()
	if s.access != nil {
		if ok, wait := s.access.allow(remoteIP(c), now); !ok {
			secs := int((wait + time.Second - 1) / time.Second)
			s.metrics.AccessDenied(metrics.AccessRateLimited)
			c.Header("Retry-After", strconv.Itoa(secs))
			fail(c, http.StatusTooManyRequests, fmt.Sprintf("too many access requests from this address; retry in %d s", secs))
			return
		}
	}
	var req wire.AccessRequest
	if berr := decodeJSON(c, MaxBody, &req); berr != nil {
		fail(c, berr.status, berr.msg)
		return
	}
	if err := registry.ValidateDeviceName(req.Device); err != nil {
		fail(c, http.StatusBadRequest, "device: "+err.Error())
		return
	}
	forward := req.Forward
	if forward == "" {
		forward = registry.DefaultForward().Name
	}
	if _, err := registry.ParseForwardSpec(forward + "=localhost:1"); err != nil {
		fail(c, http.StatusBadRequest, fmt.Sprintf("forward must be a forward's name (a-z 0-9 _ -), got %q", trunc(forward)))
		return
	}
	key, ok := requiredKey(c, req.PublicKey)
	if !ok {
		return
	}
	sg := signedFields{master: req.Master, timestamp: req.Timestamp, nonce: req.Nonce, signature: req.Signature}
	if err := s.proof.verify(sg, wire.AccessNamespace, wire.AccessStatement(req), key, now, "your"); err != nil {
		pe := err.(*proofError)
		if pe.status == http.StatusForbidden {
			s.denyOperator(ctx, "access", "", "", "", pe.reason, metrics.AccessBadSignature)
		}
		fail(c, pe.status, pe.msg)
		return
	}
	// The key's holder has proven it: from here on the answers may say
	// what is wrong, about this operator and its own devices.
	fp := registry.Fingerprint(key)
	op, err := s.store.OperatorByFingerprint(ctx, fp)
	if errors.Is(err, registry.ErrNotFound) {
		s.denyOperator(ctx, "access", "", "", "", "key "+fp+" is no operator's", metrics.AccessUnknownKey)
		fail(c, http.StatusForbidden, "key "+fp+" is not an operator's: ask an admin to enrol it (mas4h operator add NAME --key FILE)")
		return
	}
	if err != nil {
		s.internal(c, err)
		return
	}
	if op.Status != registry.StatusActive {
		s.denyOperator(ctx, "access", op.Name, "", req.Device, "operator "+op.Name+" is "+op.Status, metrics.AccessRevoked)
		fail(c, http.StatusForbidden, fmt.Sprintf("operator %s is %s", op.Name, op.Status))
		return
	}
	notYours := fmt.Sprintf("operator %s may reach no device named %s", op.Name, req.Device)
	dev, err := s.store.Device(ctx, req.Device)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		s.denyOperator(ctx, "access", op.Name, "", req.Device, "no device "+req.Device, metrics.AccessNotAllowed)
		fail(c, http.StatusNotFound, notYours)
		return
	case err != nil:
		s.internal(c, err)
		return
	}
	if !registry.OperatorMayReach(op, dev) {
		s.denyOperator(ctx, "access", op.Name, "", dev.Name, fmt.Sprintf("device %s (%s) is not on the allow list %v", dev.Name, dev.Status, op.Allow), metrics.AccessNotAllowed)
		fail(c, http.StatusNotFound, notYours)
		return
	}
	var fw *registry.Forward
	for i := range dev.Forwards {
		if dev.Forwards[i].Name == forward {
			fw = &dev.Forwards[i]
		}
	}
	if fw == nil {
		have := make([]string, len(dev.Forwards))
		for i, f := range dev.Forwards {
			have[i] = f.Name
		}
		fail(c, http.StatusNotFound, fmt.Sprintf("device %s has no forward %s (it has: %s)", dev.Name, forward, strings.Join(have, ", ")))
		return
	}
	at, ok := s.live.Reach(dev.Name, dev.LastSlave)
	if !ok {
		msg := fmt.Sprintf("device %s is offline", dev.Name)
		last, err := s.store.LastDeviceEvent(ctx, dev.Name, accessOffline)
		switch {
		case err == nil:
			msg += fmt.Sprintf(" since %s (last on slave %s)", last.At.Format(time.RFC3339), last.Slave)
		case errors.Is(err, registry.ErrNotFound) && dev.LastSlave != "":
			msg += fmt.Sprintf(" (last sent to slave %s)", dev.LastSlave)
		case errors.Is(err, registry.ErrNotFound):
			msg += " (never seen online)"
		default:
			s.internal(c, err)
			return
		}
		s.denyOperator(ctx, "access", op.Name, dev.LastSlave, dev.Name, msg, metrics.AccessOffline)
		fail(c, http.StatusConflict, msg)
		return
	}
	if at.user == "" {
		// Online, but on a slave that says of no operator user (an older
		// slave, or one run without): not a refusal of the operator.
		fail(c, http.StatusServiceUnavailable, fmt.Sprintf("device %s is on slave %s, which takes no operators (it reports no operator user)", dev.Name, at.slave))
		return
	}
	s.log.Debug("access granted", "operator", op.Name, "device", dev.Name, "forward", forward, "slave", at.slave)
	c.JSON(http.StatusOK, wire.Access{
		Operator: op.Name, Device: dev.Name, Forward: forward, Slave: at.slave, Host: at.host, Port: at.port,
		User: at.user, HostKeys: at.hostKeys, RemotePort: fw.RemotePort,
	})
}

// validateOperator answers POST /validate with role "operator": a slave
// asks what a key that logged in as its operator user may open. Unknown
// keys (a device's included) and revoked operators get the same 403 as
// every refused key.
func (s *Server) validateOperator(c *gin.Context, req wire.ValidateRequest) {
	ctx := c.Request.Context()
	key, fp, ok := validateKeyField(c, req)
	if !ok {
		return
	}
	if key != nil {
		fp = registry.Fingerprint(key)
	}
	op, open, err := s.store.OperatorAccess(ctx, fp)
	switch {
	case errors.Is(err, registry.ErrNotFound):
		s.denyOperator(ctx, "validation", "", req.Slave, "", "key "+fp+" is no operator's", metrics.AccessUnknownKey)
		fail(c, http.StatusForbidden, notAccepted)
		return
	case errors.Is(err, registry.ErrRevoked):
		s.denyOperator(ctx, "validation", op.Name, req.Slave, "", "operator "+op.Name+" is "+op.Status, metrics.AccessRevoked)
		fail(c, http.StatusForbidden, notAccepted)
		return
	case err != nil:
		s.internal(c, err)
		return
	}
	c.JSON(http.StatusOK, wire.OperatorValidation{
		Operator: op.Name, Fingerprint: op.Fingerprint, PublicKey: op.PublicKey, Open: open,
		TTLSeconds: int(s.cfg.CacheTTL / time.Second),
	})
}

// operatorKey reports whether key is an operator's (and whose), for
// refusing it as a device's.
func (s *Server) operatorKey(ctx context.Context, key ssh.PublicKey) (string, bool, error) {
	op, err := s.store.OperatorByFingerprint(ctx, registry.Fingerprint(key))
	if errors.Is(err, registry.ErrNotFound) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return op.Name, true, nil
}
