package hookclient

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/sshd/statedir"
)

// run runs the hook and returns its exit status, output and the command line
// it exec'd (nil: none).
func run(t *testing.T, args []string, start time.Time) (int, string, []string) {
	t.Helper()
	var out bytes.Buffer
	var execd []string
	p := Process{
		Start:      start,
		Stdout:     &out,
		Executable: func() (string, error) { return "/s/bin/mas4h-authkeys", nil },
		Exec:       func(argv []string) error { execd = argv; return errors.New("exec refused in tests") },
	}
	code := Run(p, args)
	return code, out.String(), execd
}

// stateDir is a state dir whose daemon answers reply (nil: no daemon).
func stateDir(t *testing.T, reply *Reply) string {
	t.Helper()
	if reply == nil {
		return t.TempDir()
	}
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "run"), 0o755); err != nil {
		t.Fatal(err)
	}
	fakeDaemonAt(t, statedir.Dir(dir).Socket(), answer(t, *reply))
	return dir
}

func hookArgs(dir string) []string {
	return []string{"--state-dir", dir, "--", testReq.User, testReq.Fingerprint, testReq.KeyType, testReq.Key}
}

func TestRunPrintsTheDaemonsLines(t *testing.T) {
	dir := stateDir(t, &Reply{Allow: true, Device: "pi", Lines: []string{"restrict a", "restrict b"}})
	code, out, execd := run(t, hookArgs(dir), time.Now())
	if code != 0 || out != "restrict a\nrestrict b\n" || execd != nil {
		t.Fatalf("exit %d, output %q, exec %q", code, out, execd)
	}
}

// A refusal is final: no output, exit 1, and no second opinion from the cache.
func TestRunDeniesWhatTheDaemonRefuses(t *testing.T) {
	for _, r := range []Reply{
		{Device: "pi", Reason: "device is revoked"},
		{Allow: true}, // no lines
		{Allow: true, Lines: []string{"restrict a\nrestrict b"}},
	} {
		code, out, execd := run(t, hookArgs(stateDir(t, &r)), time.Now())
		if code != 1 || out != "" || execd != nil {
			t.Errorf("%+v: exit %d, output %q, exec %q", r, code, out, execd)
		}
	}
}

// Without a daemon the hook hands over to the full binary next to it, with
// the same arguments and what is left of the budget.
func TestRunFallsBackToTheCache(t *testing.T) {
	dir := stateDir(t, nil)
	code, out, execd := run(t, hookArgs(dir), time.Now().Add(-400*time.Millisecond))
	if code != 1 || out != "" || len(execd) != 12 {
		t.Fatalf("exit %d, output %q, exec %q", code, out, execd)
	}
	want := "/s/bin/mas4h authkeys --cache-only --budget-ms N --state-dir " + dir + " -- " +
		strings.Join([]string{testReq.User, testReq.Fingerprint, testReq.KeyType, testReq.Key}, " ")
	budget, err := strconv.Atoi(execd[4])
	execd[4] = "N"
	if got := strings.Join(execd, " "); got != want || err != nil || budget > 1500 || budget < 1000 {
		t.Errorf("exec'd %s (budget %d ms)\nwant %s (budget about 1500 ms)", got, budget, want)
	}
}

func TestRunRefusesWithoutAsking(t *testing.T) {
	dir := stateDir(t, &Reply{Allow: true, Lines: []string{"restrict a"}})
	for name, args := range map[string][]string{
		"bad user":          {"--state-dir", dir, "--", "$(id)", testFP, "ssh-ed25519", testKey},
		"too few":           {"--state-dir", dir, "--", "mas4h-tunnel"},
		"relative dir":      {"--state-dir", "s", "--", testReq.User, testFP, "ssh-ed25519", testKey},
		"cache-only (lean)": append([]string{"--cache-only"}, hookArgs(dir)...),
	} {
		code, out, execd := run(t, args, time.Now())
		if code != 1 || out != "" || execd != nil {
			t.Errorf("%s: exit %d, output %q, exec %q", name, code, out, execd)
		}
	}
	// Budget spent before the daemon failed: deny, no fallback.
	code, out, execd := run(t, hookArgs(stateDir(t, nil)), time.Now().Add(-TotalBudget))
	if code != 1 || out != "" || execd != nil {
		t.Errorf("spent budget: exit %d, output %q, exec %q", code, out, execd)
	}
}
