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
	"sort"
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

type slaveView struct {
	Name      string
	Host      string
	Port      int
	Alive     bool
	Tunnels   int
	Capacity  int
	LoadPct   int    // 0-100, for the bar
	Load      string // "12.5%"
	LoadClass string // ok, warn, high
	CPU, Mem  string
	LastSeen  string // "3s ago"
}

type probeView struct {
	Known  bool
	OK     bool
	Ago    string
	Detail string
}

type portView struct {
	Forward string
	Target  string
	Port    int
	Live    bool
	Slave   string
	Remote  string
	Uptime  string
	Probe   probeView
}

type deviceView struct {
	Name      string
	Revoked   bool
	Online    bool
	Slaves    string // where its tunnels are, comma-separated
	LastSlave string // the slave the master last sent it to
	Ports     []portView
	Uptime    string // of its oldest live tunnel
	Probe     probeView
}

type eventView struct {
	At     string
	Ago    string
	Kind   string
	Device string
	Slave  string
	Detail string
}

type overviewView struct {
	pageView
	Slaves       []slaveView
	SlavesAlive  int
	Devices      []deviceView
	Total        int
	Online       int
	Offline      int
	Revoked      int
	Matching     int
	Query        string
	Show         string
	Truncated    bool
	MaxDevices   int
	Events       []eventView
	TunnelsLive  int
	CapacityLive int
}

type deviceDetailView struct {
	pageView
	Device      deviceView
	Fingerprint string
	KeyType     string
	LastSlave   string
	Created     string
	Events      []eventView
}

func (s *Server) handleOverview(c *gin.Context) {
	if !s.requireSession(c) {
		return
	}
	ctx := c.Request.Context()
	now := s.now()
	slaves, err := s.store.Slaves(ctx)
	if err != nil {
		s.internal(c, err)
		return
	}
	devs, err := s.store.Devices(ctx)
	if err != nil {
		s.internal(c, err)
		return
	}
	tunnels, err := s.store.LiveTunnels(ctx)
	if err != nil {
		s.internal(c, err)
		return
	}
	events, err := s.latestEvents(ctx, "", dashEvents)
	if err != nil {
		s.internal(c, err)
		return
	}
	v := overviewView{pageView: s.page("mas4h", dashRefresh, true), MaxDevices: dashMaxDevices,
		Query: strings.TrimSpace(c.Query("q")), Show: c.Query("show")}
	switch v.Show {
	case "online", "offline", "revoked":
	default:
		v.Show = "all"
	}
	alive := s.live.Alive()
	for _, sl := range slaves {
		sv := slaveView{Name: sl.Name, Host: sl.Host, Port: sl.Port, Alive: alive[sl.Name],
			Capacity: sl.Capacity, CPU: fmt.Sprintf("%.0f%%", sl.CPU), Mem: fmt.Sprintf("%.0f%%", sl.Mem),
			LastSeen: ago(now, sl.LastSeen)}
		if sv.Alive {
			sv.Tunnels = sl.Tunnels
			v.SlavesAlive++
			v.TunnelsLive += sl.Tunnels
			v.CapacityLive += sl.Capacity
		}
		load := 0.0
		if sl.Capacity > 0 {
			load = float64(sv.Tunnels) / float64(sl.Capacity)
		}
		sv.LoadPct = min(max(int(load*100+0.5), 0), 100)
		if load > 0 && sv.LoadPct == 0 {
			sv.LoadPct = 1 // a sliver, so that "some" does not look like "none"
		}
		sv.Load = fmt.Sprintf("%.1f%%", load*100)
		switch {
		case load >= 0.9:
			sv.LoadClass = "high"
		case load >= 0.7:
			sv.LoadClass = "warn"
		default:
			sv.LoadClass = "ok"
		}
		v.Slaves = append(v.Slaves, sv)
	}

	byDevice := map[string][]registry.Tunnel{}
	for _, t := range tunnels {
		byDevice[t.Device] = append(byDevice[t.Device], t)
	}
	q := strings.ToLower(v.Query)
	for _, d := range devs {
		dv := s.deviceView(d, byDevice[d.Name], now)
		v.Total++
		switch {
		case dv.Revoked:
			v.Revoked++
		case dv.Online:
			v.Online++
		default:
			v.Offline++
		}
		if q != "" && !strings.Contains(strings.ToLower(d.Name), q) {
			continue
		}
		match := v.Show == "all" || v.Show == "revoked" && dv.Revoked ||
			v.Show == "online" && dv.Online && !dv.Revoked || v.Show == "offline" && !dv.Online && !dv.Revoked
		if !match {
			continue
		}
		v.Matching++
		if len(v.Devices) < dashMaxDevices {
			v.Devices = append(v.Devices, dv)
		}
	}
	v.Truncated = v.Matching > len(v.Devices)
	v.Events = eventViews(events, now)
	s.renderHTML(c, http.StatusOK, "dashboard.tmpl", v)
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
	var mine []registry.Tunnel
	for _, t := range tunnels {
		if t.Device == dev.Name {
			mine = append(mine, t)
		}
	}
	events, err := s.latestEvents(ctx, dev.Name, deviceEvents)
	if err != nil {
		s.internal(c, err)
		return
	}
	now := s.now()
	v := deviceDetailView{
		pageView: s.page(dev.Name+" — mas4h", dashRefresh, true), Device: s.deviceView(dev, mine, now),
		Fingerprint: dev.Fingerprint, KeyType: dev.KeyType, LastSlave: dev.LastSlave,
		Created: dev.CreatedAt.UTC().Format("2006-01-02 15:04:05Z"), Events: eventViews(events, now),
	}
	s.renderHTML(c, http.StatusOK, "dashboard_device.tmpl", v)
}

// deviceView joins a device with its live tunnels.
func (s *Server) deviceView(d registry.Device, tunnels []registry.Tunnel, now time.Time) deviceView {
	dv := deviceView{Name: d.Name, Revoked: d.Status != registry.StatusActive, Online: len(tunnels) > 0, LastSlave: d.LastSlave}
	var slaves []string
	var oldest time.Time
	var shown *registry.Probe
	for _, f := range d.Forwards {
		pv := portView{Forward: f.Name, Target: f.Target, Port: f.RemotePort}
		for _, t := range tunnels {
			if t.Port != f.RemotePort {
				continue
			}
			pv.Live, pv.Slave, pv.Remote = true, t.Slave, t.Remote
			if !t.Since.IsZero() {
				pv.Uptime = since(now, t.Since)
			}
			pv.Probe = viewProbe(t.Probe, now)
		}
		dv.Ports = append(dv.Ports, pv)
	}
	for _, t := range tunnels {
		if !contains(slaves, t.Slave) {
			slaves = append(slaves, t.Slave)
		}
		if !t.Since.IsZero() && (oldest.IsZero() || t.Since.Before(oldest)) {
			oldest = t.Since
		}
		if worthShowing(t.Probe, shown) {
			shown = t.Probe
		}
	}
	sort.Strings(slaves)
	dv.Slaves = strings.Join(slaves, ", ")
	if !oldest.IsZero() {
		dv.Uptime = since(now, oldest)
	}
	dv.Probe = viewProbe(shown, now)
	return dv
}

// worthShowing prefers, for a device's one "last probe" cell, a failing
// probe over a passing one (that is what the operator must see), then the
// newer one.
func worthShowing(p, cur *registry.Probe) bool {
	switch {
	case p == nil:
		return false
	case cur == nil:
		return true
	case p.OK != cur.OK:
		return !p.OK
	default:
		return p.At.After(cur.At)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func viewProbe(p *registry.Probe, now time.Time) probeView {
	if p == nil {
		return probeView{}
	}
	return probeView{Known: true, OK: p.OK, Ago: ago(now, p.At), Detail: p.Detail}
}

func eventViews(events []registry.Event, now time.Time) []eventView {
	out := make([]eventView, 0, len(events))
	for i := len(events) - 1; i >= 0; i-- { // newest first
		e := events[i]
		out = append(out, eventView{At: e.At.UTC().Format("2006-01-02 15:04:05Z"), Ago: ago(now, e.At),
			Kind: e.Kind, Device: e.Device, Slave: e.Slave, Detail: e.Detail})
	}
	return out
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

// ago is a short age: "4s ago", "3m ago", "2h10m ago", "3d4h ago".
func ago(now, t time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return short(now.Sub(t)) + " ago"
}

// since is a short duration from t to now, for uptimes.
func since(now, t time.Time) string { return short(now.Sub(t)) }

func short(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d/time.Second))
	case d < time.Hour:
		return fmt.Sprintf("%dm%02ds", int(d/time.Minute), int(d%time.Minute/time.Second))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	default:
		return fmt.Sprintf("%dd%dh", int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour))
	}
}
