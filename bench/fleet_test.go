package bench

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	// comm with a space and a paren, as sshd's "sshd: user [priv]" is not,
	// but a hostile comm could be.
	in := "1234 (sshd: a) b) S 1 1234 1234 0 -1 4194560 100 0 0 0 7 3 11 5 20 0 1 0 100 12345678 321 18446744073709551615 1 1 0 0 0 0 0 4096 81926 0 0 0 17 1 0 0 0 0 0\n"
	got, err := parseStat([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	want := procTimes{UTime: 7, STime: 3, CUTime: 11, CSTime: 5, RSSPages: 321}
	if got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
	if got.Own() != 10 || got.All() != 26 {
		t.Errorf("Own %d All %d", got.Own(), got.All())
	}
	if _, err := parseStat([]byte("1234 (x) S 1 2")); err == nil {
		t.Error("short stat: want an error")
	}
}

func TestParseSmapsRollup(t *testing.T) {
	in := `55d0c0a00000-7ffd5b7f6000 ---p 00000000 00:00 0                          [rollup]
Rss:                6144 kB
Pss:                1833 kB
Pss_Dirty:           900 kB
Pss_Anon:            800 kB
Shared_Clean:       4000 kB
`
	pss, rss, err := parseSmapsRollup([]byte(in))
	if err != nil || pss != 1833 || rss != 6144 {
		t.Errorf("pss %d rss %d err %v; want 1833 6144", pss, rss, err)
	}
	if _, _, err := parseSmapsRollup([]byte("Rss: 1 kB\n")); err == nil {
		t.Error("no Pss: want an error")
	}
}

func TestParseMemInfo(t *testing.T) {
	total, avail := parseMemInfo([]byte("MemTotal:       24684084 kB\nMemFree:        21790056 kB\nMemAvailable:   23902768 kB\n"))
	if total != 24684084 || avail != 23902768 {
		t.Errorf("total %d avail %d", total, avail)
	}
}

func TestOwnDelta(t *testing.T) {
	before := treeUsage{PerPID: map[int]int64{1: 10, 2: 5, 3: 7}}
	after := treeUsage{PerPID: map[int]int64{1: 15, 2: 5, 4: 100}}
	if d := ownDelta(before, after); d != 5 {
		t.Errorf("delta %d, want 5 (pid 3 gone and pid 4 new are left out)", d)
	}
}

func TestFindCycles(t *testing.T) {
	t0 := time.Unix(0, 0)
	var s []cpuSample
	ticks := int64(0)
	// 0–2 s quiet but one housekeeping tick; 2.0–2.4 s a burst of 20
	// ticks; quiet; 12.0–12.2 s a burst of 10; quiet 1.5 s; 13.7 s a burst
	// cut off by the window's end.
	for ms := 0; ms <= 14000; ms += 20 {
		switch {
		case ms == 1000:
			ticks++
		case ms > 2000 && ms <= 2400:
			ticks++
		case ms > 12000 && ms <= 12200:
			ticks++
		case ms > 13700:
			ticks++
		}
		s = append(s, cpuSample{At: t0.Add(time.Duration(ms) * time.Millisecond), Ticks: ticks})
	}
	got := findCycles(s, time.Second, 3)
	if len(got) != 2 {
		t.Fatalf("got %d bursts %+v, want 2", len(got), got)
	}
	if w := got[0].End.Sub(got[0].Start); w != 400*time.Millisecond || got[0].Ticks != 20 {
		t.Errorf("first burst %v, %d ticks; want 400ms, 20", w, got[0].Ticks)
	}
	if got[1].Ticks != 10 {
		t.Errorf("second burst %d ticks, want 10", got[1].Ticks)
	}
	if findCycles(s[:1], time.Second, 3) != nil {
		t.Error("one sample: want no bursts")
	}
}

func TestCountMaxStartups(t *testing.T) {
	log := `Nov 22 10:00:00 sshd[1]: drop connection #201 from [127.0.1.3]:40000 on [127.0.0.1]:2401 past MaxStartups
Nov 22 10:00:00 sshd[1]: beginning MaxStartups throttling
Nov 22 10:00:01 sshd[1]: drop connection #202 from [127.0.1.4]:40001 on [127.0.0.1]:2401 past MaxStartups
sshd[1]: error: beginning MaxStartups throttling
old sshd: exceeded MaxStartups
`
	if n := countMaxStartups([]byte(log)); n != 3 {
		t.Errorf("got %d, want 3", n)
	}
}

const promFixture = `# HELP mas4h_hook_duration_seconds Time the daemon took.
# TYPE mas4h_hook_duration_seconds histogram
mas4h_hook_duration_seconds_bucket{le="0.0005"} 10
mas4h_hook_duration_seconds_bucket{le="0.001"} 60
mas4h_hook_duration_seconds_bucket{le="0.0025"} 100
mas4h_hook_duration_seconds_bucket{le="+Inf"} 100
mas4h_hook_duration_seconds_sum 0.08
mas4h_hook_duration_seconds_count 100
mas4h_probes_total{result="fail"} 2
mas4h_probes_total{result="ok"} 5000
`

func TestPromText(t *testing.T) {
	after, err := parsePromText(strings.NewReader(promFixture))
	if err != nil {
		t.Fatal(err)
	}
	before := promSample{`mas4h_probes_total{result="ok"}`: 1000}
	if d := after.delta(before, `mas4h_probes_total{result="ok"}`); d != 4000 {
		t.Errorf("delta %v", d)
	}
	// 100 observations: p50 is rank 50, in (0.0005, 0.001] holding 10..60.
	if q := histQuantile(promSample{}, after, "mas4h_hook_duration_seconds", 0.5); math.Abs(q-0.0009) > 1e-9 {
		t.Errorf("p50 = %v, want 0.0009", q)
	}
	if q := histQuantile(promSample{}, after, "mas4h_hook_duration_seconds", 0.99); math.Abs(q-(0.001+0.0015*39/40)) > 1e-9 {
		t.Errorf("p99 = %v", q)
	}
	if q := histQuantile(after, after, "mas4h_hook_duration_seconds", 0.99); !math.IsNaN(q) {
		t.Errorf("no observations: %v, want NaN", q)
	}
	if _, err := parsePromText(strings.NewReader("novalue\n")); err == nil {
		t.Error("line without value: want an error")
	}
}

func TestHookArgv(t *testing.T) {
	cfg := []byte("AuthorizedKeysFile none\nAuthorizedKeysCommand /s/bin/mas4h-authkeys --state-dir /s -- %u %f %t %k\nAuthorizedKeysCommandUser u\n")
	argv, err := hookArgv(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := hookTarget{Argv: argv, User: "mas4h-bench"}
	got := strings.Join(h.argv(device{FP: "SHA256:x", Type: "ssh-ed25519", B64: "AAAA"}), " ")
	if want := "/s/bin/mas4h-authkeys --state-dir /s -- mas4h-bench SHA256:x ssh-ed25519 AAAA"; got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
	if _, err := hookArgv([]byte("AuthorizedKeysCommand mas4h authkeys\n")); err == nil {
		t.Error("relative hook: want an error")
	}
	if _, err := hookArgv([]byte("AuthorizedKeysFile x\n")); err == nil {
		t.Error("no hook: want an error")
	}
}

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

func TestClassifyHandshake(t *testing.T) {
	for _, c := range []struct {
		err  error
		read int64
		head string
		want string
	}{
		{fmt.Errorf("ssh: handshake failed: %w", io.EOF), 0, "", failRefused},
		{errors.New("ssh: handshake failed: read tcp: connection reset by peer"), 0, "", failRefused},
		{fmt.Errorf("ssh: handshake failed: %w", io.EOF), 22, "Exceeded MaxStartups\r\n", failRefused},
		{fmt.Errorf("ssh: handshake failed: %w", io.EOF), 1200, "SSH-2.0-OpenSSH_9.2p1 Debia", failOther},
		{errors.New("ssh: handshake failed: ssh: unable to authenticate, attempted methods [none publickey], no supported methods remain"), 1500, "SSH-2.0-OpenSSH_9.2", failAuth},
		{fmt.Errorf("ssh: handshake failed: %w", timeoutErr{}), 30, "SSH-2.0-OpenSSH_9.2", failTimeout},
	} {
		if got := classifyHandshake(c.err, c.read, c.head); got != c.want {
			t.Errorf("%v (%d bytes read) = %s, want %s", c.err, c.read, got, c.want)
		}
	}
}

func TestIsTestRun(t *testing.T) {
	for in, want := range map[string]bool{
		"/tmp/go-build1/b001/mas4h.test\x00-test.run\x00X\x00": true,
		"go\x00test\x00./...\x00":                              true,
		"/usr/local/go/bin/go\x00build\x00./cmd/mas4h\x00":     false,
		"sshd: mas4h-bench\x00":                                false,
	} {
		if got := isTestRun([]byte(in)); got != want {
			t.Errorf("%q = %v, want %v", in, got, want)
		}
	}
}

func TestPointFinish(t *testing.T) {
	p := Point{Tunnels: 1000,
		Mas4h: &SidePoint{Setup: SetupResult{PerSecond: 63, SSHDCPUSeconds: 20, DaemonCPUSeconds: 0.5},
			Density: DensityResult{SSHDPSSMB: 1800, DaemonPSSMB: 18}},
		Raw: &SidePoint{Setup: SetupResult{PerSecond: 70, SSHDCPUSeconds: 19.5}, Density: DensityResult{SSHDPSSMB: 1800}}}
	p.finish()
	if p.RateRatio != 0.9 || p.CPUPerTunnelMsMas4h != 20.5 || p.CPUPerTunnelMsRaw != 19.5 ||
		p.CPUOverheadPct != 5.128 || p.MemOverheadPct != 1 {
		t.Errorf("%+v", p)
	}
	r := &FleetResult{Points: []Point{p}, Freeze: &Freeze{ProbeSeconds: 9.1, ClientAliveSeconds: 70},
		Dispatch: &Dispatch{Devices: 10000, PerSecond: 2000}}
	var b bytes.Buffer
	r.WriteTable(&b)
	for _, want := range []string{"| 1000 |", "**0.900**", "**9.1**", "| 10000 |"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, b.String())
		}
	}
}
