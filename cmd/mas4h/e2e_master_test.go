package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
)

// Ten devices asking in turn are spread over two equal slaves, each tunnel
// comes up on the slave it was given; when one slave stops heartbeating, new
// slots all go to the other after three intervals.
func TestMasterSpreadsDevicesAndFailsOver(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	m := e.startMaster()
	s1, s2 := m.startSlave("s1"), m.startSlave("s2")
	bySlave := map[string]*slaveProc{"s1": s1, "s2": s2}
	waitSlavesAlive(t, m, 2)

	count := map[string]int{}
	var keys []deviceKey
	for i := 0; i < 10; i++ {
		_, k := m.enrol(fmt.Sprintf("dev-%02d", i), fwd(es))
		keys = append(keys, k)
		slot, code, body := m.slot(k)
		if code != 200 {
			t.Fatalf("slot for dev-%02d: %d %s", i, code, body)
		}
		count[slot.Slave]++
		sp := bySlave[slot.Slave]
		if sp == nil || slot.Port != sp.port || slot.Host != "127.0.0.1" || slot.User != e2eTunnelUser || len(slot.HostKeys) == 0 {
			t.Fatalf("slot names an unexpected slave: %+v", slot)
		}
		c := e.tunnelTo(k, slot, es.port)
		p := slot.Forwards[0].RemotePort
		if !waitListen(t, p, c, 10*time.Second) {
			t.Fatalf("dev-%02d tunnel on %s did not come up: %s", i, slot.Slave, c.stderr)
		}
		if err := roundTrip(p); err != nil {
			t.Fatal(err)
		}
	}
	if count["s1"] != 5 || count["s2"] != 5 {
		t.Fatalf("spread %v, want 5/5", count)
	}

	s1.kill9() // heartbeats stop; its sshd and tunnels stay
	testkit.Eventually(t, 3*e2eHeartbeat+5*time.Second, func() bool {
		for _, s := range m.status().Slaves {
			if s.Name == "s1" {
				return !s.Alive
			}
		}
		return false
	}, "the master still counts the silent s1 alive")
	for i := 0; i < 4; i++ {
		slot, code, body := m.slot(keys[i])
		if code != 200 || slot.Slave != "s2" {
			t.Fatalf("after s1 went silent, slot %d: %d %s", i, code, body)
		}
	}
	st := m.status()
	for _, s := range st.Slaves {
		if s.Name == "s1" && s.Alive {
			t.Errorf("status still shows s1 alive: %+v", s)
		}
	}
}

func waitSlavesAlive(t *testing.T, m *masterProc, n int) {
	t.Helper()
	testkit.Eventually(t, 10*time.Second, func() bool {
		alive := 0
		for _, s := range m.status().Slaves {
			if s.Alive {
				alive++
			}
		}
		return alive >= n
	}, "fewer than %d slaves alive", n)
}

func waitTunnelCount(t *testing.T, m *masterProc, n int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	var st wire.Status
	if !testkit.Wait(within, func() bool { st = m.status(); return tunnelsIn(st) == n }) {
		t.Fatalf("status does not list %d tunnels after %s: %+v", n, within, st)
	}
	return time.Since(start)
}

func tunnelsIn(st wire.Status) int {
	n := 0
	for _, s := range st.Slaves {
		if s.Alive {
			n += s.Tunnels
		}
	}
	return n
}

func TestMasterKill9DropsNoTunnel(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	m := e.startMaster()
	sp := m.startSlave("s1")
	waitSlavesAlive(t, m, 1)
	var ports []int
	for i := 0; i < 3; i++ {
		_, k := m.enrol(fmt.Sprintf("dev-%d", i), fwd(es))
		_, _, p := m.connect(k, es)
		ports = append(ports, p)
	}
	waitTunnelCount(t, m, 3, 5*e2eHeartbeat)

	stop := make(chan struct{})
	var fails, checks []*atomic.Int64
	var dones []chan struct{}
	for _, p := range ports {
		f, c, d := watchTunnel(p, stop)
		fails, checks, dones = append(fails, f), append(checks, c), append(dones, d)
	}
	m.kill9()
	// The slave finds it gone and backs off.
	testkit.Eventually(t, 3*e2eHeartbeat+5*time.Second, func() bool { return sp.log.Contains("master unreachable") },
		"the slave did not notice the master was gone:\n%s", sp.log)
	restarted := time.Now()
	m.start()
	// Fresh heartbeats, not rows left from before the crash, must list them.
	var st wire.Status
	if !testkit.Wait(2*e2eHeartbeat+2*time.Second, func() bool {
		st = m.status()
		return len(st.Slaves) == 1 && st.Slaves[0].LastSeen.After(restarted) && tunnelsIn(st) == 3
	}) {
		t.Fatalf("no fresh heartbeat listing 3 tunnels: %+v", st)
	}
	took := time.Since(restarted)
	t.Logf("status lists the 3 tunnels again %s after the master restarted", took.Round(time.Millisecond))
	// A few more round trips through each tunnel with the master back.
	for i := range ports {
		n := checks[i].Load()
		testkit.Eventually(t, 5*time.Second, func() bool { return checks[i].Load() >= n+3 }, "no round trips through port %d", ports[i])
	}
	close(stop)
	for i := range ports {
		<-dones[i]
		if fails[i].Load() != 0 || checks[i].Load() < 10 {
			t.Errorf("tunnel on %d: %d of %d checks failed", ports[i], fails[i].Load(), checks[i].Load())
		}
	}
}

func TestMasterDownCachedDeviceStillConnects(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	m := e.startMaster()
	m.startSlave("s1")
	waitSlavesAlive(t, m, 1)
	_, k := m.enrol("cached", fwd(es))
	slot, c, p := m.connect(k, es)
	c.cmd.Process.Kill()
	<-c.done
	waitClosed(t, p)

	m.kill9()
	// The cached device reconnects to its last slave directly.
	c = e.tunnelTo(k, slot, es.port)
	if !waitListen(t, p, c, 10*time.Second) {
		t.Fatalf("cached device refused while the master is down: %s", c.stderr)
	}
	// An unknown key is refused.
	stranger := e.newKey("stranger")
	strangerSlot := wire.Slot{Host: slot.Host, Port: slot.Port, User: slot.User,
		Forwards: []wire.Forward{{RemotePort: e.portLo + 19}}}
	c2 := e.tunnelTo(stranger, strangerSlot, es.port)
	if code := c2.wait(10 * time.Second); code != 255 {
		t.Fatalf("unknown key while the master is down: status %d", code)
	}
	// Master back: the stranger, once enrolled, connects.
	m.start()
	if _, stderr, code := m.admin("device", "add", "stranger", "--key", stranger.public); code != 0 {
		t.Fatalf("enrol: %s", stderr)
	}
	slot2, code, body := m.slot(stranger)
	if code != 200 {
		t.Fatalf("slot after enrolment: %d %s", code, body)
	}
	var c3 *tunnelClient
	if !testkit.Wait(15*time.Second, func() bool {
		c3 = e.tunnelTo(stranger, slot2, es.port)
		return waitListen(t, slot2.Forwards[0].RemotePort, c3, 5*time.Second)
	}) {
		t.Fatalf("enrolled device still refused: %s", c3.stderr)
	}
}

func TestMasterRevokeKillsSession(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	m := e.startMaster()
	m.startSlave("s1")
	waitSlavesAlive(t, m, 1)
	_, k := m.enrol("pi-revoke", fwd(es))
	_, c, p := m.connect(k, es)
	start := time.Now()
	if _, stderr, code := m.admin("device", "revoke", "pi-revoke"); code != 0 {
		t.Fatal(stderr)
	}
	limit := e2eHeartbeat + 2*time.Second + 500*time.Millisecond // one (jittered) heartbeat + 2 s
	if !testkit.Wait(limit, func() bool { return !dialOK(p) && c.exited() }) {
		t.Fatalf("session still up %s after revoke", time.Since(start))
	}
	t.Logf("session gone %s after revoke on the master", time.Since(start).Round(time.Millisecond))
	if _, code, _ := m.slot(k); code != 403 {
		t.Fatalf("revoked device got a slot: %d", code)
	}
}

func TestExecValidator(t *testing.T) {
	e := newEnv(t)
	es := startEcho(t)
	accepted := e.newKey("accepted")
	refused := e.newKey("refused")
	script := filepath.Join(e.dir, "validate.sh")
	pub := strings.Fields(string(mustRead(t, accepted.public)))[1]
	body := fmt.Sprintf("#!/bin/sh\nkey=$(cat)\ncase \"$key\" in *%s*) echo '{\"device_key\": \"Sensor-42\"}'; exit 0;; esac\nexit 1\n", pub)
	if err := os.WriteFile(script, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	m := e.startMaster("--validator", "exec:"+script)
	m.startSlave("s1")
	waitSlavesAlive(t, m, 1)

	slot, code, body2 := m.slot(accepted)
	if code != 200 {
		t.Fatalf("accepted key: %d %s", code, body2)
	}
	if slot.Device != "sensor-42" {
		t.Errorf("auto-enrolled as %q, want sensor-42", slot.Device)
	}
	c := e.tunnelTo(accepted, slot, es.port)
	if !waitListen(t, slot.Forwards[0].RemotePort, c, 10*time.Second) {
		t.Fatalf("auto-enrolled device's tunnel did not come up: %s", c.stderr)
	}
	out, _, _ := m.admin("device", "show", "sensor-42", "-o", "json")
	if !strings.Contains(out, `"status": "active"`) {
		t.Errorf("device not in the registry: %s", out)
	}
	if _, code, _ := m.slot(refused); code != 403 {
		t.Fatalf("refused key got %d", code)
	}
}

func TestExecValidatorThatHangs(t *testing.T) {
	e := newEnv(t)
	script := filepath.Join(e.dir, "hang.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nsleep 30\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	m := e.startMaster("--validator", "exec:"+script)
	m.startSlave("s1")
	waitSlavesAlive(t, m, 1)
	k := e.newKey("slow")
	start := time.Now()
	_, code, _ := m.slot(k)
	took := time.Since(start)
	if code != 403 || took > 4*time.Second {
		t.Fatalf("hanging validator: status %d after %s, want 403 after ~2 s", code, took)
	}
	t.Logf("denied after %s", took.Round(time.Millisecond))
	// The slave is unaffected: still alive and heartbeating.
	after := time.Now()
	var st wire.Status
	if !testkit.Wait(3*e2eHeartbeat+2*time.Second, func() bool {
		st = m.status()
		return len(st.Slaves) == 1 && st.Slaves[0].Alive && st.Slaves[0].LastSeen.After(after)
	}) {
		t.Fatalf("no heartbeat from the slave after the hanging validator: %+v", st)
	}
}

// A master back from an outage longer than DeadAfter heartbeats grants the
// next slot at once, from its slaves' last state in the store, and hears
// from them within about one interval. It once answered 503 "no live slave
// with room" for 20 s and more: it found every slave silent, and the slaves
// had backed off their heartbeats to 30 s.
func TestMasterBackFromOutageDispatchesAtOnce(t *testing.T) {
	e := newEnv(t)
	m := e.startMaster()
	m.startSlave("s1")
	waitSlavesAlive(t, m, 1)
	_, k := m.enrol("pi-1")
	if _, code, body := m.slot(k); code != 200 {
		t.Fatalf("slot before the outage: %d %s", code, body)
	}
	m.stop()
	time.Sleep(10 * e2eHeartbeat) // the outage: 10 intervals, beyond DeadAfter and the old backoff's 1+2+4 s
	m.start()
	back := time.Now()
	if s, code, body := m.slot(k); code != 200 || s.Slave != "s1" {
		t.Fatalf("first slot after the outage: %d %s, want s1 at once", code, body)
	}
	var st wire.Status
	if !testkit.Wait(5*e2eHeartbeat, func() bool {
		st = m.status()
		return len(st.Slaves) == 1 && st.Slaves[0].LastSeen.After(back)
	}) {
		t.Fatalf("no heartbeat within 5 intervals of the master's return: %+v", st)
	}
	t.Logf("first heartbeat %s after the master came back (interval %s)", st.Slaves[0].LastSeen.Sub(back).Round(time.Millisecond), e2eHeartbeat)
}

// A master whose registry's disk fills up says so: writes answer 503 with
// what is wrong and a Retry-After (they were a plain 500), /healthz says
// 503 degraded (it said ok), a metric counts the failures; dispatch goes
// on (a known slave is still heard, devices still get slots); once space
// is freed the master resumes by itself. The registry lives on a 4 MiB
// tmpfs that a filler file fills.
// fill writes path until its filesystem is full.
func fill(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for {
		if _, err := f.Write(buf); err != nil {
			break // ENOSPC: the disk is full
		}
	}
	f.Close()
}

func TestMasterOnAFullDisk(t *testing.T) {
	e := newEnv(t)
	fs := filepath.Join(e.dir, "small")
	if err := os.MkdirAll(fs, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", fs).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", fs).Run() }) // after the master's own cleanup (LIFO)
	m := &masterProc{e: e, url: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), db: filepath.Join(fs, "master.db"),
		adminToken: filepath.Join(e.dir, "admin.token"), slaveToken: filepath.Join(e.dir, "slave.token")}
	m.start()
	t.Cleanup(m.stop)
	m.startSlave("s1")
	waitSlavesAlive(t, m, 1)
	_, k := m.enrol("pi-1")

	filler := filepath.Join(fs, "filler")
	fill(t, filler)

	// Writes are refused with the reason; health says so.
	var code int
	var stderr string
	pi2 := e.newKey("pi-2")
	testkit.Eventually(t, 10*time.Second, func() bool {
		_, stderr, code = m.admin("device", "add", "pi-2", "--key", pi2.public)
		return code != 0 && strings.Contains(stderr, "the registry cannot be written")
	}, "device add on a full disk: exit %d: %s", code, stderr)
	if !strings.Contains(stderr, "free space on its filesystem") {
		t.Errorf("the refusal does not say what to do: %s", stderr)
	}
	testkit.Eventually(t, 5*e2eHeartbeat, func() bool {
		code, h := m.health()
		return code == http.StatusServiceUnavailable && h.Status == "degraded" && strings.Contains(h.Detail, "cannot be written")
	}, "healthz does not say the registry is unwritable")
	// Dispatch goes on: the slave is still heard, the device still gets
	// its slot, well past DeadAfter heartbeats.
	time.Sleep(4 * e2eHeartbeat) // longer than DeadAfter intervals without a recorded heartbeat
	if s, code, body := m.slot(k); code != 200 || s.Slave != "s1" {
		t.Fatalf("slot on a full disk: %d %s", code, body)
	}
	if !m.log.Contains("the registry cannot be written; answering 503 until a write succeeds") {
		t.Errorf("the master did not log the full disk:\n%s", m.log)
	}
	resp, err := http.Get(m.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !regexp.MustCompile(`(?m)^mas4h_registry_write_failures_total [1-9]`).Match(metrics) {
		t.Errorf("no write failures counted")
	}

	// A master stopped cleanly leaves no -wal or -shm file; started on a
	// full disk it cannot create them. It starts read-only and says so
	// (before, it refused to start: "reading schema version: disk I/O
	// error"); it still validates, dispatches and answers reads.
	m.stop()
	os.Remove(filler)
	m.start()
	m.stop()
	if _, err := os.Stat(filepath.Join(fs, "master.db-wal")); err == nil {
		t.Fatalf("a clean stop left master.db-wal: the read-only start cannot be tested")
	}
	fill(t, filler)
	m.degradedOK = true
	m.start()
	testkit.Eventually(t, 5*e2eHeartbeat, func() bool {
		code, h := m.health()
		return code == http.StatusServiceUnavailable && strings.Contains(h.Detail, "opened read-only") && strings.Contains(h.Detail, "restart the master")
	}, "a master restarted on a full disk does not say it is read-only:\n%s", m.log)
	if s, code, body := m.slot(k); code != 200 || s.Slave != "s1" {
		t.Fatalf("slot from a read-only master: %d %s", code, body)
	}
	if out, stderr, code := m.admin("device", "list"); code != 0 || !strings.Contains(out, "pi-1") {
		t.Errorf("device list from a read-only master: exit %d: %s%s", code, out, stderr)
	}
	if _, stderr, code := m.admin("device", "add", "pi-2", "--key", pi2.public); code == 0 || !strings.Contains(stderr, "read-only") {
		t.Errorf("device add on a read-only master: exit %d: %s", code, stderr)
	}

	// Space freed and the master restarted: all is well.
	os.Remove(filler)
	m.stop()
	m.degradedOK = false
	m.start()
	testkit.Eventually(t, 5*e2eHeartbeat, func() bool {
		resp, err := http.Get(m.url + "/api/v1/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, "healthz still degraded after space was freed")
	if _, stderr, code := m.admin("device", "add", "pi-2", "--key", pi2.public); code != 0 {
		t.Errorf("device add after space was freed: exit %d: %s", code, stderr)
	}
}
