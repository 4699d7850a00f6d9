package bench

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Freeze is detection-to-free for a frozen OpenSSH client (SIGSTOP: its TCP
// connection stays up, nothing answers inside it).
type Freeze struct {
	// ProbeSeconds: the forward has the default ssh-banner probe; mas4h's
	// reaper frees it.
	ProbeSeconds float64 `json:"probe_seconds"`
	// ClientAliveSeconds: the forward's probe is none. Until 2026-12 only
	// sshd's ClientAliveInterval × ClientAliveCountMax ended such a
	// session; since, the reaper judges it on its TCP state alone.
	ClientAliveSeconds float64 `json:"client_alive_seconds"`
	Settings           string  `json:"settings"`
	Error              string  `json:"error,omitempty"`
}

// freezeSpec names the two devices (key files on disk, enrolled with the
// default forward and with probe=none) and the sshd to use.
type freezeSpec struct {
	SSHPath    string
	Port       int
	User       string
	TargetPort int // a banner server the forwards point at, so probes pass until the freeze
	Probed     device
	Unprobed   device
	Settle     time.Duration // up this long before the freeze (a probe cycle passes)
	Limit      time.Duration
}

// runFreeze starts both clients, waits until their ports listen and a probe
// cycle went by, SIGSTOPs both at once and times until each leased port is
// free. The clients are killed before it returns.
func runFreeze(ctx context.Context, s freezeSpec) Freeze {
	res := Freeze{}
	spec := stormSpec{SSHPath: s.SSHPath, Port: s.Port, User: s.User, TargetPort: s.TargetPort}
	var clients []*child
	defer func() {
		for _, c := range clients {
			c.cmd.Process.Signal(unix.SIGCONT)
			c.stop(unix.SIGKILL, 3*time.Second)
		}
	}()
	w := newPortWatcher(ctx, 20*time.Millisecond)
	for _, d := range []device{s.Probed, s.Unprobed} {
		c, err := startChild(sshCommand(spec, d))
		if err != nil {
			res.Error = err.Error()
			return res
		}
		clients = append(clients, c)
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err = w.wait(wctx, d.Ports[0], c.done)
		cancel()
		if err != nil {
			res.Error = fmt.Sprintf("%s: %v: %s", d.Name, err, c.cmd.Stderr.(*limitedBuffer).String())
			return res
		}
	}
	select {
	case <-ctx.Done():
		res.Error = ctx.Err().Error()
		return res
	case <-time.After(s.Settle):
	}
	t0 := time.Now()
	for _, c := range clients {
		c.cmd.Process.Signal(unix.SIGSTOP)
	}
	var wg sync.WaitGroup
	out := make([]float64, 2)
	for i, d := range []device{s.Probed, s.Unprobed} {
		wg.Add(1)
		go func(i, port int) {
			defer wg.Done()
			deadline := t0.Add(s.Limit)
			for time.Now().Before(deadline) && ctx.Err() == nil {
				all, _, err := listeners("/proc")
				if err == nil && !all[port] {
					out[i] = round3(time.Since(t0).Seconds())
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			out[i] = -1
		}(i, d.Ports[0])
	}
	wg.Wait()
	res.ProbeSeconds, res.ClientAliveSeconds = out[0], out[1]
	if out[0] < 0 || out[1] < 0 {
		res.Error = fmt.Sprintf("a frozen client's port was still bound after %s (-1 = not freed)", s.Limit)
	}
	return res
}

// bannerServer accepts connections and writes an SSH banner, as a device's
// own sshd would; the probes of the freeze test's forwards reach it.
func bannerServer() (port int, closeFn func() error, err error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, nil, err
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.Write([]byte("SSH-2.0-mas4h-bench-target\r\n"))
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				buf := make([]byte, 256)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().(*net.TCPAddr).Port, l.Close, nil
}

// freezeSettings describes the slave's default liveness settings.
func freezeSettings() string {
	return "liveness: each session's TCP state read every second, suspect after 2 × ClientAliveInterval 3 s + 2 s of silence, " +
		"then one probe (3 s timeout; probe=none: 3 s more of suspicion); sshd's ClientAliveCountMax 9 the backstop"
}
