package master

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/templates"
)

// The dashboard is a few server-rendered pages for a browser: GET / (slaves,
// devices, latest events) and GET /ui/devices/NAME (one device and its
// history). They need the admin token, which the operator types once into a
// login form; the master answers with a session cookie (HttpOnly,
// SameSite=Strict, Secure over HTTPS) holding an expiry and an HMAC keyed
// by the admin token, never the token itself. This works without
// JavaScript, keeps the token out of URLs, logs and browser history, lets
// no script read the session, and every session ends when the admin token
// is rotated. A token in the URL fragment read by a script would need
// JavaScript on every page and put the token in reach of any script.
const (
	sessionCookie  = "mas4h_session"
	sessionTTL     = 12 * time.Hour
	dashRefresh    = 10 // seconds between automatic reloads
	dashMaxDevices = 500
	dashEvents     = 25
	deviceEvents   = 200
	maxLoginBody   = 4 << 10
)

// dashCSP allows nothing but the page's own inline styles and forms posting
// back to the master: no script, no frame, no outside resource.
const dashCSP = "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

var dashTemplates = sync.OnceValues(func() (map[string]*template.Template, error) {
	out := map[string]*template.Template{}
	for _, page := range []string{"dashboard.tmpl", "dashboard_device.tmpl", "dashboard_login.tmpl"} {
		t, err := templates.ParseHTML(nil, page, "dashboard_base.tmpl")
		if err != nil {
			return nil, err
		}
		out[page] = t
	}
	return out, nil
})

func (s *Server) dashboardRoutes(e *gin.Engine) {
	e.GET("/", s.handleOverview)
	e.POST("/login", s.handleLogin)
	e.POST("/logout", s.handleLogout)
	e.GET("/ui/devices/:name", s.handleDevicePage)
}

// sessionMAC signs a session's expiry with a key derived from the admin
// token.
func (s *Server) sessionMAC(expiry string) []byte {
	key := sha256.Sum256([]byte("mas4h dashboard session key\x00" + s.cfg.AdminToken))
	m := hmac.New(sha256.New, key[:])
	m.Write([]byte("v1." + expiry))
	return m.Sum(nil)
}

func (s *Server) newSession(now time.Time) string {
	exp := strconv.FormatInt(now.Add(sessionTTL).Unix(), 10)
	return "v1." + exp + "." + base64.RawURLEncoding.EncodeToString(s.sessionMAC(exp))
}

// validSession checks the session cookie: well-formed, signed, not expired.
func (s *Server) validSession(c *gin.Context) bool {
	v, err := c.Cookie(sessionCookie)
	if err != nil {
		return false
	}
	parts := strings.Split(v, ".")
	if len(parts) != 3 || parts[0] != "v1" {
		return false
	}
	exp, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || s.now().Unix() >= exp {
		return false
	}
	mac, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		return false
	}
	return hmac.Equal(mac, s.sessionMAC(parts[1]))
}

func (s *Server) setSessionCookie(c *gin.Context, value string, maxAge int) {
	http.SetCookie(c.Writer, &http.Cookie{
		Name: sessionCookie, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: c.Request.TLS != nil,
	})
}

// localPath accepts a redirect target only when it is a path on this
// master (no scheme, no host, no protocol-relative "//").
func localPath(p string) string {
	if p == "" || p[0] != '/' || strings.HasPrefix(p, "//") || strings.ContainsAny(p, "\\\r\n") {
		return "/"
	}
	if u, err := url.Parse(p); err != nil || u.Host != "" || u.Scheme != "" {
		return "/"
	}
	return p
}

type pageView struct {
	Title   string
	Refresh int // seconds; 0: no automatic reload
	Now     string
	Session bool // show the log-out button
}

type loginView struct {
	pageView
	Next  string
	Error string
}

func (s *Server) renderHTML(c *gin.Context, status int, page string, data any) {
	ts, err := dashTemplates()
	if err != nil {
		s.internal(c, err)
		return
	}
	var buf bytes.Buffer
	if err := ts[page].Execute(&buf, data); err != nil {
		s.internal(c, fmt.Errorf("rendering %s: %w", page, err))
		return
	}
	h := c.Writer.Header()
	h.Set("Content-Security-Policy", dashCSP)
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	c.Data(status, "text/html; charset=utf-8", buf.Bytes())
}

func (s *Server) page(title string, refresh int, session bool) pageView {
	return pageView{Title: title, Refresh: refresh, Now: s.now().UTC().Format("2006-01-02 15:04:05Z"), Session: session}
}

// requireSession answers the login form (401) when the request has no
// valid session, and reports whether the page may be served.
func (s *Server) requireSession(c *gin.Context) bool {
	if s.validSession(c) {
		return true
	}
	s.renderHTML(c, http.StatusUnauthorized, "dashboard_login.tmpl", loginView{
		pageView: s.page("mas4h — log in", 0, false), Next: localPath(c.Request.URL.RequestURI()),
	})
	return false
}

func (s *Server) handleLogin(c *gin.Context) {
	c.Request.Body = http.MaxBytesReader(c.Writer, c.Request.Body, maxLoginBody)
	if err := c.Request.ParseForm(); err != nil {
		s.renderHTML(c, http.StatusBadRequest, "dashboard_login.tmpl", loginView{
			pageView: s.page("mas4h — log in", 0, false), Next: "/", Error: "Malformed form.",
		})
		return
	}
	next := localPath(c.Request.PostForm.Get("next"))
	tok := strings.TrimSpace(c.Request.PostForm.Get("token"))
	sum := sha256.Sum256([]byte(tok))
	isAdmin := subtle.ConstantTimeCompare(sum[:], s.admin[:]) == 1
	isSlave := subtle.ConstantTimeCompare(sum[:], s.slave[:]) == 1
	if !isAdmin {
		msg := "Wrong token. Paste the contents of the master's admin token file (admin.token next to its registry)."
		if isSlave {
			msg = "That is the slave token; the dashboard needs the admin token."
		}
		s.log.Info("dashboard login refused", "remote", remoteIP(c))
		s.renderHTML(c, http.StatusUnauthorized, "dashboard_login.tmpl", loginView{
			pageView: s.page("mas4h — log in", 0, false), Next: next, Error: msg,
		})
		return
	}
	s.setSessionCookie(c, s.newSession(s.now()), int(sessionTTL/time.Second))
	s.log.Info("dashboard login", "remote", remoteIP(c))
	c.Redirect(http.StatusSeeOther, next)
}

func (s *Server) handleLogout(c *gin.Context) {
	s.setSessionCookie(c, "", -1)
	c.Redirect(http.StatusSeeOther, "/")
}

func (s *Server) handleOverview(c *gin.Context) {
	if !s.requireSession(c) {
		return
	}
	d, err := s.overviewData(c.Request.Context())
	if err != nil {
		s.internal(c, err)
		return
	}
	v := buildOverview(d, c.Query("q"), c.Query("show"), s.now())
	v.pageView = s.page("mas4h", dashRefresh, true)
	s.renderHTML(c, http.StatusOK, "dashboard.tmpl", v)
}

// overviewData reads what the overview shows from the store and the live
// view.
func (s *Server) overviewData(ctx context.Context) (overviewData, error) {
	var d overviewData
	var err error
	if d.Slaves, err = s.store.Slaves(ctx); err != nil {
		return d, err
	}
	d.Alive = s.live.Alive()
	if d.Devices, err = s.store.Devices(ctx); err != nil {
		return d, err
	}
	if d.Tunnels, err = s.store.LiveTunnels(ctx); err != nil {
		return d, err
	}
	if d.Events, err = s.latestEvents(ctx, "", dashEvents); err != nil {
		return d, err
	}
	return d, nil
}

func (s *Server) handleDevicePage(c *gin.Context) {
	if !s.requireSession(c) {
		return
	}
	ctx := c.Request.Context()
	name := c.Param("name")
	dev, err := s.store.Device(ctx, name)
	if errors.Is(err, registry.ErrNotFound) || errors.Is(err, registry.ErrInvalid) {
		c.String(http.StatusNotFound, "no device %q\n", name)
		return
	}
	if err != nil {
		s.internal(c, err)
		return
	}
	tunnels, err := s.store.LiveTunnels(ctx)
	if err != nil {
		s.internal(c, err)
		return
	}
	events, err := s.latestEvents(ctx, dev.Name, deviceEvents)
	if err != nil {
		s.internal(c, err)
		return
	}
	v := buildDeviceDetail(dev, tunnels, events, s.now())
	v.pageView = s.page(dev.Name+" — mas4h", dashRefresh, true)
	s.renderHTML(c, http.StatusOK, "dashboard_device.tmpl", v)
}

// latestEvents returns the newest n events (of device, or of all devices
// for ""), oldest first. The log only reads forwards, so it looks at
// windows of growing size before the newest id.
func (s *Server) latestEvents(ctx context.Context, device string, n int) ([]registry.Event, error) {
	last, err := s.store.LastEventID(ctx)
	if err != nil || last == 0 {
		return nil, err
	}
	for window := int64(n); ; window *= 8 {
		after := max(last-window, 0)
		evs, err := s.store.Events(ctx, registry.EventFilter{Device: device, AfterID: after, Limit: int(min(window, 1<<22))})
		if err != nil {
			return nil, err
		}
		if len(evs) >= n || after == 0 {
			if len(evs) > n {
				evs = evs[len(evs)-n:]
			}
			return evs, nil
		}
	}
}
