package master

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/mas4h/mas4h/registry"
)

// DefaultSlotEventInterval is how often repeated slot events are written
// as one row per device.
const DefaultSlotEventInterval = time.Minute

// slotEvents folds the events of slot requests so that a device asking
// again and again, or a stranger trying keys, adds one row per interval
// rather than one per request: the first event of a key (a device's
// grants, a device's refusals, or all strangers' refusals together) after
// a quiet interval is written at once, and the repeats are counted and
// written as one summary row when the interval ends. Keys are device
// names, so the map is bounded by the fleet, plus one for strangers.
type slotEvents struct {
	mu  sync.Mutex
	hot map[string]*folded
}

// folded is what a key's repeats amount to since its last row.
type folded struct {
	kind, device, slave string
	verb                string    // "granted" or "refused"
	since               time.Time // when the key's last row was written
	n                   int
	last                string // the last repeat's reason
	samples             []string
	more                int
}

const maxSamples = 5

func newSlotEvents() *slotEvents { return &slotEvents{hot: map[string]*folded{}} }

// note counts an event under key and reports whether the caller should
// write it now (the key was quiet). force writes it now whatever the key's
// state (a device moving to another slave), without counting it as a
// repeat. sample (a fingerprint, a source) is kept for the summary.
func (e *slotEvents) note(key string, f folded, sample string, force bool, now time.Time) (writeNow bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	h := e.hot[key]
	if h == nil || force {
		if h == nil {
			f.since = now
			e.hot[key] = &f
			return true
		}
		h.slave, h.since = f.slave, now
		return true
	}
	h.n++
	h.slave, h.last = f.slave, f.last
	if sample != "" && !contains(h.samples, sample) {
		if len(h.samples) < maxSamples {
			h.samples = append(h.samples, sample)
		} else {
			h.more++
		}
	}
	return false
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// summaryRow is a row flush asks to write.
type summaryRow struct {
	kind, slave, device, detail string
}

// flush returns a summary row for each key with repeats, and forgets the
// keys quiet for a whole interval, whose next event is written at once.
func (e *slotEvents) flush(now time.Time, interval time.Duration) []summaryRow {
	e.mu.Lock()
	defer e.mu.Unlock()
	var rows []summaryRow
	for k, h := range e.hot {
		if h.n == 0 {
			if now.Sub(h.since) >= interval {
				delete(e.hot, k)
			}
			continue
		}
		var b strings.Builder
		fmt.Fprintf(&b, "%d more slot request", h.n)
		if h.n > 1 {
			b.WriteByte('s')
		}
		fmt.Fprintf(&b, " %s since %s", h.verb, h.since.UTC().Format(time.TimeOnly))
		if h.slave != "" {
			b.WriteString(" (slave " + h.slave + ")")
		}
		if h.last != "" {
			b.WriteString("; last: " + h.last)
		}
		if len(h.samples) > 0 {
			b.WriteString("; " + strings.Join(h.samples, ", "))
			if h.more > 0 {
				fmt.Fprintf(&b, " and %d more", h.more)
			}
		}
		rows = append(rows, summaryRow{kind: h.kind, slave: h.slave, device: h.device, detail: b.String()})
		h.n, h.samples, h.more, h.last, h.since = 0, nil, 0, "", now
	}
	return rows
}

// flushSlotEvents writes the summary rows of the interval that ended.
func (s *Server) flushSlotEvents(ctx context.Context) {
	for _, r := range s.slotEvents.flush(s.now(), s.cfg.SlotEventInterval) {
		if err := s.store.AddSlaveEvent(ctx, r.kind, r.slave, r.device, r.detail); err != nil {
			s.log.Error("writing slot events", "err", err)
			return
		}
	}
}

// slotEventLoop flushes the slot events every interval until the server
// closes, then once more.
func (s *Server) slotEventLoop() {
	defer s.writerWG.Done()
	t := time.NewTicker(s.cfg.SlotEventInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			s.flushSlotEvents(context.Background())
			return
		case <-t.C:
			s.flushSlotEvents(context.Background())
		}
	}
}

// slotDenied records a refused slot request: at once when its key is
// quiet, folded into the interval's summary otherwise. Strangers (keys no
// device holds, bad signatures) share one key.
func (s *Server) slotDenied(ctx context.Context, device, reason, fingerprint, source string) {
	s.log.Info("key refused", "device", device, "for", "slot", "reason", reason, "fingerprint", fingerprint, "remote", source)
	key := "deny\x00" + device
	sample := fingerprint + " from " + source
	if device != "" {
		sample = "from " + source
	}
	if !s.slotEvents.note(key, folded{kind: registry.EventDeny, device: device, verb: "refused", last: reason}, sample, false, s.now()) {
		return
	}
	if err := s.store.AddSlaveEvent(ctx, registry.EventDeny, "", device, "slot refused: "+reason+" (from "+source+")"); err != nil {
		s.log.Error("writing deny event", "err", err)
	}
}
