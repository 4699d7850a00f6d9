package master

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// BenchmarkSlot measures POST /slots through the handler (no network, no
// rate limit) against a registry of 10,000 devices and 10 live slaves,
// signature verification included.
func BenchmarkSlot(b *testing.B) {
	e := newEnv(b, func(c *Config) { c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil)) })
	ctx := context.Background()
	const devices = 10000 // enrolling them takes about a minute
	keys := make([]string, devices)
	for i := range devices {
		k, ak := newKey(b)
		if _, err := e.store.AddDevice(ctx, fmt.Sprintf("d%05d", i), k, nil, registry.DefaultPortRange); err != nil {
			b.Fatal(err)
		}
		keys[i] = ak
	}
	for i := range 10 {
		e.beat(fmt.Sprintf("s%d", i), heartbeatOf(2000))
	}
	h := e.srv.Handler()
	b.SetParallelism(32) // many devices at once, as in a reconnect storm
	var mu sync.Mutex
	var lat []time.Duration
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		var mine []time.Duration
		defer func() { mu.Lock(); lat = append(lat, mine...); mu.Unlock() }()
		for pb.Next() {
			// Each request is signed afresh, as devices do: the master
			// refuses a statement it has seen.
			body, _ := json.Marshal(e.signed(keys[i%devices]))
			req := httptest.NewRequest(http.MethodPost, wire.APIPrefix+"/slots", bytes.NewReader(body))
			w := httptest.NewRecorder()
			start := time.Now()
			h.ServeHTTP(w, req)
			mine = append(mine, time.Since(start))
			if w.Code != http.StatusOK {
				b.Errorf("slot = %d %s", w.Code, w.Body)
				return
			}
			i += 7
		}
	})
	b.StopTimer()
	slices.Sort(lat)
	if n := len(lat); n > 0 {
		b.ReportMetric(float64(lat[n/2].Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(lat[n*99/100].Microseconds())/1000, "p99-ms")
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "slots/s")
	}
}
