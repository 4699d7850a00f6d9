package authkeys

import (
	"bytes"
	"fmt"
	"slices"
	"sort"
	"sync"
	"text/template"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/templates"
)

// The template is parsed on first use, not at start-up: the hook is a
// short-lived process and most runs refuse before they need it.
var authorizedKeysTemplate = sync.OnceValue(func() *template.Template { return templates.MustParse("authorized_keys.tmpl") })

// AuthorizedLine is the authorized_keys line sshd gets for an active device:
// its key, restricted to remote forwarding of exactly its leased ports. Each
// port is allowed under the three names real clients send for loopback
// ("localhost" when no bind address is given, or an explicit 127.0.0.1/::1);
// GatewayPorts=no binds loopback whichever it is.
func AuthorizedLine(dev registry.Device) (string, error) {
	key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(dev.PublicKey))
	if err != nil {
		return "", fmt.Errorf("device %s: stored key does not parse: %w", dev.Name, err)
	}
	ports := make([]int, 0, len(dev.Forwards))
	for _, f := range dev.Forwards {
		if f.RemotePort < 1 || f.RemotePort > 65535 {
			return "", fmt.Errorf("device %s: forward %s has no valid leased port (%d)", dev.Name, f.Name, f.RemotePort)
		}
		ports = append(ports, f.RemotePort)
	}
	if len(ports) == 0 {
		return "", fmt.Errorf("device %s has no forwards", dev.Name)
	}
	sort.Ints(ports)
	var buf bytes.Buffer
	err = authorizedKeysTemplate().Execute(&buf, struct {
		Ports []int
		Key   string
	}{ports, registry.AuthorizedKey(key)})
	if err != nil {
		return "", fmt.Errorf("rendering authorized_keys line for %s: %w", dev.Name, err)
	}
	return string(bytes.TrimRight(buf.Bytes(), "\n")), nil
}

var operatorKeysTemplate = sync.OnceValue(func() *template.Template { return templates.MustParse("operator_keys.tmpl") })

// OperatorLine is the authorized_keys line sshd gets for an operator's key
// logging in as the operator user: local forwarding to exactly ports, on
// loopback under the two names the operator's tools send. With no port
// there is no line (an error): sshd would read a line without permitopen
// as "any port PermitOpen allows", every device of the slave.
func OperatorLine(operator string, key ssh.PublicKey, ports []int) (string, error) {
	if len(ports) == 0 {
		return "", fmt.Errorf("operator %s may reach no device port", operator)
	}
	ps := append([]int(nil), ports...)
	sort.Ints(ps)
	ps = slices.Compact(ps)
	for _, p := range ps {
		if p < 1 || p > 65535 {
			return "", fmt.Errorf("operator %s: port %d is no port", operator, p)
		}
	}
	var buf bytes.Buffer
	err := operatorKeysTemplate().Execute(&buf, struct {
		Ports []int
		Key   string
	}{ps, registry.AuthorizedKey(key)})
	if err != nil {
		return "", fmt.Errorf("rendering authorized_keys line for operator %s: %w", operator, err)
	}
	return string(bytes.TrimRight(buf.Bytes(), "\n")), nil
}
