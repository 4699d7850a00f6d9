// Package registry is mas4h's data model and its SQLite store: devices and
// their single public key, per-forward port leases, and the event log.
package registry
