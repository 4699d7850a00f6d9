package metrics

import "github.com/prometheus/client_golang/prometheus"

// Reasons a slave's request is refused, the values of
// mas4h_slave_auth_refusals_total's reason label.
const (
	SlaveAuthInvalid    = "invalid"     // no token, or one that is no credential (401)
	SlaveAuthOtherSlave = "other_slave" // a slave speaking for another, or the shared token for a slave with its own credential (403)
	SlaveAuthWrongRole  = "wrong_role"  // the admin token on a slave's endpoint or a slave's on an admin one (403)
)

// SlaveAuth counts what the master refuses, or still tolerates, of the
// credentials slaves present and the host keys they claim.
type SlaveAuth struct {
	refusals    *prometheus.CounterVec
	keyMismatch *prometheus.CounterVec
	shared      prometheus.Counter
}

// NewSlaveAuth registers the slave credential metrics on reg.
func NewSlaveAuth(reg prometheus.Registerer) (*SlaveAuth, error) {
	m := &SlaveAuth{
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "slave_auth_refusals_total",
			Help: "Requests to the slaves' and admin endpoints refused for their credential, by reason.",
		}, []string{"reason"}),
		// Labelled by slave: only a slave the registry knows can have bound
		// keys to mismatch, so the label stays as few as the slaves.
		keyMismatch: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "slave_host_key_mismatches_total",
			Help: "Heartbeats refused because they presented host keys other than those bound to the slave's name (see mas4h slave accept-key).",
		}, []string{"slave"}),
		shared: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "shared_slave_token_requests_total",
			Help: "Requests made with the shared slave token (--allow-shared-slave-token); 0 for a while means the flag can go.",
		}),
	}
	for _, r := range []string{SlaveAuthInvalid, SlaveAuthOtherSlave, SlaveAuthWrongRole} {
		m.refusals.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.refusals, m.keyMismatch, m.shared} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// Refused counts one request refused for its credential.
func (m *SlaveAuth) Refused(reason string) {
	if m != nil {
		m.refusals.WithLabelValues(reason).Inc()
	}
}

// KeyMismatch counts one heartbeat refused for its host keys.
func (m *SlaveAuth) KeyMismatch(slave string) {
	if m != nil {
		m.keyMismatch.WithLabelValues(slave).Inc()
	}
}

// Shared counts one request made with the shared slave token.
func (m *SlaveAuth) Shared() {
	if m != nil {
		m.shared.Inc()
	}
}
