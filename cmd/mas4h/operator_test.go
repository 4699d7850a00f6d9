package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/mas4h/mas4h/master/wire"
)

// The operator, label and events commands say the same against a master
// and on a registry file.
func TestOperatorCommandsSameOutputWithMasterAndDB(t *testing.T) {
	url, dir := startMasterInProcess(t)
	devKeys := map[string]string{}
	for _, d := range []string{"pi-lyon", "pi-paris", "nas-lyon"} {
		sub := filepath.Join(dir, d)
		mkdir(t, sub)
		devKeys[d] = writePubKey(t, sub)
	}
	opDir := filepath.Join(dir, "alice")
	mkdir(t, opDir)
	aliceKey := writePubKey(t, opDir)
	remote := []string{"--master", url, "--token-file", filepath.Join(dir, "state", "admin.token")}
	local := []string{"--db", filepath.Join(dir, "local.db")}

	run := func(mode []string, args ...string) string {
		t.Helper()
		out, stderr, code := cliRun(t, append(args, mode...)...)
		if code != 0 {
			t.Fatalf("%v %v: exit %d: %s", args, mode, code, stderr)
		}
		return out
	}
	norm := func(s string) string {
		var lines []string
		for _, l := range strings.Split(s, "\n") {
			if strings.Contains(l, "created") || strings.Contains(l, "updated_at") || strings.Contains(l, `"at"`) || strings.Contains(l, `"id"`) {
				continue
			}
			lines = append(lines, l)
		}
		return strings.Join(lines, "\n")
	}
	for _, args := range [][]string{
		{"device", "add", "pi-lyon", "--key", devKeys["pi-lyon"], "--label", "site=lyon"},
		{"device", "add", "pi-paris", "--key", devKeys["pi-paris"], "--label", "site=paris", "--label", "role=router"},
		{"device", "add", "nas-lyon", "--key", devKeys["nas-lyon"], "--label", "site=lyon", "-o", "json"},
		{"device", "list", "--selector", "site=lyon"},
		{"device", "list", "--selector", "pi-*", "--selector", "role=router", "-o", "json"},
		{"operator", "add", "alice", "--key", aliceKey, "--allow", "site=lyon"},
		{"operator", "list"},
		{"operator", "allow", "alice", "pi-*", "-o", "json"},
		{"operator", "deny", "alice", "site=lyon"},
		{"device", "label", "pi-paris", "floor=2", "role-"},
		{"operator", "show", "alice", "-o", "json"},
		{"operator", "revoke", "alice"},
		{"operator", "list", "-o", "json"},
		{"events", "--operator", "alice", "-o", "json"},
		{"operator", "rm", "alice", "-o", "json"},
	} {
		r, l := run(remote, args...), run(local, args...)
		if norm(r) != norm(l) {
			t.Errorf("%v: output differs\n--master:\n%s\n--db:\n%s", args, r, l)
		}
	}

	// What they say is right.
	var devs []wire.Device
	if err := json.Unmarshal([]byte(run(local, "device", "list", "--selector", "site=lyon", "-o", "json")), &devs); err != nil {
		t.Fatal(err)
	}
	if len(devs) != 2 || devs[0].Name != "nas-lyon" || devs[1].Name != "pi-lyon" {
		t.Errorf("site=lyon: %+v", devs)
	}
	var dev wire.Device
	if err := json.Unmarshal([]byte(run(remote, "device", "show", "pi-paris", "-o", "json")), &dev); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(dev.Labels, map[string]string{"site": "paris", "floor": "2"}) {
		t.Errorf("pi-paris labels: %v", dev.Labels)
	}
	var evs []wire.Event
	if err := json.Unmarshal([]byte(run(remote, "events", "--operator", "alice", "-o", "json")), &evs); err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, e := range evs {
		kinds = append(kinds, e.Kind)
	}
	if want := []string{"operator-enrol", "operator-allow", "operator-allow", "operator-revoke", "operator-rm"}; !reflect.DeepEqual(kinds, want) {
		t.Errorf("events: %v, want %v", kinds, want)
	}
	if out := run(remote, "events", "--device", "pi-paris"); !strings.Contains(out, "labels") || !strings.Contains(out, "floor=2 role-") {
		t.Errorf("events --device pi-paris:\n%s", out)
	}
}

func TestOperatorUsageErrors(t *testing.T) {
	t.Setenv("MAS4H_MASTER", "")
	dir := t.TempDir()
	db := filepath.Join(dir, "r.db")
	key := writePubKey(t, dir)
	for _, tc := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"operator", "add", "Alice", "--key", key, "--db", db}, exitUsage, "operator name must be"},
		{[]string{"operator", "add", "alice", "--db", db}, exitUsage, "--key is required"},
		{[]string{"operator", "add", "alice", "--key", key, "--allow", "pi-[", "--db", db}, exitUsage, "malformed glob"},
		{[]string{"operator", "add", "alice", "--key", key, "--allow", "site=a b", "--db", db}, exitUsage, "value must be"},
		{[]string{"operator", "allow", "alice", "--db", db}, exitUsage, "an operator NAME and a selector SEL"},
		{[]string{"operator", "list"}, exitUsage, "no registry given"},
		{[]string{"device", "add", "pi", "--key", key, "--label", "site", "--db", db}, exitUsage, "KEY=VALUE"},
		{[]string{"device", "add", "pi", "--key", key, "--label", "a=1", "--label", "a=2", "--db", db}, exitUsage, "given twice"},
		{[]string{"device", "list", "--selector", "Pi*", "--db", db}, exitUsage, "selector must be"},
		{[]string{"device", "label", "pi", "--db", db}, exitUsage, "at least one K=V"},
		{[]string{"events", "--operator", "x y", "--db", db}, exitUsage, "operator name must be"},
		{[]string{"events", "--since", "yesterday", "--db", db}, exitUsage, "--since must be"},
	} {
		_, stderr, code := cliRun(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.msg) {
			t.Errorf("%v: exit %d, %q; want %d with %q", tc.args, code, stderr, tc.code, tc.msg)
		}
	}
	// None of that created the registry, and a good add on it works.
	if _, stderr, code := cliRun(t, "operator", "list", "--db", db); code != exitFail || !strings.Contains(stderr, "does not exist") {
		t.Errorf("list on a missing registry: %d %s", code, stderr)
	}
	if _, stderr, code := cliRun(t, "operator", "add", "alice", "--key", key, "--db", db); code != 0 {
		t.Fatalf("add: %s", stderr)
	}
	if _, stderr, code := cliRun(t, "device", "add", "pi", "--key", key, "--db", db); code != exitFail || !strings.Contains(stderr, "operator \"alice\"'s") {
		t.Errorf("device with an operator's key: %d %s", code, stderr)
	}
	if _, stderr, code := cliRun(t, "operator", "deny", "alice", "site=lyon", "--db", db); code != exitFail || !strings.Contains(stderr, "not on the allow list") {
		t.Errorf("deny absent selector: %d %s", code, stderr)
	}
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}
