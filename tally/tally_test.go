package tally

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

type sink struct {
	mu  sync.Mutex
	got []Summary[string]
}

func (s *sink) emit(x Summary[string]) { s.mu.Lock(); s.got = append(s.got, x); s.mu.Unlock() }
func (s *sink) all() []Summary[string] {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Summary[string](nil), s.got...)
}

func TestBurstThenOneSummaryPerKey(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	var out sink
	tl := New(Config[string]{Interval: time.Minute, Burst: 2, Emit: out.emit, Now: c.Now})
	defer tl.Close()
	passed := 0
	for i := range 1000 {
		if tl.Add("a", fmt.Sprint("a", i)) {
			passed++
		}
		if i < 10 && tl.Add("b", fmt.Sprint("b", i)) {
			passed++
		}
	}
	if passed != 4 {
		t.Fatalf("%d events passed, want 2 per key", passed)
	}
	if len(out.all()) != 0 {
		t.Fatalf("summaries before the interval ended: %+v", out.all())
	}
	// The interval ends: the next event closes it (a clock that is not the
	// wall's) and opens the next, where it passes.
	c.Advance(time.Minute)
	if !tl.Add("a", "next") {
		t.Fatal("the first event of the next interval was suppressed")
	}
	got := out.all()
	want := []Summary[string]{{Key: "a", Count: 998, Last: "a999", Interval: time.Minute}, {Key: "b", Count: 8, Last: "b9", Interval: time.Minute}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("summaries = %+v, want %+v", got, want)
	}
}

func TestKeysBeyondMaxShareOneSummary(t *testing.T) {
	var out sink
	tl := New(Config[string]{MaxKeys: 3, Emit: out.emit})
	passed := 0
	for i := range 10_000 {
		if tl.Add(fmt.Sprint("key", i), fmt.Sprint(i)) {
			passed++
		}
	}
	if passed != 3 {
		t.Fatalf("%d passed, want the first 3 keys' first events", passed)
	}
	tl.Flush()
	got := out.all()
	if len(got) != 1 || got[0].Key != "" || got[0].Count != 9997 || got[0].Last != "9999" {
		t.Fatalf("summaries = %+v, want one overflow summary of 9997", got)
	}
	if len(tl.keys) != 0 {
		t.Fatalf("%d keys kept after the flush", len(tl.keys))
	}
}

func TestTimerEmitsAndCloseFlushes(t *testing.T) {
	var out sink
	tl := New(Config[string]{Interval: 50 * time.Millisecond, Emit: out.emit})
	tl.Add("k", "1")
	tl.Add("k", "2")
	testkit.Eventually(t, 5*time.Second, func() bool { return len(out.all()) == 1 }, "the timer emitted no summary")
	tl2 := New(Config[string]{Interval: time.Hour, Emit: out.emit})
	tl2.Add("k", "1")
	tl2.Add("k", "2")
	tl2.Add("k", "3")
	tl2.Close()
	got := out.all()
	if len(got) != 2 || got[1].Count != 2 || got[1].Last != "3" {
		t.Fatalf("after Close: %+v, want the pending summary", got)
	}
	for i := range 5 {
		if !tl2.Add("k", fmt.Sprint(i)) {
			t.Fatal("an event was suppressed after Close")
		}
	}
	if len(tl2.keys) != 0 {
		t.Fatal("a closed tally keeps keys")
	}
}
