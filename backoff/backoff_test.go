package backoff

import (
	"testing"
	"time"
)

// Each delay is cut at random by up to 90% of its step, never more.
func TestJitterBounds(t *testing.T) {
	for _, r := range []float64{0, 0.5, 0.999999} {
		b := Backoff{Min: time.Second, Max: time.Minute, Rand: func() float64 { return r }}
		for step := time.Second; step <= time.Minute; step = min(step*2, time.Minute) {
			d := b.Next()
			lo := step / 10
			if d < lo || d > step {
				t.Fatalf("rand %v, step %s: delay %s outside [%s, %s]", r, step, d, lo, step)
			}
			if want := step - time.Duration(r*0.9*float64(step)); d != want {
				t.Fatalf("rand %v, step %s: delay %s, want %s", r, step, d, want)
			}
			if step == time.Minute {
				break
			}
		}
	}
}

func TestSequence(t *testing.T) {
	b := Backoff{Min: time.Second, Max: time.Minute, ResetAfter: time.Minute, Rand: func() float64 { return 0 }}
	var got []time.Duration
	for range 9 {
		got = append(got, b.Next())
	}
	want := []time.Duration{1, 2, 4, 8, 16, 32, 60, 60, 60}
	for i := range want {
		if got[i] != want[i]*time.Second {
			t.Fatalf("backoff %v, want %v s", got, want)
		}
	}
	b.Ran(59 * time.Second)
	if d := b.Next(); d != time.Minute {
		t.Errorf("after 59 s up: %s, want no reset", d)
	}
	b.Ran(time.Minute)
	if d := b.Next(); d != time.Second {
		t.Errorf("after 60 s up: %s, want a reset to 1 s", d)
	}
	b.Next()
	b.Reset()
	if d := b.Next(); d != time.Second {
		t.Errorf("after Reset: %s, want 1 s", d)
	}
}

func TestZeroIsTheDefaults(t *testing.T) {
	b := Backoff{Rand: func() float64 { return 0.5 }}
	var got []time.Duration
	for range 8 {
		got = append(got, b.Next())
	}
	// Cut by half of 90%: 55% of each step is kept.
	want := []time.Duration{550, 1100, 2200, 4400, 8800, 17600, 33000, 33000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("zero Backoff: %v, want %v ms", got, want)
		}
	}
	b.Ran(DefaultResetAfter)
	if d := b.Next(); d != 550*time.Millisecond {
		t.Errorf("after %s up: %s, want a reset", DefaultResetAfter, d)
	}
}

func TestJitterAndBounds(t *testing.T) {
	b := Backoff{Min: 100 * time.Millisecond, Max: 300 * time.Millisecond, Jitter: 0.2, Rand: func() float64 { return 0.5 }}
	want := []time.Duration{90, 180, 270, 270}
	for i, w := range want {
		if d := b.Next(); d != w*time.Millisecond {
			t.Errorf("step %d: %s, want %d ms", i, d, w)
		}
	}
	// Max below Min: Min it is.
	b = Backoff{Min: time.Second, Max: time.Millisecond, Rand: func() float64 { return 0 }}
	if d := b.Next(); d != time.Second {
		t.Errorf("max < min: %s, want 1 s", d)
	}
	if d := b.Next(); d != time.Second {
		t.Errorf("max < min, twice: %s, want 1 s", d)
	}
}
