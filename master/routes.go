package master

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/mas4h/mas4h/master/token"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/metrics"
	"github.com/mas4h/mas4h/names"
	"github.com/mas4h/mas4h/registry"
)

type role int

const (
	roleAdmin role = iota + 1
	roleSlave
)

func (r role) String() string {
	if r == roleAdmin {
		return "admin"
	}
	return "slave"
}

func (s *Server) routes() *gin.Engine {
	// Release mode: no route table or debug warnings on stderr.
	gin.SetMode(gin.ReleaseMode)
	e := gin.New()
	e.HandleMethodNotAllowed = true
	e.RedirectTrailingSlash = false
	e.RedirectFixedPath = false
	// Rate limits and logs use the connection's address; no header is
	// trusted to say otherwise.
	e.ForwardedByClientIP = false
	_ = e.SetTrustedProxies(nil)
	e.Use(s.logRequests, gin.CustomRecoveryWithWriter(io.Discard, s.recovered))
	e.Use(s.tagSource)
	e.NoRoute(func(c *gin.Context) { fail(c, http.StatusNotFound, "no such endpoint: "+c.Request.URL.Path) })
	e.NoMethod(func(c *gin.Context) {
		fail(c, http.StatusMethodNotAllowed, fmt.Sprintf("method %s not allowed on %s", c.Request.Method, c.Request.URL.Path))
	})

	v1 := e.Group(wire.APIPrefix)
	v1.GET("/healthz", s.handleHealthz)
	v1.POST("/slots", s.countSlots, s.handleSlot)
	v1.POST("/access", s.handleAccess) // the operator's signature is the credential

	slave := v1.Group("", s.auth(roleSlave))
	slave.POST("/slaves/:name/heartbeat", s.selfOnly, s.handleHeartbeat)
	slave.GET("/slaves/:name/revocations", s.selfOnly, s.handleRevocations)
	slave.POST("/validate", s.countValidations, s.handleValidate)

	admin := v1.Group("", s.auth(roleAdmin))
	admin.GET("/status", s.handleStatus)
	admin.GET("/devices", s.handleListDevices)
	admin.POST("/devices", s.handleAddDevice)
	admin.GET("/devices/:name", s.handleGetDevice)
	admin.DELETE("/devices/:name", s.handleRemoveDevice)
	admin.POST("/devices/:name/revoke", s.handleRevokeDevice)
	admin.POST("/devices/:name/labels", s.handleSetLabels)
	admin.GET("/operators", s.handleListOperators)
	admin.POST("/operators", s.handleAddOperator)
	admin.GET("/operators/:name", s.handleGetOperator)
	admin.DELETE("/operators/:name", s.handleRemoveOperator)
	admin.POST("/operators/:name/revoke", s.handleRevokeOperator)
	admin.POST("/operators/:name/allow", s.handleAllowOperator)
	admin.POST("/operators/:name/deny", s.handleDenyOperator)
	admin.GET("/tunnels", s.handleTunnels)
	admin.GET("/events", s.handleEvents)
	admin.GET("/devices/:name/availability", s.handleAvailability)
	admin.GET("/history/fleet", s.handleFleetHistory)
	admin.GET("/slaves/:name/history", s.handleSlaveHistory)
	admin.GET("/slaves", s.handleListSlaves)
	admin.POST("/slaves", s.handleAddSlave)
	admin.DELETE("/slaves/:name", s.handleRemoveSlave)
	admin.POST("/slaves/:name/accept-key", s.handleAcceptSlaveKey)

	e.GET("/metrics", gin.WrapH(metrics.Handler(s.cfg.Metrics)))
	s.dashboardRoutes(e)
	return e
}

// logRequests logs every request once it is answered. Successful ones go
// at debug level: slaves heartbeat every few seconds and devices ask for
// slots all day.
func (s *Server) logRequests(c *gin.Context) {
	start := time.Now()
	c.Next()
	status := c.Writer.Status()
	lvl := slog.LevelDebug
	switch {
	case status >= 500:
		lvl = slog.LevelError
	case status >= 400:
		lvl = slog.LevelInfo
	}
	s.log.Log(c.Request.Context(), lvl, "request", "method", c.Request.Method, "path", c.Request.URL.Path,
		"status", status, "duration", time.Since(start), "remote", remoteIP(c))
}

func (s *Server) recovered(c *gin.Context, err any) {
	s.log.Error("handler panicked", "method", c.Request.Method, "path", c.Request.URL.Path, "panic", err)
	fail(c, http.StatusInternalServerError, "internal error")
}

// caller is who a request authenticated as: the admin, a slave by its own
// credential (slave set), or, behind --allow-shared-slave-token, the
// shared slave token of older installs (slave empty: any slave without a
// credential of its own).
type caller struct {
	role  role
	slave string
}

// callerKey is where auth leaves the caller in the gin context.
const callerKey = "mas4h.caller"

func callerOf(c *gin.Context) caller {
	v, _ := c.Get(callerKey)
	who, _ := v.(caller)
	return who
}

// auth admits requests bearing a credential of the role want. A missing
// or unknown credential is 401; one of the other role is 403, so a
// misconfigured slave or admin script learns which file it should have
// used. Which slave a slave's request may speak for is checked after, by
// speaksFor.
func (s *Server) auth(want role) gin.HandlerFunc {
	return func(c *gin.Context) {
		who, ok := s.authenticate(c)
		if !ok {
			return
		}
		if who.role != want {
			s.slaveAuth.Refused(metrics.SlaveAuthWrongRole)
			msg := "this endpoint needs the admin token, not a slave's credential"
			if want == roleSlave {
				msg = "this endpoint is a slave's: the admin token cannot heartbeat, validate or follow revocations (each slave uses its own credential)"
			}
			fail(c, http.StatusForbidden, msg)
			return
		}
		c.Set(callerKey, who)
		c.Next()
	}
}

// authenticate finds who the bearer token is, or answers 401.
func (s *Server) authenticate(c *gin.Context) (caller, bool) {
	h := c.GetHeader("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	tok = strings.TrimSpace(tok)
	if !ok || !strings.EqualFold(scheme, "Bearer") || tok == "" {
		s.slaveAuth.Refused(metrics.SlaveAuthInvalid)
		c.Header("WWW-Authenticate", `Bearer realm="mas4h"`)
		fail(c, http.StatusUnauthorized, "missing bearer token (Authorization: Bearer TOKEN)")
		return caller{}, false
	}
	// Comparing fixed-size digests keeps the time independent of both the
	// token's content and its length.
	sum := sha256.Sum256([]byte(tok))
	if subtle.ConstantTimeCompare(sum[:], s.admin[:]) == 1 {
		return caller{role: roleAdmin}, true
	}
	if s.sharedSlave && subtle.ConstantTimeCompare(sum[:], s.slave[:]) == 1 {
		s.slaveAuth.Shared()
		return caller{role: roleSlave}, true
	}
	// A slave's credential names its slave: its hash is found by that name
	// (not by the hash, whose index lookup would take time depending on
	// it) and compared in constant time.
	if name, secret, ok := token.ParseSlaveCredential(tok); ok {
		want, err := s.slaveCredentialHash(c.Request.Context(), name)
		if err != nil && !errors.Is(err, registry.ErrNotFound) {
			s.internal(c, err)
			return caller{}, false
		}
		got := registry.CredentialHash(secret)
		if err == nil && subtle.ConstantTimeCompare(got[:], want[:]) == 1 {
			return caller{role: roleSlave, slave: name}, true
		}
	}
	s.slaveAuth.Refused(metrics.SlaveAuthInvalid)
	c.Header("WWW-Authenticate", `Bearer realm="mas4h", error="invalid_token"`)
	msg := "invalid token"
	if !s.sharedSlave {
		msg += " (a slave needs its own credential, from 'mas4h slave add NAME' on the master; this master accepts no shared slave token)"
	}
	fail(c, http.StatusUnauthorized, msg)
	return caller{}, false
}

// slaveCredentialHash is slave name's credential hash from the store, or,
// while the store does not answer (PostgreSQL down or failing over), as
// this master last read it: a slave it knows stays heard, and dispatch
// goes on, as on a full disk. A credential can change only through the
// store, so nothing newer can exist meanwhile.
func (s *Server) slaveCredentialHash(ctx context.Context, name string) ([sha256.Size]byte, error) {
	h, err := s.store.SlaveCredentialHash(ctx, name)
	switch {
	case err == nil:
		s.credCache.Store(name, h)
	case errors.Is(err, registry.ErrNotFound):
		s.credCache.Delete(name)
	case registry.Unavailable(err):
		if v, ok := s.credCache.Load(name); ok {
			return v.([sha256.Size]byte), nil
		}
	}
	return h, err
}

// selfOnly admits a slave's request on /slaves/:name/... only when its
// caller may speak for that slave (speaksFor).
func (s *Server) selfOnly(c *gin.Context) {
	name := c.Param("name")
	// Checked before anything else, up to MaxHeartbeatBody of it, is read.
	if err := names.Slave(name); err != nil {
		fail(c, http.StatusBadRequest, err.Error())
		return
	}
	if !s.speaksFor(c, name) {
		return
	}
	c.Next()
}

// speaksFor reports whether the slave caller of c may speak for slave
// name, answering 403 (or 500) when not: a slave's credential speaks for
// that slave alone, and the shared token for every slave without a
// credential of its own, so that a slave moved to its own credential can
// no longer be impersonated with the shared one.
func (s *Server) speaksFor(c *gin.Context, name string) bool {
	who := callerOf(c)
	if who.slave != "" {
		if who.slave != name {
			s.slaveAuth.Refused(metrics.SlaveAuthOtherSlave)
			fail(c, http.StatusForbidden, fmt.Sprintf("this credential is slave %s's; it cannot speak for slave %s", who.slave, name))
			return false
		}
		return true
	}
	_, err := s.store.SlaveCredentialHash(c.Request.Context(), name)
	switch {
	case err == nil:
		s.slaveAuth.Refused(metrics.SlaveAuthOtherSlave)
		fail(c, http.StatusForbidden, fmt.Sprintf("slave %s has its own credential; the shared slave token cannot speak for it", name))
		return false
	case !errors.Is(err, registry.ErrNotFound):
		s.internal(c, err)
		return false
	}
	s.sharedUsers.note(name, func() {
		s.log.Warn("slave still uses the shared slave token; give it its own credential (mas4h slave add NAME --token-file-out FILE on the master, then --token-file FILE on the slave)",
			"slave", name, "remote", remoteIP(c))
	})
	return true
}

// sharedUsers remembers which slaves this master has seen using the shared
// token, to warn once per slave and to show in GET /slaves. Bounded: the
// shared token can claim any name.
type sharedUsers struct {
	mu    sync.Mutex
	names map[string]bool
}

const maxSharedUsers = 10000

// note records name, running first the first time it is seen.
func (u *sharedUsers) note(name string, first func()) {
	u.mu.Lock()
	seen := u.names[name]
	if !seen && len(u.names) < maxSharedUsers {
		if u.names == nil {
			u.names = map[string]bool{}
		}
		u.names[name] = true
	}
	u.mu.Unlock()
	if !seen {
		first()
	}
}

func (u *sharedUsers) has(name string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.names[name]
}

func (u *sharedUsers) forget(name string) {
	u.mu.Lock()
	delete(u.names, name)
	u.mu.Unlock()
}

// fail answers {"error": msg} with status and stops the handler chain.
func fail(c *gin.Context, status int, msg string) {
	c.AbortWithStatusJSON(status, wire.Error{Error: msg})
}

// storeFail maps a registry error to its status. Errors that are not the
// client's doing are logged and answered without detail.
func (s *Server) storeFail(c *gin.Context, err error) {
	switch {
	case errors.Is(err, registry.ErrNotFound):
		fail(c, http.StatusNotFound, err.Error())
	case errors.Is(err, registry.ErrExists), errors.Is(err, registry.ErrDuplicateKey):
		fail(c, http.StatusConflict, err.Error())
	case errors.Is(err, registry.ErrRangeFull):
		fail(c, http.StatusInsufficientStorage, err.Error())
	case errors.Is(err, registry.ErrInvalid):
		fail(c, http.StatusBadRequest, err.Error())
	default:
		s.internal(c, err)
	}
}

func (s *Server) internal(c *gin.Context, err error) {
	s.log.Error("request failed", "method", c.Request.Method, "path", c.Request.URL.Path, "err", err)
	if registry.Unwritable(err) {
		s.storeFailed(err)
		retry := unwritableRetry
		if registry.Unavailable(err) {
			retry = unavailableRetry
		}
		c.Header("Retry-After", strconv.Itoa(retry))
		fail(c, http.StatusServiceUnavailable, s.unwritableMessage(err))
		return
	}
	fail(c, http.StatusInternalServerError, "internal error (see the master's log)")
}

// bodyError is a request body the API refuses, with its status.
type bodyError struct {
	status int
	msg    string
}

func (e *bodyError) Error() string { return e.msg }

// decodeJSON reads exactly one JSON object of at most max bytes into v,
// refusing unknown fields and trailing data.
func decodeJSON(c *gin.Context, max int64, v any) *bodyError {
	tooBig := &bodyError{http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d KiB", max>>10)}
	if c.Request.ContentLength > max {
		return tooBig
	}
	body := http.MaxBytesReader(c.Writer, c.Request.Body, max)
	dec := json.NewDecoder(body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		var ute *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.As(err, &mbe):
			return tooBig
		case errors.Is(err, io.EOF):
			return &bodyError{http.StatusBadRequest, "empty request body; a JSON object is expected"}
		case errors.As(err, &ute):
			return &bodyError{http.StatusBadRequest, fmt.Sprintf("malformed JSON: field %q must be %s, not %s", ute.Field, ute.Type, ute.Value)}
		case errors.As(err, &se):
			return &bodyError{http.StatusBadRequest, fmt.Sprintf("malformed JSON at byte %d: %v", se.Offset, err)}
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return &bodyError{http.StatusBadRequest, "unknown field " + strings.TrimPrefix(err.Error(), "json: unknown field ")}
		default:
			return &bodyError{http.StatusBadRequest, "malformed JSON: " + err.Error()}
		}
	}
	var extra json.RawMessage
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return tooBig
		}
		return &bodyError{http.StatusBadRequest, "malformed JSON: data after the JSON object"}
	}
	return nil
}

// remoteIP is the connection's address, without port.
func remoteIP(c *gin.Context) string {
	host, _, err := net.SplitHostPort(c.Request.RemoteAddr)
	if err != nil {
		return c.Request.RemoteAddr
	}
	return host
}

// validatesFor checks the slave a validation request names (*slave, the
// body's optional "slave") against its caller, and fills it in from a
// slave's own credential when absent, so the event log names the slave
// that asked, not the one it claims to be.
func (s *Server) validatesFor(c *gin.Context, slave *string) bool {
	who := callerOf(c)
	if *slave == "" {
		*slave = who.slave
		if who.slave == "" {
			s.sharedUsers.note("", func() {
				s.log.Warn("a slave that does not say its name validates keys with the shared slave token", "remote", remoteIP(c))
			})
		}
		return true
	}
	return s.speaksFor(c, *slave)
}
