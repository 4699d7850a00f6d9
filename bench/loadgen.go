package bench

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mas4h/mas4h/backoff"
	"golang.org/x/crypto/ssh"
)

// loadgenBanner is what every forwarded connection is answered with, so a
// slave's ssh-banner probe of the tunnel passes.
const loadgenBanner = "SSH-2.0-mas4h-loadgen\r\n"

// genConfig is how the load generator plays its devices.
type genConfig struct {
	Addr     string   // sshd, host:port
	User     string   // tunnel user
	Sources  []net.IP // local addresses to dial from, round-robin; nil: the kernel's choice
	Parallel int      // devices in their first handshake at once; 0: no bound
	// Reconnect: after a session ends, wait a backoff and connect again.
	// The backoff is the agent's (package backoff): MinBackoff doubling to
	// MaxBackoff, each delay cut by a random part of up to Jitter of it
	// (zero: none).
	Reconnect              bool
	MinBackoff, MaxBackoff time.Duration
	Jitter                 float64
	HandshakeTimeout       time.Duration // connect until the forward is bound
}

// Failure classes of one connection attempt.
const (
	failDial    = "dial"    // TCP connect failed
	failRefused = "refused" // closed or reset before sshd's banner: MaxStartups drop (or listener gone)
	failAuth    = "auth"    // key refused
	failForward = "forward" // tcpip-forward refused (port still bound by an older session)
	failTimeout = "timeout" // handshake past HandshakeTimeout (or sshd's LoginGraceTime)
	failOther   = "other"
)

// genCounters are what the generator saw since the last reset.
type genCounters struct {
	Attempts   int64            `json:"attempts"`
	Successes  int64            `json:"successes"`
	Failures   map[string]int64 `json:"failures,omitempty"`
	FirstError string           `json:"first_error,omitempty"`
}

// fleet plays N devices from this process, one goroutine and one SSH
// connection each. It is bounded in count (its devices) and time (ctx).
type fleet struct {
	cfg  genConfig
	devs []device

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	sem    chan struct{}

	up       atomic.Int64
	mu       sync.Mutex
	upAt     []time.Time // last time each device's forward was bound
	started  []time.Time // first attempt of each device
	conns    []ssh.Conn  // live connection per device
	counters genCounters // under mu
}

func newFleet(cfg genConfig, devs []device) *fleet {
	f := &fleet{cfg: cfg, devs: devs, upAt: make([]time.Time, len(devs)),
		started: make([]time.Time, len(devs)), conns: make([]ssh.Conn, len(devs))}
	f.counters.Failures = map[string]int64{}
	if cfg.Parallel > 0 {
		f.sem = make(chan struct{}, cfg.Parallel)
	}
	if f.cfg.HandshakeTimeout == 0 {
		f.cfg.HandshakeTimeout = 60 * time.Second
	}
	return f
}

// start launches every device. It returns at once; Up and waitUp tell
// progress.
func (f *fleet) start(ctx context.Context) {
	f.ctx, f.cancel = context.WithCancel(ctx)
	for i := range f.devs {
		f.wg.Add(1)
		go f.play(i)
	}
}

// stop ends every device and waits for their goroutines.
func (f *fleet) stop() {
	if f.cancel == nil {
		return
	}
	f.cancel()
	f.mu.Lock()
	for _, c := range f.conns {
		if c != nil {
			c.Close()
		}
	}
	f.mu.Unlock()
	f.wg.Wait()
}

// Up is the number of devices whose forward is bound right now.
func (f *fleet) Up() int { return int(f.up.Load()) }

// snapshot returns the counters and clears them.
func (f *fleet) snapshot(reset bool) genCounters {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.counters
	c.Failures = map[string]int64{}
	for k, v := range f.counters.Failures {
		c.Failures[k] = v
	}
	if reset {
		f.counters = genCounters{Failures: map[string]int64{}}
	}
	return c
}

// upSince reports how many devices came up at or after t, and the latest
// such time.
func (f *fleet) upSince(t time.Time) (n int, last time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, u := range f.upAt {
		if !u.IsZero() && !u.Before(t) && f.conns[i] != nil {
			n++
			if u.After(last) {
				last = u
			}
		}
	}
	return n, last
}

// setupLatencies is each device's first attempt until its forward was bound.
func (f *fleet) setupLatencies() []time.Duration {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []time.Duration
	for i, u := range f.upAt {
		if !u.IsZero() && !f.started[i].IsZero() {
			out = append(out, u.Sub(f.started[i]))
		}
	}
	return out
}

// waitUpSince waits until n devices have come up at or after t (all devices
// when n is 0), polling every few milliseconds.
func (f *fleet) waitUpSince(ctx context.Context, t time.Time, n int) (time.Time, error) {
	if n == 0 {
		n = len(f.devs)
	}
	for {
		k, last := f.upSince(t)
		if k >= n && f.Up() >= n {
			return last, nil
		}
		select {
		case <-ctx.Done():
			return time.Time{}, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (f *fleet) play(i int) {
	defer f.wg.Done()
	d := f.devs[i]
	// The agent's backoff; zero bounds are its defaults.
	b := backoff.Backoff{Min: f.cfg.MinBackoff, Max: f.cfg.MaxBackoff, Jitter: f.cfg.Jitter}
	if f.cfg.Jitter == 0 {
		b.Rand = func() float64 { return 0 } // no cut at all
	}
	first := true
	for f.ctx.Err() == nil {
		if first && f.sem != nil {
			select {
			case f.sem <- struct{}{}:
			case <-f.ctx.Done():
				return
			}
		}
		f.mu.Lock()
		if f.started[i].IsZero() {
			f.started[i] = time.Now()
		}
		f.mu.Unlock()
		conn, chans, reqs, err := f.connect(i, d)
		if first && f.sem != nil {
			<-f.sem
		}
		first = false
		if err == nil {
			f.serve(i, conn, chans, reqs)
			b.Reset() // a session that was up starts over
		} else if f.ctx.Err() == nil {
			f.fail(d, err)
		}
		// A session that ended stays down unless told to reconnect; a
		// failed attempt is retried with backoff either way (and counted),
		// so one refusal does not leave a setup round short until its timeout.
		if f.ctx.Err() != nil || err == nil && !f.cfg.Reconnect {
			return
		}
		delay := b.Next()
		select {
		case <-f.ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// connect dials, authenticates and binds the device's forward on
// "localhost", within HandshakeTimeout.
func (f *fleet) connect(i int, d device) (ssh.Conn, <-chan ssh.NewChannel, <-chan *ssh.Request, error) {
	f.mu.Lock()
	f.counters.Attempts++
	f.mu.Unlock()
	dialer := net.Dialer{Timeout: f.cfg.HandshakeTimeout}
	if len(f.cfg.Sources) > 0 {
		dialer.LocalAddr = &net.TCPAddr{IP: f.cfg.Sources[i%len(f.cfg.Sources)]}
	}
	nc, err := dialer.DialContext(f.ctx, "tcp", f.cfg.Addr)
	if err != nil {
		return nil, nil, nil, &attemptError{failDial, err}
	}
	cc := &countingConn{Conn: nc}
	nc = cc
	nc.SetDeadline(time.Now().Add(f.cfg.HandshakeTimeout))
	// Closing the socket unblocks the handshake when the fleet stops.
	stopWatch := context.AfterFunc(f.ctx, func() { nc.Close() })
	defer stopWatch()
	cfg := &ssh.ClientConfig{
		User:            f.cfg.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(d.Signer)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(),
		ClientVersion:   "SSH-2.0-mas4h-loadgen",
	}
	conn, chans, reqs, err := ssh.NewClientConn(nc, f.cfg.Addr, cfg)
	if err != nil {
		nc.Close()
		return nil, nil, nil, &attemptError{classifyHandshake(err, cc.read.Load(), cc.first()), err}
	}
	go ssh.DiscardRequests(reqs) // keepalive@openssh.com: any reply counts as alive
	payload := ssh.Marshal(&struct {
		Addr string
		Port uint32
	}{"localhost", uint32(d.Ports[0])})
	ok, _, err := conn.SendRequest("tcpip-forward", true, payload)
	if err != nil || !ok {
		conn.Close()
		if err == nil {
			err = errors.New("tcpip-forward refused")
			return nil, nil, nil, &attemptError{failForward, err}
		}
		return nil, nil, nil, &attemptError{classifyHandshake(err, cc.read.Load(), cc.first()), err}
	}
	nc.SetDeadline(time.Time{})
	return conn, chans, nil, nil
}

// serve marks the device up, answers forwarded connections with the banner
// until the connection ends, and marks it down.
func (f *fleet) serve(i int, conn ssh.Conn, chans <-chan ssh.NewChannel, _ <-chan *ssh.Request) {
	f.mu.Lock()
	f.upAt[i] = time.Now()
	f.conns[i] = conn
	f.counters.Successes++
	f.mu.Unlock()
	f.up.Add(1)
	done := make(chan struct{})
	go func() {
		for nc := range chans {
			if nc.ChannelType() != "forwarded-tcpip" {
				nc.Reject(ssh.Prohibited, "load generator takes forwarded-tcpip only")
				continue
			}
			ch, reqs, err := nc.Accept()
			if err != nil {
				continue
			}
			go ssh.DiscardRequests(reqs)
			go func() {
				defer ch.Close()
				io.WriteString(ch, loadgenBanner)
				io.Copy(io.Discard, io.LimitReader(ch, 1<<16)) // until the prober hangs up
			}()
		}
		close(done)
	}()
	conn.Wait()
	<-done
	f.up.Add(-1)
	f.mu.Lock()
	f.conns[i] = nil
	f.mu.Unlock()
}

func (f *fleet) fail(d device, err error) {
	class := failOther
	var ae *attemptError
	if errors.As(err, &ae) {
		class = ae.class
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.counters.Failures[class]++
	if f.counters.FirstError == "" {
		f.counters.FirstError = d.Name + ": " + err.Error()
	}
}

type attemptError struct {
	class string
	err   error
}

func (e *attemptError) Error() string { return e.class + ": " + e.err.Error() }
func (e *attemptError) Unwrap() error { return e.err }

// classifyHandshake sorts a failed SSH handshake. sshd's MaxStartups drop
// writes "Exceeded MaxStartups\r\n" (OpenSSH ≥ 8.9) or nothing and closes
// the connection right after accept; head is the first bytes read.
func classifyHandshake(err error, bytesRead int64, head string) string {
	var ne net.Error
	msg := err.Error()
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return failTimeout
	case bytesRead == 0, strings.HasPrefix(head, "Exceeded MaxStartups"):
		return failRefused
	case strings.Contains(msg, "unable to authenticate"), strings.Contains(msg, "no supported methods remain"):
		return failAuth
	}
	return failOther
}

// countingConn counts the bytes read from the server and keeps the first
// few of them.
type countingConn struct {
	net.Conn
	read atomic.Int64
	mu   sync.Mutex
	head []byte
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.read.Add(int64(n)) <= 32 && n > 0 {
		c.mu.Lock()
		c.head = append(c.head, p[:min(n, 32)]...)
		c.mu.Unlock()
	}
	return n, err
}

func (c *countingConn) first() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return string(c.head)
}
