package launchd

import (
	"reflect"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/internal/testkit"
)

// The plist is what launchd reads: an XML property list (parsed here by
// Python's plistlib) with the keys a KeepAlive daemon needs, every
// argument surviving the trip whatever characters it holds.
func TestPlistParses(t *testing.T) {
	args := []string{"/usr/local/libexec/mas4h/mas4h-agent", "--master=https://m.example:8443/a?b=1&c=<2>", "--key=/etc/mas4h/it's \"a\" key", "--x=]]>&amp;"}
	b, err := Plist(Job{Label: "net.mas4h.agent", Program: args, LogPath: "/var/log/mas4h-agent.log",
		ThrottleInterval: 5, ExitTimeOut: 15, Comment: "managed by mas4h"})
	if err != nil {
		t.Fatal(err)
	}
	d := testkit.Plist(t, b)
	var got []string
	for _, a := range d["ProgramArguments"].([]any) {
		got = append(got, a.(string))
	}
	if !reflect.DeepEqual(got, args) {
		t.Errorf("ProgramArguments %q, want %q", got, args)
	}
	for k, want := range map[string]any{
		"Label": "net.mas4h.agent", "RunAtLoad": true, "KeepAlive": true,
		"StandardOutPath": "/var/log/mas4h-agent.log", "StandardErrorPath": "/var/log/mas4h-agent.log",
		"ThrottleInterval": 5.0, "ExitTimeOut": 15.0, "Umask": 63.0,
	} {
		if d[k] != want {
			t.Errorf("%s = %#v, want %#v", k, d[k], want)
		}
	}
	if len(d) != 9 {
		t.Errorf("keys %v, want 9", d)
	}
	if !strings.Contains(string(b), "<!-- managed by mas4h -->") {
		t.Errorf("no managed-by comment:\n%s", b)
	}
}

func TestPlistRefuses(t *testing.T) {
	ok := Job{Label: "net.mas4h.agent", Program: []string{"/bin/x"}, LogPath: "/var/log/x.log"}
	for name, mod := range map[string]func(*Job){
		"label with a slash": func(j *Job) { j.Label = "net/mas4h" },
		"no label":           func(j *Job) { j.Label = "" },
		"relative program":   func(j *Job) { j.Program = []string{"mas4h-agent"} },
		"no program":         func(j *Job) { j.Program = nil },
		"relative log":       func(j *Job) { j.LogPath = "x.log" },
		"comment with --":    func(j *Job) { j.Comment = "a -- b" },
	} {
		j := ok
		mod(&j)
		if _, err := Plist(j); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	if _, err := Plist(ok); err != nil {
		t.Errorf("a good job: %v", err)
	}
}
