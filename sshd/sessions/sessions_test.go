package sessions

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// procFixture writes a /proc tree shaped like a slave with n tunnels: the
// listener, per session a monitor ("sshd: USER [priv]" on OpenSSH <= 9.7, or
// "sshd-session" on >= 9.8) and its child holding the forwarded port's
// listening socket and the device connection, plus the host's admin sshd
// with a session of its own that must never be reported.
func procFixture(t testing.TB, n int, style string) (root string, listener int) {
	root = t.TempDir()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	comm := map[string]string{"9.2": "sshd", "9.8": "sshd-session"}[style]
	writeProc := func(pid, ppid int, comm string, sockets ...int) {
		dir := filepath.Join(root, fmt.Sprint(pid))
		must(os.MkdirAll(filepath.Join(dir, "fd"), 0o755))
		stat := fmt.Sprintf("%d (%s) S %d %d %d 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 %d 0 0\n", pid, comm, ppid, pid, pid, 1000+pid)
		must(os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644))
		for i, ino := range sockets {
			must(os.Symlink(fmt.Sprintf("socket:[%d]", ino), filepath.Join(dir, "fd", fmt.Sprint(3+i))))
		}
	}
	must(os.MkdirAll(filepath.Join(root, "net"), 0o755))
	must(os.WriteFile(filepath.Join(root, "stat"), []byte("cpu 1 2 3\nbtime 1763776800\n"), 0o644))
	var tcp strings.Builder
	tcp.WriteString("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")
	line := func(local, remote string, st string, ino int) {
		fmt.Fprintf(&tcp, "   0: %s %s %s 00000000:00000000 00:00000000 00000000   997        0 %d 1 0000000000000000 100 0 0 10 0\n", local, remote, st, ino)
	}
	listener = 100
	writeProc(1, 0, "init")
	writeProc(listener, 1, "sshd", 1)
	line("0100007F:08AE", "00000000:0000", "0A", 1) // 127.0.0.1:2222
	// The host's admin sshd (port 22) with one session listening on 2000.
	writeProc(50, 1, "sshd", 2)
	writeProc(51, 50, "sshd", 3)
	line("00000000:0016", "00000000:0000", "0A", 2)
	line("00000000:07D0", "00000000:0000", "0A", 3)
	for i := 0; i < n; i++ {
		monitor, child := 1000+2*i, 1001+2*i
		port := 20000 + i
		lino, cino := 10000+2*i, 10001+2*i
		writeProc(monitor, listener, comm, cino)
		writeProc(child, monitor, comm, lino, cino)
		line(fmt.Sprintf("0100007F:%04X", port), "00000000:0000", "0A", lino)
		line("0100007F:08AE", fmt.Sprintf("020012C6:%04X", 40000+i%20000), "01", cino) // from 198.18.0.2
	}
	must(os.WriteFile(filepath.Join(root, "net", "tcp"), []byte(tcp.String()), 0o644))
	return root, listener
}

func TestDiscoverFixtures(t *testing.T) {
	for _, style := range []string{"9.2", "9.8"} {
		t.Run(style, func(t *testing.T) {
			root, listener := procFixture(t, 3, style)
			d := Discoverer{ProcRoot: root, ListenerPID: listener, TunnelUID: -2, SSHPort: 2222}
			sessions, err := d.Sessions()
			if err != nil {
				t.Fatal(err)
			}
			if len(sessions) != 3 {
				t.Fatalf("%d sessions, want 3: %+v", len(sessions), sessions)
			}
			for i, s := range sessions {
				if s.MonitorPID != 1000+2*i || len(s.PIDs) != 2 {
					t.Errorf("session %d: %+v", i, s)
				}
				if len(s.Ports) != 1 || s.Ports[0] != 20000+i {
					t.Errorf("session %d ports %v", i, s.Ports)
				}
				if !strings.HasPrefix(s.Remote, "198.18.0.2:") {
					t.Errorf("session %d remote %q", i, s.Remote)
				}
				if s.Started.IsZero() {
					t.Errorf("session %d has no start time", i)
				}
				for _, p := range s.PIDs {
					if p == 50 || p == 51 {
						t.Errorf("the host's admin sshd was reported: %+v", s)
					}
				}
			}
		})
	}
}

func TestParseHexAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:4E21":                         "127.0.0.1:20001",
		"00000000000000000000000001000000:0016": "[::1]:22",
	} {
		ip, port, ok := parseHexAddr(in)
		if !ok {
			t.Fatalf("%s: not parsed", in)
		}
		got := fmt.Sprintf("%s:%d", ip, port)
		if strings.Contains(ip.String(), ":") {
			got = fmt.Sprintf("[%s]:%d", ip, port)
		}
		if got != want {
			t.Errorf("%s: %s, want %s", in, got, want)
		}
	}
}

// Discovery cost per cycle at fleet sizes (issue 4's goal: <= 1 core-second
// at 5,000 tunnels). Run: go test ./sshd/sessions -bench Discover -run x
func BenchmarkDiscover(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			root, listener := procFixture(b, n, "9.2")
			d := Discoverer{ProcRoot: root, ListenerPID: listener, TunnelUID: -2, SSHPort: 2222}
			var before, after syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &before)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				s, err := d.Sessions()
				if err != nil || len(s) != n {
					b.Fatalf("%d sessions, %v", len(s), err)
				}
			}
			b.StopTimer()
			syscall.Getrusage(syscall.RUSAGE_SELF, &after)
			cpu := time.Duration(after.Utime.Nano()+after.Stime.Nano()-before.Utime.Nano()-before.Stime.Nano()) / time.Duration(b.N)
			b.ReportMetric(cpu.Seconds()*1000, "cpu-ms/cycle")
		})
	}
}
