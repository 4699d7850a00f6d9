package metrics

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Reasons a slave ends a session, the values of mas4h_reaps_total's reason
// label.
const (
	ReapProbe      = "probe"      // failed its probes
	ReapRevoked    = "revoked"    // the device was revoked or removed
	ReapSuperseded = "superseded" // a newer session of the same device won
	ReapTrespass   = "trespass"   // it held a port not its device's, or its key is no device's
	ReapCap        = "cap"        // its device had more sessions than --max-sessions-per-device
)

// Slave holds a slave daemon's metrics. A nil *Slave counts nothing, so
// code paths that run before (or without) metrics need no checks.
type Slave struct {
	hooks        *prometheus.CounterVec
	hookDuration prometheus.Histogram
	probes       *prometheus.CounterVec
	reaps        *prometheus.CounterVec
	sshdRestarts prometheus.Counter
}

// SlaveGauges are read at scrape time. A nil func leaves its gauge out.
type SlaveGauges struct {
	// Tunnels is the number of live tunnels (forwarded ports).
	Tunnels func() int
	// LastHeartbeat is when the master last answered a heartbeat; nil for
	// a standalone slave. Before the first answer it returns the zero time
	// and the age counts from when the metrics were made.
	LastHeartbeat func() time.Time
	// KeysFileEntries is the number of devices in the keys file sshd reads
	// before it runs the hook; nil when the slave runs without one.
	KeysFileEntries func() int
}

// NewSlave registers a slave's metrics on reg.
func NewSlave(reg prometheus.Registerer, g SlaveGauges) (*Slave, error) {
	s := &Slave{
		hooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "hook_requests_total",
			Help: "Authentication attempts decided for sshd's AuthorizedKeysCommand by the daemon, by verdict.",
		}, []string{"verdict"}),
		hookDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "hook_duration_seconds",
			Help:    "Time the daemon took to decide an authentication attempt (cache, master validation, newest-wins).",
			Buckets: latencyBuckets,
		}),
		probes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "probes_total",
			Help: "Probes of forwarded ports, by result.",
		}, []string{"result"}),
		reaps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "reaps_total",
			Help: "Sessions the slave ended, by reason.",
		}, []string{"reason"}),
		sshdRestarts: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "sshd_restarts_total",
			Help: "Times the slave found its sshd dead and started it again.",
		}),
	}
	for _, v := range []string{"allow", "deny"} {
		s.hooks.WithLabelValues(v)
	}
	for _, r := range []string{"ok", "fail"} {
		s.probes.WithLabelValues(r)
	}
	for _, r := range []string{ReapProbe, ReapRevoked, ReapSuperseded, ReapTrespass, ReapCap} {
		s.reaps.WithLabelValues(r)
	}
	cs := []prometheus.Collector{s.hooks, s.hookDuration, s.probes, s.reaps, s.sshdRestarts}
	if g.Tunnels != nil {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "tunnels",
			Help: "Live tunnels (forwarded ports) on this slave.",
		}, func() float64 { return float64(g.Tunnels()) }))
	}
	if g.KeysFileEntries != nil {
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "keys_file_entries",
			Help: "Devices sshd finds in the keys file without running the hook (active, ports free).",
		}, func() float64 { return float64(g.KeysFileEntries()) }))
	}
	if g.LastHeartbeat != nil {
		born := time.Now()
		cs = append(cs, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: namespace, Name: "master_heartbeat_age_seconds",
			Help: "Time since the master last answered a heartbeat (since start when it never has).",
		}, func() float64 {
			last := g.LastHeartbeat()
			if last.IsZero() {
				last = born
			}
			return time.Since(last).Seconds()
		}))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Hook counts one decided authentication attempt and how long it took.
func (s *Slave) Hook(allow bool, took time.Duration) {
	if s == nil {
		return
	}
	v := "deny"
	if allow {
		v = "allow"
	}
	s.hooks.WithLabelValues(v).Inc()
	s.hookDuration.Observe(took.Seconds())
}

// Probe counts one probe of a forwarded port.
func (s *Slave) Probe(ok bool) {
	if s == nil {
		return
	}
	r := "fail"
	if ok {
		r = "ok"
	}
	s.probes.WithLabelValues(r).Inc()
}

// Reap counts one session ended for reason (ReapProbe, ReapRevoked,
// ReapSuperseded, ReapTrespass, ReapCap).
func (s *Slave) Reap(reason string) {
	if s != nil {
		s.reaps.WithLabelValues(reason).Inc()
	}
}

// SSHDRestart counts one restart of a dead sshd.
func (s *Slave) SSHDRestart() {
	if s != nil {
		s.sshdRestarts.Inc()
	}
}
