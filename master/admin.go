package master

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/gin-gonic/gin"
	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

const maxEventLimit = 10000

func (s *Server) handleStatus(c *gin.Context) {
	ctx := c.Request.Context()
	slaves, err := s.store.Slaves(ctx)
	if err != nil {
		s.internal(c, err)
		return
	}
	total, active, revoked, err := s.store.DeviceCounts(ctx)
	if err != nil {
		s.internal(c, err)
		return
	}
	online, err := s.store.OnlineDevices(ctx)
	if err != nil {
		s.internal(c, err)
		return
	}
	alive := s.live.Alive()
	st := wire.Status{Slaves: make([]wire.SlaveStatus, len(slaves)),
		Devices: wire.DeviceCounts{Total: total, Active: active, Revoked: revoked, Online: online}}
	for i, sl := range slaves {
		load := 0.0
		if sl.Capacity > 0 {
			load = float64(sl.Tunnels) / float64(sl.Capacity)
		}
		st.Slaves[i] = wire.SlaveStatus{
			Name: sl.Name, Host: sl.Host, Port: sl.Port, Alive: alive[sl.Name], Tunnels: sl.Tunnels,
			Capacity: sl.Capacity, Load: load, CPU: sl.CPU, MemUsed: sl.Mem, LastSeen: sl.LastSeen,
		}
	}
	c.JSON(http.StatusOK, st)
}

// handleListDevices lists devices, those a selector picks with
// ?selector=SEL (repeatable, OR'ed).
func (s *Server) handleListDevices(c *gin.Context) {
	sels, ok := parseSelectorQuery(c)
	if !ok {
		return
	}
	devs, err := s.store.DevicesMatching(c.Request.Context(), sels)
	if err != nil {
		s.internal(c, err)
		return
	}
	out := make([]wire.Device, len(devs))
	for i, d := range devs {
		out[i] = d.Wire()
	}
	c.JSON(http.StatusOK, out)
}

func (s *Server) handleAddDevice(c *gin.Context) {
	var req wire.AddDeviceRequest
	if berr := decodeJSON(c, MaxBody, &req); berr != nil {
		fail(c, berr.status, berr.msg)
		return
	}
	if err := registry.ValidateDeviceName(req.Name); err != nil {
		fail(c, http.StatusBadRequest, "name: "+err.Error())
		return
	}
	key, ok := requiredKey(c, req.PublicKey)
	if !ok {
		return
	}
	specs := make([]registry.ForwardSpec, 0, len(req.Forwards))
	for _, f := range req.Forwards {
		spec, err := registry.ParseForwardSpec(f)
		if err != nil {
			fail(c, http.StatusBadRequest, err.Error())
			return
		}
		specs = append(specs, spec)
	}
	dev, created, err := s.store.EnrolDevice(c.Request.Context(), req.Name, key, specs, req.Labels, s.cfg.PortRange, "")
	if err != nil {
		s.storeFail(c, err)
		return
	}
	if !created { // a retry whose first answer was lost: the same device
		c.JSON(http.StatusOK, dev.Wire())
		return
	}
	s.log.Info("device enrolled", "device", dev.Name, "fingerprint", dev.Fingerprint)
	c.JSON(http.StatusCreated, dev.Wire())
}

func (s *Server) handleGetDevice(c *gin.Context) {
	dev, err := s.store.Device(c.Request.Context(), c.Param("name"))
	if err != nil {
		s.storeFail(c, err)
		return
	}
	c.JSON(http.StatusOK, dev.Wire())
}

func (s *Server) handleRevokeDevice(c *gin.Context) {
	dev, err := s.store.Revoke(c.Request.Context(), c.Param("name"))
	if err != nil {
		s.storeFail(c, err)
		return
	}
	s.revoked.notify()
	s.log.Info("device revoked", "device", dev.Name)
	c.JSON(http.StatusOK, dev.Wire())
}

func (s *Server) handleRemoveDevice(c *gin.Context) {
	name := c.Param("name")
	if err := s.store.Remove(c.Request.Context(), name); err != nil {
		s.storeFail(c, err)
		return
	}
	s.revoked.notify()
	s.log.Info("device removed", "device", name)
	c.JSON(http.StatusOK, wire.Removed{Removed: name})
}

func (s *Server) handleTunnels(c *gin.Context) {
	ts, err := s.store.LiveTunnels(c.Request.Context())
	if err != nil {
		s.internal(c, err)
		return
	}
	out := make([]wire.Tunnel, len(ts))
	for i, t := range ts {
		out[i] = t.Wire()
	}
	c.JSON(http.StatusOK, out)
}

// handleEvents lists events oldest first: ?device=NAME&slave=NAME&operator=NAME
// &since=RFC3339&after_id=N&kind=a,b&limit=N (default 1000, at most 10000).
func (s *Server) handleEvents(c *gin.Context) {
	f := registry.EventFilter{Device: c.Query("device"), Slave: c.Query("slave"), Operator: c.Query("operator")}
	if v := c.Query("since"); v != "" {
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			fail(c, http.StatusBadRequest, fmt.Sprintf("since must be an RFC 3339 time like 2025-01-02T15:04:05Z, got %q", trunc(v)))
			return
		}
		f.Since = t
	}
	if v := c.Query("after_id"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			fail(c, http.StatusBadRequest, fmt.Sprintf("after_id must be a non-negative integer, got %q", trunc(v)))
			return
		}
		f.AfterID = n
	}
	if v := c.Query("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxEventLimit {
			fail(c, http.StatusBadRequest, fmt.Sprintf("limit must be 1-%d, got %q", maxEventLimit, trunc(v)))
			return
		}
		f.Limit = n
	}
	if v := c.Query("kind"); v != "" {
		if n := strings.Count(v, ",") + 1; n > registry.MaxEventKinds {
			fail(c, http.StatusBadRequest, fmt.Sprintf("kind: %d kinds, at most %d", n, registry.MaxEventKinds))
			return
		}
		f.Kinds = strings.Split(v, ",")
	}
	evs, err := s.store.Events(c.Request.Context(), f)
	if err != nil {
		s.storeFail(c, err)
		return
	}
	out := make([]wire.Event, len(evs))
	for i, e := range evs {
		out[i] = e.Wire()
	}
	c.JSON(http.StatusOK, out)
}

// requiredKey parses the public_key of an enrolment (a device's or an
// operator's); ok is false when the request was answered with a 400.
func requiredKey(c *gin.Context, publicKey string) (ssh.PublicKey, bool) {
	if strings.TrimSpace(publicKey) == "" {
		fail(c, http.StatusBadRequest, "public_key is required")
		return nil, false
	}
	key, err := registry.ParsePublicKey([]byte(publicKey))
	if err != nil {
		fail(c, http.StatusBadRequest, "public_key: "+err.Error())
		return nil, false
	}
	return key, true
}
