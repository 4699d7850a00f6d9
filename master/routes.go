package master

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/metrics"
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
	v1.GET("/healthz", func(c *gin.Context) { c.JSON(http.StatusOK, wire.Health{Status: "ok"}) })
	v1.POST("/slots", s.countSlots, s.handleSlot)

	slave := v1.Group("", s.auth(roleSlave))
	slave.POST("/slaves/:name/heartbeat", s.handleHeartbeat)
	slave.GET("/slaves/:name/revocations", s.handleRevocations)
	slave.POST("/validate", s.countValidations, s.handleValidate)

	admin := v1.Group("", s.auth(roleAdmin))
	admin.GET("/status", s.handleStatus)
	admin.GET("/devices", s.handleListDevices)
	admin.POST("/devices", s.handleAddDevice)
	admin.GET("/devices/:name", s.handleGetDevice)
	admin.DELETE("/devices/:name", s.handleRemoveDevice)
	admin.POST("/devices/:name/revoke", s.handleRevokeDevice)
	admin.GET("/tunnels", s.handleTunnels)
	admin.GET("/events", s.handleEvents)

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

// auth admits requests bearing want's token. A missing or unknown token is
// 401; the other role's token is 403, so a misconfigured slave or admin
// script learns which file it should have used.
func (s *Server) auth(want role) gin.HandlerFunc {
	return func(c *gin.Context) {
		h := c.GetHeader("Authorization")
		scheme, tok, ok := strings.Cut(h, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
			c.Header("WWW-Authenticate", `Bearer realm="mas4h"`)
			fail(c, http.StatusUnauthorized, "missing bearer token (Authorization: Bearer TOKEN)")
			return
		}
		// Comparing fixed-size digests keeps the time independent of both
		// the token's content and its length.
		sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		isAdmin := subtle.ConstantTimeCompare(sum[:], s.admin[:]) == 1
		isSlave := subtle.ConstantTimeCompare(sum[:], s.slave[:]) == 1
		var got role
		switch {
		case isAdmin:
			got = roleAdmin
		case isSlave:
			got = roleSlave
		default:
			c.Header("WWW-Authenticate", `Bearer realm="mas4h", error="invalid_token"`)
			fail(c, http.StatusUnauthorized, "invalid token")
			return
		}
		if got != want {
			fail(c, http.StatusForbidden, fmt.Sprintf("this endpoint needs the %s token, not the %s token", want, got))
			return
		}
		c.Next()
	}
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
