package master

import (
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mas4h/mas4h/master/validator"
	"github.com/mas4h/mas4h/master/wire"
)

func writeScript(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "validate")
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestExecValidatorAcceptsOneKeyAndEnrolsIt(t *testing.T) {
	key, ak := newKey(t)
	_ = key
	// Accepts exactly ak (compared as the first two fields of stdin).
	script := writeScript(t, `read -r type b64 rest
if [ "$type $b64" = "`+ak+`" ]; then
  printf '{"device_key": "Kitchen Pi #1", "site": "home"}\n'
  exit 0
fi
echo "unknown key $MAS4H_FINGERPRINT" >&2
exit 1
`)
	e := newEnv(t, func(c *Config) { c.Validator = &validator.Exec{Path: script} })
	e.beat("s1", heartbeatOf(10))

	s := e.slot(ak)
	if s.Device != "kitchen-pi--1" || s.Slave != "s1" || len(s.Forwards) != 1 || s.Forwards[0].Target != "localhost:22" || s.Forwards[0].RemotePort != 20000 {
		t.Fatalf("slot of the accepted key = %+v", s)
	}
	enrol := e.events("?kind=enrol")
	if len(enrol) != 1 || enrol[0].Device != "kitchen-pi--1" || !strings.Contains(enrol[0].Detail, "auto-enrolled by exec validator") {
		t.Errorf("enrol events = %+v", enrol)
	}
	// The second time, it is a known device: no second enrolment.
	if s2 := e.slot(ak); s2.Device != s.Device {
		t.Errorf("second slot = %+v", s2)
	}
	if n := len(e.events("?kind=enrol")); n != 1 {
		t.Errorf("%d enrol events after two slots", n)
	}

	_, other := newKey(t)
	resp, body := e.do("POST", "/slots", "", e.signed(other))
	if resp.StatusCode != http.StatusForbidden || !strings.Contains(string(body), "key not accepted") {
		t.Errorf("refused key = %d %s", resp.StatusCode, body)
	}
	denies := e.events("?kind=deny")
	if len(denies) != 1 || !strings.Contains(denies[0].Detail, "exec validator") {
		t.Errorf("deny events = %+v", denies)
	}
	var list []wire.Device
	e.want("GET", "/devices", adminTok, nil, http.StatusOK, &list)
	if len(list) != 1 {
		t.Errorf("devices = %+v", list)
	}

	// Revoked in the registry: refused whatever the script says.
	e.want("POST", "/devices/"+s.Device+"/revoke", adminTok, nil, http.StatusOK, nil)
	e.want("POST", "/slots", "", e.signed(ak), http.StatusForbidden, nil)
	e.want("POST", "/validate", slaveTok, wire.ValidateRequest{PublicKey: ak}, http.StatusForbidden, nil)
}

func TestExecValidatorThatHangsIsDenied(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "child.pid")
	script := writeScript(t, `sleep 30 &
echo $! > `+pidFile+`
wait
`)
	e := newEnv(t, func(c *Config) { c.Validator = &validator.Exec{Path: script} })
	e.beat("s1", heartbeatOf(10))
	_, ak := newKey(t)

	type result struct {
		status int
		took   time.Duration
	}
	done := make(chan result, 1)
	go func() {
		start := time.Now()
		resp, _ := e.do("POST", "/validate", slaveTok, wire.ValidateRequest{PublicKey: ak})
		done <- result{resp.StatusCode, time.Since(start)}
	}()
	// Meanwhile the master answers others at once.
	time.Sleep(300 * time.Millisecond)
	for range 5 {
		start := time.Now()
		e.want("GET", "/status", adminTok, nil, http.StatusOK, nil)
		if d := time.Since(start); d > 500*time.Millisecond {
			t.Errorf("status took %s while a validator hung", d)
		}
	}
	r := <-done
	if r.status != http.StatusForbidden || r.took < 1900*time.Millisecond || r.took > 4*time.Second {
		t.Errorf("hanging validator: %d after %s, want 403 after ~2 s", r.status, r.took)
	}
	// The script's child went with its process group.
	data, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(data)))
	deadline := time.Now().Add(2 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		// A zombie awaiting its reaper still answers kill 0; look at its state.
		if st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil && strings.Contains(string(st), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("validator's child %d still running", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if denies := e.events("?kind=deny"); len(denies) != 1 || !strings.Contains(denies[0].Detail, "no answer within 2s") {
		t.Errorf("deny events = %+v", denies)
	}
}
