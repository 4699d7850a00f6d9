package master

import (
	"fmt"
	"time"

	"github.com/mas4h/mas4h/history"
	"github.com/mas4h/mas4h/registry"
)

// The dashboard's charts are inline SVG drawn by the templates from these
// view models, built by pure functions: coordinates in a viewBox, and a
// <title> per mark, so that a pointer (or a screen reader) tells the
// figures. Down time is hatched and labelled, not only coloured.

// Chart sizes (viewBox units).
const (
	chartW, chartH   = 960, 160 // the fleet chart
	sparkW, sparkH   = 240, 36  // a slave's load in its row
	lineW, lineH     = 960, 28  // a device's timeline
	fleetBuckets24h  = 96       // 15 minutes
	fleetBuckets7d   = 168      // 1 hour
	sparkBuckets     = 48       // 30 minutes over 24 h
	dashTopDevices   = 10
	loadSampleMaxAge = 8 * 24 * time.Hour
)

// markView is one rectangle of a chart, with its tooltip.
type markView struct {
	X, Y, W, H float64
	Class      string // up, down, none (a timeline); max, min, dead, gap (a series)
	Title      string
}

// labelView is a text label at X (a time axis) or Y (a value axis).
type labelView struct {
	X, Y float64
	Text string
}

// chartView is one chart: its size, marks and labels.
type chartView struct {
	ID      string // unique on the page: names its hatch pattern
	W, H    int
	Title   string // the chart's <title>
	Marks   []markView
	XLabels []labelView
	YLabels []labelView
	CapY    float64 // a slave's capacity line (0: none)
	Empty   bool    // no sample in the window
}

// timeView is a device's availability over one window, with its timeline.
type timeView struct {
	Window      string // 24h, 7d
	Percent     string // "99.2%", or "—" when not enrolled in the window
	Up          string // "23h10m"
	Disconnects int
	Chart       chartView
}

// fmtWhen is a time on a chart's axis or tooltip: the hour for a day,
// the day and hour for a week.
func fmtWhen(t time.Time, window time.Duration) string {
	if window <= 24*time.Hour {
		return t.UTC().Format("15:04")
	}
	return t.UTC().Format("Mon 02 15:04")
}

// viewTimeline draws a device's availability as one bar: up solid, down
// hatched, before enrolment blank; each segment titled.
func viewTimeline(id, window string, a history.Availability) timeView {
	span := a.End.Sub(a.Start)
	v := timeView{Window: window, Disconnects: a.Disconnects, Up: short(a.Up), Percent: "—"}
	if p := a.Percent(); p >= 0 {
		v.Percent = fmt.Sprintf("%.1f%%", p)
	}
	c := chartView{ID: id, W: lineW, H: lineH + 16,
		Title: fmt.Sprintf("availability over the last %s: %s up, %d disconnects", window, v.Percent, a.Disconnects)}
	x := func(t time.Time) float64 { return float64(lineW) * float64(t.Sub(a.Start)) / float64(span) }
	for _, s := range a.Segments {
		m := markView{X: x(s.Start), Y: 0, W: x(s.End) - x(s.Start), H: lineH, Class: s.State.String()}
		what := s.State.String()
		if s.State == history.Unenrolled {
			m.Class, what = "none", "not enrolled yet"
		}
		m.Title = fmt.Sprintf("%s – %s: %s for %s", fmtWhen(s.Start, span), fmtWhen(s.End, span), what, short(s.End.Sub(s.Start)))
		c.Marks = append(c.Marks, m)
	}
	c.XLabels = timeAxis(a.Start, a.End, lineW, lineH+13)
	v.Chart = c
	return v
}

// timeAxis labels the start, middle and end of a window along a chart.
func timeAxis(start, end time.Time, w int, y float64) []labelView {
	span := end.Sub(start)
	return []labelView{
		{X: 0, Y: y, Text: fmtWhen(start, span)},
		{X: float64(w) / 2, Y: y, Text: fmtWhen(start.Add(span/2), span)},
		{X: float64(w), Y: y, Text: fmtWhen(end, span) + " UTC"},
	}
}

// viewSeries draws a series of points as bars from the bottom: the most
// seen in each bucket light, the least seen solid (a dip shows as the solid
// bar dropping below the light one); a bucket where the slave was dead is
// hatched over the whole height; one nobody sampled is left blank. what
// names the counted thing ("online", "tunnels"). With capacity, the scale
// reaches it and a dashed line marks it.
func viewSeries(id, title, what string, pts []history.Point, w, h int, withCapacity, axes bool) chartView {
	c := chartView{ID: id, W: w, H: h, Title: title, Empty: true}
	if len(pts) == 0 {
		return c
	}
	plotH := float64(h)
	if axes {
		plotH -= 16
		c.H = h
	}
	top, capacity := 1, 0
	for _, p := range pts {
		top = max(top, p.Max)
		if withCapacity {
			capacity = max(capacity, p.Capacity)
		}
		if p.Known {
			c.Empty = false
		}
	}
	top = max(top, capacity)
	top = niceCeil(top)
	y := func(n int) float64 { return plotH - plotH*float64(n)/float64(top) }
	bw := float64(w) / float64(len(pts))
	span := pts[len(pts)-1].End.Sub(pts[0].Start)
	for i, p := range pts {
		x := float64(i) * bw
		when := fmtWhen(p.Start, span) + " – " + fmtWhen(p.End, span)
		switch {
		case !p.Known:
			c.Marks = append(c.Marks, markView{X: x, Y: 0, W: bw, H: plotH, Class: "gap", Title: when + ": no sample (master down)"})
			continue
		case p.Down:
			c.Marks = append(c.Marks, markView{X: x, Y: 0, W: bw, H: plotH, Class: "dead", Title: when + ": slave dead"})
		}
		rng := fmt.Sprint(p.Max)
		if p.Min != p.Max {
			rng = fmt.Sprintf("%d–%d", p.Min, p.Max)
		}
		title := fmt.Sprintf("%s: %s %s", when, rng, what)
		if p.Down {
			title += " (slave dead for part of it)"
		}
		c.Marks = append(c.Marks,
			markView{X: x, Y: y(p.Max), W: bw, H: plotH - y(p.Max), Class: "max", Title: title},
			markView{X: x, Y: y(p.Min), W: bw, H: plotH - y(p.Min), Class: "min", Title: title})
	}
	if capacity > 0 {
		c.CapY = y(capacity)
	}
	if axes {
		c.XLabels = timeAxis(pts[0].Start, pts[len(pts)-1].End, w, float64(h)-3)
		c.YLabels = []labelView{{X: 4, Y: 12, Text: fmt.Sprint(top)}, {X: 4, Y: plotH/2 + 4, Text: fmt.Sprint(top / 2)}}
	}
	return c
}

// niceCeil rounds n up to 1, 2 or 5 times a power of ten, for the top of
// a scale.
func niceCeil(n int) int {
	if n <= 1 {
		return 1
	}
	for p := 1; ; p *= 10 {
		for _, m := range []int{1, 2, 5} {
			if m*p >= n {
				return m * p
			}
		}
	}
}

// historyView is the overview's history: the fleet chart and the devices
// that dropped most.
type historyView struct {
	Window      string // 24h, 7d
	Other       string // the other window, for the link
	Fleet       chartView
	Top         []registry.DeviceCount
	SlaveCharts map[string]chartView // by slave name, over the last 24 h
}

// buildHistory is the overview's history at now over window: samples of
// every series, and the devices with most disconnects in the last 24 h.
func buildHistory(window string, samples []registry.LoadSample, sparkSamples []registry.LoadSample, top []registry.DeviceCount, now time.Time) historyView {
	d := history.Windows[window]
	v := historyView{Window: window, Other: "7d", Top: top, SlaveCharts: map[string]chartView{}}
	n := fleetBuckets24h
	if window == "7d" {
		v.Other, n = "24h", fleetBuckets7d
	}
	end := now.Truncate(time.Minute).Add(time.Minute)
	start := end.Add(-d)
	bySeries := map[string][]registry.LoadSample{}
	for _, s := range samples {
		bySeries[s.Series] = append(bySeries[s.Series], s)
	}
	v.Fleet = viewSeries("fleet", "devices online over the last "+window, "online",
		history.Series(bySeries[registry.FleetSeries], start, end, n), chartW, chartH, false, true)
	spark := map[string][]registry.LoadSample{}
	for _, s := range sparkSamples {
		if s.Series != registry.FleetSeries {
			spark[s.Series] = append(spark[s.Series], s)
		}
	}
	i := 0
	for name, ss := range spark {
		i++
		v.SlaveCharts[name] = viewSeries(fmt.Sprint("slave-", i), "tunnels of "+name+" over the last 24h (dashed: capacity)", "tunnels",
			history.Series(ss, end.Add(-24*time.Hour), end, sparkBuckets), sparkW, sparkH, true, false)
	}
	return v
}
