package master

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/master/validator"
	"github.com/mas4h/mas4h/registry"
)

// A validator (a program, a web service) is run for every key the
// registry does not know, and anyone can send such keys as fast as a slave
// asks or a slot request arrives. So, for keys the registry does not know:
// each source gets a burst of validator runs and then one a second
// (validatorRate, validatorBurst), and a key the validator refused is
// refused again without asking it for a minute (the negative cache).
// Enrolled devices' keys always reach the validator: there are only as
// many as the fleet, and a flood of strangers must not lock them out.
// A new device that a validator should enrol asks for a slot from its own
// address, whose budget a flood from elsewhere does not spend.
const (
	validatorRate        = 1.0 // runs per second per source, for unknown keys
	validatorBurst       = 10
	validatorNegativeTTL = time.Minute
	// maxValidatorNegative bounds the negative cache; past it, expired
	// entries go, and if none has, new refusals are not remembered (the
	// rate limit still holds).
	maxValidatorNegative = 10000
)

// validatorGate is the rate limit and negative cache in front of the
// validator.
type validatorGate struct {
	limit *ipLimiter // per source, as the slot limit

	mu       sync.Mutex
	negative map[string]time.Time // fingerprint → refused until
}

func newValidatorGate() *validatorGate {
	return &validatorGate{limit: newIPLimiter(validatorRate, validatorBurst), negative: map[string]time.Time{}}
}

// refusedRecently reports whether the validator refused fp less than
// validatorNegativeTTL ago.
func (g *validatorGate) refusedRecently(fp string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	until, ok := g.negative[fp]
	if ok && !now.Before(until) {
		delete(g.negative, fp)
		return false
	}
	return ok
}

func (g *validatorGate) refused(fp string, now time.Time) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.negative) >= maxValidatorNegative {
		for k, until := range g.negative {
			if !now.Before(until) {
				delete(g.negative, k)
			}
		}
		if len(g.negative) >= maxValidatorNegative {
			return
		}
	}
	g.negative[fp] = now.Add(validatorNegativeTTL)
}

// validate asks v about key, through the gate unless the key is enrolled
// (known). What the gate refuses is a refusal (validator.ErrDenied) that
// says why.
func (s *Server) validate(ctx context.Context, v validator.Validator, key ssh.PublicKey, known bool) (string, map[string]any, error) {
	if known {
		return v.Validate(ctx, key)
	}
	fp, src, now := registry.Fingerprint(key), sourceOf(ctx), s.now()
	if s.gate.refusedRecently(fp, now) {
		return "", nil, fmt.Errorf("refused by the %s less than %s ago: %w", v, validatorNegativeTTL, validator.ErrDenied)
	}
	if ok, _ := s.gate.limit.allow(src, now); !ok {
		return "", nil, fmt.Errorf("not asked: more than %g unknown keys a second from %s: %w", validatorRate, src, validator.ErrDenied)
	}
	dk, extra, err := v.Validate(ctx, key)
	if errors.Is(err, validator.ErrDenied) {
		s.gate.refused(fp, now)
	}
	return dk, extra, err
}
