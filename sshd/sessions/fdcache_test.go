package sessions

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
	"time"
)

// addListen gives process pid of a procFixture tree one more listening
// socket, on port, as fd number fd.
func addListen(t *testing.T, root string, pid, fd, port, ino int) {
	t.Helper()
	if err := os.Symlink(fmt.Sprintf("socket:[%d]", ino), filepath.Join(root, fmt.Sprint(pid), "fd", fmt.Sprint(fd))); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(root, "net", "tcp"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, "   0: 0100007F:%04X 00000000:0000 0A 00000000:00000000 00:00000000 00000000   997        0 %d 1 0000000000000000 100 0 0 10 0\n", port, ino)
}

// rewriteProc replaces process pid of a procFixture tree: another start
// time, parent and listening socket, as when a pid is reused.
func rewriteProc(t *testing.T, root string, pid, ppid, startTick, fd, port, ino int) {
	t.Helper()
	dir := filepath.Join(root, fmt.Sprint(pid))
	if err := os.RemoveAll(filepath.Join(dir, "fd")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "fd"), 0o755); err != nil {
		t.Fatal(err)
	}
	stat := fmt.Sprintf("%d (sshd) S %d %d %d 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 %d 0 0\n", pid, ppid, pid, pid, startTick)
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
		t.Fatal(err)
	}
	addListen(t, root, pid, fd, port, ino)
}

// The cache must never change what discovery reports: each step below
// changes the fixture, and the cached discoverer must agree with a fresh
// one after it.
func TestDiscoverCacheAgrees(t *testing.T) {
	root, listener := procFixture(t, 4, "9.2")
	d := Discoverer{ProcRoot: root, ListenerPID: listener, TunnelUID: -2, SSHPort: 2222}
	c := newDiscoverCache()
	check := func(step string, want func([]Session) error) {
		t.Helper()
		fresh, err := d.Sessions()
		if err != nil {
			t.Fatal(err)
		}
		cached, err := d.sessions(c)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(fresh, cached) {
			t.Fatalf("%s: cached discovery differs:\n cached %+v\n fresh  %+v", step, cached, fresh)
		}
		if err := want(cached); err != nil {
			t.Fatalf("%s: %v: %+v", step, err, cached)
		}
	}
	check("first walk", func(ss []Session) error {
		if len(ss) != 4 {
			return fmt.Errorf("%d sessions, want 4", len(ss))
		}
		return nil
	})
	check("unchanged", func([]Session) error { return nil })

	// A session opens a second forward long after it started.
	addListen(t, root, 1003, 9, 30001, 90001)
	check("forward added later", func(ss []Session) error {
		if !reflect.DeepEqual(ss[1].Ports, []int{20001, 30001}) {
			return fmt.Errorf("session 1003 ports %v, want [20001 30001]", ss[1].Ports)
		}
		return nil
	})

	// A foreign listener appears: remembered, and nothing changes.
	addListen(t, root, 51, 9, 2001, 90002)
	check("foreign listener", func([]Session) error { return nil })
	if !c.foreign[90002] {
		t.Errorf("the admin session's new listener is not remembered as foreign")
	}

	// Session 1004/1005 ends; its child's pid is reused by a new session's
	// process under monitor 1006 (another start time, another port).
	if err := os.RemoveAll(filepath.Join(root, "1004")); err != nil {
		t.Fatal(err)
	}
	rewriteProc(t, root, 1005, 1006, 999999, 3, 30005, 90005)
	check("pid reused", func(ss []Session) error {
		for _, s := range ss {
			if s.MonitorPID == 1004 || s.MonitorPID == 1005 {
				return fmt.Errorf("ended session still reported")
			}
			if s.MonitorPID == 1006 && !reflect.DeepEqual(s.Ports, []int{20003, 30005}) {
				return fmt.Errorf("session 1006 ports %v, want [20003 30005]", s.Ports)
			}
		}
		return nil
	})
}

// Sessions orphaned by a killed listener are found through the slave's log
// they hold open, with and without the cache.
func TestDiscoverOrphans(t *testing.T) {
	root, listener := procFixture(t, 2, "9.2")
	log := "/var/lib/mas4h/slave-x/sshd/sshd.log"
	for _, pid := range []int{1000, 1001, 1002, 1003} {
		if err := os.Symlink(log, filepath.Join(root, fmt.Sprint(pid), "fd", "2")); err != nil {
			t.Fatal(err)
		}
	}
	// The listener dies (its sessions stay) and a new one starts; the
	// first session is reparented to init.
	if err := os.RemoveAll(filepath.Join(root, fmt.Sprint(listener))); err != nil {
		t.Fatal(err)
	}
	rewriteProc(t, root, 1000, 1, 1000+1000, 9, 30000, 90000)
	if err := os.Symlink(log, filepath.Join(root, "1000", "fd", "2")); err != nil {
		t.Fatal(err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(root, &st); err != nil {
		t.Fatal(err)
	}
	d := Discoverer{ProcRoot: root, ListenerPID: 4242, TunnelUID: int(st.Uid), LogPath: log, SSHPort: 2222}
	c := newDiscoverCache()
	for i := 0; i < 2; i++ {
		fresh, err := d.Sessions()
		if err != nil {
			t.Fatal(err)
		}
		cached, err := d.sessions(c)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(fresh, cached) {
			t.Fatalf("cached discovery differs:\n cached %+v\n fresh  %+v", cached, fresh)
		}
		if len(cached) != 2 || cached[0].MonitorPID != 1000 || !reflect.DeepEqual(cached[0].Ports, []int{20000, 30000}) ||
			!reflect.DeepEqual(cached[0].PIDs, []int{1000, 1001}) || cached[1].MonitorPID != 1002 {
			t.Fatalf("orphans: %+v, want sessions 1000 (ports 20000, 30000) and 1002", cached)
		}
	}
}

// What a process's fds held in its first moments is read again: a young
// session still drops sockets it inherited and opens its forwards.
func TestDiscoverCacheRereadsYoungProcesses(t *testing.T) {
	root, listener := procFixture(t, 1, "9.2")
	d := Discoverer{ProcRoot: root, ListenerPID: listener, TunnelUID: -2, SSHPort: 2222}
	c := newDiscoverCache()
	boot := bootTime(root)
	child := procInfo{startTick: 1000 + 1001}
	c.now = func() time.Time { return child.started(boot).Add(time.Second) }
	if _, err := d.sessions(c); err != nil {
		t.Fatal(err)
	}
	if c.procs[1001] == nil || c.procs[1001].settled {
		t.Fatalf("a one-second-old process was remembered as settled: %+v", c.procs[1001])
	}
	c.now = func() time.Time { return child.started(boot).Add(time.Minute) }
	if _, err := d.sessions(c); err != nil {
		t.Fatal(err)
	}
	if !c.procs[1001].settled {
		t.Fatalf("a minute-old process was not remembered")
	}
}

// Discovery with the monitor's cache, every process already seen: the
// cost of a steady cycle. Run: go test ./sshd/sessions -bench Discover -run x
func BenchmarkDiscoverCached(b *testing.B) {
	for _, n := range []int{1000, 5000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			root, listener := procFixture(b, n, "9.2")
			d := Discoverer{ProcRoot: root, ListenerPID: listener, TunnelUID: -2, SSHPort: 2222}
			c := newDiscoverCache()
			if _, err := d.sessions(c); err != nil {
				b.Fatal(err)
			}
			var before, after syscall.Rusage
			syscall.Getrusage(syscall.RUSAGE_SELF, &before)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				s, err := d.sessions(c)
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

func TestParseSocketLine(t *testing.T) {
	const ssh = 2222
	for _, c := range []struct {
		line string
		ino  uint64
		want *sockInfo
	}{
		{"   0: 0100007F:4E21 00000000:0000 0A 00000000:00000000 00:00000000 00000000   997        0 7001 1 0 100 0 0 10 0\n",
			7001, &sockInfo{localPort: 20001, listen: true}},
		{"   1: 00000000000000000000000001000000:4E21 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000   997        0 7002 1 0 100 0 0 10 0\n",
			7002, &sockInfo{localPort: 20001, listen: true}},
		{"   2: 0100007F:08AE 020012C6:9C40 01 00000000:00000000 00:00000000 00000000   997        0 7003 1 0 20 4 30 10 -1\n",
			7003, &sockInfo{localPort: 2222, remote: "198.18.0.2:40000"}},
		// A probe's TIME_WAIT and another connection: not asked about.
		{"   3: 0100007F:B5F2 0100007F:4E21 06 00000000:00000000 03:00000A3B 00000000     0        0 0 3 0\n", 0, nil},
		{"   4: 0100007F:B5F3 0100007F:4E21 01 00000000:00000000 00:00000000 00000000     0        0 7004 1 0 20 4 30 10 -1\n", 7004, nil},
		{"   5: garbage\n", 0, nil},
	} {
		socks := map[uint64]sockInfo{}
		parseSocketLine([]byte(c.line), ssh, socks)
		got, ok := socks[c.ino]
		switch {
		case c.want == nil && len(socks) != 0:
			t.Errorf("%q: kept %+v", c.line, socks)
		case c.want != nil && (!ok || got != *c.want):
			t.Errorf("%q: %+v, want %+v", c.line, socks, *c.want)
		}
	}
}
