package pages

import (
	"context"
	"fmt"
	"html"
	"html/template"
	"strings"
	"time"
)

// Forwarding health charts: decisions per hour over the last day and per
// day over the last week, drawn as server-side SVG (no script, no
// third-party asset). The store keeps counters per clock hour and answers
// "everything since T" (Counts); a bucket [a, b) is Counts(a) - Counts(b),
// so the charts need no new store method. Counts taken a moment apart can
// see a message the earlier read missed: a difference below zero is read as
// zero.

// series are the stacked groups of decisions, bottom first.
// reasonProbe is router.ReasonProbe (pages does not import the router).
const reasonProbe = "probe"

var series = []struct {
	Name, Class string
	Decisions   []string
}{
	{"stored", "s-stored", []string{"stored", "duplicate"}},
	{"refused or quarantined", "s-refused", []string{"rejected", "quarantined"}},
	{"delayed (temporary failure)", "s-tempfail", []string{"tempfail"}},
	{"discarded (not of interest)", "s-discarded", []string{"discarded"}},
}

type bucket struct {
	Start, End time.Time
	Values     []uint64 // per series
	Total      uint64
}

// byDecision sums Counts' "decision/reason" keys per decision, leaving out
// the pseudo-decisions ("_auth", "_unaligned_signer") and returned
// forwarding probes (discarded, but not mail the rule should not forward).
func byDecision(m map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, n := range m {
		if strings.HasPrefix(k, "_") || k == "discarded/"+reasonProbe {
			continue
		}
		d, _, _ := strings.Cut(k, "/")
		out[d] += n
	}
	return out
}

// buckets reads the decision counts of the intervals between the given
// boundaries (ascending; the last interval runs to now).
func (s *Server) buckets(ctx context.Context, tenant string, starts []time.Time, now time.Time) ([]bucket, error) {
	cum := make([]map[string]uint64, len(starts)+1)
	for i, st := range starts {
		m, _, err := s.o.Store.Counts(ctx, tenant, st)
		if err != nil {
			return nil, err
		}
		cum[i] = byDecision(m)
	}
	cum[len(starts)] = map[string]uint64{}
	out := make([]bucket, len(starts))
	for i := range starts {
		b := bucket{Start: starts[i], End: now, Values: make([]uint64, len(series))}
		if i+1 < len(starts) {
			b.End = starts[i+1]
		}
		for j, sr := range series {
			for _, d := range sr.Decisions {
				if a, z := cum[i][d], cum[i+1][d]; a > z {
					b.Values[j] += a - z
				}
			}
			b.Total += b.Values[j]
		}
		out[i] = b
	}
	return out, nil
}

// dayStarts are the starts of the 24 clock hours ending with now's.
func dayStarts(now time.Time) []time.Time {
	h := now.UTC().Truncate(time.Hour)
	out := make([]time.Time, 24)
	for i := range out {
		out[i] = h.Add(time.Duration(i-23) * time.Hour)
	}
	return out
}

// weekStarts are the starts of the 7 UTC days ending with today.
func weekStarts(now time.Time) []time.Time {
	d := now.UTC().Truncate(24 * time.Hour)
	out := make([]time.Time, 7)
	for i := range out {
		out[i] = d.AddDate(0, 0, i-6)
	}
	return out
}

// svgChart draws stacked bars. label names each bar's start on the axis
// (every labelEvery-th bar).
func svgChart(title string, bs []bucket, label func(time.Time) string, labelEvery int) template.HTML {
	const (
		w, h          = 720, 220
		left, right   = 44, 8
		top, bottom   = 12, 28
		plotW, plotH  = w - left - right, h - top - bottom
		minBarSpacing = 2
	)
	var max uint64
	for _, b := range bs {
		if b.Total > max {
			max = b.Total
		}
	}
	scaleMax := niceCeil(max)
	var sb strings.Builder
	fmt.Fprintf(&sb, `<svg class="chart" viewBox="0 0 %d %d" width="%d" height="%d" role="img" aria-label="%s" xmlns="http://www.w3.org/2000/svg">`,
		w, h, w, h, html.EscapeString(title))
	fmt.Fprintf(&sb, `<title>%s</title>`, html.EscapeString(title))
	// Grid: 0, half, max.
	for _, f := range []uint64{0, scaleMax / 2, scaleMax} {
		y := top + plotH - int(float64(f)/float64(scaleMax)*plotH)
		fmt.Fprintf(&sb, `<line class="grid" x1="%d" y1="%d" x2="%d" y2="%d"/>`, left, y, w-right, y)
		fmt.Fprintf(&sb, `<text class="axis" x="%d" y="%d" text-anchor="end">%d</text>`, left-6, y+4, f)
	}
	slot := float64(plotW) / float64(len(bs))
	bw := slot - minBarSpacing
	for i, b := range bs {
		x := float64(left) + float64(i)*slot + minBarSpacing/2
		y := float64(top + plotH)
		for j, v := range b.Values {
			if v == 0 {
				continue
			}
			bh := float64(v) / float64(scaleMax) * plotH
			y -= bh
			fmt.Fprintf(&sb, `<rect class="%s" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%s: %d %s</title></rect>`,
				series[j].Class, x, y, bw, bh, html.EscapeString(label(b.Start)), v, html.EscapeString(series[j].Name))
		}
		if i%labelEvery == 0 {
			fmt.Fprintf(&sb, `<text class="axis" x="%.1f" y="%d" text-anchor="middle">%s</text>`, x+bw/2, h-10, html.EscapeString(label(b.Start)))
		}
	}
	sb.WriteString(`</svg>`)
	return template.HTML(sb.String()) // built from numbers and escaped labels only
}

// niceCeil rounds n up to 1, 2 or 5 times a power of ten (at least 4, so
// a quiet tenant's chart does not draw one message as a full bar).
func niceCeil(n uint64) uint64 {
	if n < 4 {
		return 4
	}
	for p := uint64(1); ; p *= 10 {
		for _, m := range []uint64{1, 2, 5} {
			if m*p >= n {
				return m * p
			}
		}
	}
}

type legendItem struct{ Name, Class string }

func legend() []legendItem {
	out := make([]legendItem, len(series))
	for i, s := range series {
		out[i] = legendItem{s.Name, s.Class}
	}
	return out
}
