package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Hard bounds of one run, whatever the options say: every load loop is
// bounded in count and time.
const (
	MaxMessages = 10_000_000
	MaxDuration = time.Hour
)

// RunOptions configure Run.
type RunOptions struct {
	Addr     string
	Helo     string // default "srload.test"
	From     string // MAIL FROM
	Rcpt     string // RCPT TO
	Sessions int    // concurrent sessions, default 20
	// MaxMessages bounds the transactions started (default and cap
	// MaxMessages); Duration bounds the run (default 30s, cap MaxDuration).
	MaxMessages int64
	Duration    time.Duration
	// Warmup: transactions completed before this much time has passed
	// are not counted in the results.
	Warmup time.Duration
	// Rate, when > 0, paces the start of transactions (msgs/s over all
	// sessions); otherwise every session sends as fast as it can.
	Rate float64
	Mix  Mix
	Gen  *Generator
	// Timeout bounds each connect, write and reply (default 30s).
	Timeout time.Duration
	// Replies, when set, gets one line per reply to the final ".":
	// "code<TAB>message-id<TAB>kind<TAB>thread<TAB>text", written before
	// the next transaction of that session starts.
	Replies io.Writer
	Seed    uint64
}

// Result is what a run measured (over the window after Warmup).
type Result struct {
	Addr        string           `json:"addr"`
	Sessions    int              `json:"sessions"`
	BodySize    int              `json:"body_size"`
	Mix         string           `json:"mix"`
	TargetRate  float64          `json:"target_rate,omitempty"`
	Seconds     float64          `json:"seconds"`
	Completed   int64            `json:"completed"` // transactions that got a reply to "."
	OK          int64            `json:"ok"`        // of which 250
	MsgsPerSec  float64          `json:"msgs_per_sec"`
	OKPerSec    float64          `json:"ok_per_sec"`
	P50ms       float64          `json:"p50_ms"`
	P99ms       float64          `json:"p99_ms"`
	P999ms      float64          `json:"p999_ms"`
	Maxms       float64          `json:"max_ms"`
	Codes       map[string]int64 `json:"codes"`     // "250", "451", "rcpt:550" ...
	Decisions   map[string]int64 `json:"decisions"` // from "OK: <decision>" texts
	Errors      map[string]int64 `json:"errors"`    // connection-level errors by class
	RateMissed  int64            `json:"rate_missed,omitempty"`
	WallSeconds float64          `json:"wall_seconds"`
}

type stats struct {
	lat       []time.Duration
	codes     map[string]int64
	decisions map[string]int64
	errors    map[string]int64
	completed int64
	ok        int64
}

func newStats() *stats {
	return &stats{codes: map[string]int64{}, decisions: map[string]int64{}, errors: map[string]int64{}}
}

// Run drives o.Addr until o.Duration, o.MaxMessages or ctx ends.
func Run(ctx context.Context, o RunOptions) (*Result, error) {
	if o.Gen == nil {
		return nil, errors.New("loadgen: no generator")
	}
	if (o.Mix.Match > 0 || o.Mix.Dup > 0) && !o.Gen.CanMatch() {
		return nil, errors.New("loadgen: match/dup messages need a manifest (srload prepare)")
	}
	if o.Sessions <= 0 {
		o.Sessions = 20
	}
	if o.MaxMessages <= 0 || o.MaxMessages > MaxMessages {
		o.MaxMessages = MaxMessages
	}
	if o.Duration <= 0 {
		o.Duration = 30 * time.Second
	}
	o.Duration = min(o.Duration, MaxDuration)
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.Helo == "" {
		o.Helo = "srload.test"
	}
	if o.Seed == 0 {
		o.Seed = uint64(time.Now().UnixNano())
	}

	start := time.Now()
	deadline := start.Add(o.Duration)
	measureFrom := start.Add(o.Warmup)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()

	var budget atomic.Int64
	budget.Store(o.MaxMessages)
	var tokens chan struct{}
	var missed atomic.Int64
	if o.Rate > 0 {
		tokens = make(chan struct{}, o.Sessions)
		go pace(ctx, o.Rate, tokens, &missed)
	}

	var repMu sync.Mutex
	all := make([]*stats, o.Sessions)
	var wg sync.WaitGroup
	for i := range all {
		st := newStats()
		all[i] = st
		wg.Add(1)
		go func() {
			defer wg.Done()
			session(ctx, &o, i, st, &budget, tokens, measureFrom, &repMu)
		}()
	}
	wg.Wait()
	end := time.Now()

	res := &Result{Addr: o.Addr, Sessions: o.Sessions, BodySize: len(o.Gen.body), Mix: o.Mix.String(), TargetRate: o.Rate,
		Codes: map[string]int64{}, Decisions: map[string]int64{}, Errors: map[string]int64{},
		RateMissed: missed.Load(), WallSeconds: end.Sub(start).Seconds()}
	var lat []time.Duration
	for _, st := range all {
		lat = append(lat, st.lat...)
		res.Completed += st.completed
		res.OK += st.ok
		for k, v := range st.codes {
			res.Codes[k] += v
		}
		for k, v := range st.decisions {
			res.Decisions[k] += v
		}
		for k, v := range st.errors {
			res.Errors[k] += v
		}
	}
	from := start
	if o.Warmup > 0 && end.After(measureFrom) {
		from = measureFrom
	}
	res.Seconds = end.Sub(from).Seconds()
	if res.Seconds > 0 {
		res.MsgsPerSec = float64(res.Completed) / res.Seconds
		res.OKPerSec = float64(res.OK) / res.Seconds
	}
	slices.Sort(lat)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	if n := len(lat); n > 0 {
		q := func(p float64) time.Duration {
			i := int(p*float64(n)+0.5) - 1
			return lat[min(max(i, 0), n-1)]
		}
		res.P50ms, res.P99ms, res.P999ms, res.Maxms = ms(q(0.50)), ms(q(0.99)), ms(q(0.999)), ms(lat[n-1])
	}
	return res, nil
}

// pace issues tokens at rate per second; a token that finds every session
// busy is counted as missed (the server is slower than the target rate).
func pace(ctx context.Context, rate float64, tokens chan<- struct{}, missed *atomic.Int64) {
	start := time.Now()
	var issued int64
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			due := int64(now.Sub(start).Seconds() * rate)
			for ; issued < due; issued++ {
				select {
				case tokens <- struct{}{}:
				default:
					missed.Add(1)
				}
			}
		}
	}
}

func session(ctx context.Context, o *RunOptions, id int, st *stats, budget *atomic.Int64, tokens <-chan struct{},
	measureFrom time.Time, repMu *sync.Mutex) {
	r := mrand.New(mrand.NewPCG(o.Seed, uint64(id)))
	var c *Client
	defer func() {
		if c != nil {
			c.Quit()
		}
	}()
	backoff := 10 * time.Millisecond
	for ctx.Err() == nil {
		if c == nil {
			var err error
			c, err = Dial(o.Addr, o.Helo, o.Timeout)
			if err != nil {
				st.errors["connect: "+errClass(err)]++
				select {
				case <-ctx.Done():
				case <-time.After(backoff):
				}
				backoff = min(backoff*2, 500*time.Millisecond)
				continue
			}
			backoff = 10 * time.Millisecond
		}
		if tokens != nil {
			select {
			case <-ctx.Done():
				return
			case <-tokens:
			}
		}
		if budget.Add(-1) < 0 {
			return
		}
		m := o.Gen.Next(o.Mix.Pick(r), r)
		rep, lat, err := c.Send(o.From, o.Rcpt, &m)
		done := time.Now()
		counted := !done.Before(measureFrom)
		var re *ReplyError
		switch {
		case errors.As(err, &re):
			if counted {
				st.codes[re.Stage+":"+fmt.Sprint(re.Code)]++
			}
			if re.Closed {
				c.Close()
				c = nil
			}
			continue
		case err != nil:
			st.errors["send: "+errClass(err)]++
			c.Close()
			c = nil
			continue
		}
		if rep.Code == 250 {
			o.Gen.Accepted(&m)
		}
		if o.Replies != nil {
			repMu.Lock()
			fmt.Fprintf(o.Replies, "%d\t%s\t%s\t%d\t%s\n", rep.Code, m.MessageID, m.Kind, m.Thread, rep.Text)
			repMu.Unlock()
		}
		if counted {
			st.completed++
			st.lat = append(st.lat, lat)
			st.codes[fmt.Sprint(rep.Code)]++
			if rep.Code == 250 {
				st.ok++
			}
			st.decisions[decision(rep.Text)]++
		}
		if rep.Code == 421 {
			c.Close()
			c = nil
		}
	}
}

// decision extracts "stored" from "2.0.0 OK: stored" (syncrelay) or
// "queued" from "2.0.0 Ok: queued as X" (Postfix).
func decision(text string) string {
	l := strings.ToLower(text)
	if i := strings.Index(l, "ok: "); i >= 0 {
		if f := strings.Fields(l[i+4:]); len(f) > 0 {
			return f[0]
		}
	}
	return "-"
}

func errClass(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, syscall.EPIPE):
		return "broken pipe"
	case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF):
		return "closed by server"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	}
	var re *ReplyError
	if errors.As(err, &re) {
		return fmt.Sprintf("%s %d", re.Stage, re.Code)
	}
	s := err.Error()
	if len(s) > 60 {
		s = s[:60]
	}
	return s
}

// Summary is a human-readable report of r.
func (r *Result) Summary() string {
	var b strings.Builder
	fmt.Fprintf(&b, "srload: %s sessions=%d body=%dB mix=%s", r.Addr, r.Sessions, r.BodySize, r.Mix)
	if r.TargetRate > 0 {
		fmt.Fprintf(&b, " target=%.0f/s (missed %d)", r.TargetRate, r.RateMissed)
	}
	fmt.Fprintf(&b, "\n  %d transactions (%d x 250) in %.2fs: %.1f msgs/s (%.1f x 250/s)\n", r.Completed, r.OK, r.Seconds, r.MsgsPerSec, r.OKPerSec)
	fmt.Fprintf(&b, "  latency \".\" -> reply: p50 %.2f ms  p99 %.2f ms  p99.9 %.2f ms  max %.2f ms\n", r.P50ms, r.P99ms, r.P999ms, r.Maxms)
	fmt.Fprintf(&b, "  codes: %s\n  decisions: %s\n", fmtMap(r.Codes), fmtMap(r.Decisions))
	if len(r.Errors) > 0 {
		fmt.Fprintf(&b, "  errors: %s\n", fmtMap(r.Errors))
	}
	return b.String()
}

func fmtMap(m map[string]int64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}
