package hookserver

import (
	"context"
	"fmt"
	"time"

	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/tally"
)

// Every key sshd offers that the slave refuses was an auth-deny event: a
// row of the registry for a slave on a registry file, an event queued for
// the master otherwise, for keys anyone can make up by the thousand.
// Denials tallies them instead, per device and reason each minute: the
// first passes as it is, the rest become one summary when the minute ends.
// sshd gives the hook the user and the key but not the client's address,
// so the hook cannot count per source address; per device and reason is
// what it knows, and it bounds a flood better than per key would: every
// stranger's key is "unknown key" of no device, one entry however many
// keys are tried. The count stays exact in the summary.
const (
	DenialInterval = time.Minute
	// maxDenialKeys bounds the (device, reason) pairs counted a minute;
	// denials beyond share one summary.
	maxDenialKeys = 64
)

// Denial is one refused authentication, as the authorizer saw it.
type Denial struct {
	Device      string // "" for a key of no device
	Reason      string
	Fingerprint string
	User        string
}

// Denials reports denials through report, tallied.
type Denials struct {
	report func(ctx context.Context, kind, device, detail string)
	t      *tally.Tally[Denial]
}

// NewDenials tallies denials and reports them (and each minute's summary)
// through report (a source.Source's Report). now is the clock (nil:
// time.Now). Close it to report what the last minute holds.
func NewDenials(report func(ctx context.Context, kind, device, detail string), now func() time.Time) *Denials {
	d := &Denials{report: report}
	d.t = tally.New(tally.Config[Denial]{Interval: DenialInterval, MaxKeys: maxDenialKeys, Now: now,
		Emit: func(s tally.Summary[Denial]) {
			l := s.Last
			what := l.Reason
			if s.Key == "" {
				what = "other refusals"
			}
			report(context.Background(), registry.EventAuthDeny, l.Device, fmt.Sprintf("%s: %d more like this in the last %s; the last: key %s, user %q",
				what, s.Count, s.Interval.Round(time.Second), l.Fingerprint, l.User))
		}})
	return d
}

// Deny records a denial and reports whether it was written as it is
// (the first of its device and reason this minute).
func (d *Denials) Deny(ctx context.Context, x Denial) bool {
	if !d.t.Add(x.Device+"\x00"+x.Reason, x) {
		return false
	}
	d.report(ctx, registry.EventAuthDeny, x.Device, fmt.Sprintf("%s (key %s, user %q)", x.Reason, x.Fingerprint, x.User))
	return true
}

// Close reports the open minute's summaries.
func (d *Denials) Close() { d.t.Close() }
