package bench

import (
	"context"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// stormSpec is one side of the tunnel comparison: an sshd to connect to.
type stormSpec struct {
	SSHPath    string
	Port       int    // sshd's port on 127.0.0.1
	User       string // tunnel user
	TargetPort int    // what each -R forwards to on the client side
	Parallel   int    // ssh clients in their handshake at once
	Timeout    time.Duration
}

// Storm is one round: every device connecting at once.
type Storm struct {
	Seconds    float64 `json:"seconds"` // start until the last leased port listened
	Tunnels    int     `json:"tunnels"`
	Failures   int     `json:"failures"`
	PerTunnel  Latency `json:"per_tunnel"` // each client's start until its port listened
	FirstError string  `json:"first_error,omitempty"`
}

// runStorm starts one OpenSSH client per device, at most Parallel of them
// still setting up at any moment, and measures until every leased port is
// LISTENing on 127.0.0.1. The clients are returned running; the caller stops
// them.
func runStorm(ctx context.Context, s stormSpec, devs []device) (Storm, []*child) {
	ctx, cancel := context.WithTimeout(ctx, s.Timeout)
	defer cancel()
	w := newPortWatcher(ctx, 2*time.Millisecond)

	var (
		mu       sync.Mutex
		clients  []*child
		per      []time.Duration
		last     time.Time
		failures int
		firstErr string
		wg       sync.WaitGroup
	)
	fail := func(d device, err error) {
		mu.Lock()
		defer mu.Unlock()
		failures++
		if firstErr == "" {
			firstErr = d.Name + ": " + err.Error()
		}
	}
	sem := make(chan struct{}, s.Parallel)
	start := time.Now()
launch:
	for _, d := range devs {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			fail(d, ctx.Err())
			break launch
		}
		wg.Add(1)
		go func(d device) {
			defer wg.Done()
			defer func() { <-sem }()
			t0 := time.Now()
			c, err := startChild(sshCommand(s, d))
			if err != nil {
				fail(d, err)
				return
			}
			mu.Lock()
			clients = append(clients, c)
			mu.Unlock()
			at, err := w.wait(ctx, d.Ports[0], c.done)
			if err != nil {
				if out := c.cmd.Stderr.(*limitedBuffer).String(); out != "" {
					err = fmt.Errorf("%w: %s", err, strings.TrimSpace(out))
				}
				if socks := socketsOn(d.Ports[0]); socks != "" {
					err = fmt.Errorf("%w (sockets on port %d: %s)", err, d.Ports[0], socks)
				}
				fail(d, err)
				return
			}
			mu.Lock()
			per = append(per, at.Sub(t0))
			if at.After(last) {
				last = at
			}
			mu.Unlock()
		}(d)
	}
	wg.Wait()
	st := Storm{Tunnels: len(devs), Failures: failures, PerTunnel: summarize(per, failures), FirstError: firstErr}
	if failures == 0 {
		st.Seconds = round3(last.Sub(start).Seconds())
	}
	return st, clients
}

// sshCommand is the device's tunnel, exactly as a stock client would run it.
func sshCommand(s stormSpec, d device) *exec.Cmd {
	cmd := exec.Command(s.SSHPath, "-F", "/dev/null", "-N",
		"-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes",
		"-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
		"-o", "IdentitiesOnly=yes", "-i", d.KeyPath, "-p", strconv.Itoa(s.Port),
		"-R", fmt.Sprintf("%d:localhost:%d", d.Ports[0], s.TargetPort),
		s.User+"@127.0.0.1")
	cmd.Stderr = &limitedBuffer{max: 2048}
	// Own process group: a terminal's ^C reaches the harness, which stops
	// the clients in order. Pdeathsig: no client outlives a killed harness.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: unix.SIGKILL}
	return cmd
}

// stopClients ends every ssh client and waits until the leased ports are
// free again, so the next round starts from nothing.
func stopClients(ctx context.Context, clients []*child, devs []device) error {
	var wg sync.WaitGroup
	for _, c := range clients {
		wg.Add(1)
		go func(c *child) { defer wg.Done(); c.stop(unix.SIGTERM, 5*time.Second) }(c)
	}
	wg.Wait()
	var ports []int
	for _, d := range devs {
		ports = append(ports, d.Ports...)
	}
	return waitPortsFree(ctx, ports, 30*time.Second)
}

// limitedBuffer keeps the first max bytes written to it.
type limitedBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if room := l.max - len(l.b); room > 0 {
		if len(p) < room {
			room = len(p)
		}
		l.b = append(l.b, p[:room]...)
	}
	return len(p), nil
}

func (l *limitedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}
