// Package validator decides whether a device key may have a slot, for
// masters that defer that decision to a program (exec:) or a web service
// (https://) instead of only their own registry: the original design's
// validate_device(pubkey) → {device_key} hook.
package validator

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/registry"
)

// Validator accepts or refuses a public key. On acceptance it returns the
// device key, which names the device when it is not enrolled yet, and any
// other fields the validator returned.
type Validator interface {
	Validate(ctx context.Context, key ssh.PublicKey) (deviceKey string, extra map[string]any, err error)
	// String names the validator in logs and events ("exec validator").
	String() string
}

// ErrDenied wraps every refusal, so callers tell a refusal from a broken
// caller (a cancelled context).
var ErrDenied = errors.New("denied by validator")

// Parse reads a --validator value: "registry" (or "") returns nil, meaning
// the registry alone decides; "exec:/abs/path" runs a program; an https://
// URL calls a webhook with client (nil: a default client with system
// roots). Plain http:// is refused: the answer decides who may enter.
func Parse(spec string, client *http.Client) (Validator, error) {
	switch {
	case spec == "" || spec == "registry":
		return nil, nil
	case strings.HasPrefix(spec, "exec:"):
		path := strings.TrimPrefix(spec, "exec:")
		if !filepath.IsAbs(path) {
			return nil, fmt.Errorf("validator %q: exec: needs an absolute path, e.g. exec:/usr/local/bin/validate-device", spec)
		}
		return &Exec{Path: path}, nil
	case strings.HasPrefix(spec, "https://"):
		u, err := url.Parse(spec)
		if err != nil || u.Host == "" {
			return nil, fmt.Errorf("validator %q: not a valid https URL", spec)
		}
		return &Webhook{URL: spec, Client: client}, nil
	case strings.HasPrefix(spec, "http://"):
		return nil, fmt.Errorf("validator %q: plain http is refused (anyone on the path could admit devices); use https://", spec)
	default:
		return nil, fmt.Errorf("validator %q: must be registry, exec:/path/to/program or https://url", spec)
	}
}

// DeviceName turns a validator's device key into a device name: the key
// itself when it is a valid name, else lowercased, with every character
// outside [a-z0-9._-] replaced by '-', leading non-alphanumerics dropped,
// and cut to 63 characters. It fails when nothing valid is left.
func DeviceName(deviceKey string) (string, error) {
	if registry.ValidateDeviceName(deviceKey) == nil {
		return deviceKey, nil
	}
	var b strings.Builder
	for _, r := range strings.ToLower(deviceKey) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	name := strings.TrimLeft(b.String(), "._-")
	if len(name) > 63 {
		name = name[:63]
	}
	if err := registry.ValidateDeviceName(name); err != nil {
		return "", fmt.Errorf("device key %q gives no valid device name: %w", truncate(deviceKey), err)
	}
	return name, nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "…"
	}
	return s
}

// answer is the JSON both exec programs and webhooks return.
type answer map[string]any

// deviceKey reads and checks the device_key field.
func (a answer) deviceKey() (string, map[string]any, error) {
	v, ok := a["device_key"]
	if !ok {
		return "", nil, fmt.Errorf("answer has no device_key: %w", ErrDenied)
	}
	k, ok := v.(string)
	if !ok || strings.TrimSpace(k) == "" {
		return "", nil, fmt.Errorf("answer's device_key is empty or not a string: %w", ErrDenied)
	}
	extra := make(map[string]any, len(a)-1)
	for key, val := range a {
		if key != "device_key" {
			extra[key] = val
		}
	}
	return k, extra, nil
}
