package registry

import (
	"testing"
	"time"
)

func TestDispatch(t *testing.T) {
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	iv := 5 * time.Second
	fresh := now.Add(-time.Second)
	stale := now.Add(-16 * time.Second)
	edge := now.Add(-15 * time.Second) // exactly 3 intervals: still live
	sl := func(name string, tunnels, pending, capacity int, seen time.Time) SlaveLoad {
		return SlaveLoad{Name: name, Tunnels: tunnels, Pending: pending, Capacity: capacity, LastSeen: seen}
	}
	tests := []struct {
		name     string
		slaves   []SlaveLoad
		previous string
		want     string // "" = none
	}{
		{"none", nil, "", ""},
		{"only dead", []SlaveLoad{sl("s1", 0, 0, 10, stale)}, "", ""},
		{"live at the deadline", []SlaveLoad{sl("s1", 0, 0, 10, edge)}, "", "s1"},
		{"least loaded", []SlaveLoad{sl("s1", 5, 0, 10, fresh), sl("s2", 2, 0, 10, fresh)}, "", "s2"},
		{"load is relative to capacity", []SlaveLoad{sl("s1", 50, 0, 1000, fresh), sl("s2", 2, 0, 10, fresh)}, "", "s1"},
		{"tie broken by name", []SlaveLoad{sl("s2", 1, 0, 10, fresh), sl("s1", 1, 0, 10, fresh)}, "", "s1"},
		{"pending grants count", []SlaveLoad{sl("s1", 0, 2, 10, fresh), sl("s2", 1, 0, 10, fresh)}, "", "s2"},
		{"dead least loaded skipped", []SlaveLoad{sl("s1", 0, 0, 10, stale), sl("s2", 9, 0, 10, fresh)}, "", "s2"},
		{"full skipped", []SlaveLoad{sl("s1", 10, 0, 10, fresh)}, "", ""},
		{"full by pending", []SlaveLoad{sl("s1", 8, 2, 10, fresh), sl("s2", 9, 0, 20, fresh)}, "", "s2"},
		{"sticky within margin", []SlaveLoad{sl("s1", 0, 0, 100, fresh), sl("s2", 9, 0, 100, fresh)}, "s2", "s2"},
		{"sticky at exactly the margin", []SlaveLoad{sl("s1", 0, 0, 100, fresh), sl("s2", 10, 0, 100, fresh)}, "s2", "s2"},
		{"not sticky past the margin", []SlaveLoad{sl("s1", 0, 0, 100, fresh), sl("s2", 11, 0, 100, fresh)}, "s2", "s1"},
		{"not sticky to a dead slave", []SlaveLoad{sl("s1", 50, 0, 100, fresh), sl("s2", 0, 0, 100, stale)}, "s2", "s1"},
		{"not sticky to a full slave", []SlaveLoad{sl("s1", 0, 0, 1, fresh), sl("s2", 1, 0, 1, fresh)}, "s2", "s1"},
		{"previous unknown", []SlaveLoad{sl("s1", 3, 0, 10, fresh)}, "gone", "s1"},
		{"zero capacity never chosen", []SlaveLoad{sl("s1", 0, 0, 0, fresh)}, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := Dispatch(tc.slaves, tc.previous, now, iv)
			if tc.want == "" {
				if ok {
					t.Fatalf("Dispatch = %q, want none", got)
				}
				return
			}
			if !ok || got != tc.want {
				t.Fatalf("Dispatch = %q, %v; want %q", got, ok, tc.want)
			}
		})
	}
}

// Ten devices asking in turn between two heartbeats spread evenly over two
// equal slaves when each grant counts as pending load.
func TestDispatchSpreadsWithPending(t *testing.T) {
	now := time.Now()
	slaves := []SlaveLoad{
		{Name: "s1", Capacity: 2000, LastSeen: now},
		{Name: "s2", Capacity: 2000, LastSeen: now},
	}
	count := map[string]int{}
	for range 10 {
		name, ok := Dispatch(slaves, "", now, 5*time.Second)
		if !ok {
			t.Fatal("no slave")
		}
		count[name]++
		for i := range slaves {
			if slaves[i].Name == name {
				slaves[i].Pending++
			}
		}
	}
	if count["s1"] != 5 || count["s2"] != 5 {
		t.Fatalf("spread = %v, want 5/5", count)
	}
}
