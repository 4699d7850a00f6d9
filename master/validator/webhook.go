package validator

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/mas4h/mas4h/registry"
)

// DefaultWebhookTimeout bounds one webhook call.
const DefaultWebhookTimeout = 3 * time.Second

// Webhook POSTs {"public_key": "type base64", "fingerprint": "SHA256:..."}
// to an https URL. 200 with a JSON object holding a non-empty "device_key"
// accepts; any other status, body, a TLS failure or Timeout refuses.
type Webhook struct {
	URL     string
	Client  *http.Client  // nil: system roots, no redirects
	Timeout time.Duration // 0: DefaultWebhookTimeout
}

func (w *Webhook) String() string { return "webhook validator" }

var defaultWebhookClient = &http.Client{
	// A redirect would turn the POST into a GET elsewhere; refuse instead.
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

type webhookRequest struct {
	PublicKey   string `json:"public_key"`
	Fingerprint string `json:"fingerprint"`
}

// Validate implements Validator.
func (w *Webhook) Validate(ctx context.Context, key ssh.PublicKey) (string, map[string]any, error) {
	timeout := w.Timeout
	if timeout <= 0 {
		timeout = DefaultWebhookTimeout
	}
	client := w.Client
	if client == nil {
		client = defaultWebhookClient
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	body, err := json.Marshal(webhookRequest{PublicKey: registry.AuthorizedKey(key), Fingerprint: registry.Fingerprint(key)})
	if err != nil {
		return "", nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.URL, bytes.NewReader(body))
	if err != nil {
		return "", nil, fmt.Errorf("%s %s: %w", w, w.URL, err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return "", nil, fmt.Errorf("%s %s: no answer within %s: %w", w, w.URL, timeout, ErrDenied)
		}
		if ctx.Err() != nil {
			return "", nil, fmt.Errorf("%s %s: %w", w, w.URL, ctx.Err())
		}
		return "", nil, fmt.Errorf("%s %s: %w: %w", w, w.URL, err, ErrDenied)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxOutput+1))
	if err != nil {
		return "", nil, fmt.Errorf("%s %s: reading answer: %w: %w", w, w.URL, err, ErrDenied)
	}
	if resp.StatusCode != http.StatusOK {
		return "", nil, fmt.Errorf("%s %s: answered %s: %w", w, w.URL, resp.Status, ErrDenied)
	}
	if len(data) > maxOutput {
		return "", nil, fmt.Errorf("%s %s: answer larger than %d bytes: %w", w, w.URL, maxOutput, ErrDenied)
	}
	var a answer
	if err := json.Unmarshal(data, &a); err != nil {
		return "", nil, fmt.Errorf("%s %s: answer is not a JSON object: %w", w, w.URL, ErrDenied)
	}
	k, extra, err := a.deviceKey()
	if err != nil {
		return "", nil, fmt.Errorf("%s %s: %w", w, w.URL, err)
	}
	return k, extra, nil
}
