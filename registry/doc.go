// Package registry is mas4h's data model and its store (SQLite): devices,
// their single public key and per-forward port leases; slaves, their load
// and the tunnels they report; the event log and the revocation log slaves
// follow; and the dispatch policy that picks a slave for a device. It
// serves nothing itself: the master (package master) does, and the Wire
// methods give its types the API's JSON shapes (master/wire).
package registry
