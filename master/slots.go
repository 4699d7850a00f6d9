package master

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/validator"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/names"
	"github.com/mas4h/mas4h/registry"
)

// notAccepted is what devices hear for unknown and revoked keys alike: a
// stranger learns nothing about which keys exist.
const notAccepted = "key not accepted"

// denial is a refused key, with the reason kept for the event log only.
type denial struct {
	device string // the device's name when the key is enrolled
	reason string
}

func (d *denial) Error() string { return d.reason }

// admit decides whether key may connect and returns its device, enrolling
// it when the validator vouches for a key the registry does not know. A
// device revoked in the registry stays refused whatever the validator says.
// Refusals are *denial; other errors are the master's own trouble.
func (s *Server) admit(ctx context.Context, key ssh.PublicKey) (registry.Device, error) {
	fp := registry.Fingerprint(key)
	dev, err := s.store.DeviceByFingerprint(ctx, fp)
	known := err == nil
	if err != nil && !errors.Is(err, registry.ErrNotFound) {
		return registry.Device{}, err
	}
	if known && dev.Status != registry.StatusActive {
		return registry.Device{}, &denial{dev.Name, fmt.Sprintf("device %s is %s", dev.Name, dev.Status)}
	}
	if !known {
		// An operator's key is never a device's, whatever a validator
		// says: it would not be enrolled (one key, one identity), and it
		// must not open a tunnel either.
		name, isOp, err := s.operatorKey(ctx, key)
		if err != nil {
			return registry.Device{}, err
		}
		if isOp {
			return registry.Device{}, &denial{"", fmt.Sprintf("key %s is operator %s's, not a device's", fp, name)}
		}
	}
	v := s.cfg.Validator
	if v == nil {
		if !known {
			return registry.Device{}, &denial{"", "key " + fp + " is not enrolled"}
		}
		return dev, nil
	}
	deviceKey, _, err := s.validate(ctx, v, key, known)
	if err != nil {
		if errors.Is(err, validator.ErrDenied) {
			return registry.Device{}, &denial{dev.Name, fmt.Sprintf("key %s: %v", fp, err)}
		}
		return registry.Device{}, err
	}
	if known {
		return dev, nil
	}
	name, err := validator.DeviceName(deviceKey)
	if err != nil {
		return registry.Device{}, &denial{"", fmt.Sprintf("key %s accepted by the %s, but %v", fp, v, err)}
	}
	dev, _, err = s.store.EnrolDevice(ctx, name, key, nil, nil, s.cfg.PortRange, "auto-enrolled by "+v.String())
	switch {
	case err == nil:
		s.log.Info("device auto-enrolled", "device", name, "fingerprint", fp, "validator", v.String())
		return dev, nil
	case errors.Is(err, registry.ErrDuplicateKey):
		// Enrolled by a concurrent request for the same key.
		return s.store.DeviceByFingerprint(ctx, fp)
	case errors.Is(err, registry.ErrExists):
		return registry.Device{}, &denial{"", fmt.Sprintf("key %s accepted by the %s as %q, but device %s already has another key", fp, v, deviceKey, name)}
	case errors.Is(err, registry.ErrRangeFull):
		s.log.Error("cannot auto-enrol: port range full", "device", name, "err", err)
		return registry.Device{}, &denial{"", fmt.Sprintf("key %s accepted by the %s, but enrolling it failed: %v", fp, v, err)}
	default:
		return registry.Device{}, err
	}
}

// slotFormat reads ?format=: json (the default) or env.
func slotFormat(c *gin.Context) (env bool, ok bool) {
	switch f := c.Query("format"); f {
	case "", "json":
		return false, true
	case "env":
		return true, true
	default:
		fail(c, http.StatusBadRequest, fmt.Sprintf("format must be json or env, not %q", trunc(f)))
		return false, false
	}
}

func (s *Server) handleSlot(c *gin.Context) {
	env, ok := slotFormat(c)
	if !ok {
		return
	}
	source := remoteIP(c)
	if s.limiter != nil {
		if ok, wait := s.limiter.allow(source, s.now()); !ok {
			secs := int((wait + time.Second - 1) / time.Second)
			c.Header("Retry-After", strconv.Itoa(secs))
			slotFail(c, env, http.StatusTooManyRequests, fmt.Sprintf("too many slot requests from this address; retry in %d s", secs), secs)
			return
		}
	}
	var req wire.SlotRequest
	if berr := decodeJSON(c, MaxBody, &req); berr != nil {
		slotFail(c, env, berr.status, berr.msg, 0)
		return
	}
	if strings.TrimSpace(req.PublicKey) == "" {
		slotFail(c, env, http.StatusBadRequest, "public_key is required", 0)
		return
	}
	key, err := registry.ParsePublicKey([]byte(req.PublicKey))
	if err != nil {
		slotFail(c, env, http.StatusBadRequest, "public_key: "+err.Error(), 0)
		return
	}
	ctx := c.Request.Context()
	now := s.now()
	// The proof is checked before the registry is asked, so that a request
	// without the private key takes the same path, and gets the same
	// answer, whether the key is enrolled or not.
	unsigned, err := s.proof.check(req, key, now)
	if err != nil {
		pe := err.(*proofError)
		if pe.status == http.StatusForbidden {
			s.deny(ctx, "", &denial{"", pe.reason}, "slot")
		}
		slotFail(c, env, pe.status, pe.msg, 0)
		return
	}
	dev, err := s.admit(ctx, key)
	if err != nil {
		var d *denial
		if errors.As(err, &d) {
			s.deny(ctx, "", d, "slot")
			slotFail(c, env, http.StatusForbidden, notAccepted, 0)
			return
		}
		s.log.Error("slot request failed", "err", err)
		if registry.Unwritable(err) {
			// The device cannot be looked up now (the database does not
			// answer): a 503 sends it to another master, or back later.
			s.storeFailed(err)
			c.Header("Retry-After", strconv.Itoa(unavailableRetry))
			slotFail(c, env, http.StatusServiceUnavailable, "the registry is out of reach; retry in a few seconds", unavailableRetry)
			return
		}
		slotFail(c, env, http.StatusInternalServerError, "internal error (see the master's log)", 0)
		return
	}
	slot, ok := s.live.Pick(dev)
	if !ok {
		// Jittered so that a fleet that lost its slaves does not come back
		// in lockstep.
		secs := 5 + rand.IntN(11)
		c.Header("Retry-After", strconv.Itoa(secs))
		s.log.Warn("no live slave with room for a slot", "device", dev.Name)
		slotFail(c, env, http.StatusServiceUnavailable, fmt.Sprintf("no live slave with room; retry in %d s", secs), secs)
		return
	}
	// A grant is written (the device's last slave, and a slot event) when
	// the device moves, or asks after a quiet interval; a device asking
	// again for the same slave is counted into the interval's summary row.
	moved := slot.Slave != dev.LastSlave
	if s.slotEvents.granted(dev.Name, slot.Slave, moved, now) {
		err := s.recordSlot(ctx, dev.Name, slot.Slave)
		if registry.Unwritable(err) {
			// The grant needs no write to be good: the device gets its
			// slot; only its record (last slave, slot event) is lost.
			s.storeFailed(err)
			err = nil
		}
		if err != nil {
			s.live.Unpick(dev.Name, slot.Slave)
			s.log.Error("recording slot", "device", dev.Name, "slave", slot.Slave, "err", err)
			slotFail(c, env, http.StatusInternalServerError, "internal error (see the master's log)", 0)
			return
		}
	}
	if unsigned {
		slot = unsignedSlot(slot)
	}
	s.log.Debug("slot granted", "device", dev.Name, "slave", slot.Slave, "unsigned", unsigned)
	if env {
		writeEnv(c, http.StatusOK, slotEnv(slot))
		return
	}
	c.JSON(http.StatusOK, slot)
}

// unsignedSlot is what a request without proof of possession gets (the
// master allows them for dropbear-only fleets): enough to open the tunnel
// to loopback targets, which say nothing about the device's network, and
// not the device's name or its forwards to other hosts. Whoever knows the
// public key learns the slave, its port and the loopback forwards' leased
// ports: that is the price of the flag.
func unsignedSlot(s wire.Slot) wire.Slot {
	s.Device = ""
	fs := []wire.Forward{}
	for _, f := range s.Forwards {
		if loopbackTarget(f.Target) {
			fs = append(fs, f)
		}
	}
	s.Forwards = fs
	return s
}

func loopbackTarget(target string) bool {
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.Unmap().IsLoopback()
}

// slotFail answers an error in the format the client asked for.
func slotFail(c *gin.Context, env bool, status int, msg string, retryAfter int) {
	if !env {
		fail(c, status, msg)
		return
	}
	pairs := [][2]string{{"MAS4H_ERROR", msg}}
	if retryAfter > 0 {
		pairs = append(pairs, [2]string{"MAS4H_RETRY_AFTER", strconv.Itoa(retryAfter)})
	}
	writeEnv(c, status, pairs)
	c.Abort()
}

// slotEnv is a slot as shell variables for POST /slots?format=env:
//
//	MAS4H_DEVICE, MAS4H_SLAVE, MAS4H_HOST, MAS4H_PORT, MAS4H_USER,
//	MAS4H_HOST_KEY_COUNT, MAS4H_HOST_KEY_1 ... _N ("type base64"),
//	MAS4H_FORWARDS ("REMOTE_PORT:TARGET" pairs, space-separated,
//	e.g. "20000:localhost:22 20001:127.0.0.1:80").
//
// Errors come as MAS4H_ERROR (and MAS4H_RETRY_AFTER, seconds, on 429 and
// 503) with the same status codes as JSON.
func slotEnv(s wire.Slot) [][2]string {
	pairs := [][2]string{
		{"MAS4H_DEVICE", s.Device},
		{"MAS4H_SLAVE", s.Slave},
		{"MAS4H_HOST", s.Host},
		{"MAS4H_PORT", strconv.Itoa(s.Port)},
		{"MAS4H_USER", s.User},
		{"MAS4H_HOST_KEY_COUNT", strconv.Itoa(len(s.HostKeys))},
	}
	for i, k := range s.HostKeys {
		pairs = append(pairs, [2]string{"MAS4H_HOST_KEY_" + strconv.Itoa(i+1), k})
	}
	fw := make([]string, len(s.Forwards))
	for i, f := range s.Forwards {
		fw[i] = strconv.Itoa(f.RemotePort) + ":" + f.Target
	}
	pairs = append(pairs, [2]string{"MAS4H_FORWARDS", strings.Join(fw, " ")})
	return pairs
}

// writeEnv writes KEY='value' lines a POSIX shell can source.
func writeEnv(c *gin.Context, status int, pairs [][2]string) {
	var b strings.Builder
	for _, p := range pairs {
		b.WriteString(p[0])
		b.WriteByte('=')
		b.WriteString(shQuote(p[1]))
		b.WriteByte('\n')
	}
	c.Data(status, "text/plain; charset=utf-8", []byte(b.String()))
}

// shQuote single-quotes s for sh: inside single quotes nothing is special
// but the quote itself, written as '\”.
func shQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func (s *Server) handleValidate(c *gin.Context) {
	var req wire.ValidateRequest
	if berr := decodeJSON(c, MaxBody, &req); berr != nil {
		fail(c, berr.status, berr.msg)
		return
	}
	if req.Slave != "" {
		if err := names.Slave(req.Slave); err != nil {
			fail(c, http.StatusBadRequest, "slave: "+err.Error())
			return
		}
	}
	if !s.validatesFor(c, &req.Slave) {
		return
	}
	switch req.Role {
	case "", "device":
	case "operator":
		s.validateOperator(c, req)
		return
	default:
		fail(c, http.StatusBadRequest, fmt.Sprintf("role must be device or operator, got %q", trunc(req.Role)))
		return
	}
	ctx := c.Request.Context()
	key, _, ok := validateKeyField(c, req)
	if !ok {
		return
	}
	if key == nil {
		// Only an enrolled key can be named by fingerprint; a validator
		// then judges the stored key.
		dev, err := s.store.DeviceByFingerprint(ctx, req.Fingerprint)
		if errors.Is(err, registry.ErrNotFound) {
			s.deny(ctx, req.Slave, &denial{"", "key " + req.Fingerprint + " is not enrolled"}, "validation")
			fail(c, http.StatusForbidden, notAccepted)
			return
		}
		if err != nil {
			s.internal(c, err)
			return
		}
		k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(dev.PublicKey))
		if err != nil {
			s.internal(c, fmt.Errorf("stored key of device %s: %w", dev.Name, err))
			return
		}
		key = k
	}
	dev, err := s.admit(ctx, key)
	if err != nil {
		var d *denial
		if errors.As(err, &d) {
			s.deny(ctx, req.Slave, d, "validation")
			fail(c, http.StatusForbidden, notAccepted)
			return
		}
		s.internal(c, err)
		return
	}
	fs := make([]wire.Forward, len(dev.Forwards))
	for i, f := range dev.Forwards {
		fs[i] = f.Wire()
	}
	c.JSON(http.StatusOK, wire.Validation{
		Device: dev.Name, Fingerprint: dev.Fingerprint, PublicKey: dev.PublicKey, Status: dev.Status,
		Forwards: fs, TTLSeconds: int(s.cfg.CacheTTL / time.Second),
	})
}

// validateKeyField reads the key of a POST /validate: exactly one of
// public_key (parsed: key) or fingerprint (checked: fp). ok is false when
// the request was answered with a 400.
func validateKeyField(c *gin.Context, req wire.ValidateRequest) (key ssh.PublicKey, fp string, ok bool) {
	switch {
	case req.PublicKey != "" && req.Fingerprint != "":
		fail(c, http.StatusBadRequest, "give public_key or fingerprint, not both")
	case req.PublicKey != "":
		k, err := registry.ParsePublicKey([]byte(req.PublicKey))
		if err != nil {
			fail(c, http.StatusBadRequest, "public_key: "+err.Error())
			return nil, "", false
		}
		return k, "", true
	case req.Fingerprint != "":
		if !strings.HasPrefix(req.Fingerprint, "SHA256:") || len(req.Fingerprint) > 100 {
			fail(c, http.StatusBadRequest, "fingerprint must be SHA256:...")
			return nil, "", false
		}
		return nil, req.Fingerprint, true
	default:
		fail(c, http.StatusBadRequest, "public_key or fingerprint is required")
	}
	return nil, "", false
}
