package wire

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"
)

// Operators: people who reach devices through a slave's sshd as the
// operator user (DESIGN.md, Roles and Security model). These are the
// shapes shared by the master, the slaves and the operator's tools.

// OperatorSpec is POST /operators: a new operator, its key and its allow
// list (selectors: a device name glob such as pi-*, or a label K=V).
type OperatorSpec struct {
	Name      string   `json:"name"`
	PublicKey string   `json:"public_key"`
	Allow     []string `json:"allow,omitempty"`
}

// Operator is an operator as the admin API shows it.
type Operator struct {
	Name        string    `json:"name"`
	Fingerprint string    `json:"fingerprint"`
	PublicKey   string    `json:"public_key"`
	Status      string    `json:"status"` // "active" or "revoked"
	Allow       []string  `json:"allow"`
	CreatedAt   time.Time `json:"created_at"`
	// Devices are the devices the allow list reaches today (GET
	// /operators/{name} only).
	Devices []string `json:"devices,omitempty"`
}

// Selector is the body of POST /operators/{name}/allow and /deny.
type Selector struct {
	Selector string `json:"selector"`
}

// Labels is the body of POST /devices/{name}/labels: Set adds or replaces,
// Remove drops keys.
type Labels struct {
	Set    map[string]string `json:"set,omitempty"`
	Remove []string          `json:"remove,omitempty"`
}

// AccessNamespace is the SSH signature namespace of access requests, as
// SlotNamespace is that of slot requests.
const AccessNamespace = "mas4h-access"

// AccessRequest is POST /access: an operator asks where a device's
// forward is, signed by the operator's key over the same kind of
// statement as a slot request (master, timestamp, nonce, the body's
// hash), in namespace AccessNamespace.
type AccessRequest struct {
	Device    string `json:"device"`
	Forward   string `json:"forward,omitempty"` // default "ssh"
	PublicKey string `json:"public_key"`
	Master    string `json:"master"`
	Timestamp int64  `json:"timestamp"`
	Nonce     string `json:"nonce"`
	Signature string `json:"signature"`
}

// AccessBody is an access request's payload without its proof: the JSON
// object {"device","forward","public_key"} as encoding/json writes it,
// with Forward as sent (empty when the default is meant).
func AccessBody(r AccessRequest) []byte {
	b, _ := json.Marshal(AccessRequest{Device: r.Device, Forward: r.Forward, PublicKey: r.PublicKey})
	return b
}

// AccessStatement is what an operator signs to ask for access, version 1,
// in namespace AccessNamespace:
//
//	mas4h-access v1
//	master=<Master>
//	ts=<Timestamp, decimal Unix seconds>
//	nonce=<Nonce>
//	body=<lowercase hex SHA-256 of AccessBody>
//
// each line ending in "\n": the shape of SlotStatement, under another
// first line, so that neither can pass for the other. The body binds the
// signature to the device and forward asked for.
func AccessStatement(r AccessRequest) []byte {
	sum := sha256.Sum256(AccessBody(r))
	return []byte("mas4h-access v1\nmaster=" + r.Master + "\nts=" + strconv.FormatInt(r.Timestamp, 10) +
		"\nnonce=" + r.Nonce + "\nbody=" + hex.EncodeToString(sum[:]) + "\n")
}

// Access answers POST /access: reach Forward of Device by opening
// localhost:RemotePort through Slave's sshd (Host:Port) as User, whose
// host keys are HostKeys.
type Access struct {
	Operator   string   `json:"operator"`
	Device     string   `json:"device"`
	Forward    string   `json:"forward"`
	Slave      string   `json:"slave"`
	Host       string   `json:"host"`
	Port       int      `json:"port"`
	User       string   `json:"user"` // the operator user, e.g. mas4h-operator
	HostKeys   []string `json:"host_keys"`
	RemotePort int      `json:"remote_port"`
}

// OpenPort is a leased port an operator may open: a device's forward.
type OpenPort struct {
	Device  string `json:"device"`
	Forward string `json:"forward"`
	Port    int    `json:"port"`
}

// OperatorValidation answers POST /validate for an operator's key (the
// request's Role is "operator"): the ports its sshd lines permit.
type OperatorValidation struct {
	Operator    string     `json:"operator"`
	Fingerprint string     `json:"fingerprint"`
	PublicKey   string     `json:"public_key"`
	Open        []OpenPort `json:"open"`
	TTLSeconds  int        `json:"ttl_seconds"`
}

// OperatorSession is a live operator session a slave reports in its
// heartbeat, with the device ports it has open now.
type OperatorSession struct {
	Operator    string           `json:"operator"`
	Fingerprint string           `json:"fingerprint"`
	Remote      string           `json:"remote"` // the operator's address
	Since       time.Time        `json:"since"`
	Open        []OperatorAccess `json:"open,omitempty"`
}

// OperatorAccess is one device port an operator session has open.
type OperatorAccess struct {
	Device  string    `json:"device"`
	Forward string    `json:"forward"`
	Port    int       `json:"port"`
	Since   time.Time `json:"since"`
}

// Event kinds of operator access (SlaveEvent.Kind, Event.Kind).
const (
	EventOperatorConnect    = "operator-connect"
	EventOperatorDisconnect = "operator-disconnect"
	EventOperatorDeny       = "operator-deny"
)
