package registry

import (
	"encoding/json"
	"time"
)

// Device statuses.
const (
	StatusActive  = "active"
	StatusRevoked = "revoked"
)

// Device is an enrolled device: one public key and its forwards.
type Device struct {
	Name        string            `json:"name"`
	Fingerprint string            `json:"fingerprint"`
	KeyType     string            `json:"key_type"`
	PublicKey   string            `json:"public_key"` // AuthorizedKey form: "type base64"
	Status      string            `json:"status"`     // StatusActive or StatusRevoked
	Forwards    []Forward         `json:"forwards"`   // never nil, so JSON shows []
	Labels      map[string]string `json:"labels,omitempty"`
	LastSlave   string            `json:"slave,omitempty"` // the slave the master last sent it to
	CreatedAt   time.Time         `json:"created_at"`
	UpdatedAt   time.Time         `json:"updated_at"`
}

// MarshalJSON writes forwards as [] rather than null even for a Device
// built by hand, so JSON consumers never special-case a missing list.
func (d Device) MarshalJSON() ([]byte, error) {
	type plain Device // drops the method, avoiding recursion
	if d.Forwards == nil {
		d.Forwards = []Forward{}
	}
	return json.Marshal(plain(d))
}

// Forward is a forward with its leased remote port. The port is leased at
// enrolment and kept for the device's life, so operators and scripts can rely
// on it.
type Forward struct {
	Name       string `json:"name"`
	Target     string `json:"target"`
	RemotePort int    `json:"remote_port"`
	Probe      string `json:"probe,omitempty"`
}

// Event kinds written by this package. Other packages add their own kinds
// (connect, disconnect, reap, slave up/down) through AddEvent.
const (
	EventEnrol    = "enrol"
	EventRevoke   = "revoke"
	EventRemove   = "rm"
	EventAuthDeny = "auth-deny"
	// Written by the master.
	EventSlot      = "slot"
	EventDeny      = "deny"
	EventSlaveUp   = "slave-up"
	EventSlaveDown = "slave-down"
	// Operators' lifecycle, and device labels.
	EventOperatorEnrol  = "operator-enrol"
	EventOperatorAllow  = "operator-allow" // the allow list changed: "+SEL" or "-SEL"
	EventOperatorRevoke = "operator-revoke"
	EventOperatorRemove = "operator-rm"
	EventLabels         = "labels"
)

// Event is one row of the event log.
type Event struct {
	ID     int64     `json:"id"`
	At     time.Time `json:"at"`
	Kind   string    `json:"kind"`
	Device string    `json:"device,omitempty"`
	Slave  string    `json:"slave,omitempty"`
	// Operator is the operator an operator-* event is about.
	Operator string `json:"operator,omitempty"`
	Detail   string `json:"detail,omitempty"`
}
