package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// listeners reads the TCP sockets in LISTEN state from /proc/net/tcp and
// tcp6 (of this process's network namespace): a set of ports, and the subset
// bound on 127.0.0.1. Reading the table, unlike dialling, does not open a
// channel through the tunnel being measured.
func listeners(procRoot string) (all map[int]bool, loop4 map[int]bool, err error) {
	all, loop4 = map[int]bool{}, map[int]bool{}
	for _, name := range []string{"tcp", "tcp6"} {
		f, err := os.Open(procRoot + "/net/" + name)
		if err != nil {
			if name == "tcp6" && errors.Is(err, os.ErrNotExist) {
				continue // IPv6 disabled
			}
			return nil, nil, fmt.Errorf("reading socket table: %w", err)
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 4 || fields[3] != "0A" { // TCP_LISTEN
				continue
			}
			addr, portHex, ok := strings.Cut(fields[1], ":")
			if !ok {
				continue
			}
			port, err := strconv.ParseUint(portHex, 16, 16)
			if err != nil {
				continue
			}
			all[int(port)] = true
			if name == "tcp" && addr == "0100007F" { // 127.0.0.1, little-endian
				loop4[int(port)] = true
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return nil, nil, fmt.Errorf("reading socket table: %w", err)
		}
	}
	return all, loop4, nil
}

// portWatcher polls the socket table on one goroutine and lets many waiters
// block until their port listens on 127.0.0.1.
type portWatcher struct {
	mu   sync.Mutex
	loop map[int]bool
	tick chan struct{} // closed and replaced after every poll
	err  error
}

func newPortWatcher(ctx context.Context, every time.Duration) *portWatcher {
	w := &portWatcher{loop: map[int]bool{}, tick: make(chan struct{})}
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			_, loop, err := listeners("/proc")
			w.mu.Lock()
			if err == nil {
				w.loop = loop
			}
			w.err = err
			close(w.tick)
			w.tick = make(chan struct{})
			w.mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// wait returns when port listens on 127.0.0.1, or with an error when the
// process behind it exits first or ctx ends.
func (w *portWatcher) wait(ctx context.Context, port int, exited <-chan struct{}) (time.Time, error) {
	for {
		w.mu.Lock()
		up, tick, err := w.loop[port], w.tick, w.err
		w.mu.Unlock()
		if err != nil {
			return time.Time{}, err
		}
		if up {
			return time.Now(), nil
		}
		select {
		case <-tick:
		case <-exited:
			return time.Time{}, errors.New("ssh exited before the port listened")
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		}
	}
}

// waitPortsFree waits until none of ports listens on any address.
func waitPortsFree(ctx context.Context, ports []int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		anyL, _, err := listeners("/proc")
		if err != nil {
			return err
		}
		var busy []string
		for _, p := range ports {
			if anyL[p] {
				busy = append(busy, strconv.Itoa(p))
			}
		}
		if len(busy) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d leased ports still listening after %s: %s", len(busy), len(ports), timeout, portHolders(ports))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// portHolders names the processes holding LISTEN sockets on ports, for error
// messages: "41003: pid 123 (sshd: mas4h-bench)".
func portHolders(ports []int) string {
	want := map[int]bool{}
	for _, p := range ports {
		want[p] = true
	}
	inodes := map[string]int{} // socket inode -> port
	for _, name := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile("/proc/net/" + name)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 10 || f[3] != "0A" {
				continue
			}
			_, portHex, _ := strings.Cut(f[1], ":")
			if port, err := strconv.ParseUint(portHex, 16, 16); err == nil && want[int(port)] {
				inodes["socket:["+f[9]+"]"] = int(port)
			}
		}
	}
	var out []string
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		fds, _ := os.ReadDir("/proc/" + p.Name() + "/fd")
		for _, fd := range fds {
			link, err := os.Readlink("/proc/" + p.Name() + "/fd/" + fd.Name())
			if port, ok := inodes[link]; ok && err == nil {
				cmd, _ := os.ReadFile("/proc/" + p.Name() + "/cmdline")
				out = append(out, fmt.Sprintf("%d: pid %s (%s)", port, p.Name(), strings.TrimSpace(strings.ReplaceAll(string(cmd), "\x00", " "))))
				delete(inodes, link)
			}
		}
	}
	return strings.Join(out, "; ")
}

// socketsOn lists every TCP socket whose local port is port, as
// "state local->remote" with addresses in /proc's hex, for error messages.
func socketsOn(port int) string {
	var out []string
	for _, name := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile("/proc/net/" + name)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			f := strings.Fields(line)
			if len(f) < 4 {
				continue
			}
			_, portHex, _ := strings.Cut(f[1], ":")
			if p, err := strconv.ParseUint(portHex, 16, 16); err == nil && int(p) == port {
				out = append(out, name+" "+tcpStates[f[3]]+" "+f[1]+"->"+f[2])
			}
		}
	}
	return strings.Join(out, ", ")
}

var tcpStates = map[string]string{"01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
	"05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING"}
