package registry

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"github.com/mas4h/mas4h/names"
	"github.com/mas4h/mas4h/sshd/probe"
)

var (
	forwardNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)
)

const (
	// maxForwardSpec bounds a whole --forward argument; a real one is a few
	// dozen bytes, a probe regex maybe a few hundred.
	maxForwardSpec = 1024
	maxHostname    = 253
)

// ValidateDeviceName checks a device name (names.Device), as an ErrInvalid.
func ValidateDeviceName(name string) error {
	if err := names.Device(name); err != nil {
		return fmt.Errorf("%w: %w", err, ErrInvalid)
	}
	return nil
}

// ForwardSpec is one requested forward: the device-side target that a leased
// remote port on the slave leads to, and how the slave probes it.
type ForwardSpec struct {
	Name   string // forward name, unique within the device
	Target string // "host:port" as seen from the device
	Probe  string // probe spec; empty means the slave's default
}

// String is the spec as ParseForwardSpec reads it back:
// NAME=HOST:PORT[,probe=SPEC].
func (f ForwardSpec) String() string {
	if f.Probe == "" {
		return f.Name + "=" + f.Target
	}
	return f.Name + "=" + f.Target + ",probe=" + f.Probe
}

// DefaultForward is what a device gets when enrolled without --forward:
// its own sshd.
func DefaultForward() ForwardSpec { return ForwardSpec{Name: "ssh", Target: "localhost:22"} }

// ProbeKinds lists the probe spec forms, for error messages and help text.
const ProbeKinds = `ssh-banner, http, none, banner:REGEX, send-expect:TEXT|REGEX`

// ParseForwardSpec parses "NAME=HOST:PORT[,probe=SPEC]".
func ParseForwardSpec(s string) (ForwardSpec, error) {
	if len(s) > maxForwardSpec {
		return ForwardSpec{}, fmt.Errorf("forward spec is %d bytes, max %d: %s: %w", len(s), maxForwardSpec, quoteTrunc(s), ErrInvalid)
	}
	if err := checkPrintable(s); err != nil {
		return ForwardSpec{}, fmt.Errorf("forward spec %s: %w", quoteTrunc(s), err)
	}
	head, opt, hasOpt := strings.Cut(s, ",")
	name, target, ok := strings.Cut(head, "=")
	if !ok {
		return ForwardSpec{}, fmt.Errorf("forward must be NAME=HOST:PORT[,probe=SPEC], got %s: %w", quoteTrunc(s), ErrInvalid)
	}
	spec := ForwardSpec{Name: name, Target: target}
	if hasOpt {
		// probe is the only option, and its value may itself hold commas
		// (a regex like a{1,3}), so everything after "probe=" is the spec.
		p, ok := strings.CutPrefix(opt, "probe=")
		if !ok {
			return ForwardSpec{}, fmt.Errorf("forward %s: unknown option %s, only probe=SPEC is known: %w", quoteTrunc(s), quoteTrunc(opt), ErrInvalid)
		}
		if p == "" {
			return ForwardSpec{}, fmt.Errorf("forward %s: empty probe; valid kinds: %s: %w", quoteTrunc(s), ProbeKinds, ErrInvalid)
		}
		spec.Probe = p
	}
	return spec.normalize()
}

// normalize validates every field and returns the spec with its target in
// canonical form. AddDevice applies it to specs that did not come through
// ParseForwardSpec.
func (f ForwardSpec) normalize() (ForwardSpec, error) {
	if !forwardNameRE.MatchString(f.Name) {
		return ForwardSpec{}, fmt.Errorf("forward name must be 1-32 characters of a-z 0-9 _ - starting with a letter or digit, got %s: %w", quoteTrunc(f.Name), ErrInvalid)
	}
	t, err := normalizeTarget(f.Target)
	if err != nil {
		return ForwardSpec{}, fmt.Errorf("forward %s: %w", f.Name, err)
	}
	f.Target = t
	if err := validateProbe(f.Probe); err != nil {
		return ForwardSpec{}, fmt.Errorf("forward %s: %w", f.Name, err)
	}
	return f, nil
}

// normalizeTarget accepts hostname:port, IPv4:port or [IPv6]:port. The
// target reaches the device's ssh command line (-R port:target), so anything
// outside those shapes is refused rather than escaped.
func normalizeTarget(t string) (string, error) {
	bad := func() error {
		return fmt.Errorf("target must be host:port (e.g. localhost:22, 192.0.2.1:80, [::1]:22), got %s: %w", quoteTrunc(t), ErrInvalid)
	}
	var host, port string
	if strings.HasPrefix(t, "[") {
		end := strings.Index(t, "]:")
		if end < 0 {
			return "", bad()
		}
		host, port = t[1:end], t[end+2:]
		a, err := netip.ParseAddr(host)
		if err != nil || !a.Is6() || a.Zone() != "" {
			return "", bad()
		}
		host = "[" + a.String() + "]"
	} else {
		i := strings.LastIndexByte(t, ':')
		if i < 0 {
			return "", bad()
		}
		host, port = t[:i], t[i+1:]
		if !validHost(host) {
			return "", bad()
		}
	}
	p, err := parsePort(port)
	if err != nil {
		return "", bad()
	}
	return fmt.Sprintf("%s:%d", host, p), nil
}

// validHost accepts an IPv4 address or a DNS-style hostname. A name made of
// digits and dots must be a valid IPv4 address, so "999.1.1.1" is refused
// instead of being looked up as a name.
func validHost(h string) bool {
	if h == "" || len(h) > maxHostname {
		return false
	}
	if strings.Trim(h, "0123456789.") == "" {
		a, err := netip.ParseAddr(h)
		return err == nil && a.Is4()
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// validateProbe checks a probe spec; "" means the slave's default. Beyond
// the checks here (stricter than the slave's, with the operator's messages),
// the spec must be one the slave's probe.Parse runs: its reading of a
// send-expect text's escapes is the one rule.
func validateProbe(p string) error {
	if err := checkPrintable(p); err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	if err := validateProbeForm(p); err != nil {
		return err
	}
	if p != "" {
		if _, err := probe.Parse(p, ""); err != nil {
			return fmt.Errorf("%w: %w", err, ErrInvalid)
		}
	}
	return nil
}

func validateProbeForm(p string) error {
	switch {
	case p == "", p == "ssh-banner", p == "http", p == "none":
		return nil
	case strings.HasPrefix(p, "banner:"):
		re := strings.TrimPrefix(p, "banner:")
		if re == "" {
			return fmt.Errorf("probe banner:REGEX needs a regex: %w", ErrInvalid)
		}
		if _, err := regexp.Compile(re); err != nil {
			return fmt.Errorf("probe banner:REGEX: bad regex %s: %w: %w", quoteTrunc(re), err, ErrInvalid)
		}
		return nil
	case strings.HasPrefix(p, "send-expect:"):
		v := strings.TrimPrefix(p, "send-expect:")
		// Split at the last '|': the text sent may contain '|', the regex
		// may too but then must be written without it (e.g. [|]).
		i := strings.LastIndexByte(v, '|')
		if i < 0 {
			return fmt.Errorf("probe send-expect:TEXT|REGEX needs a '|' between text and regex, got %s: %w", quoteTrunc(p), ErrInvalid)
		}
		text, re := v[:i], v[i+1:]
		if text == "" {
			return fmt.Errorf("probe send-expect:TEXT|REGEX needs non-empty text: %w", ErrInvalid)
		}
		if re == "" {
			return fmt.Errorf("probe send-expect:TEXT|REGEX needs a regex: %w", ErrInvalid)
		}
		if _, err := regexp.Compile(re); err != nil {
			return fmt.Errorf("probe send-expect: bad regex %s: %w: %w", quoteTrunc(re), err, ErrInvalid)
		}
		return nil
	default:
		return fmt.Errorf("unknown probe %s; valid kinds: %s: %w", quoteTrunc(p), ProbeKinds, ErrInvalid)
	}
}

// checkPrintable refuses control characters and invalid UTF-8: specs end up
// in config files and command lines, where a newline or NUL splits a line.
func checkPrintable(s string) error {
	for i, r := range s {
		if r == '\uFFFD' && !strings.HasPrefix(s[i:], "\uFFFD") {
			return fmt.Errorf("invalid UTF-8 at byte %d: %w", i, ErrInvalid)
		}
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("control character %q at byte %d: %w", r, i, ErrInvalid)
		}
	}
	return nil
}
