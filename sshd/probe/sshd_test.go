package probe

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// deviceSSHD runs an OpenSSH sshd on loopback as a device's own sshd would
// run (LogLevel INFO, Debian's default), logging to a file, and returns its
// address and log path.
func deviceSSHD(t *testing.T) (addr, logPath string) {
	t.Helper()
	sshd, err := exec.LookPath("/usr/sbin/sshd")
	if err == nil {
		_, err = exec.LookPath("ssh-keygen")
	}
	if err != nil {
		if os.Getenv("MAS4H_E2E") != "" {
			t.Fatalf("MAS4H_E2E is set but this test lacks sshd or ssh-keygen: %v", err)
		}
		t.Skipf("needs sshd and ssh-keygen: %v", err)
	}
	dir := t.TempDir()
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", filepath.Join(dir, "host_key")).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v: %s", err, out)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr = l.Addr().String()
	l.Close()
	cfg := fmt.Sprintf("ListenAddress %s\nHostKey %s\nPidFile %s\nLogLevel INFO\nUsePAM no\nAuthorizedKeysFile none\n",
		addr, filepath.Join(dir, "host_key"), filepath.Join(dir, "sshd.pid"))
	if err := os.WriteFile(filepath.Join(dir, "sshd_config"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		os.MkdirAll("/run/sshd", 0o755) // privilege separation directory of a root sshd
	}
	logPath = filepath.Join(dir, "sshd.log")
	cmd := exec.Command(sshd, "-D", "-f", filepath.Join(dir, "sshd_config"), "-E", logPath)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		<-done
	})
	// Ready once it says so: a connection to find out would leave lines.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, _ := os.ReadFile(logPath); strings.Contains(string(b), "Server listening on") {
			break
		}
		select {
		case <-done:
			b, _ := os.ReadFile(logPath)
			t.Fatalf("sshd exited: %s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("sshd did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return addr, logPath
}

// logLines returns the log's lines about connections from port (sshd
// names the peer "127.0.0.1 port N"), waiting until want of them are there.
func logLines(t *testing.T, logPath string, ports []int, want int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var lines []string
		f, err := os.Open(logPath)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			line := sc.Text()
			for _, p := range ports {
				if strings.Contains(line, " port "+strconv.Itoa(p)) || strings.HasPrefix(line, "kex_exchange_identification") {
					lines = append(lines, line)
					break
				}
			}
		}
		f.Close()
		if len(lines) >= want || time.Now().After(deadline) {
			return lines
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// probeFrom runs the ssh-banner probe from a known local port, so that the
// sshd log's lines can be told apart by it.
func probeFrom(t *testing.T, addr string, greet bool) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port}, Timeout: 3 * time.Second}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer abort(conn)
	conn.SetDeadline(time.Now().Add(3 * time.Second))
	if greet {
		p := Probe{Kind: SSHBanner}
		if err := p.run(context.Background(), conn); err != nil {
			t.Fatalf("probe of a real sshd: %v", err)
		}
		return port
	}
	// The probe as it was before it greeted: read the banner, reset.
	if _, err := bufio.NewReader(conn).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	return port
}

// What an ssh-banner probe leaves in a real sshd's log (LogLevel INFO): one
// line ("Connection reset by ... [preauth]"; "Connection closed by ..."
// through a tunnel, whose client closes with a FIN) and no error, where a
// probe that sends no identification leaves two, one of them
// "kex_exchange_identification: ..." at error level.
func TestSSHBannerProbeLeavesOneLine(t *testing.T) {
	addr, logPath := deviceSSHD(t)
	const n = 5
	var ports []int
	for range n {
		ports = append(ports, probeFrom(t, addr, true))
	}
	// A plain probe too, after the others: once its lines are in the log,
	// the greeting probes' lines (written earlier) are all there.
	plain := probeFrom(t, addr, false)
	lines := logLines(t, logPath, append(ports, plain), n+2)
	perProbe := map[int]int{}
	for _, line := range lines {
		for _, p := range ports {
			if strings.Contains(line, " port "+strconv.Itoa(p)) {
				perProbe[p]++
				if !strings.Contains(line, "[preauth]") {
					t.Errorf("probe from port %d: %q", p, line)
				}
			}
		}
	}
	for _, p := range ports {
		if perProbe[p] != 1 {
			t.Errorf("probe from port %d left %d lines, want 1", p, perProbe[p])
		}
	}
	errs := 0
	for _, line := range lines {
		if strings.HasPrefix(line, "kex_exchange_identification") {
			errs++
		}
	}
	if errs != 1 {
		t.Errorf("%d kex_exchange_identification errors, want 1 (the plain probe's)", errs)
	}
	if t.Failed() || testing.Verbose() {
		t.Logf("sshd log:\n%s", strings.Join(lines, "\n"))
	}
}
