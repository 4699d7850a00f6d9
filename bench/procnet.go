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
		busy := 0
		for _, p := range ports {
			if anyL[p] {
				busy++
			}
		}
		if busy == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d ports still listening: %w", busy, len(ports), ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
