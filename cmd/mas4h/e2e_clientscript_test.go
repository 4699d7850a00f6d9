package main

// End-to-end tests of the shell client against masters it must not trust
// (issue 14, finding 3): a master over TLS pinned when the script was
// rendered, a man in the middle with another certificate, busybox wget over
// https, and answers whose forwards are not PORT:HOST:PORT.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mas4h/mas4h/internal/testkit"
	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/sshsig"
)

// renderScript renders the client script and writes it to the env's dir.
func (e *env) renderScript(name string, args ...string) string {
	e.t.Helper()
	out, stderr, code := e.mas4h("", append([]string{"client-script"}, args...)...)
	if code != 0 {
		e.t.Fatalf("client-script %v: exit %d: %s", args, code, stderr)
	}
	p := filepath.Join(e.dir, name)
	if err := os.WriteFile(p, []byte(out), 0o755); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// recordingDbclient replaces dbclient in bin by a script that notes its
// arguments in the returned file and fails.
func recordingDbclient(t *testing.T, bin string) string {
	t.Helper()
	ran := filepath.Join(t.TempDir(), "dbclient-ran")
	os.Remove(filepath.Join(bin, "dbclient"))
	if err := os.WriteFile(filepath.Join(bin, "dbclient"), []byte("#!/bin/sh\necho \"$@\" >> "+ran+"\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return ran
}

// A busybox device with curl and openssh-keygen, against the real master
// over TLS: the script pins the master's self-signed certificate when it
// is rendered, signs its slot request and brings the tunnel up. The same
// script sent to a man in the middle with another certificate for the same
// address refuses it before saying a word; with only busybox wget it
// refuses https outright and says what to install.
func TestClientScriptOverTLS(t *testing.T) {
	e := newEnv(t, "busybox", "dbclient", "dropbearkey", "dropbearconvert", "curl", "ssh-keygen")
	certs := writeTestCert(t, e.dir, "127.0.0.1")
	m := &masterProc{e: e, url: fmt.Sprintf("https://127.0.0.1:%d", freePort(t)),
		db: filepath.Join(e.dir, "master.db"), adminToken: filepath.Join(e.dir, "admin.token"),
		slaveToken: filepath.Join(e.dir, "slave.token"), extra: []string{"--tls-cert", certs.cert, "--tls-key", certs.key}}
	m.start()
	t.Cleanup(m.stop)
	// The slave trusts the master's certificate through SSL_CERT_FILE.
	sp := &slaveProc{e: e, mode: []string{"--master", m.url, "--token-file", m.slaveToken, "--public-host", "127.0.0.1"},
		name: "s1", stateDir: filepath.Join(e.dir, "slave-s1"), port: freePort(t), wrap: []string{"env", "SSL_CERT_FILE=" + certs.cert}}
	sp.start()
	t.Cleanup(sp.cleanup)
	testkit.Eventually(t, 15*time.Second, func() bool { return m.log.Contains("slave registered") },
		"the slave never reported to the TLS master:\n%s\n%s", m.log, sp.log)

	es := startEcho(t)
	k := e.newKey("ap-tls")
	if _, stderr, code := e.mas4h("", "device", "add", "ap-tls", "--key", k.public, "--db", m.db, "--forward", fwd(es)); code != 0 {
		t.Fatalf("device add: %s", stderr)
	}
	dev, err := deviceFromDB(e, m.db, "ap-tls")
	if err != nil {
		t.Fatal(err)
	}
	out, stderr, code := e.mas4h("", "client-script", "--master", m.url, "--device", "ap-tls", "--ssh-client", "dropbear")
	if code != 0 {
		t.Fatalf("client-script: %s", stderr)
	}
	if !strings.Contains(stderr, "pinned the master's self-signed certificate, SHA-256 "+pinOf(certs.x509)) {
		t.Errorf("client-script did not show the pin: %s", stderr)
	}
	script := filepath.Join(e.dir, "tls.sh")
	os.WriteFile(script, []byte(out), 0o755)
	key := k.dropbearKey(t)
	os.Chmod(key, 0o600)
	bin := busyboxPath(t, e, "curl", "ssh-keygen", "dropbearconvert")
	env := []string{"PATH=" + bin, "MAS4H_KEY=" + key, "MAS4H_STATE=" + filepath.Join(e.dir, "state-tls")}

	start := time.Now()
	sc := e.startDevProc(env, filepath.Join(bin, "sh"), script, "run")
	took := waitRoundTrip(t, sp, port(dev), start, 30*time.Second, "script over TLS", sc.log)
	t.Logf("script over TLS with curl, signed by ssh-keygen: tunnel up %s after start", took.Round(time.Millisecond))
	if !sc.log.Contains("fetcher curl") || sc.log.Contains("unsigned") || sc.log.Contains("WARNING") {
		t.Errorf("script log:\n%s", sc.log)
	}
	sc.stop(10 * time.Second)

	// A man in the middle: another self-signed certificate for the same
	// address, answering a slot that would send the device to its sshd.
	var asked atomic.Int32
	mitmCert := writeTestCert(t, e.dir, "127.0.0.1")
	mitm := tlsServer(t, mitmCert, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		fmt.Fprint(w, "MAS4H_SLAVE='evil'\nMAS4H_HOST='127.0.0.1'\nMAS4H_PORT='22'\nMAS4H_USER='evil'\n"+
			"MAS4H_HOST_KEY_1='"+testkit.NewKey(t, "").AuthorizedKey+"'\nMAS4H_FORWARDS='20000:localhost:22'\n")
	}))
	ran := recordingDbclient(t, bin)
	env = []string{"PATH=" + bin, "MAS4H_KEY=" + key, "MAS4H_STATE=" + filepath.Join(e.dir, "state-mitm"), "MAS4H_MASTER=" + mitm.URL}
	sc = e.startDevProc(env, filepath.Join(bin, "sh"), script, "run")
	testkit.Eventually(t, 20*time.Second, func() bool { return sc.log.Contains("refusing the master at " + mitm.URL) },
		"the script did not refuse the man in the middle:\n%s", sc.log)
	time.Sleep(3 * time.Second) // a window for a retry, which must be refused as quietly
	sc.stop(5 * time.Second)
	if n := asked.Load(); n != 0 {
		t.Errorf("the man in the middle got %d requests", n)
	}
	if _, err := os.Stat(ran); err == nil {
		t.Errorf("dbclient ran on the man in the middle's word: %s", mustRead(t, ran))
	}
	if n := strings.Count(sc.log.String(), "refusing the master"); n != 1 {
		t.Errorf("refusal logged %d times, want once:\n%s", n, sc.log)
	}
	t.Logf("man in the middle: %s", firstLineContaining(sc.log.String(), "refusing the master"))

	// Only busybox wget: https is refused, with what to install.
	os.Remove(filepath.Join(bin, "curl"))
	env = []string{"PATH=" + bin, "MAS4H_KEY=" + key, "MAS4H_STATE=" + filepath.Join(e.dir, "state-wget"), "MAS4H_MASTER=" + mitm.URL}
	cmd := exec.Command(filepath.Join(bin, "sh"), script, "run")
	cmd.Env = append(os.Environ(), env...)
	outb, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(outb), "busybox wget does not check certificates") || !strings.Contains(string(outb), "opkg install curl") {
		t.Errorf("busybox wget over https: %v: %s", err, outb)
	}
	if n := asked.Load(); n != 0 {
		t.Errorf("busybox wget reached the man in the middle (%d requests)", n)
	}
}

func firstLineContaining(s, sub string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			return l
		}
	}
	return ""
}

func deviceFromDB(e *env, db, name string) (registry.Device, error) {
	st, err := registry.Open(e.t.Context(), db)
	if err != nil {
		return registry.Device{}, err
	}
	defer st.Close()
	return st.Device(e.t.Context(), name)
}

// The script passes to the SSH client only PORT:HOST:PORT forwards, as the
// agent does: a bare port (ssh -R PORT is a SOCKS proxy into the device's
// network), an option in disguise or a target without a port make the slot
// unusable, and the client never runs with them.
func TestClientScriptRefusesBadForwards(t *testing.T) {
	e := newEnv(t, "busybox", "dbclient", "dropbearkey")
	hostKey := testkit.NewKey(t, "").AuthorizedKey
	var mu sync.Mutex
	forwards := "41200"
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprint(w, "MAS4H_SLAVE='s1'\nMAS4H_HOST='127.0.0.1'\nMAS4H_PORT='2222'\nMAS4H_USER='mas4h-tunnel'\n"+
			"MAS4H_HOST_KEY_1='"+hostKey+"'\nMAS4H_FORWARDS='"+forwards+"'\n")
	}))
	defer hs.Close()
	srv := hs.URL
	script := e.renderScript("fw.sh", "--master", srv, "--insecure-http", "--ssh-client", "dropbear")
	_, k := e.enrol("ap-fw")
	key := k.dropbearKey(t)
	os.Chmod(key, 0o600)
	bin := busyboxPath(t, e)
	ran := recordingDbclient(t, bin)
	for i, bad := range []string{"41200", "20000:localhost:22 41200", "20000:-oProxyCommand=x:22", "20000:localhost:", "99999:localhost:22",
		"20000:fd00::1:80", "20000:localhost:22:1", "20000:local host:22"} {
		mu.Lock()
		forwards = bad
		mu.Unlock()
		env := []string{"PATH=" + bin, "MAS4H_KEY=" + key, "MAS4H_STATE=" + filepath.Join(e.dir, fmt.Sprintf("state-%d", i))}
		sc := e.startDevProc(env, filepath.Join(bin, "sh"), script, "run")
		testkit.Eventually(t, 15*time.Second, func() bool { return sc.log.Contains("not a usable slot") },
			"forwards %q: the script did not refuse the slot:\n%s", bad, sc.log)
		sc.stop(5 * time.Second)
		if _, err := os.Stat(ran); err == nil {
			t.Fatalf("forwards %q: dbclient ran: %s", bad, mustRead(t, ran))
		}
	}
	// PORT:HOST:PORT, IPv6 in brackets included, goes through.
	mu.Lock()
	forwards = "20000:[fd00::1]:80 20001:localhost:22"
	mu.Unlock()
	env := []string{"PATH=" + bin, "MAS4H_KEY=" + key, "MAS4H_STATE=" + filepath.Join(e.dir, "state-good")}
	sc := e.startDevProc(env, filepath.Join(bin, "sh"), script, "run")
	testkit.Eventually(t, 15*time.Second, func() bool { _, err := os.Stat(ran); return err == nil }, "dbclient never ran:\n%s", sc.log)
	sc.stop(5 * time.Second)
	if args := string(mustRead(t, ran)); !strings.Contains(args, "-R 20000:[fd00::1]:80 -R 20001:localhost:22") {
		t.Errorf("dbclient ran with %q", args)
	}
	if !sc.log.Contains("WARNING: the master " + srv + " is plain http") {
		t.Errorf("no warning about plain http at start:\n%s", sc.log)
	}
}

// A dropbear-only device (no ssh-keygen) against a master that allows
// unsigned slot requests: the script says once that it cannot sign, and
// gets its loopback forward up; its forward to a LAN host is not in the
// unsigned answer, so that port stays closed on the slave.
func TestClientScriptUnsignedDropbearOnly(t *testing.T) {
	e := newEnv(t, "busybox", "dbclient", "dropbearkey")
	es := startEcho(t)
	m := e.startMaster("--allow-unsigned-slots")
	sp := m.startSlave("s1")
	waitSlavesAlive(t, m, 1)
	dev, k := m.enrol("ap-unsigned", fwd(es), "lan=192.0.2.10:80")
	if !m.log.Contains("slot requests without a signature are accepted") {
		t.Errorf("the master did not warn about --allow-unsigned-slots:\n%s", m.log)
	}
	script := e.renderScript("unsigned.sh", "--master", m.url, "--insecure-http", "--ssh-client", "dropbear")
	key := k.dropbearKey(t)
	os.Chmod(key, 0o600)
	bin := busyboxPath(t, e)
	env := []string{"PATH=" + bin, "MAS4H_KEY=" + key, "MAS4H_STATE=" + filepath.Join(e.dir, "state")}
	start := time.Now()
	sc := e.startDevProc(env, filepath.Join(bin, "sh"), script, "run")
	waitRoundTrip(t, sp, dev.Forwards[0].RemotePort, start, 20*time.Second, "unsigned script", sc.log)
	if n := strings.Count(sc.log.String(), "ssh-keygen is missing"); n != 1 {
		t.Errorf("'ssh-keygen is missing' logged %d times, want once:\n%s", n, sc.log)
	}
	if dialOK(dev.Forwards[1].RemotePort) {
		t.Error("the LAN forward's port is open on the slave after an unsigned request")
	}
	sc.stop(10 * time.Second)
}

// uclientShim is an uclient-fetch (OpenWrt's) made of curl, with the
// options the script uses and its ways of failing: it trusts only what
// --ca-certificate names, and no certificate without one.
const uclientShim = `#!/bin/sh
out= ca= post= to=20 url=
while [ $# -gt 0 ]; do
	case $1 in
	-q) ;;
	-T) shift; to=$1 ;;
	-O) shift; out=$1 ;;
	--ca-certificate=*) ca=${1#*=} ;;
	--post-file=*) post=${1#*=} ;;
	-*) echo "uclient-fetch: unknown option $1" >&2; exit 1 ;;
	*) url=$1 ;;
	esac
	shift
done
mkdir -p "$out.capath"
code=$(curl -s -o "$out" -w '%{http_code}' --max-time "$to" --cacert "${ca:-/dev/null}" --capath "$out.capath" --data-binary "@$post" "$url")
case $? in
0) ;;
60|51|35|77) echo "Connection error: Invalid SSL certificate" >&2; exit 5 ;;
*) echo "Connection error: Connection failed" >&2; exit 4 ;;
esac
[ "$code" = 200 ] && exit 0
echo "HTTP error $code" >&2
exit 8
`

// On OpenWrt without curl the script uses uclient-fetch with the pinned
// certificate, posts a signed request, and refuses a master whose
// certificate is not the pinned one.
func TestClientScriptUclientFetch(t *testing.T) {
	e := newEnv(t, "busybox", "dbclient", "dropbearkey", "dropbearconvert", "curl", "ssh-keygen")
	k := e.newKey("ap-uclient")
	hostKey := testkit.NewKey(t, "").AuthorizedKey
	var signed atomic.Int32
	slot := func(w http.ResponseWriter, r *http.Request) {
		var req wire.SlotRequest
		if json.NewDecoder(r.Body).Decode(&req) == nil && req.Signature != "" {
			if pub, err := sshsig.Verify(req.Signature, wire.SlotNamespace, wire.SlotStatement(req)); err == nil && registry.AuthorizedKey(pub) == registry.AuthorizedKey(k.pub) {
				signed.Add(1)
			}
		}
		fmt.Fprint(w, "MAS4H_SLAVE='s1'\nMAS4H_HOST='127.0.0.1'\nMAS4H_PORT='2222'\nMAS4H_USER='mas4h-tunnel'\n"+
			"MAS4H_HOST_KEY_1='"+hostKey+"'\nMAS4H_FORWARDS='20000:localhost:22'\n")
	}
	real := tlsServer(t, writeTestCert(t, e.dir, "127.0.0.1"), http.HandlerFunc(slot))
	script := e.renderScript("uclient.sh", "--master", real.URL, "--ssh-client", "dropbear")
	key := k.dropbearKey(t)
	os.Chmod(key, 0o600)
	bin := busyboxPath(t, e, "ssh-keygen", "dropbearconvert")
	os.Remove(filepath.Join(bin, "wget"))
	// curl is reachable by the shim only, not in the script's PATH.
	curl, _ := exec.LookPath("curl")
	if err := os.WriteFile(filepath.Join(bin, "uclient-fetch"), []byte(strings.Replace(uclientShim, "code=$(curl ", "code=$("+curl+" ", 1)), 0o755); err != nil {
		t.Fatal(err)
	}
	ran := recordingDbclient(t, bin)
	shimPath := func(state, master string) []string {
		env := []string{"PATH=" + bin, "MAS4H_KEY=" + key, "MAS4H_STATE=" + filepath.Join(e.dir, state)}
		if master != "" {
			env = append(env, "MAS4H_MASTER="+master)
		}
		return env
	}
	sc := e.startDevProc(shimPath("state-ok", ""), filepath.Join(bin, "sh"), script, "run")
	testkit.Eventually(t, 20*time.Second, func() bool { _, err := os.Stat(ran); return err == nil }, "dbclient never ran:\n%s", sc.log)
	sc.stop(5 * time.Second)
	if !sc.log.Contains("fetcher uclient") || signed.Load() < 1 {
		t.Errorf("uclient-fetch: %d signed requests; log:\n%s", signed.Load(), sc.log)
	}

	os.Remove(ran)
	var asked atomic.Int32
	mitm := tlsServer(t, writeTestCert(t, e.dir, "127.0.0.1"), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { asked.Add(1); slot(w, r) }))
	sc = e.startDevProc(shimPath("state-mitm", mitm.URL), filepath.Join(bin, "sh"), script, "run")
	testkit.Eventually(t, 20*time.Second, func() bool { return sc.log.Contains("refusing the master at " + mitm.URL) },
		"the script did not refuse the man in the middle:\n%s", sc.log)
	sc.stop(5 * time.Second)
	if _, err := os.Stat(ran); err == nil || asked.Load() != 0 {
		t.Errorf("the man in the middle was asked %d times; dbclient ran: %v", asked.Load(), err == nil)
	}
}

// Several masters (issue 17): a script rendered for a dead master, one
// that answers 503 and the real one over TLS (in that order,
// MAS4H_MASTER_ORDER=given) brings the tunnel up through the real one in
// its first attempt, having signed each request for the master it went to
// (the real master accepts only signatures naming its own URL,
// --public-url). A 403 from a master is the answer: the next is not asked.
func TestClientScriptFailsOverToAnotherMaster(t *testing.T) {
	e := newEnv(t, "busybox", "dbclient", "dropbearkey", "dropbearconvert", "curl", "ssh-keygen")
	certs := writeTestCert(t, e.dir, "127.0.0.1")
	m := &masterProc{e: e, url: fmt.Sprintf("https://127.0.0.1:%d", freePort(t)),
		db: filepath.Join(e.dir, "master.db"), adminToken: filepath.Join(e.dir, "admin.token"),
		slaveToken: filepath.Join(e.dir, "slave.token")}
	m.extra = []string{"--tls-cert", certs.cert, "--tls-key", certs.key, "--public-url", m.url}
	m.start()
	t.Cleanup(m.stop)
	sp := &slaveProc{e: e, mode: []string{"--master", m.url, "--token-file", m.slaveToken, "--public-host", "127.0.0.1"},
		name: "s1", stateDir: filepath.Join(e.dir, "slave-s1"), port: freePort(t), wrap: []string{"env", "SSL_CERT_FILE=" + certs.cert}}
	sp.start()
	t.Cleanup(sp.cleanup)
	testkit.Eventually(t, 15*time.Second, func() bool { return m.log.Contains("slave registered") },
		"the slave never reported to the TLS master:\n%s\n%s", m.log, sp.log)

	es := startEcho(t)
	k := e.newKey("ap-mm")
	if _, stderr, code := e.mas4h("", "device", "add", "ap-mm", "--key", k.public, "--db", m.db, "--forward", fwd(es)); code != 0 {
		t.Fatalf("device add: %s", stderr)
	}
	dev, err := deviceFromDB(e, m.db, "ap-mm")
	if err != nil {
		t.Fatal(err)
	}
	// A master that answers status, recording whom each request was
	// signed for.
	var mu sync.Mutex
	signedFor := map[string][]string{}
	answering := func(status int, msg string) *httptest.Server {
		var srv *httptest.Server
		srv = tlsServer(t, certs, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			var req wire.SlotRequest
			json.NewDecoder(r.Body).Decode(&req)
			mu.Lock()
			signedFor[srv.URL] = append(signedFor[srv.URL], req.Master)
			mu.Unlock()
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(status)
			fmt.Fprintf(w, "MAS4H_ERROR='%s'\n", msg)
		}))
		return srv
	}
	busy := answering(http.StatusServiceUnavailable, "no slave is live")
	dead := fmt.Sprintf("https://127.0.0.1:%d", freePort(t))
	masters := dead + "," + busy.URL + "," + m.url
	out, stderr, code := e.mas4h("", "client-script", "--master", masters, "--master-ca", certs.cert, "--device", "ap-mm", "--ssh-client", "dropbear")
	if code != 0 {
		t.Fatalf("client-script: %s", stderr)
	}
	script := filepath.Join(e.dir, "mm.sh")
	os.WriteFile(script, []byte(out), 0o755)
	key := k.dropbearKey(t)
	os.Chmod(key, 0o600)
	bin := busyboxPath(t, e, "curl", "ssh-keygen", "dropbearconvert")
	env := []string{"PATH=" + bin, "MAS4H_KEY=" + key, "MAS4H_STATE=" + filepath.Join(e.dir, "state-mm"), "MAS4H_MASTER_ORDER=given"}
	start := time.Now()
	sc := e.startDevProc(env, filepath.Join(bin, "sh"), script, "run")
	took := waitRoundTrip(t, sp, port(dev), start, 30*time.Second, "script with a dead and a busy master first", sc.log)
	t.Logf("dead, 503, real master: tunnel up %s after start; %s", took.Round(time.Millisecond), firstLineContaining(sc.log.String(), "answers"))
	log := sc.log.String()
	if !strings.Contains(log, "the master at "+m.url+" answers (after: no answer from the master at "+dead) ||
		!strings.Contains(log, "the master at "+busy.URL+" failed: no slave is live") || strings.Contains(log, "last slot") {
		t.Errorf("script log:\n%s", log)
	}
	sc.stop(10 * time.Second)
	mu.Lock()
	if got := signedFor[busy.URL]; len(got) == 0 || got[0] != busy.URL {
		t.Errorf("the busy master got requests signed for %v, want its own URL %s", got, busy.URL)
	}
	mu.Unlock()

	// Shuffled (the default): every order reaches the real master.
	for i := range 3 {
		env := []string{"PATH=" + bin, "MAS4H_KEY=" + key, "MAS4H_STATE=" + filepath.Join(e.dir, fmt.Sprintf("state-shuf-%d", i))}
		start := time.Now()
		sc := e.startDevProc(env, filepath.Join(bin, "sh"), script, "run")
		waitRoundTrip(t, sp, port(dev), start, 30*time.Second, "shuffled masters", sc.log)
		sc.stop(10 * time.Second)
	}

	// A 403 is the answer: the real master after it is not asked.
	forbid := answering(http.StatusForbidden, "key not accepted")
	ran := recordingDbclient(t, bin)
	env = []string{"PATH=" + bin, "MAS4H_KEY=" + key, "MAS4H_STATE=" + filepath.Join(e.dir, "state-403"), "MAS4H_MASTER_ORDER=given",
		"MAS4H_MASTER=" + forbid.URL + "," + m.url}
	sc = e.startDevProc(env, filepath.Join(bin, "sh"), script, "run")
	testkit.Eventually(t, 20*time.Second, func() bool { return sc.log.Contains("the master refuses this key") },
		"the script did not report the 403:\n%s", sc.log)
	time.Sleep(2 * time.Second) // a window for a wrong failover
	sc.stop(5 * time.Second)
	if strings.Contains(sc.log.String(), "the master at "+m.url+" answers") {
		t.Errorf("a 403 failed over to the next master:\n%s", sc.log)
	}
	if _, err := os.Stat(ran); err == nil {
		t.Errorf("dbclient ran after a 403: %s", mustRead(t, ran))
	}
}
