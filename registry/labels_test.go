package registry

import (
	"errors"
	"strings"
	"testing"
)

func TestParseSelector(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Selector
		bad  bool
	}{
		{in: "pi-*", want: Selector{Glob: "pi-*"}},
		{in: "pi-kitchen", want: Selector{Glob: "pi-kitchen"}},
		{in: "router-[0-9]?", want: Selector{Glob: "router-[0-9]?"}},
		{in: "*", want: Selector{Glob: "*"}},
		{in: "site=lyon", want: Selector{Key: "site", Value: "lyon"}},
		{in: "example.com/role=Router_1", want: Selector{Key: "example.com/role", Value: "Router_1"}},
		{in: "site=", want: Selector{Key: "site"}},
		{in: "", bad: true},
		{in: "Pi-*", bad: true},            // upper case: no device is named so
		{in: "pi-[", bad: true},            // unbalanced
		{in: `pi-\*`, bad: true},           // no escapes
		{in: "=lyon", bad: true},           // empty key
		{in: "Site=lyon", bad: true},       // key alphabet
		{in: "site=lyon paris", bad: true}, // value alphabet
		{in: "site=a=b", bad: true},        // '=' in the value
		{in: "site=lyon\n", bad: true},     // control character
		{in: "pi-*\x00", bad: true},        // NUL
		{in: strings.Repeat("a", 64), bad: true},
		{in: "k=" + strings.Repeat("v", 64), bad: true},
		{in: "../*", bad: true},
	} {
		got, err := ParseSelector(tc.in)
		if tc.bad {
			if err == nil || !errors.Is(err, ErrInvalid) {
				t.Errorf("ParseSelector(%q) = %+v, %v; want an ErrInvalid", tc.in, got, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseSelector(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			continue
		}
		if again, err := ParseSelector(got.String()); err != nil || again != got {
			t.Errorf("ParseSelector(%q.String()) = %+v, %v; want it back", tc.in, again, err)
		}
	}
}

func TestMatchSelector(t *testing.T) {
	lyon := map[string]string{"site": "lyon", "role": "router"}
	for _, tc := range []struct {
		sel    string
		name   string
		labels map[string]string
		want   bool
	}{
		{"pi-*", "pi-kitchen", nil, true},
		{"pi-*", "nas-1", nil, false},
		{"pi-?", "pi-1", nil, true},
		{"pi-?", "pi-10", nil, false},
		{"site=lyon", "x", lyon, true},
		{"site=paris", "x", lyon, false},
		{"site=lyon", "x", nil, false},
		{"role=", "x", map[string]string{"role": ""}, true},
		{"role=", "x", nil, false}, // an empty value is a value: the key must be there
		{"*", "anything", nil, true},
	} {
		sel, err := ParseSelector(tc.sel)
		if err != nil {
			t.Fatal(err)
		}
		if got := MatchSelector(sel, tc.name, tc.labels); got != tc.want {
			t.Errorf("MatchSelector(%s, %s, %v) = %v, want %v", tc.sel, tc.name, tc.labels, got, tc.want)
		}
	}
	if MatchAny(nil, "pi-1", lyon) {
		t.Error("an empty allow list selects something")
	}
}

func TestParseLabel(t *testing.T) {
	for _, tc := range []struct {
		in   string
		k, v string
		bad  bool
	}{
		{in: "site=lyon", k: "site", v: "lyon"},
		{in: "a.b/c-d=X_1.2", k: "a.b/c-d", v: "X_1.2"},
		{in: "empty=", k: "empty"},
		{in: "site", bad: true},
		{in: "-x=1", bad: true},
		{in: "site=$(reboot)", bad: true},
		{in: "site=lyon;rm", bad: true},
		{in: "s\u00e9=x", bad: true},
	} {
		k, v, err := ParseLabel(tc.in)
		if tc.bad != (err != nil) || k != tc.k || v != tc.v {
			t.Errorf("ParseLabel(%q) = %q, %q, %v", tc.in, k, v, err)
		}
	}
}
