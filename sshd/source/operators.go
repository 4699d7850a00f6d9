package source

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
)

// Grant is what an operator's key may open through this slave's sshd: the
// leased ports of the devices the operator may reach (leases are unique
// across the fleet, so one grant serves every slave).
type Grant struct {
	Operator    string
	Fingerprint string
	PublicKey   string
	Open        []wire.OpenPort
}

// Port finds the device forward behind a port of the grant.
func (g Grant) Port(port int) (wire.OpenPort, bool) {
	for _, o := range g.Open {
		if o.Port == port {
			return o, true
		}
	}
	return wire.OpenPort{}, false
}

// OperatorAPI is the part of the master's API that validates an
// operator's key (POST /validate with Role "operator"). A refusal is
// ErrNotAccepted, wrapped.
type OperatorAPI interface {
	ValidateOperator(ctx context.Context, req wire.ValidateRequest) (wire.OperatorValidation, error)
}

// RoleOperator is ValidateRequest.Role for a key that logs in as the
// operator user.
const RoleOperator = "operator"

// operatorCache holds the grants a master answered, each until its TTL,
// and the keys it refused, for a few seconds. It lives in memory only:
// the hook's fallback (the daemon down) never admits an operator, which
// fails closed for people while devices keep their tunnels.
type operatorCache struct {
	mu      sync.Mutex
	grants  map[string]cachedGrant
	refused map[string]time.Time
}

type cachedGrant struct {
	g       Grant
	expires time.Time
}

func newOperatorCache() *operatorCache {
	return &operatorCache{grants: map[string]cachedGrant{}, refused: map[string]time.Time{}}
}

func (c *operatorCache) get(fp string, now time.Time) (g Grant, found, refused bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.grants[fp]; ok && now.Before(e.expires) {
		return e.g, true, false
	}
	if until, ok := c.refused[fp]; ok && now.Before(until) {
		return Grant{}, false, true
	}
	return Grant{}, false, false
}

func (c *operatorCache) put(g Grant, expires time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.refused, g.Fingerprint)
	c.grants[g.Fingerprint] = cachedGrant{g, expires}
}

// refuse forgets fp's grant and remembers the refusal until until
// (bounded as the device refusals are: unknown keys are what anyone can
// send).
func (c *operatorCache) refuse(fp string, now, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.grants, fp)
	if len(c.refused) >= maxNegative {
		for k, u := range c.refused {
			if !now.Before(u) {
				delete(c.refused, k)
			}
		}
		if len(c.refused) >= maxNegative {
			clear(c.refused)
		}
	}
	c.refused[fp] = until
}

// drop forgets every grant of operator or of key fp (a revocation).
func (c *operatorCache) drop(operator, fp string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.grants {
		if k == fp || (operator != "" && e.g.Operator == operator) {
			delete(c.grants, k)
		}
	}
}

// dropDevice forgets every grant naming device or one of ports: a device
// revoked or removed. A port freed by rm may be leased to another device
// next, which a stale grant (and the permitopen line made from it) must
// not reach.
func (c *operatorCache) dropDevice(device string, ports []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, e := range c.grants {
		for _, o := range e.g.Open {
			if (device != "" && o.Device == device) || slices.Contains(ports, o.Port) {
				delete(c.grants, k)
				break
			}
		}
	}
}

// Operator implements Source: the master's answer for an operator's key,
// cached for the TTL the master gives (the device TTL otherwise). Past
// it, the master is asked again; a master out of reach then refuses the
// operator (an error): unlike a device's tunnel, a person's access waits
// for the master. key is nil when the slave asks about a live session's
// key, which only a key the master validated can have.
func (m *Master) Operator(ctx context.Context, fp string, key ssh.PublicKey) (Grant, bool, error) {
	now := m.now()
	if g, found, refused := m.ops.get(fp, now); found || refused {
		return g, found, nil
	}
	api, ok := m.api.(OperatorAPI)
	if !ok {
		return Grant{}, false, errors.New("this slave's master client cannot validate operator keys")
	}
	vctx, cancel := context.WithTimeout(ctx, validateTimeout)
	defer cancel()
	req := wire.ValidateRequest{Fingerprint: fp, Slave: m.slave, Role: RoleOperator}
	if key != nil {
		req.Fingerprint, req.PublicKey = "", registry.AuthorizedKey(key)
	}
	v, err := api.ValidateOperator(vctx, req)
	if errors.Is(err, ErrNotAccepted) {
		m.ops.refuse(fp, now, now.Add(negativeCacheFor))
		return Grant{}, false, nil
	}
	if err != nil {
		return Grant{}, false, fmt.Errorf("asking the master about operator key %s: %w", fp, err)
	}
	if v.Fingerprint != fp || v.Operator == "" {
		return Grant{}, false, fmt.Errorf("master answered for another key (%s) or no operator", v.Fingerprint)
	}
	if pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(v.PublicKey)); err != nil || registry.Fingerprint(pk) != fp ||
		(key != nil && registry.AuthorizedKey(key) != registry.AuthorizedKey(pk)) {
		return Grant{}, false, fmt.Errorf("master answered with a key that is not %s", fp)
	}
	g := Grant{Operator: v.Operator, Fingerprint: v.Fingerprint, PublicKey: v.PublicKey, Open: v.Open}
	ttl := time.Duration(v.TTLSeconds) * time.Second
	if ttl <= 0 {
		m.mu.Lock()
		ttl = m.ttl
		m.mu.Unlock()
	}
	if len(g.Open) == 0 {
		// Reaching nothing is answered like a refusal, and remembered no
		// longer: a wider allow list sends no revocation (no session has
		// to end), so a grant cached for the TTL would keep the operator
		// out that long.
		ttl = min(ttl, negativeCacheFor)
	}
	m.ops.put(g, now.Add(ttl))
	return g, true, nil
}
