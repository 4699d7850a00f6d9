package master

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/mas4h/mas4h/master/wire"
	"github.com/mas4h/mas4h/registry"
	"github.com/mas4h/mas4h/tally"
)

// Refused keys are what anyone can send, as many as they like: each was a
// row of the event log (and a log line), on the master for a slot or a
// validation and again for the slave's own auth-deny. They are tallied
// per source and interval instead (package tally): the first refusal of a
// kind from a source passes as it is, the rest of the minute become one
// summary row. A flood of random keys from one address, through one
// slave, adds a handful of rows a minute, however fast it goes.
const (
	// denialInterval is how long refusals are counted before their
	// summary is written.
	denialInterval = time.Minute
	// maxDenialKeys bounds the sources (with devices and kinds) counted
	// per interval; refusals beyond share one summary.
	maxDenialKeys = 256
	// slaveDenialBurst is how many auth-deny events of one slave and
	// device pass per interval as the slave sent them. A slave tallies its
	// own (the first and a summary per minute and key, at most 4 a minute
	// where its minutes and the master's overlap); this bounds a slave
	// that does not, an older one or a broken one.
	slaveDenialBurst = 4
)

// refusal is an event about a refused key.
type refusal struct {
	kind, slave, device, detail string
	operator                    string // operator-deny events: who was refused
	what                        string // for the master's own: "slot", "validation"
	source                      string
}

// refusals holds the tallies: the master's own refusals, and the auth-deny
// events slaves report.
type refusals struct {
	own, slaves *tally.Tally[refusal]
}

func (s *Server) newRefusals() *refusals {
	write := func(sum tally.Summary[refusal]) {
		r := sum.Last
		var detail string
		switch {
		case sum.Key == "":
			detail = fmt.Sprintf("%d more refusals of keys, from more than %d sources, in the last %s; the last: %s",
				sum.Count, maxDenialKeys, sum.Interval.Round(time.Second), r.detail)
		case r.what != "":
			detail = fmt.Sprintf("%s refused: %d more like this from %s in the last %s; the last: %s",
				r.what, sum.Count, r.source, sum.Interval.Round(time.Second), r.detail)
		default:
			detail = fmt.Sprintf("slave %s: %d more %s events in the last %s; the last: %s",
				r.slave, sum.Count, r.kind, sum.Interval.Round(time.Second), strings.TrimPrefix(r.detail, "slave "+r.slave+": "))
		}
		s.log.Info("keys refused", "count", sum.Count, "kind", r.kind, "for", r.what, "slave", r.slave, "device", r.device,
			"source", r.source, "interval", sum.Interval.Round(time.Second))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.store.AddOperatorEvent(ctx, r.kind, r.operator, r.slave, r.device, detail); err != nil {
			s.log.Error("writing the summary of refused keys", "err", err)
		}
	}
	return &refusals{
		own: tally.New(tally.Config[refusal]{Interval: denialInterval, MaxKeys: maxDenialKeys, Emit: write, Now: s.now}),
		slaves: tally.New(tally.Config[refusal]{Interval: denialInterval, Burst: slaveDenialBurst, MaxKeys: maxDenialKeys,
			Emit: write, Now: s.now}),
	}
}

// close writes what the tallies hold.
func (r *refusals) close() {
	r.own.Close()
	r.slaves.Close()
}

// deny records a refusal in the event log: the first of its source and
// kind this interval as it is, the rest in the interval's summary.
func (s *Server) deny(ctx context.Context, slave string, d *denial, what string) {
	src := sourceOf(ctx)
	r := refusal{kind: registry.EventDeny, slave: slave, device: d.device, what: what, source: src, detail: d.reason}
	if !s.refusals.own.Add(what+"\x00"+slave+"\x00"+src+"\x00"+d.device, r) {
		s.log.Debug("key refused", "device", d.device, "slave", slave, "for", what, "source", src, "reason", d.reason)
		return
	}
	s.log.Info("key refused", "device", d.device, "slave", slave, "for", what, "source", src, "reason", d.reason)
	detail := what + " refused: " + d.reason
	if what == "slot" && src != "" {
		detail += " (from " + src + ")"
	}
	if err := s.store.AddSlaveEvent(ctx, registry.EventDeny, slave, d.device, detail); err != nil {
		s.log.Error("writing deny event", "err", err)
	}
}

// denyOperator records a refused operator (what: "access" or
// "validation"), in the event log as an operator-deny event tallied like
// every refusal, and in the denials metric by reason. operator is empty
// when the key is no operator's.
func (s *Server) denyOperator(ctx context.Context, what, operator, slave, device, reason, metric string) {
	s.metrics.AccessDenied(metric)
	src := sourceOf(ctx)
	r := refusal{kind: wire.EventOperatorDeny, slave: slave, device: device, operator: operator, what: what, source: src, detail: reason}
	if !s.refusals.own.Add(what+"\x00"+slave+"\x00"+src+"\x00"+operator+"\x00"+device, r) {
		s.log.Debug("operator refused", "operator", operator, "device", device, "slave", slave, "for", what, "source", src, "reason", reason)
		return
	}
	s.log.Info("operator refused", "operator", operator, "device", device, "slave", slave, "for", what, "source", src, "reason", reason)
	detail := what + " refused: " + reason
	if src != "" {
		detail += " (from " + src + ")"
	}
	if err := s.store.AddOperatorEvent(ctx, wire.EventOperatorDeny, operator, slave, device, detail); err != nil {
		s.log.Error("writing operator-deny event", "err", err)
	}
}

// tallySlaveEvents keeps the events of slave's heartbeat that are to be
// written as they are: its auth-deny and operator-deny events beyond slaveDenialBurst per
// device this interval go into the interval's summary instead.
func (s *Server) tallySlaveEvents(slave string, evs []registry.Event) []registry.Event {
	kept := evs[:0]
	for _, e := range evs {
		if (e.Kind == registry.EventAuthDeny || e.Kind == wire.EventOperatorDeny) &&
			!s.refusals.slaves.Add(slave+"\x00"+e.Device+"\x00"+e.Operator,
				refusal{kind: e.Kind, slave: slave, device: e.Device, operator: e.Operator, detail: e.Detail}) {
			continue
		}
		kept = append(kept, e)
	}
	return kept
}
