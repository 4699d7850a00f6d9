package master

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/gin-gonic/gin"

	"github.com/mas4h/mas4h/registry"
)

// Dashboard sessions live in the registry: the cookie holds a random
// secret, the registry its SHA-256 with an expiry, the CSRF token of its
// forms, and a name of the admin token it was opened with. Logging out
// deletes the row, so a copied cookie is worth nothing afterwards; a new
// admin token ends every session (their binding no longer matches); every
// master on the registry knows every session.

// sessionPrefix versions the cookie's format.
const sessionPrefix = "v2."

// dashGuard is what the dashboard's forms need besides the store: the
// login backoff, the origin check and the admin token's name.
type dashGuard struct {
	logins  *loginThrottle
	origins *http.CrossOriginProtection
	binding string
}

func newDashGuard(adminToken string) *dashGuard {
	b := sha256.Sum256([]byte("mas4h dashboard session binding\x00" + adminToken))
	return &dashGuard{logins: newLoginThrottle(), origins: http.NewCrossOriginProtection(), binding: hex.EncodeToString(b[:16])}
}

func randomToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("reading random bytes: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

func sessionID(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// openSession stores a new session and returns the cookie's value.
func (s *Server) openSession(ctx context.Context) (string, error) {
	secret, err := randomToken()
	if err != nil {
		return "", err
	}
	csrf, err := randomToken()
	if err != nil {
		return "", err
	}
	now := s.now().UTC()
	err = s.store.AddSession(ctx, registry.Session{ID: sessionID(secret), Binding: s.dash.binding, CSRF: csrf,
		CreatedAt: now, ExpiresAt: now.Add(sessionTTL)})
	if err != nil {
		return "", err
	}
	return sessionPrefix + secret, nil
}

// session returns the request's session when its cookie names one that is
// stored, unexpired and opened with the current admin token.
func (s *Server) session(c *gin.Context) (registry.Session, bool) {
	v, err := c.Cookie(sessionCookie)
	if err != nil || !strings.HasPrefix(v, sessionPrefix) || len(v) > 128 {
		return registry.Session{}, false
	}
	sess, err := s.store.Session(c.Request.Context(), sessionID(strings.TrimPrefix(v, sessionPrefix)))
	if err != nil {
		if !errors.Is(err, registry.ErrNotFound) {
			s.log.Error("reading dashboard session", "err", err)
		}
		return registry.Session{}, false
	}
	if !s.now().Before(sess.ExpiresAt) || subtle.ConstantTimeCompare([]byte(sess.Binding), []byte(s.dash.binding)) != 1 {
		return registry.Session{}, false
	}
	return sess, true
}

// sameOrigin refuses a dashboard POST that a page of another origin could
// have sent: the browser's Sec-Fetch-Site must say same-origin, or its
// Origin must name this master (net/http's CrossOriginProtection), and a
// POST that carries neither header came from no browser, which the
// dashboard's forms are for. SameSite=Strict does not cover this: another
// port of the same host is the same site.
func (s *Server) sameOrigin(c *gin.Context) {
	r := c.Request
	err := s.dash.origins.Check(r)
	if err == nil && r.Header.Get("Sec-Fetch-Site") == "" && r.Header.Get("Origin") == "" {
		err = errors.New("neither Sec-Fetch-Site nor Origin")
	}
	if err != nil {
		s.log.Warn("dashboard form refused: not from the dashboard's origin", "path", r.URL.Path, "remote", remoteIP(c),
			"origin", trunc(r.Header.Get("Origin")), "sec_fetch_site", trunc(r.Header.Get("Sec-Fetch-Site")), "err", err)
		c.Header("Cache-Control", "no-store")
		c.Data(http.StatusForbidden, "text/plain; charset=utf-8", []byte("403 forbidden: this form must be sent from the master's own dashboard page\n"))
		c.Abort()
	}
}

// csrfOK checks the form's CSRF token against the session's.
func csrfOK(sess registry.Session, form string) bool {
	return form != "" && subtle.ConstantTimeCompare([]byte(form), []byte(sess.CSRF)) == 1
}
