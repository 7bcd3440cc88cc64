// Package webhook delivers the store's outbox events to the ATS: POSTed as
// JSON to webhooks.url, signed with HMAC-SHA256, at least once, with
// exponential backoff and a dead-letter state after a bounded number of
// attempts. docs/webhooks.md is the consumer's reference.
//
// All delivery state lives in the store (claims are leases written before
// the request goes out), so a crash or restart loses nothing and a second
// node could take over.
package webhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/prometheus/client_golang/prometheus"

	"syncrelay/store"
)

// Headers sent with every delivery.
const (
	HeaderSignature   = "X-Syncrelay-Signature"    // sha256=<hex HMAC(secret, body)>
	HeaderSignatureV2 = "X-Syncrelay-Signature-V2" // t=<unix>,sha256=<hex HMAC(secret, "<unix>." + body)>
	HeaderTimestamp   = "X-Syncrelay-Timestamp"    // <unix seconds>, covered by the V2 signature
	HeaderEventID     = "X-Syncrelay-Event-Id"
	HeaderEventType   = "X-Syncrelay-Event-Type"
	HeaderAttempt     = "X-Syncrelay-Delivery-Attempt"
)

// Defaults for zero Options fields.
const (
	DefaultMaxAttempts      = 12
	DefaultTimeout          = 10 * time.Second
	DefaultBaseDelay        = 30 * time.Second
	DefaultMaxDelay         = time.Hour
	DefaultPollInterval     = time.Second
	DefaultWorkers          = 4
	DefaultRetention        = 7 * 24 * time.Hour
	DefaultDeadRetention    = 30 * 24 * time.Hour
	DefaultReplayTolerance  = 5 * time.Minute
	maxErrorText            = 300
	pruneEvery              = time.Hour
	pruneBatch              = 1000
	leaseMargin             = 30 * time.Second
	maxResponseBodyConsumed = 64 << 10
)

// Store is the outbox the deliverer drains.
type Store interface {
	ClaimEvents(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]*store.Event, error)
	EventDelivered(ctx context.Context, seq uint64, at time.Time) error
	EventFailed(ctx context.Context, seq uint64, attempt int, at time.Time, errText string, next time.Time, dead bool) error
	OutboxStats(ctx context.Context) (store.OutboxStats, error)
	PruneEvents(ctx context.Context, deliveredBefore, deadBefore time.Time, limit int) (int, error)
}

// Options configure a Deliverer. URL and Secret are required.
type Options struct {
	URL    string
	Secret string
	// MaxAttempts is the number of delivery attempts before an event is
	// dead-lettered (webhooks.max_attempts).
	MaxAttempts int
	// Timeout bounds one delivery request (webhooks.timeout).
	Timeout time.Duration
	// BaseDelay is the wait after the first failure; it doubles with each
	// further failure up to MaxDelay, with jitter (the wait is drawn
	// between half and all of it). A receiver's Retry-After is honoured up
	// to MaxDelay.
	BaseDelay, MaxDelay time.Duration
	// PollInterval is how often the outbox is checked when idle.
	PollInterval time.Duration
	// Workers is the number of deliveries in flight at once.
	Workers int
	// Retention is how long delivered events are kept (for audit and
	// de-duplication support); DeadRetention how long dead letters are.
	Retention, DeadRetention time.Duration
	// Client sends the requests; nil builds one that follows no redirects.
	Client *http.Client
	// Registerer receives the metrics; nil registers none.
	Registerer prometheus.Registerer
	Log        *slog.Logger
	Now        func() time.Time
}

// Deliverer drains the outbox.
type Deliverer struct {
	st      Store
	o       Options
	secret  []byte
	client  *http.Client
	log     *slog.Logger
	wake    chan struct{}
	metrics *metrics
}

// New validates o and builds a Deliverer; Run starts it.
func New(st Store, o Options) (*Deliverer, error) {
	if o.URL == "" {
		return nil, errors.New("webhook: no URL")
	}
	if !strings.HasPrefix(o.URL, "http://") && !strings.HasPrefix(o.URL, "https://") {
		return nil, fmt.Errorf("webhook: URL %q is not http(s)", o.URL)
	}
	if o.Secret == "" {
		return nil, errors.New("webhook: no signing secret")
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.BaseDelay <= 0 {
		o.BaseDelay = DefaultBaseDelay
	}
	if o.MaxDelay <= 0 {
		o.MaxDelay = DefaultMaxDelay
	}
	if o.MaxDelay < o.BaseDelay {
		o.MaxDelay = o.BaseDelay
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.Retention <= 0 {
		o.Retention = DefaultRetention
	}
	if o.DeadRetention <= 0 {
		o.DeadRetention = DefaultDeadRetention
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	c := o.Client
	if c == nil {
		c = &http.Client{
			Transport: http.DefaultTransport.(*http.Transport).Clone(),
			// A redirect is a failure: following it could send signed
			// events somewhere the operator did not configure.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		}
	}
	d := &Deliverer{st: st, o: o, secret: []byte(o.Secret), client: c, log: o.Log, wake: make(chan struct{}, 1)}
	d.metrics = newMetrics(st, o.Registerer, o.Log, o.Now)
	return d, nil
}

// Notify makes the deliverer look at the outbox now rather than at the next
// poll (call it after enqueueing an event, when convenient).
func (d *Deliverer) Notify() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// Run delivers events until ctx ends. Deliveries in flight when ctx ends
// are finished (each bounded by Timeout) and their outcome recorded before
// Run returns, so the store may be closed afterwards.
func (d *Deliverer) Run(ctx context.Context) {
	d.log.Info("webhook deliverer started", "url", redactURL(d.o.URL), "max_attempts", d.o.MaxAttempts, "workers", d.o.Workers)
	var wg sync.WaitGroup
	defer wg.Wait()
	sem := make(chan struct{}, d.o.Workers)
	lastPrune := time.Time{}
	t := time.NewTicker(d.o.PollInterval)
	defer t.Stop()
	for {
		if now := d.o.Now(); now.Sub(lastPrune) >= pruneEvery {
			lastPrune = now
			d.prune(ctx, now)
		}
		for ctx.Err() == nil {
			free := d.o.Workers - len(sem)
			if free == 0 {
				break
			}
			evs, err := d.st.ClaimEvents(ctx, d.o.Now(), free, d.o.Timeout+leaseMargin)
			if err != nil {
				if ctx.Err() == nil {
					d.log.Warn("webhook: claim events", "err", err)
				}
				break
			}
			for _, ev := range evs {
				sem <- struct{}{}
				wg.Add(1)
				go func() {
					defer func() { <-sem; wg.Done(); d.Notify() }()
					d.deliver(ev)
				}()
			}
			if len(evs) < free {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-d.wake:
		}
	}
}

func (d *Deliverer) prune(ctx context.Context, now time.Time) {
	for ctx.Err() == nil {
		n, err := d.st.PruneEvents(ctx, now.Add(-d.o.Retention), now.Add(-d.o.DeadRetention), pruneBatch)
		if err != nil {
			d.log.Warn("webhook: prune outbox", "err", err)
			return
		}
		if n > 0 {
			d.log.Info("webhook: pruned old outbox events", "count", n)
		}
		if n < pruneBatch {
			return
		}
	}
}

// Body is the JSON document POSTed for an event (SPEC Appendix A). It is
// the same bytes on every attempt.
func Body(ev *store.Event) ([]byte, error) {
	data := ev.Data
	if data == nil {
		data = json.RawMessage("{}")
	}
	return json.Marshal(struct {
		ID      string    `json:"id"`
		Type    string    `json:"type"`
		Created time.Time `json:"created_at"`
		Tenant  string    `json:"tenant"`
		Data    any       `json:"data"`
	}{ev.ID, ev.Type, ev.Created.UTC(), ev.Tenant, data})
}

// Sign is the X-Syncrelay-Signature value: "sha256=" + hex HMAC-SHA256 of
// the exact body.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// SignV2 is the X-Syncrelay-Signature-V2 value: "t=<unix>,sha256=" + hex
// HMAC-SHA256 of "<unix>." + body, binding the timestamp to the body.
func SignV2(secret []byte, ts int64, body []byte) string {
	t := strconv.FormatInt(ts, 10)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(t + "."))
	m.Write(body)
	return "t=" + t + ",sha256=" + hex.EncodeToString(m.Sum(nil))
}

// Verification errors.
var (
	ErrBadSignature = errors.New("webhook: signature mismatch")
	ErrStale        = errors.New("webhook: timestamp outside the tolerance")
)

// Verify checks a delivery as a consumer should: the V2 signature when
// present (and its timestamp within tolerance of now, blocking replays),
// else the body signature. It is what docs/webhooks.md describes, for Go
// consumers and tests.
func Verify(secret []byte, h http.Header, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultReplayTolerance
	}
	if v2 := h.Get(HeaderSignatureV2); v2 != "" {
		var ts int64
		var sig string
		for _, kv := range strings.Split(v2, ",") {
			k, v, _ := strings.Cut(strings.TrimSpace(kv), "=")
			switch k {
			case "t":
				ts, _ = strconv.ParseInt(v, 10, 64)
			case "sha256":
				sig = v
			}
		}
		if ts == 0 || !hmac.Equal([]byte(SignV2(secret, ts, body)), []byte("t="+strconv.FormatInt(ts, 10)+",sha256="+sig)) {
			return ErrBadSignature
		}
		if d := now.Sub(time.Unix(ts, 0)); d > tolerance || d < -tolerance {
			return ErrStale
		}
		return nil
	}
	if !hmac.Equal([]byte(Sign(secret, body)), []byte(h.Get(HeaderSignature))) {
		return ErrBadSignature
	}
	return nil
}

// deliver makes one attempt and records its outcome.
func (d *Deliverer) deliver(ev *store.Event) {
	start := d.o.Now()
	retryAfter, err := d.post(ev)
	d.metrics.latency.Observe(d.o.Now().Sub(start).Seconds())
	// Record the outcome even when shutting down: the claim is already
	// durable, and the outcome must be too.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	now := d.o.Now()
	if err == nil {
		if rerr := d.st.EventDelivered(ctx, ev.Seq, now); rerr != nil {
			d.log.Warn("webhook: record delivery (the event will be sent again)", "event", ev.ID, "err", rerr)
		}
		d.metrics.outcomes.WithLabelValues("delivered").Inc()
		d.log.Debug("webhook delivered", "event", ev.ID, "type", ev.Type, "attempt", ev.Attempts)
		return
	}
	errText := truncate(err.Error(), maxErrorText)
	dead := ev.Attempts >= d.o.MaxAttempts
	next := now.Add(d.backoff(ev.Attempts, retryAfter))
	if rerr := d.st.EventFailed(ctx, ev.Seq, ev.Attempts, now, errText, next, dead); rerr != nil {
		d.log.Warn("webhook: record failure", "event", ev.ID, "err", rerr)
	}
	if dead {
		d.metrics.outcomes.WithLabelValues("dead").Inc()
		d.log.Error("webhook event dead-lettered; see GET /v1/webhooks/failed", "event", ev.ID, "type", ev.Type,
			"tenant", ev.Tenant, "attempts", ev.Attempts, "err", errText)
		return
	}
	d.metrics.outcomes.WithLabelValues("retry").Inc()
	d.log.Warn("webhook delivery failed; will retry", "event", ev.ID, "type", ev.Type, "attempt", ev.Attempts,
		"next_attempt", next.UTC().Format(time.RFC3339), "err", errText)
}

// backoff is the wait after the attempt-th failure: BaseDelay·2^(attempt-1)
// capped at MaxDelay, jittered to [half, all], and never less than a
// receiver's Retry-After (itself capped at MaxDelay).
func (d *Deliverer) backoff(attempt int, retryAfter time.Duration) time.Duration {
	w := d.o.BaseDelay
	for i := 1; i < attempt && w < d.o.MaxDelay; i++ {
		w *= 2
	}
	w = min(w, d.o.MaxDelay)
	w = w/2 + time.Duration(rand.Int64N(int64(w/2)+1))
	if retryAfter > w {
		w = min(retryAfter, d.o.MaxDelay)
	}
	return w
}

// post sends one event. It returns nil on a 2xx answer.
func (d *Deliverer) post(ev *store.Event) (retryAfter time.Duration, err error) {
	body, err := Body(ev)
	if err != nil {
		return 0, fmt.Errorf("encode event: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.o.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.o.URL, bytes.NewReader(body))
	if err != nil {
		return 0, fmt.Errorf("build request: %w", err)
	}
	ts := d.o.Now().Unix()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "syncrelay-webhook/1")
	req.Header.Set(HeaderEventID, ev.ID)
	req.Header.Set(HeaderEventType, ev.Type)
	req.Header.Set(HeaderAttempt, strconv.Itoa(ev.Attempts))
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts, 10))
	req.Header.Set(HeaderSignature, Sign(d.secret, body))
	req.Header.Set(HeaderSignatureV2, SignV2(d.secret, ts, body))
	resp, err := d.client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("POST: %s", redactErr(err, d.o.URL))
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBodyConsumed)) // allow connection reuse
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return 0, nil
	}
	ra := parseRetryAfter(resp.Header.Get("Retry-After"), d.o.Now())
	msg := fmt.Sprintf("HTTP %d", resp.StatusCode)
	if s := printable(string(snippet)); s != "" {
		msg += ": " + s
	}
	return ra, errors.New(msg)
}

func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil && n > 0 {
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

func printable(s string) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		if unicode.IsSpace(r) {
			return ' '
		}
		return -1
	}, s)
	return strings.Join(strings.Fields(s), " ")
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && (s[n]&0xC0) == 0x80 {
		n--
	}
	return s[:n] + "…"
}

// redactURL drops user info and query from the URL for logs (either may
// hold a credential).
func redactURL(u string) string {
	if i := strings.Index(u, "?"); i >= 0 {
		u = u[:i]
	}
	if i := strings.Index(u, "://"); i >= 0 {
		rest := u[i+3:]
		if at := strings.Index(rest, "@"); at >= 0 && (strings.Index(rest, "/") < 0 || at < strings.Index(rest, "/")) {
			u = u[:i+3] + rest[at+1:]
		}
	}
	return u
}

func redactErr(err error, url string) string {
	s := err.Error()
	return strings.ReplaceAll(s, url, redactURL(url))
}

// --- metrics ---

type metrics struct {
	outcomes *prometheus.CounterVec
	latency  prometheus.Histogram
}

// outboxCollector reads the outbox depth from the store at scrape time, so
// the numbers are right across restarts and nodes.
type outboxCollector struct {
	st                 StatsSource
	log                *slog.Logger
	pending, age, dead *prometheus.Desc
	now                func() time.Time
}

// StatsSource reports the outbox's depth.
type StatsSource interface {
	OutboxStats(ctx context.Context) (store.OutboxStats, error)
}

func (c *outboxCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.pending
	ch <- c.age
	ch <- c.dead
}

func (c *outboxCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := c.st.OutboxStats(ctx)
	if err != nil {
		c.log.Warn("webhook: outbox stats", "err", err)
		ch <- prometheus.NewInvalidMetric(c.pending, err)
		return
	}
	age := 0.0
	if !st.OldestPending.IsZero() {
		age = max(c.now().Sub(st.OldestPending).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(c.pending, prometheus.GaugeValue, float64(st.Pending))
	ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, age)
	ch <- prometheus.MustNewConstMetric(c.dead, prometheus.GaugeValue, float64(st.Dead))
}

func newMetrics(st Store, reg prometheus.Registerer, log *slog.Logger, now func() time.Time) *metrics {
	m := &metrics{
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncrelay_webhook_deliveries_total",
			Help: "Webhook delivery attempts by outcome: delivered, retry (failed, will retry), dead (failed, dead-lettered).",
		}, []string{"outcome"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "syncrelay_webhook_delivery_seconds",
			Help:    "Duration of one webhook delivery attempt.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
	}
	for _, o := range []string{"delivered", "retry", "dead"} {
		m.outcomes.WithLabelValues(o)
	}
	if reg != nil {
		reg.MustRegister(m.outcomes, m.latency, NewOutboxCollector(st, log, now))
	}
	return m
}

// NewOutboxCollector exports the outbox depth, the age of its oldest
// pending event and the dead-letter count. The daemon registers it through
// New; it is exported for a process that stores events without delivering
// them (webhooks disabled).
func NewOutboxCollector(st StatsSource, log *slog.Logger, now func() time.Time) prometheus.Collector {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &outboxCollector{
		st:  st,
		log: log,
		now: now,
		pending: prometheus.NewDesc("syncrelay_webhook_outbox_pending",
			"Webhook events waiting for delivery (outbox depth).", nil, nil),
		age: prometheus.NewDesc("syncrelay_webhook_outbox_oldest_pending_age_seconds",
			"Age of the oldest undelivered webhook event; 0 when none.", nil, nil),
		dead: prometheus.NewDesc("syncrelay_webhook_dead_letters",
			"Webhook events given up after webhooks.max_attempts (see GET /v1/webhooks/failed).", nil, nil),
	}
}
