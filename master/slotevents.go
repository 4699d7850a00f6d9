package master

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/mas4h/mas4h/registry"
)

// DefaultSlotEventInterval is how often repeated slot events are written
// as one row per device.
const DefaultSlotEventInterval = time.Minute

// slotEvents folds the grants of slot requests so that a device asking
// again and again adds one row per interval rather than one per request:
// a device's first grant after a quiet interval is written at once, and
// the repeats are counted and written as one summary row when the
// interval ends. Keys are device names, so the map is bounded by the
// fleet. (Refusals are tallied per source instead: denials.go.)
type slotEvents struct {
	mu  sync.Mutex
	hot map[string]*folded
}

// folded is what a device's repeated grants amount to since its last row.
type folded struct {
	device, slave string
	since         time.Time // when the device's last row was written
	n             int
}

func newSlotEvents() *slotEvents { return &slotEvents{hot: map[string]*folded{}} }

// granted counts a grant of slave to device and reports whether the caller
// should write it now (the device was quiet). moved writes it now whatever
// the device's state (it moved to another slave), without counting it as
// a repeat.
func (e *slotEvents) granted(device, slave string, moved bool, now time.Time) (writeNow bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	h := e.hot[device]
	switch {
	case h == nil:
		e.hot[device] = &folded{device: device, slave: slave, since: now}
		return true
	case moved:
		h.slave, h.since = slave, now
		return true
	}
	h.n++
	h.slave = slave
	return false
}

// summaryRow is a row flush asks to write.
type summaryRow struct {
	slave, device, detail string
}

// flush returns a summary row for each device with repeats, and forgets
// the devices quiet for a whole interval, whose next grant is written at
// once.
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
		plural := ""
		if h.n > 1 {
			plural = "s"
		}
		rows = append(rows, summaryRow{slave: h.slave, device: h.device,
			detail: fmt.Sprintf("%d more slot request%s granted since %s (slave %s)", h.n, plural, h.since.UTC().Format(time.TimeOnly), h.slave)})
		h.n, h.since = 0, now
	}
	return rows
}

// flushSlotEvents writes the summary rows of the interval that ended.
func (s *Server) flushSlotEvents(ctx context.Context) {
	for _, r := range s.slotEvents.flush(s.now(), s.cfg.SlotEventInterval) {
		if err := s.store.AddSlaveEvent(ctx, registry.EventSlot, r.slave, r.device, r.detail); err != nil {
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
