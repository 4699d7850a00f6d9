package wire

import "time"

// AddSlaveRequest is POST /slaves: issue a credential for slave Name, or
// a new one, which invalidates the old.
type AddSlaveRequest struct {
	Name string `json:"name"`
}

// SlaveCredential answers POST /slaves. Credential is shown this once:
// the master keeps only its hash.
type SlaveCredential struct {
	Name       string `json:"name"`
	Credential string `json:"credential"`
	Replaced   bool   `json:"replaced"` // the slave's earlier credential no longer works
}

// Credential states of a slave in GET /slaves.
const (
	CredentialOwn    = "own"    // it has its own credential and has used it
	CredentialIssued = "issued" // issued; its first heartbeat with it will bind its host keys
	CredentialNone   = "none"   // none: it can speak only through the shared slave token
)

// Slave is one slave in GET /slaves: its credential, and what the master
// knows of it from its heartbeats.
type Slave struct {
	Name              string     `json:"name"`
	Credential        string     `json:"credential"` // CredentialOwn, CredentialIssued or CredentialNone
	CredentialCreated *time.Time `json:"credential_created,omitempty"`
	// SharedToken: this master has seen it use the shared slave token
	// since it started.
	SharedToken bool       `json:"shared_token,omitempty"`
	Registered  bool       `json:"registered"` // it has sent a heartbeat
	Host        string     `json:"host,omitempty"`
	Port        int        `json:"port,omitempty"`
	Alive       bool       `json:"alive"`
	LastSeen    *time.Time `json:"last_seen,omitempty"`
	// HostKeys are the SHA256 fingerprints of the host keys bound to its
	// name, the ones devices are told to pin.
	HostKeys []string `json:"host_keys"`
	// PendingHostKeys are fingerprints of other host keys a heartbeat in
	// its name presented and was refused for, awaiting accept-key.
	PendingHostKeys []string   `json:"pending_host_keys,omitempty"`
	PendingSince    *time.Time `json:"pending_since,omitempty"`
}

// AcceptKeyRequest is POST /slaves/{name}/accept-key. When Fingerprints is
// not empty, the pending host keys must be exactly those (SHA256:...), or
// nothing is accepted.
type AcceptKeyRequest struct {
	Fingerprints []string `json:"fingerprints,omitempty"`
}

// AcceptedKeys answers accept-key: the fingerprints now bound to the slave.
type AcceptedKeys struct {
	Name     string   `json:"name"`
	HostKeys []string `json:"host_keys"`
}
