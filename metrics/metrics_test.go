package metrics

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func scrape(t *testing.T, h http.Handler) (map[string]*dto.MetricFamily, int) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	if rec.Code != http.StatusOK {
		return nil, rec.Code
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(rec.Body)
	if err != nil {
		t.Fatalf("parsing: %v", err)
	}
	return mfs, rec.Code
}

func counter(mfs map[string]*dto.MetricFamily, name, label, value string) float64 {
	for _, m := range mfs[name].GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() == label && l.GetValue() == value {
				return m.GetCounter().GetValue()
			}
		}
	}
	return -1
}

func TestSlave(t *testing.T) {
	reg := NewRegistry()
	last := time.Now().Add(-7 * time.Second)
	s, err := NewSlave(reg, SlaveGauges{Tunnels: func() int { return 3 }, LastHeartbeat: func() time.Time { return last }})
	if err != nil {
		t.Fatal(err)
	}
	s.Hook(true, time.Millisecond)
	s.Hook(false, 2*time.Millisecond)
	s.Hook(false, time.Millisecond)
	s.Probe(true)
	s.Reap(ReapProbe)
	s.SSHDRestart()
	mfs, _ := scrape(t, Handler(reg))
	if v := counter(mfs, "mas4h_hook_requests_total", "verdict", "deny"); v != 2 {
		t.Errorf("hook deny = %v", v)
	}
	if v := counter(mfs, "mas4h_reaps_total", "reason", ReapSuperseded); v != 0 {
		t.Errorf("reaps superseded = %v, want 0 (exported before it happens)", v)
	}
	if v := mfs["mas4h_hook_duration_seconds"].GetMetric()[0].GetHistogram().GetSampleCount(); v != 3 {
		t.Errorf("hook duration count = %v", v)
	}
	if v := mfs["mas4h_tunnels"].GetMetric()[0].GetGauge().GetValue(); v != 3 {
		t.Errorf("tunnels = %v", v)
	}
	if v := mfs["mas4h_master_heartbeat_age_seconds"].GetMetric()[0].GetGauge().GetValue(); v < 7 || v > 9 {
		t.Errorf("heartbeat age = %v, want about 7", v)
	}
	if v := mfs["mas4h_sshd_restarts_total"].GetMetric()[0].GetCounter().GetValue(); v != 1 {
		t.Errorf("sshd restarts = %v", v)
	}

	// A nil *Slave counts nothing and does not panic.
	var none *Slave
	none.Hook(true, 0)
	none.Probe(false)
	none.Reap(ReapRevoked)
	none.SSHDRestart()
}

func TestMasterSnapshotError(t *testing.T) {
	reg := NewRegistry()
	fail := true
	m, err := NewMaster(reg, func(context.Context) (MasterSnapshot, error) {
		if fail {
			return MasterSnapshot{}, errors.New("registry locked")
		}
		return MasterSnapshot{DevicesActive: 2, Slaves: []SlaveSnapshot{{Name: "s1", Alive: true, Tunnels: 5}}}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m.Slot(SlotGranted)
	if _, code := scrape(t, Handler(reg)); code != http.StatusInternalServerError {
		t.Errorf("scrape with an unreadable registry = %d, want 500", code)
	}
	fail = false
	mfs, code := scrape(t, Handler(reg))
	if code != http.StatusOK || counter(mfs, "mas4h_slot_requests_total", "result", SlotGranted) != 1 ||
		mfs["mas4h_slaves_alive"].GetMetric()[0].GetGauge().GetValue() != 1 {
		t.Errorf("scrape = %d %v", code, mfs)
	}
	// A second master on the same registry is refused: series would clash.
	if _, err := NewMaster(reg, nil); err == nil {
		t.Error("a second master registered on the same registry")
	}
}
