package registry

import (
	"fmt"
	"strconv"
	"strings"
)

// PortRange is an inclusive range of remote ports that forwards are leased
// from on the slaves.
type PortRange struct{ Lo, Hi int }

// DefaultPortRange is the lease range used when the operator names none.
var DefaultPortRange = PortRange{20000, 29999}

// ParsePortRange parses "LO-HI", e.g. "20000-29999".
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return PortRange{}, fmt.Errorf("port range must be LO-HI (e.g. %s), got %s: %w", DefaultPortRange, quoteTrunc(s), ErrInvalid)
	}
	var r PortRange
	var err error
	if r.Lo, err = parsePort(strings.TrimSpace(lo)); err != nil {
		return PortRange{}, fmt.Errorf("port range %s: low end: %w", quoteTrunc(s), err)
	}
	if r.Hi, err = parsePort(strings.TrimSpace(hi)); err != nil {
		return PortRange{}, fmt.Errorf("port range %s: high end: %w", quoteTrunc(s), err)
	}
	if err := r.validate(); err != nil {
		return PortRange{}, err
	}
	return r, nil
}

// String formats the range the way ParsePortRange reads it.
func (r PortRange) String() string { return fmt.Sprintf("%d-%d", r.Lo, r.Hi) }

// Size is the number of ports in the range.
func (r PortRange) Size() int {
	if r.Hi < r.Lo {
		return 0
	}
	return r.Hi - r.Lo + 1
}

func (r PortRange) validate() error {
	if r.Lo < 1 || r.Hi > 65535 || r.Lo > r.Hi {
		return fmt.Errorf("port range %s: need 1 <= LO <= HI <= 65535: %w", r, ErrInvalid)
	}
	return nil
}

// parsePort accepts plain decimal 1..65535 only: no sign, no spaces, no hex,
// so that what the operator typed is what ends up in sshd's permitlisten.
func parsePort(s string) (int, error) {
	if s == "" || len(s) > 5 {
		return 0, fmt.Errorf("port must be a number 1-65535, got %s: %w", quoteTrunc(s), ErrInvalid)
	}
	for _, c := range []byte(s) {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("port must be a number 1-65535, got %s: %w", quoteTrunc(s), ErrInvalid)
		}
	}
	p, err := strconv.Atoi(s)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("port must be a number 1-65535, got %s: %w", quoteTrunc(s), ErrInvalid)
	}
	return p, nil
}

// freePorts returns the n lowest ports of r absent from used, which must be
// sorted ascending. It walks the gaps between used ports rather than probing
// each candidate, so a nearly full range costs one pass over the used list.
func freePorts(r PortRange, used []int, n int) []int {
	out := make([]int, 0, n)
	next := r.Lo
	for _, u := range used {
		if u < next {
			continue
		}
		if u > r.Hi {
			break
		}
		for ; next < u && len(out) < n; next++ {
			out = append(out, next)
		}
		if len(out) == n {
			return out
		}
		next = u + 1
	}
	for ; next <= r.Hi && len(out) < n; next++ {
		out = append(out, next)
	}
	return out
}
