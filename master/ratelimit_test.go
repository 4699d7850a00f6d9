package master

import (
	"fmt"
	"testing"
	"time"
)

// size is the number of buckets held.
func (l *ipLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

func TestIPLimiterEvictsIdleBuckets(t *testing.T) {
	l := newIPLimiter(1, 1)
	now := time.Unix(1000, 0)
	for i := range 100 {
		l.allow(fmt.Sprintf("192.0.2.%d", i), now)
	}
	if ok, _ := l.allow("192.0.2.1", now); ok {
		t.Error("second request within the burst allowed")
	}
	if l.size() != 100 {
		t.Fatalf("buckets = %d", l.size())
	}
	l.allow("198.51.100.1", now.Add(idleAfter+sweepInterval))
	if l.size() != 1 {
		t.Errorf("after idling, buckets = %d, want 1", l.size())
	}
}
