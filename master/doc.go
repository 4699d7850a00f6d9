// Package master is the master process: the REST API (/api/v1, gin) with
// slot dispatch for devices, key validation and heartbeats for slaves, and
// the admin endpoints for devices, tunnels, events and cluster status; the
// live view of the slaves and their pending grants; the HTML dashboard and
// the Prometheus metrics. The registry (data model, store, dispatch policy)
// sits behind the Store interface.
//
// Where things are: api.go the Server, its Config and its lifetime;
// routes.go the routes, authentication and request decoding; slots.go slot
// requests and validation; heartbeat.go heartbeats and the marking of
// silent slaves; live.go the live slave view and pending grants that
// dispatch reads; admin.go the admin endpoints; dashboard.go and
// overview.go the pages and their view models; metrics.go and ratelimit.go.
package master
