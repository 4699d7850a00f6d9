package metrics

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of POST /api/v1/slots, the values of mas4h_slot_requests_total's
// result label.
const (
	SlotGranted     = "granted"
	SlotDenied      = "denied"       // unknown or revoked key
	SlotNoSlave     = "no_slave"     // no live slave with room (503)
	SlotRateLimited = "rate_limited" // 429
	SlotBadRequest  = "bad_request"  // malformed request or key
	SlotError       = "error"        // the master's own failure
)

// Results of POST /api/v1/validate, the values of
// mas4h_validations_total's result label.
const (
	ValidationAccepted   = "accepted"
	ValidationDenied     = "denied"
	ValidationBadRequest = "bad_request"
	ValidationError      = "error"
)

// Reasons an operator is refused (POST /api/v1/access, or its key at
// POST /api/v1/validate), the values of
// mas4h_operator_access_denials_total's reason label.
const (
	AccessUnknownKey   = "unknown_key"   // no operator has that key (a device's key included)
	AccessRevoked      = "revoked"       // the operator is revoked
	AccessNotAllowed   = "not_allowed"   // no such device, or not on the allow list
	AccessOffline      = "offline"       // the device has no tunnel on a live slave
	AccessBadSignature = "bad_signature" // the proof failed (signature, replay, clock, master URL)
	AccessRateLimited  = "rate_limited"  // 429
)

// MasterSnapshot is the registry's state as the gauges show it, read once
// per scrape.
type MasterSnapshot struct {
	DevicesActive  int
	DevicesRevoked int
	DevicesOnline  int // devices with a tunnel on a live slave
	// OperatorSessions are the operator sessions live slaves report.
	OperatorSessions int
	Slaves           []SlaveSnapshot
}

// SlaveSnapshot is one slave as the master sees it.
type SlaveSnapshot struct {
	Name         string
	Alive        bool
	Tunnels      int           // live tunnels (0 when the slave is dead)
	HeartbeatAge time.Duration // since its last heartbeat
}

// SnapshotFunc reads a MasterSnapshot; it is called on every scrape.
type SnapshotFunc func(ctx context.Context) (MasterSnapshot, error)

// snapshotTimeout bounds the registry reads of one scrape.
const snapshotTimeout = 5 * time.Second

// Master holds the master's request counters; its gauges are read from a
// SnapshotFunc at scrape time, so they can never drift from the registry.
type Master struct {
	slots              *prometheus.CounterVec
	validations        *prometheus.CounterVec
	validationDuration prometheus.Histogram
	accessDenials      *prometheus.CounterVec
	storeUnwritable    prometheus.Counter
}

// NewMaster registers the master's metrics on reg.
func NewMaster(reg prometheus.Registerer, snapshot SnapshotFunc) (*Master, error) {
	m := &Master{
		slots: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "slot_requests_total",
			Help: "Slot requests from devices (POST /api/v1/slots), by result.",
		}, []string{"result"}),
		validations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "validations_total",
			Help: "Key validation requests from slaves (POST /api/v1/validate), by result.",
		}, []string{"result"}),
		validationDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "validation_duration_seconds",
			Help:    "Time to answer a slave's key validation request, validator included.",
			Buckets: latencyBuckets,
		}),
		accessDenials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "operator_access_denials_total",
			Help: "Operators refused, at POST /api/v1/access or when a slave validates an operator's key, by reason.",
		}, []string{"reason"}),
		storeUnwritable: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "registry_write_failures_total",
			Help: "Writes the registry refused for want of room or of a writable file (disk full, I/O error, read-only); /api/v1/healthz says 503 while they last.",
		}),
	}
	// Every known result is exported from the start at 0, so that a rate()
	// over a result that has not happened yet is 0, not absent.
	for _, r := range []string{SlotGranted, SlotDenied, SlotNoSlave, SlotRateLimited, SlotBadRequest, SlotError} {
		m.slots.WithLabelValues(r)
	}
	for _, r := range []string{ValidationAccepted, ValidationDenied, ValidationBadRequest, ValidationError} {
		m.validations.WithLabelValues(r)
	}
	for _, r := range []string{AccessUnknownKey, AccessRevoked, AccessNotAllowed, AccessOffline, AccessBadSignature, AccessRateLimited} {
		m.accessDenials.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.slots, m.validations, m.validationDuration, m.accessDenials, m.storeUnwritable, newRegistryCollector(snapshot)} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Slot counts one answered slot request.
func (m *Master) Slot(result string) {
	if m != nil {
		m.slots.WithLabelValues(result).Inc()
	}
}

// Validation counts one answered validation request and its duration.
func (m *Master) Validation(result string, took time.Duration) {
	if m == nil {
		return
	}
	m.validations.WithLabelValues(result).Inc()
	m.validationDuration.Observe(took.Seconds())
}

// StoreUnwritable counts one write the registry refused (disk full…).
func (m *Master) StoreUnwritable() {
	if m != nil {
		m.storeUnwritable.Inc()
	}
}

// AccessDenied counts one refused operator.
func (m *Master) AccessDenied(reason string) {
	if m != nil {
		m.accessDenials.WithLabelValues(reason).Inc()
	}
}

// registryCollector turns a MasterSnapshot into gauges at scrape time.
type registryCollector struct {
	snapshot     SnapshotFunc
	devices      *prometheus.Desc
	online       *prometheus.Desc
	slavesAlive  *prometheus.Desc
	tunnels      *prometheus.Desc
	heartbeatAge *prometheus.Desc
	operators    *prometheus.Desc
}

func newRegistryCollector(snapshot SnapshotFunc) *registryCollector {
	name := func(n string) string { return prometheus.BuildFQName(namespace, "", n) }
	return &registryCollector{
		snapshot:     snapshot,
		devices:      prometheus.NewDesc(name("devices"), "Enrolled devices, by status.", []string{"status"}, nil),
		online:       prometheus.NewDesc(name("devices_online"), "Devices with at least one tunnel on a live slave.", nil, nil),
		slavesAlive:  prometheus.NewDesc(name("slaves_alive"), "Slaves whose heartbeats arrive in time.", nil, nil),
		tunnels:      prometheus.NewDesc(name("tunnels"), "Live tunnels (forwarded ports) per slave, as of its last heartbeat; 0 for a dead slave.", []string{"slave"}, nil),
		heartbeatAge: prometheus.NewDesc(name("heartbeat_age_seconds"), "Time since the slave's last heartbeat.", []string{"slave"}, nil),
		operators:    prometheus.NewDesc(name("operator_sessions"), "Live operator sessions, as live slaves' last heartbeats report them.", nil, nil),
	}
}

func (c *registryCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.devices
	ch <- c.online
	ch <- c.slavesAlive
	ch <- c.tunnels
	ch <- c.heartbeatAge
	ch <- c.operators
}

func (c *registryCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), snapshotTimeout)
	defer cancel()
	s, err := c.snapshot(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.devices, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.devices, prometheus.GaugeValue, float64(s.DevicesActive), "active")
	ch <- prometheus.MustNewConstMetric(c.devices, prometheus.GaugeValue, float64(s.DevicesRevoked), "revoked")
	ch <- prometheus.MustNewConstMetric(c.online, prometheus.GaugeValue, float64(s.DevicesOnline))
	alive := 0
	for _, sl := range s.Slaves {
		if sl.Alive {
			alive++
		}
		ch <- prometheus.MustNewConstMetric(c.tunnels, prometheus.GaugeValue, float64(sl.Tunnels), sl.Name)
		ch <- prometheus.MustNewConstMetric(c.heartbeatAge, prometheus.GaugeValue, max(sl.HeartbeatAge.Seconds(), 0), sl.Name)
	}
	ch <- prometheus.MustNewConstMetric(c.slavesAlive, prometheus.GaugeValue, float64(alive))
	ch <- prometheus.MustNewConstMetric(c.operators, prometheus.GaugeValue, float64(s.OperatorSessions))
}
