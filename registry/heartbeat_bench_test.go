package registry

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// BenchmarkRecordHeartbeat2000 records heartbeats of one slave with 2,000
// tunnels (the 100,000-device simulation's 100k/50), each probed, as the
// master does on every heartbeat; on PostgreSQL with MAS4H_TEST_DB=postgres.
// Every write transaction holds the registry's one write lock, so this
// bounds how many such heartbeats a second a cluster of masters can take.
func BenchmarkRecordHeartbeat2000(b *testing.B) {
	s, _ := openTempB(b)
	ctx := context.Background()
	at := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	r := SlaveReport{Name: "s1", Host: "198.18.0.1", Port: 2222, User: "mas4h-tunnel", Capacity: 5000}
	for i := range 2000 {
		r.Tunnels = append(r.Tunnels, Tunnel{Slave: "s1", Device: fmt.Sprintf("dev-%05d", i), Forward: "ssh", Port: 20000 + i,
			Remote: "198.18.1.1:40000", Since: at, Probe: &Probe{OK: true, At: at, Detail: "ssh banner"}})
	}
	b.ResetTimer()
	for i := range b.N {
		r.At = at.Add(time.Duration(i+1) * time.Second)
		if _, err := s.RecordHeartbeat(ctx, r, r.At.Add(-15*time.Second)); err != nil {
			b.Fatal(err)
		}
	}
}
