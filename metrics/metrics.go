// Package metrics defines mas4h's Prometheus metrics: the master's (devices,
// slaves and tunnels read from the registry at scrape time; slot and key
// validation requests counted as they are answered) and a slave's (hook
// decisions, probes, reaps, sshd restarts, live tunnels, heartbeat age).
//
// Nothing here touches prometheus.DefaultRegisterer: each process builds
// its own prometheus.Registry and passes it in, so that tests, and several
// servers in one process, never share a counter.
package metrics

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

const namespace = "mas4h"

// NewRegistry returns a registry holding the Go runtime and process
// collectors every mas4h process exports.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// Handler serves g in the Prometheus exposition formats. A collector that
// fails (the registry unreadable) fails the scrape with a 500, so that the
// target shows as down rather than silently losing series.
func Handler(g prometheus.Gatherer) http.Handler {
	return promhttp.HandlerFor(g, promhttp.HandlerOpts{ErrorHandling: promhttp.HTTPErrorOnError})
}

// latencyBuckets suit answers that are usually a few milliseconds (a cached
// key, a registry lookup) and at worst a couple of seconds (a slow exec or
// webhook validator, a master that does not answer a slave's validation).
var latencyBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5}
