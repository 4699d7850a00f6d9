package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
)

// masterProc is a running `mas4h master`.
type masterProc struct {
	e          *env
	url        string
	db         string
	adminToken string // file
	slaveToken string // file of the shared slave token; "": none (each slave its own credential)
	extra      []string
	listen     string   // --listen; "": the url's host and port
	wrap       []string // run the master under this command (ip netns exec NS)
	// degradedOK: a start counts as up when /healthz answers 503 (a
	// registry it cannot write), not only 200.
	degradedOK bool
	cmd        *exec.Cmd
	log        *syncBuffer
	done       chan struct{}
}

const e2eHeartbeat = time.Second

func (e *env) startMaster(extra ...string) *masterProc {
	e.t.Helper()
	m := &masterProc{e: e, url: fmt.Sprintf("http://127.0.0.1:%d", freePort(e.t)),
		db: filepath.Join(e.dir, "master.db"), adminToken: filepath.Join(e.dir, "admin.token"),
		slaveToken: filepath.Join(e.dir, "slave.token"), extra: extra}
	m.start()
	e.t.Cleanup(m.stop)
	return m
}

func (m *masterProc) start() {
	t := m.e.t
	t.Helper()
	m.log = &syncBuffer{}
	listen := m.listen
	if listen == "" {
		listen = strings.TrimPrefix(strings.TrimPrefix(m.url, "http://"), "https://")
	}
	args := []string{"master", "--listen", listen, "--db", m.db, "--admin-token-file", m.adminToken}
	if m.slaveToken != "" { // the shared slave token of older installs (see e2e_slavecreds_test.go for slaves' own)
		args = append(args, "--allow-shared-slave-token", "--slave-token-file", m.slaveToken)
	}
	args = append(append(args, "--port-range", fmt.Sprintf("%d-%d", m.e.portLo, m.e.portLo+19),
		"--heartbeat-interval", e2eHeartbeat.String(), "--slot-rate", "1000", "--slot-burst", "1000"), m.extra...)
	if len(m.wrap) > 0 {
		m.cmd = exec.Command(m.wrap[0], append(append(m.wrap[1:len(m.wrap):len(m.wrap)], testBin), args...)...)
	} else {
		m.cmd = exec.Command(testBin, args...)
	}
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	m.done = make(chan struct{})
	go func() { m.cmd.Wait(); close(m.done) }()
	testkit.Eventually(t, 10*time.Second, func() bool {
		select {
		case <-m.done:
			t.Fatalf("master exited at start:\n%s", m.log)
		default:
		}
		// A readiness probe only: TLS masters are checked by the tests.
		probe := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		resp, err := probe.Get(m.url + "/api/v1/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200 || (m.degradedOK && resp.StatusCode == http.StatusServiceUnavailable)
	}, "master did not come up:\n%s", m.log)
}

func (m *masterProc) kill9() {
	m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.done
}

func (m *masterProc) stop() {
	select {
	case <-m.done:
	default:
		m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.done:
		case <-time.After(5 * time.Second):
			m.cmd.Process.Kill()
			<-m.done
		}
	}
	if m.e.t.Failed() {
		m.e.t.Logf("master log:\n%s", m.log)
	}
}

// startSlave starts a slave under this master.
func (m *masterProc) startSlave(name string) *slaveProc {
	return m.e.startSlaveWith(name, "--master", m.url, "--token-file", m.slaveToken, "--public-host", "127.0.0.1")
}

// admin runs a mas4h admin command against this master.
func (m *masterProc) admin(args ...string) (string, string, int) {
	m.e.t.Helper()
	return m.e.mas4h("", append(args, "--master", m.url, "--token-file", m.adminToken)...)
}

// enrol adds a device through the master's API and returns its key.
func (m *masterProc) enrol(name string, forwards ...string) (wire.Device, deviceKey) {
	m.e.t.Helper()
	k := m.e.newKey(name)
	args := []string{"device", "add", name, "--key", k.public, "-o", "json"}
	for _, f := range forwards {
		args = append(args, "--forward", f)
	}
	out, stderr, code := m.admin(args...)
	if code != 0 {
		m.e.t.Fatalf("device add %s through the master: exit %d: %s", name, code, stderr)
	}
	var dev wire.Device
	if err := json.Unmarshal([]byte(out), &dev); err != nil {
		m.e.t.Fatalf("device add output: %v: %s", err, out)
	}
	return dev, k
}

// slot asks for a slot as a device would (no token, a signed request),
// returning the status.
func (m *masterProc) slot(k deviceKey) (wire.Slot, int, string) {
	m.e.t.Helper()
	req, err := client.SignSlotRequest(k.signer, m.url, time.Now())
	if err != nil {
		m.e.t.Fatal(err)
	}
	body, _ := json.Marshal(req)
	resp, err := http.Post(m.url+"/api/v1/slots", "application/json", bytes.NewReader(body))
	if err != nil {
		m.e.t.Fatalf("slot request: %v", err)
	}
	defer resp.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(resp.Body)
	var s wire.Slot
	if resp.StatusCode == 200 {
		if err := json.Unmarshal(buf.Bytes(), &s); err != nil {
			m.e.t.Fatalf("slot reply: %v: %s", err, buf.String())
		}
	}
	return s, resp.StatusCode, buf.String()
}

// health asks the master's /healthz: its status code and body (0 when it
// does not answer).
func (m *masterProc) health() (int, wire.Health) {
	var h wire.Health
	resp, err := http.Get(m.url + "/api/v1/healthz")
	if err != nil {
		return 0, h
	}
	defer resp.Body.Close()
	json.NewDecoder(resp.Body).Decode(&h)
	return resp.StatusCode, h
}

// status returns the master's status through the CLI's JSON output.
func (m *masterProc) status() wire.Status {
	m.e.t.Helper()
	out, stderr, code := m.admin("status", "-o", "json")
	if code != 0 {
		m.e.t.Fatalf("status: exit %d: %s", code, stderr)
	}
	var st wire.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		m.e.t.Fatalf("status output: %v: %s", err, out)
	}
	return st
}

// tunnelTo opens the device's tunnel on the slave its slot names.
func (e *env) tunnelTo(k deviceKey, s wire.Slot, targetPort int) *tunnelClient {
	e.t.Helper()
	args := []string{"-N"}
	for _, f := range s.Forwards {
		args = append(args, "-R", fmt.Sprintf("%d:localhost:%d", f.RemotePort, targetPort))
	}
	args = append(args, s.User+"@"+s.Host)
	return e.startClient("ssh", sshArgs(k, s.Port, args...)...)
}

// connect asks for the device's slot and opens its tunnel there, failing the
// test unless the first forward comes up. It returns the slot, the client
// and the first forward's port on the slave.
func (m *masterProc) connect(k deviceKey, es *echoServer) (wire.Slot, *tunnelClient, int) {
	m.e.t.Helper()
	slot, code, body := m.slot(k)
	if code != 200 {
		m.e.t.Fatalf("slot for %s: %d %s", k.name, code, body)
	}
	c := m.e.tunnelTo(k, slot, es.port)
	p := slot.Forwards[0].RemotePort
	if !waitListen(m.e.t, p, c, 10*time.Second) {
		m.e.t.Fatalf("tunnel of %s on %s did not come up: %s", k.name, slot.Slave, c.stderr)
	}
	return slot, c, p
}
