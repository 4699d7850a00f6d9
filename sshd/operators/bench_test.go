package operators

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/sshd/authlog"
	"github.com/mas4h/mas4h/sshd/sessions"
	"github.com/mas4h/mas4h/sshd/source"
)

// benchProc writes a /proc tree of a slave's sshd (listening on 2222)
// with devices tunnels and ops operator sessions, each of those with a
// channel open to one device's port from a client on loopback; the
// socket table is the text one (/proc/net/tcp), which a fixture root
// makes the sessions package read instead of sock_diag.
func benchProc(b *testing.B, devices, ops int) string {
	root := b.TempDir()
	must := func(err error) {
		if err != nil {
			b.Fatal(err)
		}
	}
	proc := func(pid, ppid int, inodes ...int) {
		dir := filepath.Join(root, fmt.Sprint(pid))
		must(os.MkdirAll(filepath.Join(dir, "fd"), 0o755))
		stat := fmt.Sprintf("%d (sshd) S %d %d %d 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 %d 0 0\n", pid, ppid, pid, pid, 1000+pid)
		must(os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644))
		for i, ino := range inodes {
			must(os.Symlink(fmt.Sprintf("socket:[%d]", ino), filepath.Join(dir, "fd", fmt.Sprint(3+i))))
		}
	}
	var tcp strings.Builder
	tcp.WriteString("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")
	line := func(local, remote, st string, ino int) {
		fmt.Fprintf(&tcp, "   0: %s %s %s 00000000:00000000 00:00000000 00000000   997        0 %d 1 0000000000000000 100 0 0 10 0\n", local, remote, st, ino)
	}
	must(os.MkdirAll(filepath.Join(root, "net"), 0o755))
	must(os.WriteFile(filepath.Join(root, "stat"), []byte("cpu 1 2 3\nbtime 1763776800\n"), 0o644))
	proc(100, 1, 1)
	line("0100007F:08AE", "00000000:0000", "0A", 1)
	for i := range devices {
		lino, cino := 10000+2*i, 10001+2*i
		proc(1000+2*i, 100, cino)
		proc(1001+2*i, 1000+2*i, lino, cino)
		line(fmt.Sprintf("0100007F:%04X", 20000+i), "00000000:0000", "0A", lino)
		line("0100007F:08AE", fmt.Sprintf("020012C6:%04X", 40000+i), "01", cino) // from 198.18.0.2
	}
	for j := range ops {
		cino, chino := 30000+2*j, 30001+2*j
		proc(50000+2*j, 100, cino)
		proc(50001+2*j, 50000+2*j, cino, chino)
		line("0100007F:08AE", fmt.Sprintf("0100007F:%04X", 60000+j), "01", cino)                        // from 127.0.0.1:60000+j
		line(fmt.Sprintf("0100007F:%04X", 45000+j), fmt.Sprintf("0100007F:%04X", 20000+j), "01", chino) // to a device's port
	}
	must(os.WriteFile(filepath.Join(root, "net", "tcp"), []byte(tcp.String()), 0o644))
	return root
}

// The tracker's work per walk (one a second on a slave): the session
// table through its cache, the operator sessions' fds and one read of
// the socket table, the grants, with 1,000 device tunnels and 0, 10 or
// 100 operator sessions each holding a channel, in the steady state
// (every access already reported), a walk of the whole table one cycle in
// ten (fullWalk), the followed sessions alone otherwise. With no operator
// logged in, nothing is read. Run:
//
//	go test ./sshd/operators -run '^$' -bench Cycle -benchmem
func BenchmarkCycle(b *testing.B) {
	const devices = 1000
	for _, ops := range []int{0, 10, 100} {
		b.Run(fmt.Sprintf("ops=%d", ops), func(b *testing.B) {
			root := benchProc(b, devices, ops)
			table := sessions.NewTable(sessions.Discoverer{ProcRoot: root, TunnelUID: -2, SSHPort: 2222}, func() int { return 100 })
			keys := map[netip.AddrPort]authlog.Accepted{}
			for i := range devices {
				keys[netip.AddrPortFrom(netip.MustParseAddr("198.18.0.2"), uint16(40000+i))] = authlog.Accepted{User: "mas4h", Fingerprint: fmt.Sprintf("SHA256:dev%d", i)}
			}
			grants := map[string]source.Grant{}
			var logins []netip.AddrPort
			for j := range ops {
				fp := fmt.Sprintf("SHA256:op%d", j)
				r := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), uint16(60000+j))
				logins = append(logins, r)
				keys[r] = authlog.Accepted{User: "mas4h-operator", Fingerprint: fp}
				g := source.Grant{Operator: fmt.Sprintf("op%d", j), Fingerprint: fp}
				for k := range 10 { // ten devices each
					p := 20000 + (j+k)%devices
					g.Open = append(g.Open, wire.OpenPort{Device: fmt.Sprintf("pi-%d", p), Forward: "ssh", Port: p})
				}
				grants[fp] = g
			}
			reported := 0
			tr := New("mas4h-operator", Deps{
				Sessions: table.Sessions, Opens: table.Opens,
				Keys:   func(r netip.AddrPort) (authlog.Accepted, bool) { a, ok := keys[r]; return a, ok },
				Logins: func(string) []netip.AddrPort { return logins },
				Alive: func(pid int, tick uint64) bool {
					t, ok := sessions.StartTick(root, pid)
					return ok && t == tick
				},
				Grant: func(_ context.Context, fp string) (source.Grant, bool, error) {
					g, ok := grants[fp]
					return g, ok, nil
				},
				Report: func(context.Context, string, string, string, string) { reported++ },
				End:    func(context.Context, sessions.Session) { b.Error("ended a session") },
				Log:    slog.New(slog.NewTextHandler(io.Discard, nil)),
			})
			now := time.Now()
			tr.d.Now = func() time.Time { return now }
			ctx := context.Background()
			if err := tr.Cycle(ctx); err != nil {
				b.Fatal(err)
			}
			now = now.Add(newSession) // the sessions are no longer new
			if reported != ops || len(tr.Live()) != ops {
				b.Fatalf("%d accesses reported, %d live sessions, want %d", reported, len(tr.Live()), ops)
			}
			b.ReportAllocs()
			b.ResetTimer()
			cycles := 0
			for b.Loop() {
				// A walk of the whole table every fullWalk, as on a slave.
				cycles++
				now = now.Add(fullWalk / 10)
				if err := tr.Cycle(ctx); err != nil {
					b.Fatal(err)
				}
			}
			if ops > 0 {
				b.ReportMetric(float64(tr.walks-1)/float64(cycles), "walks/op")
			}
			if reported != ops {
				b.Fatalf("%d accesses reported in the steady state, want %d", reported, ops)
			}
		})
	}
}
