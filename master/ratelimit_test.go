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

// An IPv6 host that rotates through its /64 stays in one bucket; another
// /64 and IPv4 addresses have their own.
func TestIPLimiterBucketsIPv6By64(t *testing.T) {
	l := newIPLimiter(1, 3)
	now := time.Unix(1000, 0)
	for i := range 3 {
		if ok, _ := l.allow(fmt.Sprintf("2001:db8:1:2::%x", i+1), now); !ok {
			t.Fatalf("request %d within the burst refused", i)
		}
	}
	if ok, wait := l.allow("2001:db8:1:2:ffff:ffff:ffff:ffff", now); ok || wait <= 0 {
		t.Errorf("a 4th address of the same /64 got a token (wait %s)", wait)
	}
	if ok, _ := l.allow("2001:db8:1:3::1", now); !ok {
		t.Error("another /64 shares the bucket")
	}
	v4 := newIPLimiter(1, 1)
	for _, a := range []string{"192.0.2.1", "::ffff:192.0.2.2", "192.0.2.3"} {
		if ok, _ := v4.allow(a, now); !ok {
			t.Errorf("%s refused: IPv4 addresses are buckets of their own", a)
		}
	}
	if ok, _ := v4.allow("::ffff:192.0.2.1", now); ok {
		t.Error("an IPv4-mapped address escapes its IPv4 bucket")
	}
	if l.size() != 2 || v4.size() != 3 {
		t.Errorf("buckets = %d and %d, want 2 /64s and 3 IPv4 addresses", l.size(), v4.size())
	}
}
