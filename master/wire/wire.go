// Package wire holds the JSON shapes of the master's REST API (/api/v1), shared
// by the server (master), its Go client (master/client), slaves and
// the device agent. It imports nothing heavy so the static agent can use it.
package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"
)

// APIPrefix is where every endpoint lives.
const APIPrefix = "/api/v1"

// Error is every non-2xx body: {"error": "..."}.
type Error struct {
	Error string `json:"error"`
}

// Forward is a device forward with its leased port on the slaves.
type Forward struct {
	Name       string `json:"name"`
	Target     string `json:"target"`
	RemotePort int    `json:"remote_port"`
	Probe      string `json:"probe,omitempty"`
}

// Device is a device as the admin API shows it (DESIGN.md's shape plus
// metadata).
type Device struct {
	Name        string    `json:"name"`
	Fingerprint string    `json:"fingerprint"`
	KeyType     string    `json:"key_type,omitempty"`
	PublicKey   string    `json:"public_key,omitempty"`
	Status      string    `json:"status"`
	Forwards    []Forward `json:"forwards"`
	// Labels are the device's K=V tags, which operators' allow lists
	// select by.
	Labels    map[string]string `json:"labels,omitempty"`
	Slave     string            `json:"slave,omitempty"` // current or last slave it was dispatched to
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
}

// SlotRequest is POST /slots. A device proves it holds the key's private
// half by signing a statement made of the other fields (see
// SlotStatement); a master that allows unsigned requests
// (--allow-unsigned-slots) takes PublicKey alone, and answers those
// without device name or LAN targets.
type SlotRequest struct {
	PublicKey string `json:"public_key"`
	// Master is the master's URL as the device was told it (the statement
	// binds the signature to it, so a signature made for another master is
	// refused).
	Master string `json:"master,omitempty"`
	// Timestamp is when the device signed, in Unix seconds; the master
	// refuses one more than SlotSkew away from its clock.
	Timestamp int64 `json:"timestamp,omitempty"`
	// Nonce makes every statement unique (16 to 64 of A-Z a-z 0-9 _ -);
	// the master refuses a statement it has seen.
	Nonce string `json:"nonce,omitempty"`
	// Signature is an SSH signature (sshsig, namespace SlotNamespace) of
	// SlotStatement: armored as `ssh-keygen -Y sign` writes it, or the
	// bare base64 between the armor lines.
	Signature string `json:"signature,omitempty"`
}

// Slot request signatures.
const (
	// SlotNamespace is the sshsig namespace of slot signatures:
	// `ssh-keygen -Y sign -n mas4h-slot`.
	SlotNamespace = "mas4h-slot"
	// SlotSkew is how far a signed timestamp may be from the master's clock.
	SlotSkew = 5 * time.Minute
)

// SlotBody is the request's payload without its proof: the JSON object
// of the fields that are not Master, Timestamp, Nonce or Signature, as
// encoding/json writes it. Today that is exactly {"public_key":"…"}, the
// value as sent (a shell client writes the same bytes with printf).
func SlotBody(r SlotRequest) []byte {
	b, _ := json.Marshal(SlotRequest{PublicKey: r.PublicKey})
	return b
}

// SlotStatement is what a device signs to ask for a slot, version 1:
//
//	mas4h-slot v1
//	master=<Master>
//	ts=<Timestamp, decimal Unix seconds>
//	nonce=<Nonce>
//	body=<lowercase hex SHA-256 of SlotBody>
//
// each line ending in "\n". The master rebuilds it from the request's
// fields and verifies the signature over it.
func SlotStatement(r SlotRequest) []byte {
	sum := sha256.Sum256(SlotBody(r))
	return []byte("mas4h-slot v1\nmaster=" + r.Master + "\nts=" + strconv.FormatInt(r.Timestamp, 10) +
		"\nnonce=" + r.Nonce + "\nbody=" + hex.EncodeToString(sum[:]) + "\n")
}

// Slot is the answer to POST /slots: where the device should open its
// tunnel, how to pin the slave's host key, and which forwards to request.
type Slot struct {
	Device   string    `json:"device"`
	Slave    string    `json:"slave"`
	Host     string    `json:"host"`
	Port     int       `json:"port"`
	User     string    `json:"user"`
	HostKeys []string  `json:"host_keys"` // authorized_keys form: "ssh-ed25519 AAAA..."
	Forwards []Forward `json:"forwards"`
}

// AddDeviceRequest is POST /devices. Forwards are the CLI's
// NAME=HOST:PORT[,probe=SPEC] strings; none means ssh=localhost:22.
type AddDeviceRequest struct {
	Name      string   `json:"name"`
	PublicKey string   `json:"public_key"`
	Forwards  []string `json:"forwards,omitempty"`
	// Labels are K=V tags (site=lyon), set at enrolment.
	Labels map[string]string `json:"labels,omitempty"`
}

// SlaveStatus is one slave in GET /status.
type SlaveStatus struct {
	Name     string    `json:"name"`
	Host     string    `json:"host"`
	Port     int       `json:"port"`
	Alive    bool      `json:"alive"`
	Tunnels  int       `json:"tunnels"`
	Capacity int       `json:"capacity"`
	Load     float64   `json:"load"` // tunnels/capacity, 0..1 (may exceed 1)
	CPU      float64   `json:"cpu_percent"`
	MemUsed  float64   `json:"mem_percent"`
	LastSeen time.Time `json:"last_seen"`
}

// DeviceCounts is the device summary in GET /status.
type DeviceCounts struct {
	Total   int `json:"total"`
	Active  int `json:"active"`
	Revoked int `json:"revoked"`
	Online  int `json:"online"` // devices with at least one live tunnel
}

// Status is GET /status.
type Status struct {
	Slaves  []SlaveStatus `json:"slaves"`
	Devices DeviceCounts  `json:"devices"`
}

// Tunnel is one live forward on a slave, as slaves report it in heartbeats
// and GET /tunnels lists it.
type Tunnel struct {
	Device    string    `json:"device"`
	Forward   string    `json:"forward"`
	Slave     string    `json:"slave"`
	Port      int       `json:"port"`
	Remote    string    `json:"remote"` // the device's address:port as the slave sees it
	Since     time.Time `json:"since"`
	LastProbe *Probe    `json:"last_probe,omitempty"`
}

// Probe is the last health probe of a tunnel (filled from issue 4 on).
type Probe struct {
	OK     bool      `json:"ok"`
	At     time.Time `json:"at"`
	Detail string    `json:"detail,omitempty"`
}

// Event is one entry of GET /events.
type Event struct {
	ID     int64     `json:"id"`
	At     time.Time `json:"at"`
	Kind   string    `json:"kind"`
	Device string    `json:"device,omitempty"`
	Slave  string    `json:"slave,omitempty"`
	// Operator is the operator of operator-* events.
	Operator string `json:"operator,omitempty"`
	Detail   string `json:"detail,omitempty"`
}

// SlaveEvent is an event a slave reports with its heartbeat (auth denials,
// sessions it killed).
type SlaveEvent struct {
	At       time.Time `json:"at"`
	Kind     string    `json:"kind"`
	Device   string    `json:"device,omitempty"`
	Operator string    `json:"operator,omitempty"` // operator-* events
	Detail   string    `json:"detail,omitempty"`
}

// Heartbeat is POST /slaves/{name}/heartbeat. The first one registers the
// slave. Seq is the last revocation sequence the slave has applied.
type Heartbeat struct {
	Host     string   `json:"host"`
	Port     int      `json:"port"`
	User     string   `json:"user"`
	HostKeys []string `json:"host_keys"`
	Capacity int      `json:"capacity"`
	CPU      float64  `json:"cpu_percent"`
	MemUsed  float64  `json:"mem_percent"`
	Tunnels  []Tunnel `json:"tunnels"`
	// OperatorUser is the user operators log in as on this slave's sshd
	// (mas4h-operator by default); empty: the slave takes no operators.
	OperatorUser string `json:"operator_user,omitempty"`
	// Operators are the live operator sessions and what each has open.
	Operators []OperatorSession `json:"operators,omitempty"`
	Events    []SlaveEvent      `json:"events,omitempty"`
	Seq       int64             `json:"seq"`
	// A slave sharing a virtual IP names it and its node number, so the
	// master can tell the other nodes when it dies (take-over).
	VIP  string `json:"vip,omitempty"`
	Node int    `json:"node,omitempty"`
}

// Peer is another node of the same virtual IP, as the master sees it.
type Peer struct {
	Slave string `json:"slave"`
	Node  int    `json:"node"`
	Alive bool   `json:"alive"`
}

// Revocation tells a slave that a device may no longer connect: it drops the
// device from its cache and kills its sessions on Ports.
type Revocation struct {
	Seq    int64  `json:"seq"`
	Device string `json:"device,omitempty"`
	// Operator is set (and Device empty) when an operator was revoked or
	// removed: its sessions end on every slave.
	Operator    string `json:"operator,omitempty"`
	Fingerprint string `json:"fingerprint,omitempty"`
	Ports       []int  `json:"ports"`
	Reason      string `json:"reason"` // "revoked" or "removed"
}

// RevocationsReply answers GET /slaves/NAME/revocations: the revocations
// after the slave's sequence number, and the one to ask from next.
type RevocationsReply struct {
	Seq         int64        `json:"seq"`
	Revocations []Revocation `json:"revocations"`
}

// HeartbeatReply answers a heartbeat: revocations after the slave's Seq,
// the new Seq to send next time, and the interval the master expects.
type HeartbeatReply struct {
	Seq             int64        `json:"seq"`
	Revocations     []Revocation `json:"revocations"`
	IntervalSeconds float64      `json:"interval_seconds"`
	CacheTTLSeconds int          `json:"cache_ttl_seconds"`
	Peers           []Peer       `json:"peers,omitempty"` // other nodes of the slave's VIP
}

// ValidateRequest is POST /validate: a slave asks about a key it has not
// cached. One of PublicKey ("type base64") or Fingerprint.
type ValidateRequest struct {
	PublicKey   string `json:"public_key,omitempty"`
	Fingerprint string `json:"fingerprint,omitempty"`
	Slave       string `json:"slave,omitempty"` // who asks, for the event log (optional)
	// Role is "operator" when the key logs in as the operator user: the
	// answer is then an OperatorValidation, and a device's key is refused.
	// Empty or "device": a device's key as the tunnel user (a Validation).
	Role string `json:"role,omitempty"`
}

// Validation is the positive answer to POST /validate (403 otherwise).
type Validation struct {
	Device      string    `json:"device"`
	Fingerprint string    `json:"fingerprint"`
	PublicKey   string    `json:"public_key"`
	Status      string    `json:"status"`
	Forwards    []Forward `json:"forwards"`
	TTLSeconds  int       `json:"ttl_seconds"`
}

// Removed is the answer to DELETE /devices/{name}.
type Removed struct {
	Removed string `json:"removed"`
}

// Health is GET /healthz.
type Health struct {
	Status string `json:"status"`           // "ok", or "degraded" (with a 503)
	Detail string `json:"detail,omitempty"` // what is wrong when degraded
}
