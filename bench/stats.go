package bench

import (
	"math"
	"sort"
	"time"
)

// Latency summarises a set of timings in milliseconds.
type Latency struct {
	Runs     int     `json:"runs"`
	Failures int     `json:"failures"`
	MeanMs   float64 `json:"mean_ms"`
	P50Ms    float64 `json:"p50_ms"`
	P90Ms    float64 `json:"p90_ms"`
	P99Ms    float64 `json:"p99_ms"`
	MaxMs    float64 `json:"max_ms"`
	// CPUMeanMs is the mean CPU (user+system) of one run, where measured.
	CPUMeanMs float64 `json:"cpu_mean_ms,omitempty"`
}

// summarize computes nearest-rank percentiles over ds.
func summarize(ds []time.Duration, failures int) Latency {
	l := Latency{Runs: len(ds), Failures: failures}
	if len(ds) == 0 {
		return l
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	l.MeanMs = ms(sum / time.Duration(len(s)))
	l.P50Ms = ms(percentile(s, 50))
	l.P90Ms = ms(percentile(s, 90))
	l.P99Ms = ms(percentile(s, 99))
	l.MaxMs = ms(s[len(s)-1])
	return l
}

// percentile is the nearest-rank percentile of sorted s.
func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	if rank < 1 {
		rank = 1
	}
	return sorted[rank-1]
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) float64 { return round3(float64(d) / float64(time.Millisecond)) }

func round3(x float64) float64 { return math.Round(x*1000) / 1000 }
