package master

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
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

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/templates"
)

// The dashboard is a few server-rendered pages for a browser: GET / (slaves,
// devices, latest events) and GET /ui/devices/NAME (one device and its
// history). They need the admin token, which the operator types once into a
// login form; the master answers with a session cookie (HttpOnly,
// SameSite=Strict, Secure over HTTPS) naming a session kept in the
// registry (dashboard_session.go), never the token itself. This works
// without JavaScript, keeps the token out of URLs, logs and browser
// history, and lets no script read the session; logging out ends it, and
// a new admin token ends them all. A token in the URL fragment read by a
// script would need JavaScript on every page and put the token in reach of
// any script. The login form backs off per source after a few failures
// (dashboard_login.go) and says the same for every wrong secret; every
// POST must come from the dashboard's own origin, and a session's forms
// carry its CSRF token.
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
		t, err := templates.ParseHTML(nil, page, "dashboard_base.tmpl", "dashboard_charts.tmpl")
		if err != nil {
			return nil, err
		}
		out[page] = t
	}
	return out, nil
})

func (s *Server) dashboardRoutes(e *gin.Engine) {
	e.GET("/", s.handleOverview)
	e.POST("/login", s.sameOrigin, s.handleLogin)
	e.POST("/logout", s.sameOrigin, s.handleLogout)
	e.GET("/ui/devices/:name", s.handleDevicePage)
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
	Session bool   // show the log-out button
	CSRF    string // the session's CSRF token, for its forms
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
	// same-origin, not no-referrer: with no-referrer browsers send
	// "Origin: null" on the page's own POSTs, which tells nothing.
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	c.Data(status, "text/html; charset=utf-8", buf.Bytes())
}

// page is a page's header; sess is the session it is shown in, nil for
// the login form.
func (s *Server) page(title string, refresh int, sess *registry.Session) pageView {
	v := pageView{Title: title, Refresh: refresh, Now: s.now().UTC().Format("2006-01-02 15:04:05Z")}
	if sess != nil {
		v.Session, v.CSRF = true, sess.CSRF
	}
	return v
}

// requireSession answers the login form (401) when the request has no
// valid session, and otherwise returns the session.
func (s *Server) requireSession(c *gin.Context) (*registry.Session, bool) {
	if sess, ok := s.session(c); ok {
		return &sess, true
	}
	s.loginForm(c, http.StatusUnauthorized, localPath(c.Request.URL.RequestURI()), "")
	return nil, false
}

func (s *Server) loginForm(c *gin.Context, status int, next, msg string) {
	s.renderHTML(c, status, "dashboard_login.tmpl", loginView{pageView: s.page("mas4h — log in", 0, nil), Next: next, Error: msg})
}

// wrongToken is the login form's one answer to every wrong secret (the
// slave token, an old admin token, anything): it must not tell them apart.
const wrongToken = "Wrong token. Paste the contents of the master's admin token file (admin.token next to its registry)."

func (s *Server) handleLogin(c *gin.Context) {
	src := sourceOf(c.Request.Context())
	if wait := s.dash.logins.wait(src, s.now()); wait > 0 {
		s.tooManyLogins(c, wait)
		return
	}
	c.Request.Body = http.MaxBytesReader(c.Writer, c.Request.Body, maxLoginBody)
	if err := c.Request.ParseForm(); err != nil {
		s.loginForm(c, http.StatusBadRequest, "/", "Malformed form.")
		return
	}
	next := localPath(c.Request.PostForm.Get("next"))
	tok := strings.TrimSpace(c.Request.PostForm.Get("token"))
	sum := sha256.Sum256([]byte(tok))
	if subtle.ConstantTimeCompare(sum[:], s.admin[:]) != 1 {
		wait := s.dash.logins.failed(src, s.now())
		s.log.Info("dashboard login refused", "remote", remoteIP(c), "wait", wait)
		if wait > 0 {
			c.Header("Retry-After", strconv.Itoa(retryAfter(wait)))
		}
		s.loginForm(c, http.StatusUnauthorized, next, wrongToken)
		return
	}
	cookie, err := s.openSession(c.Request.Context())
	if err != nil {
		s.internal(c, err)
		return
	}
	s.dash.logins.succeeded(src)
	s.setSessionCookie(c, cookie, int(sessionTTL/time.Second))
	s.log.Info("dashboard login", "remote", remoteIP(c))
	c.Redirect(http.StatusSeeOther, next)
}

// tooManyLogins answers a login tried while its source must wait.
func (s *Server) tooManyLogins(c *gin.Context, wait time.Duration) {
	secs := retryAfter(wait)
	c.Header("Retry-After", strconv.Itoa(secs))
	s.log.Info("dashboard login refused: backing off", "remote", remoteIP(c), "retry_after", secs)
	s.loginForm(c, http.StatusTooManyRequests, "/", fmt.Sprintf("Too many wrong tokens from your address: try again in %d s.", secs))
}

func retryAfter(d time.Duration) int { return int((d + time.Second - 1) / time.Second) }

// handleLogout ends the session named by the cookie, if the form carries
// its CSRF token, and clears the cookie.
func (s *Server) handleLogout(c *gin.Context) {
	if sess, ok := s.session(c); ok {
		c.Request.Body = http.MaxBytesReader(c.Writer, c.Request.Body, maxLoginBody)
		if err := c.Request.ParseForm(); err != nil || !csrfOK(sess, c.Request.PostForm.Get("csrf")) {
			s.log.Warn("dashboard logout refused: no or wrong CSRF token", "remote", remoteIP(c))
			c.Data(http.StatusForbidden, "text/plain; charset=utf-8", []byte("403 forbidden: log out with the button of the dashboard page\n"))
			return
		}
		if err := s.store.RemoveSession(c.Request.Context(), sess.ID); err != nil {
			s.internal(c, err)
			return
		}
		s.log.Info("dashboard logout", "remote", remoteIP(c))
	}
	s.setSessionCookie(c, "", -1)
	c.Redirect(http.StatusSeeOther, "/")
}

func (s *Server) handleOverview(c *gin.Context) {
	sess, ok := s.requireSession(c)
	if !ok {
		return
	}
	d, err := s.overviewData(c.Request.Context(), c.Query("q"), c.Query("show"))
	if err != nil {
		s.internal(c, err)
		return
	}
	v := buildOverview(d, c.Query("q"), c.Query("show"), s.now())
	if v.History, err = s.overviewHistory(c.Request.Context(), c.Query("window")); err != nil {
		s.internal(c, err)
		return
	}
	v.pageView = s.page("mas4h", dashRefresh, sess)
	s.renderHTML(c, http.StatusOK, "dashboard.tmpl", v)
}

// overviewData reads what the overview shows from the store and the live
// view: the fleet's counts (in SQL), the page of devices that query and
// show select, and only their tunnels.
func (s *Server) overviewData(ctx context.Context, query, show string) (overviewData, error) {
	var d overviewData
	var err error
	if d.Slaves, err = s.store.Slaves(ctx); err != nil {
		return d, err
	}
	d.Alive = s.live.Alive()
	if d.Counts, err = s.store.CountDevices(ctx); err != nil {
		return d, err
	}
	q := registry.DeviceQuery{NameContains: query, Show: showFilter(show), Limit: dashMaxDevices}
	if d.Devices, d.Matching, err = s.store.FindDevices(ctx, q); err != nil {
		return d, err
	}
	names := make([]string, len(d.Devices))
	for i, dev := range d.Devices {
		names[i] = dev.Name
	}
	if d.Tunnels, err = s.store.TunnelsOf(ctx, names); err != nil {
		return d, err
	}
	if d.Events, err = s.latestEvents(ctx, "", dashEvents); err != nil {
		return d, err
	}
	d.Operators = s.live.Operators()
	return d, nil
}

func (s *Server) handleDevicePage(c *gin.Context) {
	sess, ok := s.requireSession(c)
	if !ok {
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
	tunnels, err := s.store.DeviceTunnels(ctx, dev.Name)
	if err != nil {
		s.internal(c, err)
		return
	}
	events, err := s.latestEvents(ctx, dev.Name, deviceEvents)
	if err != nil {
		s.internal(c, err)
		return
	}
	access, err := s.latestEventsOf(ctx, registry.EventFilter{Device: dev.Name,
		Kinds: []string{wire.EventOperatorConnect, wire.EventOperatorDisconnect}}, deviceEvents)
	if err != nil {
		s.internal(c, err)
		return
	}
	v := buildDeviceDetail(dev, tunnels, events, s.now())
	v.Access = viewAccess(dev.Name, access, s.live.Operators(), s.now())
	if v.Availability, err = s.deviceAvailability(ctx, dev, v.Device.Online); err != nil {
		s.internal(c, err)
		return
	}
	v.pageView = s.page(dev.Name+" — mas4h", dashRefresh, sess)
	s.renderHTML(c, http.StatusOK, "dashboard_device.tmpl", v)
}

// latestEvents returns the newest n events (of device, or of all devices
// for ""), oldest first. The log only reads forwards, so it looks at
// windows of growing size before the newest id.
func (s *Server) latestEvents(ctx context.Context, device string, n int) ([]registry.Event, error) {
	return s.latestEventsOf(ctx, registry.EventFilter{Device: device}, n)
}

// latestEventsOf is latestEvents of those events f selects (its AfterID
// and Limit are set here).
func (s *Server) latestEventsOf(ctx context.Context, f registry.EventFilter, n int) ([]registry.Event, error) {
	last, err := s.store.LastEventID(ctx)
	if err != nil || last == 0 {
		return nil, err
	}
	for window := int64(n); ; window *= 8 {
		after := max(last-window, 0)
		f.AfterID, f.Limit = after, int(min(window, 1<<22))
		evs, err := s.store.Events(ctx, f)
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
