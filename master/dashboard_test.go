package master

import (
	"fmt"
	"html/template"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/metrics"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/mas4h/mas4h/master/wire"
)

// scrape reads GET /metrics with the Prometheus text parser.
func (e *testEnv) scrape() map[string]*dto.MetricFamily {
	e.t.Helper()
	resp, err := e.ts.Client().Get(e.ts.URL + "/metrics")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		e.t.Fatalf("GET /metrics = %d %s", resp.StatusCode, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		e.t.Fatalf("parsing /metrics: %v", err)
	}
	return mfs
}

func value(mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	return metrics.Sample(mfs, name, labels...)
}

func TestMetricsFollowRequests(t *testing.T) {
	e := newEnv(t, nil)
	ak := e.enrol("pi1")
	e.enrol("pi2")
	e.want("POST", "/devices/pi2/revoke", adminTok, nil, http.StatusOK, nil)

	m := e.scrape()
	if v := value(m, "mas4h_slot_requests_total", "result", "granted"); v != 0 {
		t.Fatalf("granted before any slot = %v, want 0 (exported from the start)", v)
	}
	if v := value(m, "mas4h_devices", "status", "active"); v != 1 {
		t.Errorf("devices{active} = %v, want 1", v)
	}
	if v := value(m, "mas4h_devices", "status", "revoked"); v != 1 {
		t.Errorf("devices{revoked} = %v, want 1", v)
	}

	// No slave yet: 503.
	e.want("POST", "/slots", "", e.signed(ak), http.StatusServiceUnavailable, nil)
	e.beat("s1", heartbeatOf(10))
	e.slot(ak)
	_, stranger := newKey(t)
	e.want("POST", "/slots", "", e.signed(stranger), http.StatusForbidden, nil)
	e.want("POST", "/slots", "", "{", http.StatusBadRequest, nil)
	e.want("POST", "/validate", slaveTok, wire.ValidateRequest{PublicKey: ak}, http.StatusOK, nil)
	e.want("POST", "/validate", slaveTok, wire.ValidateRequest{PublicKey: stranger}, http.StatusForbidden, nil)
	e.beat("s1", heartbeatOf(10, wire.Tunnel{Device: "pi1", Forward: "ssh", Port: 20000, Remote: "198.51.100.7:5555"}))
	e.clock.Advance(2 * time.Second)

	m = e.scrape()
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"mas4h_slot_requests_total", []string{"result", "granted"}, 1},
		{"mas4h_slot_requests_total", []string{"result", "denied"}, 1},
		{"mas4h_slot_requests_total", []string{"result", "no_slave"}, 1},
		{"mas4h_slot_requests_total", []string{"result", "bad_request"}, 1},
		{"mas4h_slot_requests_total", []string{"result", "rate_limited"}, 0},
		{"mas4h_validations_total", []string{"result", "accepted"}, 1},
		{"mas4h_validations_total", []string{"result", "denied"}, 1},
		{"mas4h_validation_duration_seconds", nil, 2},
		{"mas4h_devices_online", nil, 1},
		{"mas4h_slaves_alive", nil, 1},
		{"mas4h_tunnels", []string{"slave", "s1"}, 1},
		{"mas4h_heartbeat_age_seconds", []string{"slave", "s1"}, 2},
	} {
		if v := value(m, c.name, c.labels...); v != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, v, c.want)
		}
	}

	// Silent past the deadline: dead, its tunnels no longer count.
	e.clock.Advance(time.Minute)
	m = e.scrape()
	if v := value(m, "mas4h_slaves_alive"); v != 0 {
		t.Errorf("slaves_alive after a minute of silence = %v, want 0", v)
	}
	if v := value(m, "mas4h_tunnels", "slave", "s1"); v != 0 {
		t.Errorf("tunnels of a dead slave = %v, want 0", v)
	}
}

func TestMetricsRegistriesAreSeparate(t *testing.T) {
	a := newEnv(t, nil)
	b := newEnv(t, nil)
	a.beat("s1", heartbeatOf(10))
	a.slot(a.enrol("pi1"))
	if v := value(b.scrape(), "mas4h_slot_requests_total", "result", "granted"); v != 0 {
		t.Fatalf("a second server's counter moved: %v", v)
	}
}

// browser is an HTTP client with a cookie jar that does not follow
// redirects, so a test sees them.
func (e *testEnv) browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

func get(t *testing.T, c *http.Client, u string) (int, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// post sends a form as a browser would from the dashboard's own page: with
// its Origin.
func post(t testing.TB, c *http.Client, base, path string, form url.Values, header ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest("POST", base+path, strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", base)
	for i := 0; i+1 < len(header); i += 2 {
		if header[i+1] == "" {
			req.Header.Del(header[i])
		} else {
			req.Header.Set(header[i], header[i+1])
		}
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func login(t testing.TB, c *http.Client, base, token, next string) *http.Response {
	t.Helper()
	resp := post(t, c, base, "/login", url.Values{"token": {token}, "next": {next}})
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// logout presses the page's log-out button: the form with its CSRF token.
func logout(t *testing.T, c *http.Client, base string) *http.Response {
	t.Helper()
	_, page := get(t, c, base+"/")
	m := csrfRE.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no log-out form with a CSRF token on the page:\n%s", page)
	}
	resp := post(t, c, base, "/logout", url.Values{"csrf": {m[1]}})
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestDashboardLogin(t *testing.T) {
	e := newEnv(t, nil)
	c := e.browser()
	code, body := get(t, c, e.ts.URL+"/")
	if code != http.StatusUnauthorized || !strings.Contains(body, `name="token"`) {
		t.Fatalf("GET / without a session = %d, want 401 with the login form:\n%s", code, body)
	}
	for _, tok := range []string{"wrong-token-123456", slaveTok, ""} {
		resp := login(t, c, e.ts.URL, tok, "/")
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("login with %q = %d, want 401", tok, resp.StatusCode)
		}
		if len(resp.Cookies()) != 0 {
			t.Errorf("login with %q set a cookie", tok)
		}
	}
	resp := login(t, c, e.ts.URL, adminTok, "//evil.example/x")
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/" {
		t.Fatalf("login = %d to %q, want 303 to / (not to another host)", resp.StatusCode, resp.Header.Get("Location"))
	}
	ck := resp.Cookies()
	if len(ck) != 1 || !ck[0].HttpOnly || ck[0].SameSite != http.SameSiteStrictMode || strings.Contains(ck[0].Value, adminTok) {
		t.Fatalf("session cookie %+v: want one HttpOnly SameSite=Strict cookie without the token", ck)
	}
	code, body = get(t, c, e.ts.URL+"/")
	if code != http.StatusOK || !strings.Contains(body, "Slaves") {
		t.Fatalf("GET / with a session = %d:\n%s", code, body)
	}
	// A forged or expired session is refused.
	u, _ := url.Parse(e.ts.URL)
	forged := e.browser()
	forged.Jar.SetCookies(u, []*http.Cookie{{Name: sessionCookie, Value: "v2.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}})
	if code, _ := get(t, forged, e.ts.URL+"/"); code != http.StatusUnauthorized {
		t.Errorf("forged session: %d, want 401", code)
	}
	e.clock.Advance(sessionTTL + time.Second)
	if code, _ := get(t, c, e.ts.URL+"/"); code != http.StatusUnauthorized {
		t.Errorf("expired session: %d, want 401", code)
	}
	// The bearer token is not a way into the pages, nor the cookie into the API.
	e.clock.Advance(-sessionTTL - time.Second)
	req, _ := http.NewRequest("GET", e.ts.URL+wire.APIPrefix+"/status", nil)
	for _, k := range c.Jar.Cookies(u) {
		req.AddCookie(k)
	}
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("API with only the session cookie: %v %v, want 401", resp.StatusCode, err)
	}
	// Log out.
	if resp := logout(t, c, e.ts.URL); resp.StatusCode != http.StatusSeeOther {
		t.Errorf("log-out = %d, want 303", resp.StatusCode)
	}
	if code, _ := get(t, c, e.ts.URL+"/"); code != http.StatusUnauthorized {
		t.Errorf("after log-out: %d, want 401", code)
	}
}

// The login form said "That is the slave token" to the slave token: an
// oracle. Every wrong secret gets the same page.
func TestDashboardLoginOneMessageForEveryWrongSecret(t *testing.T) {
	e := newEnv(t, nil)
	var first string
	for _, tok := range []string{slaveTok, adminTok + "x", "x" + adminTok[1:], "random-guess-0123456789", ""} {
		c := e.browser()
		resp := post(t, c, e.ts.URL, "/login", url.Values{"token": {tok}, "next": {"/"}})
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		page := regexp.MustCompile(`<span class="meta">[^<]*</span>`).ReplaceAllString(string(b), "")
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(page, template.HTMLEscapeString(wrongToken)) {
			t.Errorf("login with %q = %d, want 401 with %q", tok, resp.StatusCode, wrongToken)
		}
		if first == "" {
			first = page
		} else if page != first {
			t.Errorf("login with %q answers another page than the slave token's", tok)
		}
		e.srv.dash.logins.succeeded("127.0.0.1") // this test is not about the backoff
	}
}

// 300 wrong logins took 2.9 s. After a handful from one source, it waits:
// 429 with Retry-After, doubling, whatever the token, while another
// source is unaffected.
func TestDashboardLoginBacksOff(t *testing.T) {
	e := newEnv(t, nil)
	c := e.browser()
	for i := 1; i <= loginFreeFailures; i++ {
		resp := login(t, c, e.ts.URL, fmt.Sprintf("guess-%d-0123456789", i), "/")
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("failure %d = %d, want 401", i, resp.StatusCode)
		}
		if ra := resp.Header.Get("Retry-After"); (i < loginFreeFailures) != (ra == "") {
			t.Errorf("failure %d: Retry-After %q", i, ra)
		}
	}
	for _, tok := range []string{"guess-6-0123456789", adminTok} {
		resp := login(t, c, e.ts.URL, tok, "/")
		if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") != "5" || len(resp.Cookies()) != 0 {
			t.Fatalf("try while waiting (%s) = %d, Retry-After %q; want 429, 5 and no session", tok, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}
	// Another source may still log in.
	if wait := e.srv.dash.logins.wait(sourceAddr("2001:db8::7"), e.clock.Now()); wait != 0 {
		t.Errorf("another source waits %s", wait)
	}
	// The wait doubles with each further failure.
	e.clock.Advance(5 * time.Second)
	if resp := login(t, c, e.ts.URL, "guess-7-0123456789", "/"); resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("Retry-After") != "10" {
		t.Fatalf("failure 6 = %d, Retry-After %q; want 401, 10", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	e.clock.Advance(10 * time.Second)
	if resp := login(t, c, e.ts.URL, adminTok, "/"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("the right token after the wait = %d, want 303", resp.StatusCode)
	}
	// A success forgets the failures.
	if resp := login(t, c, e.ts.URL, "guess-8-0123456789", "/"); resp.Header.Get("Retry-After") != "" {
		t.Errorf("a failure after a success waits %s s", resp.Header.Get("Retry-After"))
	}
}

func TestLoginThrottleIsBounded(t *testing.T) {
	l := newLoginThrottle()
	now := time.Unix(1_700_000_000, 0)
	for i := range loginMaxSources + 500 {
		l.failed(fmt.Sprintf("10.%d.%d.%d", i>>16&255, i>>8&255, i&255), now.Add(time.Duration(i)*time.Millisecond))
	}
	if n := len(l.sources); n > loginMaxSources {
		t.Fatalf("%d sources kept, at most %d", n, loginMaxSources)
	}
	if _, ok := l.sources["10.0.0.0"]; ok {
		t.Error("the source that failed longest ago was kept over newer ones")
	}
	if got, want := sourceAddr("2001:db8:1:2:3:4:5:6"), "2001:db8:1:2::/64"; got != want {
		t.Errorf("sourceAddr of an IPv6 address = %q, want its /64 %q", got, want)
	}
	if got := sourceAddr("::ffff:192.0.2.1"); got != "192.0.2.1" {
		t.Errorf("sourceAddr of a mapped IPv4 address = %q", got)
	}
}

// A cookie copied before logging out (a shared machine, a proxy's log, a
// stolen backup) was good until the admin token changed: logging out ends
// the session itself.
func TestDashboardLogoutEndsTheSession(t *testing.T) {
	e := newEnv(t, nil)
	c := e.browser()
	login(t, c, e.ts.URL, adminTok, "/")
	u, _ := url.Parse(e.ts.URL)
	copied := e.browser()
	copied.Jar.SetCookies(u, c.Jar.Cookies(u))
	if code, _ := get(t, copied, e.ts.URL+"/"); code != http.StatusOK {
		t.Fatalf("copied cookie before log-out = %d, want 200", code)
	}
	logout(t, c, e.ts.URL)
	if code, _ := get(t, copied, e.ts.URL+"/"); code != http.StatusUnauthorized {
		t.Fatalf("copied cookie after log-out = %d, want 401", code)
	}
	// A new admin token ends every session.
	c2 := e.browser()
	login(t, c2, e.ts.URL, adminTok, "/")
	e2 := newEnvOn(t, e.store, e.clock, func(cfg *Config) { cfg.AdminToken = "another-admin-token-0123456789" })
	rotated := e2.browser()
	u2, _ := url.Parse(e2.ts.URL)
	for _, k := range c2.Jar.Cookies(u) {
		rotated.Jar.SetCookies(u2, []*http.Cookie{k})
	}
	if code, _ := get(t, rotated, e2.ts.URL+"/"); code != http.StatusUnauthorized {
		t.Fatalf("session of the old admin token on a master with a new one = %d, want 401", code)
	}
}

// Logout had no CSRF protection. Every POST of the dashboard must come
// from its own origin, and log-out must carry the session's CSRF token.
func TestDashboardPostsNeedTheDashboardsOrigin(t *testing.T) {
	e := newEnv(t, nil)
	c := e.browser()
	for _, h := range [][]string{
		{"Origin", "http://evil.example"},
		{"Origin", "null"},
		{"Origin", "", "Sec-Fetch-Site", "cross-site"},
		{"Origin", "", "Sec-Fetch-Site", "same-site"}, // another port of the same host
		{"Origin", ""},                                // no browser sends a form so
	} {
		resp := post(t, c, e.ts.URL, "/login", url.Values{"token": {adminTok}}, h...)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || len(resp.Cookies()) != 0 {
			t.Errorf("login with %v = %d, want 403 and no session", h, resp.StatusCode)
		}
	}
	resp := post(t, c, e.ts.URL, "/login", url.Values{"token": {adminTok}}, "Origin", "", "Sec-Fetch-Site", "same-origin")
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("login with Sec-Fetch-Site: same-origin = %d, want 303", resp.StatusCode)
	}
	for _, tc := range []struct {
		form   url.Values
		header []string
	}{
		{url.Values{}, nil},                                       // no CSRF token
		{url.Values{"csrf": {"forged"}}, nil},                     // a wrong one
		{url.Values{}, []string{"Origin", "http://evil.example"}}, // another origin
	} {
		resp := post(t, c, e.ts.URL, "/logout", tc.form, tc.header...)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("log-out with %v %v = %d, want 403", tc.form, tc.header, resp.StatusCode)
		}
		if code, _ := get(t, c, e.ts.URL+"/"); code != http.StatusOK {
			t.Fatalf("the session ended after a refused log-out (%v %v)", tc.form, tc.header)
		}
	}
}

func TestDashboardShowsDevicesAndEscapes(t *testing.T) {
	e := newEnv(t, nil)
	e.beat("s1", heartbeatOf(4))
	e.beat("s2", heartbeatOf(4))
	e.enrol("pi-online")
	e.enrol("pi-offline")
	e.beat("s1", heartbeatOf(4, wire.Tunnel{Device: "pi-online", Forward: "ssh", Port: 20000, Remote: "198.51.100.7:5555",
		Since: e.clock.Now().Add(-90 * time.Minute), LastProbe: &wire.Probe{OK: true, At: e.clock.Now().Add(-3 * time.Second)}}))
	// Hostile text from a slave's event reaches the page escaped.
	hb := heartbeatOf(4, wire.Tunnel{Device: "pi-online", Forward: "ssh", Port: 20000, Remote: "198.51.100.7:5555"})
	hb.Events = []wire.SlaveEvent{{Kind: "probe", Device: "pi-online", Detail: `<script>alert(1)</script>`}}
	e.beat("s1", hb)

	c := e.browser()
	login(t, c, e.ts.URL, adminTok, "/")
	code, body := get(t, c, e.ts.URL+"/")
	if code != http.StatusOK {
		t.Fatalf("GET / = %d", code)
	}
	for _, want := range []string{
		`data-device="pi-online" data-state="online"`, `data-device="pi-offline" data-state="offline"`,
		`data-slave="s1"`, `data-slave="s2"`, `1 / 4`, `&lt;script&gt;alert(1)&lt;/script&gt;`,
		`http-equiv="refresh" content="10"`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	if strings.Contains(body, "<script>") {
		t.Error("page carries an unescaped <script>")
	}
	code, body = get(t, c, e.ts.URL+"/?show=offline")
	if code != http.StatusOK || strings.Contains(body, `data-device="pi-online"`) || !strings.Contains(body, `data-device="pi-offline"`) {
		t.Errorf("?show=offline: %d, wrong devices", code)
	}
	code, body = get(t, c, e.ts.URL+"/ui/devices/pi-online")
	if code != http.StatusOK || !strings.Contains(body, `data-state="online"`) || !strings.Contains(body, "198.51.100.7:5555") ||
		!strings.Contains(body, "granted") && !strings.Contains(body, "enrol") {
		t.Errorf("device page: %d\n%s", code, body)
	}
	if code, _ := get(t, c, e.ts.URL+"/ui/devices/nope"); code != http.StatusNotFound {
		t.Errorf("unknown device page: %d, want 404", code)
	}
	// Without a session the device page offers the login form that comes back to it.
	code, body = get(t, e.browser(), e.ts.URL+"/ui/devices/pi-online")
	if code != http.StatusUnauthorized || !strings.Contains(body, `value="/ui/devices/pi-online"`) {
		t.Errorf("device page without a session: %d\n%s", code, body)
	}
}

func TestLatestEvents(t *testing.T) {
	e := newEnv(t, nil)
	for i := 0; i < 30; i++ {
		e.enrol("d" + string(rune('a'+i%26)) + string(rune('a'+i/26)))
	}
	evs, err := e.srv.latestEvents(t.Context(), "", 5)
	if err != nil || len(evs) != 5 || evs[4].Device != "ddb" {
		t.Fatalf("latest 5 = %+v, %v", evs, err)
	}
	evs, err = e.srv.latestEvents(t.Context(), "daa", 5)
	if err != nil || len(evs) != 1 || evs[0].Device != "daa" {
		t.Fatalf("latest of daa = %+v, %v", evs, err)
	}
}
