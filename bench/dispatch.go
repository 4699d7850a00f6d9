package bench

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"golang.org/x/crypto/ssh"

	masterclient "github.com/mas4h/mas4h/master/client"
	"github.com/mas4h/mas4h/master/wire"
)

// dispatchSpec is the master dispatch measurement: a real `mas4h master`
// on loopback, its registry holding the enrolled devices, Slaves fake slaves
// heartbeating, Clients concurrent devices asking for slots for Duration.
type dispatchSpec struct {
	Bin      string
	DB       string // registry with the devices already enrolled; the master owns it
	Port     int
	Slaves   int
	Clients  int
	Duration time.Duration
	Devices  []device
}

// Dispatch is what the master answered.
type Dispatch struct {
	Devices    int     `json:"devices"`
	Slaves     int     `json:"slaves"`
	Clients    int     `json:"clients"`
	Seconds    float64 `json:"seconds"`
	Requests   int     `json:"requests"`
	Errors     int     `json:"errors"`
	PerSecond  float64 `json:"slots_per_second"`
	Latency    Latency `json:"latency"`
	MasterCPU  float64 `json:"master_cpu_cores"` // master's CPU over the run, in cores
	FirstError string  `json:"first_error,omitempty"`
}

// runDispatch starts the master, registers the fake slaves, runs the load
// and stops the master (SIGTERM) before returning.
func runDispatch(ctx context.Context, s dispatchSpec, work string) (Dispatch, error) {
	res := Dispatch{Devices: len(s.Devices), Slaves: s.Slaves, Clients: s.Clients}
	adminTok := filepath.Join(work, "admin.token")
	logPath := filepath.Join(work, "master.log")
	logf, err := os.Create(logPath)
	if err != nil {
		return res, err
	}
	defer logf.Close()
	base := "http://127.0.0.1:" + strconv.Itoa(s.Port)
	cmd := exec.Command(s.Bin, "master", "--listen", "127.0.0.1:"+strconv.Itoa(s.Port), "--db", s.DB,
		"--admin-token-file", adminTok,
		"--slot-rate", "1000000", "--slot-burst", "1000000")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: unix.SIGTERM}
	master, err := startChild(cmd)
	if err != nil {
		return res, err
	}
	defer master.stop(unix.SIGTERM, 10*time.Second)

	if err := waitHealthy(ctx, master, base, logPath); err != nil {
		return res, err
	}
	// Each fake slave gets its own credential, as real ones do; issuing it
	// again also lets this run's fresh host keys bind on a reused registry.
	tokB, err := os.ReadFile(adminTok)
	if err != nil {
		return res, fmt.Errorf("the master's admin token: %w", err)
	}
	admin, err := masterclient.New(base, strings.TrimSpace(string(tokB)))
	if err != nil {
		return res, err
	}
	tokens := make([]string, s.Slaves)
	for i := range tokens {
		sc, err := admin.AddSlave(ctx, fmt.Sprintf("bench-s%d", i))
		if err != nil {
			return res, fmt.Errorf("issuing bench-s%d a credential: %w", i, err)
		}
		tokens[i] = sc.Credential
	}

	// Fake slaves: each heartbeats every second, as a real one would
	// (every 5 s by default), with an empty tunnel list.
	hb := make([]wire.Heartbeat, s.Slaves)
	for i := range hb {
		pub, _, _ := ed25519.GenerateKey(rand.Reader)
		sp, _ := ssh.NewPublicKey(pub)
		hb[i] = wire.Heartbeat{Host: "127.0.0.1", Port: 2400 + i, User: "mas4h-tunnel",
			HostKeys: []string{strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sp)))}, Capacity: 2000, Tunnels: []wire.Tunnel{}}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: s.Clients + s.Slaves, MaxConnsPerHost: 0}, Timeout: 30 * time.Second}
	beat := func(ctx context.Context, i int) error {
		hb[i].Seq++
		body, _ := json.Marshal(hb[i])
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s%s/slaves/bench-s%d/heartbeat", base, wire.APIPrefix, i), bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+tokens[i])
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("heartbeat of bench-s%d: %s: %s", i, resp.Status, b)
		}
		return nil
	}
	for i := range hb {
		if err := beat(ctx, i); err != nil {
			return res, err
		}
	}
	loadCtx, cancel := context.WithTimeout(ctx, s.Duration)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-loadCtx.Done():
				return
			case <-t.C:
				for i := range hb {
					beat(loadCtx, i)
				}
			}
		}
	}()

	// Devices sign every slot request afresh (the master refuses a
	// statement it has seen), as the agent does; signing is the client's
	// cost, inside the measured latency like the rest of the request.
	signers := make([]ssh.Signer, len(s.Devices))
	for i, d := range s.Devices {
		signers[i] = d.Signer
		if signers[i] == nil {
			pem, err := os.ReadFile(d.KeyPath)
			if err != nil {
				return res, fmt.Errorf("device %s's key: %w", d.Name, err)
			}
			if signers[i], err = ssh.ParsePrivateKey(pem); err != nil {
				return res, fmt.Errorf("device %s's key: %w", d.Name, err)
			}
		}
	}
	var (
		mu       sync.Mutex
		lat      []time.Duration
		errs     int
		firstErr string
	)
	cpu0, _ := readStat(master.cmd.Process.Pid)
	start := time.Now()
	for c := 0; c < s.Clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			var mine []time.Duration
			bad := 0
			var first string
			for i := c; loadCtx.Err() == nil; i += s.Clients {
				sr, err := masterclient.SignSlotRequest(signers[i%len(signers)], base, time.Now())
				if err != nil {
					bad++
					first = err.Error()
					continue
				}
				body, _ := json.Marshal(sr)
				req, _ := http.NewRequestWithContext(loadCtx, http.MethodPost, base+wire.APIPrefix+"/slots", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				t0 := time.Now()
				resp, err := client.Do(req)
				if err != nil {
					if loadCtx.Err() == nil {
						bad++
						if first == "" {
							first = err.Error()
						}
					}
					continue
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				el := time.Since(t0)
				if resp.StatusCode != http.StatusOK {
					bad++
					if first == "" {
						first = resp.Status + ": " + string(b)
					}
					continue
				}
				mine = append(mine, el)
			}
			mu.Lock()
			lat = append(lat, mine...)
			errs += bad
			if firstErr == "" {
				firstErr = first
			}
			mu.Unlock()
		}(c)
	}
	wg.Wait()
	elapsed := time.Since(start)
	cpu1, _ := readStat(master.cmd.Process.Pid)
	res.Seconds = round3(elapsed.Seconds())
	res.Requests = len(lat)
	res.Errors = errs
	res.FirstError = firstErr
	res.PerSecond = round3(float64(len(lat)) / elapsed.Seconds())
	res.Latency = summarize(lat, errs)
	res.MasterCPU = round3(float64(cpu1.Own()-cpu0.Own()) / userHZ / elapsed.Seconds())
	return res, nil
}
