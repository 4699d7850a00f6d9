package main

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/metrics"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrape reads a /metrics endpoint with Prometheus' own text parser.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scraping %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("scraping %s: %d %s", url, resp.StatusCode, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing %s: %v", url, err)
	}
	return mfs
}

func sample(mfs map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	return metrics.Sample(mfs, name, labels...)
}

// waitMetric scrapes url until cond holds for the sample, or fails after within.
func waitMetric(t *testing.T, url, name string, labels []string, cond func(float64) bool, within time.Duration) float64 {
	t.Helper()
	var v float64
	if !testkit.Wait(within, func() bool { v = sample(scrape(t, url), name, labels...); return cond(v) }) {
		t.Fatalf("%s%v = %v at %s after %s", name, labels, v, url, within)
	}
	return v
}

func eq(want float64) func(float64) bool   { return func(v float64) bool { return v == want } }
func atLeast(n float64) func(float64) bool { return func(v float64) bool { return v >= n } }

// The master's and a slave's metrics, scraped and parsed as Prometheus
// would, follow what happens: slots granted and denied, validations, hook
// verdicts, probes, a reap, an sshd restart, tunnels and heartbeats.
func TestMetricsFollowEvents(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	m := e.startMaster()
	murl := m.url + "/metrics"
	maddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	surl := "http://" + maddr + "/metrics"
	sp := e.startSlaveWith("s1", append([]string{"--master", m.url, "--token-file", m.slaveToken, "--public-host", "127.0.0.1",
		"--metrics-listen", maddr}, fastProbe...)...)
	waitSlavesAlive(t, m, 1)

	mm := scrape(t, murl)
	for _, r := range []string{"granted", "denied", "no_slave", "rate_limited", "bad_request"} {
		if v := sample(mm, "mas4h_slot_requests_total", "result", r); v != 0 {
			t.Errorf("slot_requests_total{result=%q} = %v before any request, want 0", r, v)
		}
	}
	if v := sample(mm, "mas4h_slaves_alive"); v != 1 {
		t.Errorf("slaves_alive = %v, want 1", v)
	}

	_, k := m.enrol("pi-metrics", fwd(es))
	slot, code, body := m.slot(k)
	if code != 200 {
		t.Fatalf("slot: %d %s", code, body)
	}
	if _, code, _ := m.slot(e.newKey("stranger")); code != 403 {
		t.Fatalf("stranger's slot: %d, want 403", code)
	}
	mm = scrape(t, murl)
	if v := sample(mm, "mas4h_slot_requests_total", "result", "granted"); v != 1 {
		t.Errorf("slot_requests_total{granted} = %v, want 1", v)
	}
	if v := sample(mm, "mas4h_slot_requests_total", "result", "denied"); v != 1 {
		t.Errorf("slot_requests_total{denied} = %v, want 1", v)
	}
	if v := sample(mm, "mas4h_devices", "status", "active"); v != 1 {
		t.Errorf("devices{active} = %v, want 1", v)
	}

	// The tunnel: the slave's hook allows it (validated by the master), its
	// probes pass, and both sides count the tunnel.
	c := e.tunnelTo(k, slot, es.port)
	p := slot.Forwards[0].RemotePort
	if !waitListen(t, p, c, 10*time.Second) {
		t.Fatalf("tunnel did not come up: %s", c.stderr)
	}
	sm := scrape(t, surl)
	if v := sample(sm, "mas4h_hook_requests_total", "verdict", "allow"); v < 1 {
		t.Errorf("hook_requests_total{allow} = %v, want ≥ 1", v)
	}
	if v := sample(sm, "mas4h_hook_duration_seconds"); v < 1 {
		t.Errorf("hook_duration_seconds count = %v, want ≥ 1", v)
	}
	if v := sample(scrape(t, murl), "mas4h_validations_total", "result", "accepted"); v < 1 {
		t.Errorf("validations_total{accepted} = %v, want ≥ 1", v)
	}
	waitMetric(t, surl, "mas4h_tunnels", nil, eq(1), 5*time.Second)
	waitMetric(t, surl, "mas4h_probes_total", []string{"result", "ok"}, atLeast(1), 5*time.Second)
	waitMetric(t, murl, "mas4h_tunnels", []string{"slave", "s1"}, eq(1), 5*time.Second)
	waitMetric(t, murl, "mas4h_devices_online", nil, eq(1), 5*time.Second)
	if v := sample(scrape(t, murl), "mas4h_heartbeat_age_seconds", "slave", "s1"); v < 0 || v > 3 {
		t.Errorf("master's heartbeat_age_seconds{s1} = %v, want 0-3", v)
	}
	if v := sample(scrape(t, surl), "mas4h_master_heartbeat_age_seconds"); v < 0 || v > 3 {
		t.Errorf("slave's master_heartbeat_age_seconds = %v, want 0-3", v)
	}

	// A stranger's key: the slave's hook denies it, so does the master.
	denied := sample(scrape(t, murl), "mas4h_validations_total", "result", "denied")
	bad := e.startClient("ssh", sshArgs(e.newKey("intruder"), sp.port, "-N", "-R", fmt.Sprintf("%d:localhost:%d", p+1, es.port), e2eTunnelUser+"@127.0.0.1")...)
	if code := bad.wait(10 * time.Second); code != 255 {
		t.Fatalf("intruder's ssh: status %d, want 255", code)
	}
	if v := sample(scrape(t, surl), "mas4h_hook_requests_total", "verdict", "deny"); v < 1 {
		t.Errorf("hook_requests_total{deny} = %v, want ≥ 1", v)
	}
	if v := sample(scrape(t, murl), "mas4h_validations_total", "result", "denied"); v <= denied {
		t.Errorf("validations_total{denied} = %v, want > %v", v, denied)
	}

	// A frozen device is reaped: probes fail, reaps_total{probe} goes up,
	// the tunnel leaves both sides' gauges.
	syscall.Kill(c.cmd.Process.Pid, syscall.SIGSTOP)
	defer syscall.Kill(c.cmd.Process.Pid, syscall.SIGCONT)
	waitReaped(t, p, time.Now(), reapLimit())
	waitMetric(t, surl, "mas4h_reaps_total", []string{"reason", "probe"}, eq(1), 5*time.Second)
	sm = scrape(t, surl)
	if v := sample(sm, "mas4h_probes_total", "result", "fail"); v < 2 {
		t.Errorf("probes_total{fail} = %v, want ≥ 2", v)
	}
	if v := sample(sm, "mas4h_reaps_total", "reason", "revoked"); v != 0 {
		t.Errorf("reaps_total{revoked} = %v, want 0", v)
	}
	waitMetric(t, surl, "mas4h_tunnels", nil, eq(0), 5*time.Second)
	waitMetric(t, murl, "mas4h_tunnels", []string{"slave", "s1"}, eq(0), 5*time.Second)
	waitMetric(t, murl, "mas4h_devices_online", nil, eq(0), 5*time.Second)

	// sshd dies: the slave restarts it and counts it.
	if v := sample(scrape(t, surl), "mas4h_sshd_restarts_total"); v != 0 {
		t.Errorf("sshd_restarts_total = %v before any restart", v)
	}
	if err := syscall.Kill(sp.sshdPid(), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitMetric(t, surl, "mas4h_sshd_restarts_total", nil, eq(1), 5*time.Second)

	// Process and Go runtime metrics come along; nothing is registered twice.
	out := scrape(t, surl)
	if _, ok := out["process_resident_memory_bytes"]; !ok {
		t.Error("slave metrics lack the process collector")
	}
	var names []string
	for n := range scrape(t, murl) {
		if strings.HasPrefix(n, "mas4h_") {
			names = append(names, n)
		}
	}
	t.Logf("master exports %d mas4h_ families: %v", len(names), names)
}
