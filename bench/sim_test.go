package bench

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSimTiny runs the cluster simulation end to end on a tiny fleet (200
// devices, 3 slaves, a 3 s window) against a real master built from the
// tree on SQLite, so that the harness keeps working: every device gets a
// slot, every slave gets some, latencies are recorded, the dead slave's
// devices all land elsewhere.
func TestSimTiny(t *testing.T) {
	if testing.Short() && os.Getenv("MAS4H_E2E") == "" {
		t.Skip("builds and runs a real master")
	}
	bin := filepath.Join(t.TempDir(), "mas4h")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/mas4h").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cfg := SimConfig{Bin: bin, DB: "sqlite", Masters: 1, Slaves: 3, Devices: 200, PortRange: "20000-29999",
		Rate: 100, Duration: 3 * time.Second, Warmup: time.Second, HeartbeatInterval: 500 * time.Millisecond,
		FillParallel: 8, MaxInFlight: 64, Storm: true, StormTimeout: time.Minute, WorkParent: t.TempDir(), Seed: 7}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := RunSim(ctx, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if res.Setup.ViaRegistry != 200 || res.Setup.FillRetries != 0 {
		t.Errorf("enrolled %d through the registry (want 200), %d fill retries (want 0): %s", res.Setup.ViaRegistry, res.Setup.FillRetries, res.Setup.FillFirstError)
	}
	if res.Spread.Slaves != 3 || res.Spread.Min == 0 || res.Spread.Min+res.Spread.Max == 0 {
		t.Errorf("spread %+v: every slave should hold tunnels", res.Spread)
	}
	if got := res.Spread.Mean * 3; got < 199.9 || got > 200.1 {
		t.Errorf("%.1f tunnels in all after the window, want 200 (every device holds one)", got)
	}
	sl := res.Slots
	if sl.Latency.Runs < 200 || sl.Latency.Failures != 0 || sl.Latency.P50Ms <= 0 || sl.Latency.P99Ms < sl.Latency.P50Ms {
		t.Errorf("slots %+v: want ≥200 granted at 100/s over 3 s, no failures, latencies recorded (first error %q)", sl.Latency, sl.FirstError)
	}
	hb := res.Heartbeats.Latency
	if hb.Runs < 9 || hb.Failures != 0 || hb.P50Ms <= 0 {
		t.Errorf("heartbeats %+v: want ≥9 (3 slaves every 500 ms for 3 s), no failures (first error %q)", hb, res.Heartbeats.FirstError)
	}
	if len(res.Masters) != 1 || res.Masters[0].CPUCores <= 0 || res.DBBytes <= 0 || res.DBCPU != nil {
		t.Errorf("masters %+v, db %d bytes, db cpu %v: want the master's CPU, the file's size, no DB CPU with SQLite", res.Masters, res.DBBytes, res.DBCPU)
	}
	st := res.Storm
	if st == nil || st.Devices == 0 || st.Redispatched != st.Devices || st.AllSeconds <= 0 || st.Spread.Slaves != 2 || st.Spread.Min == 0 {
		t.Errorf("storm %+v: want every device of the dead slave granted one of the 2 others", st)
	}
	var b strings.Builder
	res.WriteTable(&b)
	if !strings.Contains(b.String(), "slot latency p50 / p99") {
		t.Errorf("table:\n%s", b.String())
	}
}
