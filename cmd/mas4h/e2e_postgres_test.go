package main

// End-to-end tests of masters on PostgreSQL: real `mas4h master`
// processes on a cluster the test starts (internal/pgcluster), real slaves,
// sshd and ssh clients.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/pgcluster"
	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// startPostgres starts a PostgreSQL cluster for this test (stopped and
// removed after it) and returns it with a fresh database's URL.
func (e *env) startPostgres() (*pgcluster.Cluster, string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgcluster.Start(ctx, "", false)
	if err != nil {
		e.t.Fatalf("starting PostgreSQL (Debian: apt-get install postgresql): %v", err)
	}
	e.t.Cleanup(c.Destroy)
	u, err := c.NewDatabase(ctx, "mas4h")
	if err != nil {
		e.t.Fatal(err)
	}
	return c, u
}

// startMasterDB starts a master on the registry at db (a postgres:// URL),
// with the env's one admin token file: masters of one fleet share it.
func (e *env) startMasterDB(db string, extra ...string) *masterProc {
	e.t.Helper()
	m := &masterProc{e: e, url: fmt.Sprintf("http://127.0.0.1:%d", freePort(e.t)), db: db,
		adminToken: filepath.Join(e.dir, "admin.token"), extra: extra}
	m.start()
	e.t.Cleanup(m.stop)
	return m
}

// enroller adds devices through one master's API as fast as it answers,
// keeping the names it acknowledged (201) and what else it was told.
type enroller struct {
	m       *masterProc
	mu      sync.Mutex
	acked   []string
	unavail int    // 503s with a Retry-After
	other   string // the first answer that was neither
	stop    chan struct{}
	done    chan struct{}
}

func (m *masterProc) startEnroller(prefix string) *enroller {
	en := &enroller{m: m, stop: make(chan struct{}), done: make(chan struct{})}
	tok := strings.TrimSpace(string(mustRead(m.e.t, m.adminToken)))
	go func() {
		defer close(en.done)
		for i := 0; ; i++ {
			select {
			case <-en.stop:
				return
			default:
			}
			name := fmt.Sprintf("%s-%d", prefix, i)
			k := testkit.NewKey(m.e.t, "")
			body, _ := json.Marshal(wire.AddDeviceRequest{Name: name, PublicKey: registry.AuthorizedKey(k.Public)})
			req, _ := http.NewRequest("POST", m.url+wire.APIPrefix+"/devices", bytes.NewReader(body))
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				time.Sleep(100 * time.Millisecond)
				continue
			}
			var msg bytes.Buffer
			msg.ReadFrom(resp.Body)
			resp.Body.Close()
			en.mu.Lock()
			switch {
			case resp.StatusCode == http.StatusCreated:
				en.acked = append(en.acked, name)
			case resp.StatusCode == http.StatusServiceUnavailable && resp.Header.Get("Retry-After") != "":
				en.unavail++
				if !strings.Contains(msg.String(), "does not answer") && en.other == "" {
					en.other = fmt.Sprintf("503 without the reason: %s", msg.String())
				}
			default:
				if en.other == "" {
					en.other = fmt.Sprintf("%d %s", resp.StatusCode, msg.String())
				}
			}
			en.mu.Unlock()
			if resp.StatusCode != http.StatusCreated {
				time.Sleep(50 * time.Millisecond)
			}
		}
	}()
	return en
}

func (en *enroller) finish() (acked []string, unavail int, other string) {
	close(en.stop)
	<-en.done
	en.mu.Lock()
	defer en.mu.Unlock()
	return en.acked, en.unavail, en.other
}

func (en *enroller) String() string {
	en.mu.Lock()
	defer en.mu.Unlock()
	return fmt.Sprintf("%d acknowledged, %d unavailable, other: %s", len(en.acked), en.unavail, en.other)
}

func (en *enroller) count() int {
	en.mu.Lock()
	defer en.mu.Unlock()
	return len(en.acked)
}

// PostgreSQL restarted under load: the master answers 503 with a
// Retry-After and the reason while the server is down, the tunnel stays
// up and the slave stays heard, the master reconnects by itself, and
// every enrolment it acknowledged is in the registry.
func TestPostgreSQLRestartUnderLoad(t *testing.T) {
	e := newEnv(t)
	pg, db := e.startPostgres()
	// Room for the enroller's devices (leases only: none of them connects);
	// pi-1, enrolled first, gets the env's first free port.
	m := e.startMasterDB(db, "--port-range", fmt.Sprintf("%d-%d", e.portLo, e.portLo+5000))
	m.startSlaveOwn("s1")
	waitSlavesAlive(t, m, 1)
	_, k := m.enrol("pi-1")
	es := startEcho(t)
	_, _, port := m.connect(k, es)
	stopWatch := make(chan struct{})
	failures, checks, watchDone := watchTunnel(port, stopWatch)
	en := m.startEnroller("load")
	testkit.Eventually(t, 10*time.Second, func() bool { return en.count() >= 20 }, "no enrolment went through before the restart: %s", en)

	ctx := context.Background()
	if err := pg.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	testkit.Eventually(t, 10*time.Second, func() bool {
		code, h := m.health()
		return code == http.StatusServiceUnavailable && strings.Contains(h.Detail, "does not answer")
	}, "healthz does not say the database is down")
	// Longer than DeadAfter heartbeat intervals: the slave must not be
	// declared dead for want of a database to record its heartbeats.
	time.Sleep(4 * e2eHeartbeat)
	if s, code, body := m.slot(k); code != http.StatusOK && code != http.StatusServiceUnavailable {
		t.Errorf("slot with PostgreSQL down = %d %s (%+v), want a grant or a 503", code, body, s)
	}
	before := en.count()
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	down := time.Since(stopped)
	testkit.Eventually(t, 30*time.Second, func() bool { return en.count() > before+5 }, "the master did not recover after PostgreSQL came back")
	recovered := time.Since(stopped) - down
	acked, unavail, other := en.finish()
	close(stopWatch)
	<-watchDone
	fails, ok := failures.Load(), checks.Load()-failures.Load()
	t.Logf("PostgreSQL down %s; the master took enrolments again %s after it was back; %d enrolments acknowledged, %d answered 503; tunnel checks %d ok, %d failed",
		down.Round(time.Millisecond), recovered.Round(time.Millisecond), len(acked), unavail, ok, fails)
	if other != "" {
		t.Errorf("an enrolment got another answer than 201 or 503-with-reason: %s", other)
	}
	if unavail == 0 {
		t.Errorf("no enrolment was refused with 503 while PostgreSQL was down")
	}
	if fails > 0 {
		t.Errorf("the tunnel failed %d of %d checks across the restart", fails, ok+fails)
	}
	st, err := registry.Open(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	for _, name := range acked {
		if _, err := st.Device(ctx, name); err != nil {
			t.Errorf("acknowledged device %s: %v", name, err)
		}
	}
	if s, code, body := m.slot(k); code != 200 || s.Slave != "s1" {
		t.Errorf("slot after the restart = %d %s", code, body)
	}
	if !m.log.Contains("the registry's database does not answer; answering 503 until it does") {
		t.Errorf("the master's log does not tell the outage:\n%s", m.log)
	}
}

// A master started before its PostgreSQL waits for it (a unit ordering
// mistake, or a database failing over), and one given a database URL it
// cannot use says what is wrong and exits.
func TestMasterWaitsForPostgreSQL(t *testing.T) {
	e := newEnv(t)
	pg, db := e.startPostgres()
	ctx := context.Background()
	if err := pg.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	m := &masterProc{e: e, url: fmt.Sprintf("http://127.0.0.1:%d", freePort(t)), db: db, adminToken: filepath.Join(e.dir, "admin.token")}
	go func() {
		testkit.Eventually(t, 20*time.Second, func() bool { return m.log != nil && m.log.Contains("does not answer; trying again") }, "no retry logged")
		if err := pg.Start(ctx); err != nil {
			t.Error(err)
		}
	}()
	m.start() // returns once /healthz answers: after PostgreSQL is back
	t.Cleanup(m.stop)

	for _, tc := range []struct{ db, want string }{
		{"mysql://u@127.0.0.1/x", "is not a registry this build knows"},
		{strings.Replace(db, "postgres@", "nobody:s3cret@", 1), "does not answer"},
	} {
		out, stderr, code := e.mas4h("", "master", "--listen", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--db", tc.db,
			"--admin-token-file", filepath.Join(e.dir, "admin.token"))
		if code == 0 || !strings.Contains(stderr, tc.want) || strings.Contains(stderr+out, "s3cret") {
			t.Errorf("master --db %s: exit %d, want an error with %q and no password:\n%s%s", registry.Redact(tc.db), code, tc.want, out, stderr)
		}
	}
	if _, err := os.Stat("mysql:"); err == nil {
		t.Errorf("a refused URL left a directory behind")
	}
}

// Two masters on one PostgreSQL, two slaves and agents that know both
// masters: kill -9 one master while everything runs. No tunnel drops;
// devices enrolled after the kill (through the admin CLI, which fails over)
// get their tunnels through the other master; the slaves move their
// heartbeats to it and stay alive there; load is spread over both slaves
// by both masters; a revoke through the restarted master reaches the slave
// whichever master it now heartbeats to; no enrolment is lost.
func TestTwoMastersOnPostgreSQLSurviveAKill(t *testing.T) {
	e := newEnv(t)
	_, db := e.startPostgres()
	a := e.startMasterDB(db)
	b := e.startMasterDB(db)
	both := a.url + "," + b.url
	for _, name := range []string{"s1", "s2"} {
		e.startSlaveWith(name, "--master", both, "--token-file", a.addSlave(name), "--public-host", "127.0.0.1")
	}
	waitSlavesAlive(t, a, 2)
	waitSlavesAlive(t, b, 2)
	es := startEcho(t)

	type device struct {
		name string
		port int
		key  deviceKey
	}
	var devices []device
	startAgent := func(d device) {
		e.startDevProc(nil, testBin, "agent", "--master", both, "--insecure-http", "--key", d.key.private,
			"--state-dir", filepath.Join(e.dir, "agent-"+d.name), "--ssh-client", "openssh", "--log-level", "debug")
	}
	waitUp := func(d device) {
		t.Helper()
		testkit.Eventually(t, 30*time.Second, func() bool { return roundTrip(d.port) == nil }, "the tunnel of %s did not come up", d.name)
	}
	for i := range 4 {
		dev, k := a.enrol(fmt.Sprintf("pi-%d", i), fmt.Sprintf("ssh=127.0.0.1:%d", es.port))
		d := device{dev.Name, dev.Forwards[0].RemotePort, k}
		devices = append(devices, d)
		startAgent(d)
	}
	for _, d := range devices {
		waitUp(d)
	}
	perSlave := map[string]int{}
	testkit.Eventually(t, 5*e2eHeartbeat, func() bool {
		clear(perSlave)
		for _, sl := range b.status().Slaves {
			perSlave[sl.Name] = sl.Tunnels
		}
		return perSlave["s1"]+perSlave["s2"] == 4
	}, "B does not list the 4 tunnels: %v", perSlave)
	if perSlave["s1"] == 0 || perSlave["s2"] == 0 {
		t.Errorf("4 devices over 2 slaves through 2 masters: %v, want both slaves used", perSlave)
	}

	stop := make(chan struct{})
	type watch struct {
		name             string
		failures, checks interface{ Load() int64 }
		done             chan struct{}
	}
	var watches []watch
	for _, d := range devices {
		f, c, done := watchTunnel(d.port, stop)
		watches = append(watches, watch{d.name, f, c, done})
	}

	a.kill9()
	killed := time.Now()
	for i := 4; i < 6; i++ {
		k := e.newKey(fmt.Sprintf("pi-%d", i))
		out, stderr, code := e.mas4h("", "device", "add", k.name, "--key", k.public, "--forward", fmt.Sprintf("ssh=127.0.0.1:%d", es.port),
			"--master", both, "--token-file", a.adminToken, "-o", "json")
		if code != 0 {
			t.Fatalf("device add %s with master A dead: exit %d: %s", k.name, code, stderr)
		}
		var dev wire.Device
		if err := json.Unmarshal([]byte(out), &dev); err != nil {
			t.Fatalf("device add output: %v: %s", err, out)
		}
		d := device{dev.Name, dev.Forwards[0].RemotePort, k}
		devices = append(devices, d)
		startAgent(d)
	}
	for _, d := range devices[4:] {
		waitUp(d)
	}
	t.Logf("2 devices enrolled and connected through B %s after A was killed", time.Since(killed).Round(time.Millisecond))
	// Past DeadAfter heartbeat intervals: the slaves beat to B now.
	time.Sleep(time.Duration(registry.DeadAfter+1) * e2eHeartbeat)
	waitSlavesAlive(t, b, 2)
	close(stop)
	for _, w := range watches {
		<-w.done
		if n := w.failures.Load(); n > 0 {
			t.Errorf("the tunnel of %s failed %d of %d checks after master A was killed", w.name, n, w.checks.Load())
		}
	}

	a.start()
	if _, stderr, code := a.admin("device", "revoke", "pi-0"); code != 0 {
		t.Fatalf("revoke through the restarted A: exit %d: %s", code, stderr)
	}
	revoked := time.Now()
	testkit.Eventually(t, 15*time.Second, func() bool { return roundTrip(devices[0].port) != nil },
		"pi-0's tunnel still carries bytes after its revoke through A")
	t.Logf("pi-0's tunnel ended %s after its revoke through the restarted A", time.Since(revoked).Round(time.Millisecond))
	for _, d := range devices[1:] {
		if err := roundTrip(d.port); err != nil {
			t.Errorf("the tunnel of %s after pi-0's revoke: %v", d.name, err)
		}
	}
	var listed []wire.Device
	out, stderr, code := b.admin("device", "list", "-o", "json")
	if code != 0 {
		t.Fatalf("device list through B: exit %d: %s", code, stderr)
	}
	if err := json.Unmarshal([]byte(out), &listed); err != nil || len(listed) != len(devices) {
		t.Errorf("B lists %d devices (%v), want %d", len(listed), err, len(devices))
	}
}

// A manual switchover of PostgreSQL, as its own failover tooling would
// do it: the master's URL names the primary and a streaming replica
// (libpq's multi-host form, target_session_attrs=read-write); the primary
// dies, the replica is promoted, and the master carries on by itself,
// with everything it acknowledged before (the replica had caught up) and
// the tunnel up throughout.
func TestPostgreSQLSwitchover(t *testing.T) {
	e := newEnv(t)
	primary, db := e.startPostgres()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	replica, err := pgcluster.StartReplica(ctx, primary, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(replica.Destroy)
	both := strings.Replace(db, primary.Host(), primary.Host()+","+replica.Host(), 1) + "&target_session_attrs=read-write"
	m := e.startMasterDB(both)
	m.startSlaveOwn("s1")
	waitSlavesAlive(t, m, 1)
	_, k := m.enrol("pi-1")
	es := startEcho(t)
	_, _, port := m.connect(k, es)
	stop := make(chan struct{})
	failures, checks, watchDone := watchTunnel(port, stop)
	m.enrol("pi-2")
	// The replica has caught up with pi-2 (asynchronous replication: what
	// it has not received when the primary dies is lost; use synchronous
	// replication to lose nothing acknowledged).
	onReplica := strings.Replace(db, primary.Host(), replica.Host(), 1)
	testkit.Eventually(t, 10*time.Second, func() bool {
		st, err := registry.Open(ctx, onReplica+"&default_transaction_read_only=on")
		if err != nil {
			return false
		}
		defer st.Close()
		_, err = st.Device(ctx, "pi-2")
		return err == nil
	}, "the replica did not receive pi-2")

	if err := primary.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	if err := replica.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	var stderr string
	var code int
	k3 := e.newKey("pi-3")
	testkit.Eventually(t, 30*time.Second, func() bool {
		_, stderr, code = m.admin("device", "add", "pi-3", "--key", k3.public)
		return code == 0
	}, "the master takes no enrolment after the switchover: exit %d: %s", code, stderr)
	t.Logf("enrolments again %s after the primary died (the promotion included)", time.Since(killed).Round(time.Millisecond))
	out, stderr, code := m.admin("device", "list")
	for _, name := range []string{"pi-1", "pi-2", "pi-3"} {
		if code != 0 || !strings.Contains(out, name) {
			t.Errorf("device list after the switchover lacks %s: exit %d: %s%s", name, code, out, stderr)
		}
	}
	if s, code, body := m.slot(k); code != 200 || s.Slave != "s1" {
		t.Errorf("slot after the switchover = %d %s", code, body)
	}
	close(stop)
	<-watchDone
	if n := failures.Load(); n > 0 {
		t.Errorf("the tunnel failed %d of %d checks across the switchover", n, checks.Load())
	}
}
