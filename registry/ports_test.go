package registry

import (
	"errors"
	"slices"
	"testing"
)

func TestParsePortRange(t *testing.T) {
	tests := []struct {
		in   string
		want PortRange
		ok   bool
	}{
		{"20000-29999", PortRange{20000, 29999}, true},
		{" 1-65535 ", PortRange{1, 65535}, true},
		{"5000-5000", PortRange{5000, 5000}, true},
		{"", PortRange{}, false},
		{"20000", PortRange{}, false},
		{"0-10", PortRange{}, false},
		{"10-65536", PortRange{}, false},
		{"300-200", PortRange{}, false},
		{"+1-20", PortRange{}, false},
		{"0x10-0x20", PortRange{}, false},
		{"1-2-3", PortRange{}, false},
		{"a;rm -rf /", PortRange{}, false},
	}
	for _, tt := range tests {
		got, err := ParsePortRange(tt.in)
		if tt.ok != (err == nil) || got != tt.want {
			t.Errorf("ParsePortRange(%q) = %v, %v; want %v, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			t.Errorf("ParsePortRange(%q) error %v does not wrap ErrInvalid", tt.in, err)
		}
		if err == nil {
			if back, err := ParsePortRange(got.String()); err != nil || back != got {
				t.Errorf("%v does not survive String/ParsePortRange: %v, %v", got, back, err)
			}
		}
	}
	if s := DefaultPortRange.String(); s != "20000-29999" {
		t.Errorf("DefaultPortRange.String() = %q", s)
	}
}

func TestFreePorts(t *testing.T) {
	r := PortRange{10, 15}
	tests := []struct {
		used []int
		n    int
		want []int
	}{
		{nil, 2, []int{10, 11}},
		{[]int{10, 11}, 1, []int{12}},
		{[]int{10, 12, 14}, 3, []int{11, 13, 15}},
		{[]int{10, 11, 12, 13, 14, 15}, 1, []int{}},
		{[]int{11, 12, 13, 14, 15}, 2, []int{10}},
		{[]int{12}, 6, []int{10, 11, 13, 14, 15}},
	}
	for _, tt := range tests {
		if got := freePorts(r, tt.used, tt.n); !slices.Equal(got, tt.want) {
			t.Errorf("freePorts(%v, %d) = %v, want %v", tt.used, tt.n, got, tt.want)
		}
	}
}
