package sessions

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// An operator session's processes: the device ports they are connected
// to on loopback (IPv4 and IPv6) are its accesses; the session's own
// connection, from sshd's listen port to an operator client that runs on
// the slave's loopback, is not one, nor is a connection off loopback.
func TestOpensSkipsTheSessionsOwnConnection(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	fds := func(pid int, inodes ...int) {
		dir := filepath.Join(root, fmt.Sprint(pid), "fd")
		must(os.MkdirAll(dir, 0o755))
		for i, ino := range inodes {
			must(os.Symlink(fmt.Sprintf("socket:[%d]", ino), filepath.Join(dir, fmt.Sprint(3+i))))
		}
	}
	table := func(name string, lines ...string) {
		var b strings.Builder
		b.WriteString("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n")
		for _, l := range lines {
			b.WriteString(l)
		}
		must(os.WriteFile(filepath.Join(root, "net", name), []byte(b.String()), 0o644))
	}
	line := func(local, remote, st string, ino int) string {
		return fmt.Sprintf("   0: %s %s %s 00000000:00000000 00:00000000 00000000   997        0 %d 1 0000000000000000 100 0 0 10 0\n", local, remote, st, ino)
	}
	const v6lo = "00000000000000000000000001000000"
	must(os.MkdirAll(filepath.Join(root, "net"), 0o755))
	table("tcp",
		line("0100007F:08AE", "00000000:0000", "0A", 1),  // sshd listens on 127.0.0.1:2222
		line("0100007F:08AE", "0100007F:C350", "01", 10), // the session: 127.0.0.1:2222 <- client 127.0.0.1:50000
		line("0100007F:A028", "0100007F:4E21", "01", 11), // sshd -> 127.0.0.1:20001 (a device's port)
		line("0100007F:A029", "020012C6:4E23", "01", 12), // to 198.18.0.2:20003: not loopback
		line("0100007F:C350", "0100007F:08AE", "01", 13), // the client's end (not sshd's)
		line("0100007F:A02A", "0100007F:4E24", "06", 14), // TIME_WAIT: not a live channel
		line("0100007F:08AE", "0100007F:C351", "01", 20), // another session's own connection
		line("0100007F:A02B", "0100007F:4E21", "01", 21), // and its channel to 20001
	)
	table("tcp6",
		line(v6lo+":A030", v6lo+":4E22", "01", 15), // sshd -> [::1]:20002
	)
	fds(300, 10)                 // monitor: the connection only
	fds(301, 10, 11, 12, 14, 15) // child: the connection and its channels
	fds(302, 20, 21)

	tb := NewTable(Discoverer{ProcRoot: root, SSHPort: 2222}, func() int { return 0 })
	got, err := tb.Opens([]int{300, 301, 302})
	if err != nil {
		t.Fatal(err)
	}
	if len(got[300]) != 0 {
		t.Errorf("the monitor, holding only the session's own connection, opens %v", got[300])
	}
	slices.Sort(got[301])
	if !slices.Equal(got[301], []int{20001, 20002}) {
		t.Errorf("the child opens %v, want [20001 20002]", got[301])
	}
	if !slices.Equal(got[302], []int{20001}) {
		t.Errorf("the other session opens %v, want [20001]", got[302])
	}
	if m, err := tb.Opens(nil); err != nil || len(m) != 0 {
		t.Errorf("no pids: %v %v", m, err)
	}
}
