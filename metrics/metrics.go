// Package metrics holds the Prometheus collectors of syncrelay's inbound
// side (SMTP front door, decisions, DKIM/ARC, store latency, TLS
// certificate) and builds the registry the daemon serves on GET /metrics.
//
// Nothing here is global: New registers its collectors with the Registerer
// it is given, so tests build as many independent sets as they like. Every
// method of *Metrics is safe for concurrent use and does nothing on a nil
// *Metrics, so a component can hold an optional one without nil checks.
//
// Label values come from small fixed sets chosen by syncrelay's own code
// (decisions, reasons, DKIM results, SMTP reply codes), never from message
// content, so the number of series stays bounded whatever mail arrives.
//
// The outbound sender, the OAuth manager, the webhook deliverer and the
// HTTP API register their own collectors (syncrelay_outbound_*,
// syncrelay_oauth_*, syncrelay_webhook_*, syncrelay_http_*) with the same
// registry; Families and OtherFamilies
// name every family the daemon exports, for tests and dashboards.
package metrics

import (
	"maps"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"syncrelay/trust"
)

// Metrics are the inbound collectors.
type Metrics struct {
	connsAccepted prometheus.Counter
	connsRefused  *prometheus.CounterVec
	connsActive   prometheus.Gauge
	sessions      *prometheus.CounterVec
	replies       *prometheus.CounterVec
	messages      *prometheus.CounterVec
	auth          *prometheus.CounterVec
	dataReply     prometheus.Histogram
	storeCommit   *prometheus.HistogramVec
	tlsExpiry     prometheus.Gauge
	tlsReloads    *prometheus.CounterVec

	// The counters of the known series (KnownReplies, KnownDecisions),
	// looked up by a plain map read instead of WithLabelValues' hashing
	// and locking: four lookups per message, 1.3 % of the discard path.
	// Each map is replaced whole, never written after it is stored.
	knownReplies   atomic.Pointer[map[replyKey]prometheus.Counter]
	knownDecisions atomic.Pointer[map[[2]string]prometheus.Counter]
}

type replyKey struct {
	stage string
	code  int
}

// Connection refusal reasons (label values of
// syncrelay_smtp_connections_refused_total), as smtpd reports them.
var refusalReasons = []string{"max_connections", "max_connections_per_ip", "shutting_down"}

// New creates the inbound collectors and registers them with reg. It
// panics if one is already registered (a programming error).
func New(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		connsAccepted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "syncrelay_smtp_connections_total",
			Help: "SMTP connections admitted (see syncrelay_smtp_connections_refused_total for the others).",
		}),
		connsRefused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncrelay_smtp_connections_refused_total",
			Help: "SMTP connections refused with 421 by reason: max_connections, max_connections_per_ip, shutting_down.",
		}, []string{"reason"}),
		connsActive: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "syncrelay_smtp_connections_active",
			Help: "SMTP connections open now.",
		}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncrelay_smtp_sessions_total",
			Help: "SMTP sessions (connections that said EHLO/HELO), counted once when they end, by their final state: a session upgraded with STARTTLS counts as tls=\"true\".",
		}, []string{"tls"}),
		replies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncrelay_smtp_replies_total",
			Help: "SMTP replies to MAIL, RCPT and DATA/BDAT by stage and reply code.",
		}, []string{"stage", "code"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncrelay_messages_total",
			Help: "Inbound messages by decision (stored, duplicate, discarded, quarantined, rejected, tempfail) and reason, the router's and smtpd's own refusals (message_too_large, bare_eol, line_too_long) alike (per tenant: GET /v1/tenants/{t}/status).",
		}, []string{"decision", "reason"}),
		auth: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncrelay_auth_results_total",
			Help: "Authentication results of messages of interest: method=\"dkim\" counts each verified signature, method=\"arc\" each message's ARC chain.",
		}, []string{"method", "result"}),
		dataReply: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "syncrelay_smtp_data_reply_seconds",
			Help:    "Time from the end of DATA to the reply (decision, DKIM/ARC and durable commit included).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5 ms .. 16 s
		}),
		storeCommit: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "syncrelay_store_commit_seconds",
			Help:    "Latency of durable (fsynced, group) store commits on the inbound path, by operation.",
			Buckets: prometheus.ExponentialBuckets(0.0002, 2, 16), // 0.2 ms .. 6.5 s
		}, []string{"op"}),
		tlsExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "syncrelay_tls_certificate_expiry_timestamp_seconds",
			Help: "NotAfter of the SMTP STARTTLS certificate in use (Unix time); absent without a certificate. Alert when it is less than 14 days away.",
		}),
		tlsReloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncrelay_tls_reloads_total",
			Help: "SIGHUP reloads of the SMTP certificate by result (ok, error).",
		}, []string{"result"}),
	}
	for _, r := range refusalReasons {
		m.connsRefused.WithLabelValues(r)
	}
	for _, v := range []string{"false", "true"} {
		m.sessions.WithLabelValues(v)
	}
	for _, r := range []string{"ok", "error"} {
		m.tlsReloads.WithLabelValues(r)
	}
	for _, op := range []string{OpCommitInbound, OpMarkBounced, OpQuarantine} {
		m.storeCommit.WithLabelValues(op)
	}
	// Every result at 0 from start, so a rate() alert fires on the first
	// failure after a restart instead of seeing a series appear.
	for _, r := range DKIMResults {
		m.auth.WithLabelValues("dkim", r)
	}
	for _, r := range ARCResults {
		m.auth.WithLabelValues("arc", r)
	}
	reg.MustRegister(m.connsAccepted, m.connsRefused, m.connsActive, m.sessions, m.replies,
		m.messages, m.auth, m.dataReply, m.storeCommit, m.tlsReloads)
	// The expiry gauge is registered only once a certificate is set, so a
	// daemon without STARTTLS does not export a misleading 0.
	m.tlsExpiry = registerLater(reg, m.tlsExpiry)
	return m
}

// registerLater defers the registration of g until its first Set.
func registerLater(reg prometheus.Registerer, g prometheus.Gauge) prometheus.Gauge {
	return &lazyGauge{Gauge: g, reg: reg}
}

type lazyGauge struct {
	prometheus.Gauge
	reg  prometheus.Registerer
	once sync.Once
}

func (g *lazyGauge) Set(v float64) {
	g.once.Do(func() { g.reg.MustRegister(g.Gauge) })
	g.Gauge.Set(v)
}

// NewRegistry returns a registry holding the standard Go runtime, process
// and build-info collectors, ready for New and the other components.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewBuildInfoCollector(),
		buildInfo(),
	)
	return reg
}

// buildInfo is syncrelay_build_info{version, revision, goversion} = 1.
func buildInfo() prometheus.Collector {
	version, revision, goVersion := "(devel)", "unknown", "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		version, goVersion = bi.Main.Version, bi.GoVersion
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				revision = s.Value
			}
		}
	}
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Name:        "syncrelay_build_info",
		Help:        "Build of the running binary (always 1).",
		ConstLabels: prometheus.Labels{"version": version, "revision": revision, "goversion": goVersion},
	})
	g.Set(1)
	return g
}

// --- SMTP front door (smtpd.Observer) ---

// ConnOpened counts an admitted SMTP connection.
func (m *Metrics) ConnOpened() {
	if m == nil {
		return
	}
	m.connsAccepted.Inc()
	m.connsActive.Inc()
}

// ConnClosed counts the end of an admitted connection.
func (m *Metrics) ConnClosed() {
	if m == nil {
		return
	}
	m.connsActive.Dec()
}

// ConnRefused counts a connection refused with 421 before its greeting.
func (m *Metrics) ConnRefused(reason string) {
	if m == nil {
		return
	}
	m.connsRefused.WithLabelValues(reason).Inc()
}

// SessionEnded counts an SMTP session (a connection that said EHLO/HELO)
// when it ends, by its final state: a STARTTLS session counts once, as TLS.
func (m *Metrics) SessionEnded(tls bool) {
	if m == nil {
		return
	}
	m.sessions.WithLabelValues(strconv.FormatBool(tls)).Inc()
}

// Reply counts one reply to MAIL, RCPT or DATA (stage "mail", "rcpt",
// "data"). Codes outside 200-599 are counted as "other".
func (m *Metrics) Reply(stage string, code int) {
	if m == nil {
		return
	}
	if known := m.knownReplies.Load(); known != nil {
		if c, ok := (*known)[replyKey{stage, code}]; ok {
			c.Inc()
			return
		}
	}
	c := "other"
	if code >= 200 && code <= 599 {
		c = strconv.Itoa(code)
	}
	m.replies.WithLabelValues(stage, c).Inc()
}

// --- decisions ---

// DKIMResults and ARCResults are the result label values of
// syncrelay_auth_results_total (trust's result words), exported at 0 from
// start.
var (
	DKIMResults = []string{trust.ResultPass, trust.ResultFail, trust.ResultPermError, trust.ResultTempError,
		trust.ResultPolicy, trust.ResultNeutral}
	ARCResults = []string{trust.ARCNone, trust.ARCPass, trust.ARCFail, trust.ARCTempError}
)

// KnownDecisions creates every decision × reason series of
// syncrelay_messages_total at 0 (daemon.Outcomes: the router's and smtpd's), so
// that rate(syncrelay_messages_total{decision="tempfail"}[15m]) > 0 fires
// on the first tempfail after a restart: a series that only appears with
// its first increment has no rate yet.
func (m *Metrics) KnownDecisions(pairs [][2]string) {
	if m == nil {
		return
	}
	known := map[[2]string]prometheus.Counter{}
	if old := m.knownDecisions.Load(); old != nil {
		maps.Copy(known, *old)
	}
	for _, p := range pairs {
		known[p] = m.messages.WithLabelValues(p[0], p[1])
	}
	m.knownDecisions.Store(&known)
}

// KnownReplies creates the syncrelay_smtp_replies_total series of every
// code smtpd can send at each stage (smtpd.ReplyCodes) at 0, so that an
// alert on a rate of, say, data 451 replies fires on the first one after
// a restart.
func (m *Metrics) KnownReplies(codes map[string][]int) {
	if m == nil {
		return
	}
	known := map[replyKey]prometheus.Counter{}
	if old := m.knownReplies.Load(); old != nil {
		maps.Copy(known, *old)
	}
	for stage, cs := range codes {
		for _, c := range cs {
			if c >= 200 && c <= 599 {
				known[replyKey{stage, c}] = m.replies.WithLabelValues(stage, strconv.Itoa(c))
			} else {
				m.replies.WithLabelValues(stage, strconv.Itoa(c))
			}
		}
	}
	m.knownReplies.Store(&known)
}

// Decision counts one decision: the router's (through the daemon's
// Deliverer, per tenant) or smtpd's own (smtpd.Observer, per message).
func (m *Metrics) Decision(decision, reason string) {
	if m == nil {
		return
	}
	if known := m.knownDecisions.Load(); known != nil {
		if c, ok := (*known)[[2]string{decision, reason}]; ok {
			c.Inc()
			return
		}
	}
	m.messages.WithLabelValues(decision, reason).Inc()
}

// DKIMResult counts one verified DKIM signature by result (pass, fail,
// permerror, temperror, policy, neutral).
func (m *Metrics) DKIMResult(result string) {
	if m == nil || result == "" {
		return
	}
	m.auth.WithLabelValues("dkim", result).Inc()
}

// ARCResult counts one message's ARC chain result (none, pass, fail,
// temperror).
func (m *Metrics) ARCResult(result string) {
	if m == nil || result == "" {
		return
	}
	m.auth.WithLabelValues("arc", result).Inc()
}

// DataReply observes the time from the end of DATA to the reply.
func (m *Metrics) DataReply(d time.Duration) {
	if m == nil {
		return
	}
	m.dataReply.Observe(d.Seconds())
}

// Store operations timed on the inbound path.
const (
	OpCommitInbound = "commit_inbound"
	OpMarkBounced   = "mark_bounced"
	OpQuarantine    = "quarantine"
)

// StoreCommit observes one durable store commit.
func (m *Metrics) StoreCommit(op string, d time.Duration) {
	if m == nil {
		return
	}
	m.storeCommit.WithLabelValues(op).Observe(d.Seconds())
}

// --- TLS ---

// TLSCertificate records the NotAfter of the certificate now in use.
func (m *Metrics) TLSCertificate(notAfter time.Time) {
	if m == nil {
		return
	}
	m.tlsExpiry.Set(float64(notAfter.Unix()))
}

// TLSReload counts a SIGHUP certificate reload.
func (m *Metrics) TLSReload(ok bool) {
	if m == nil {
		return
	}
	r := "ok"
	if !ok {
		r = "error"
	}
	m.tlsReloads.WithLabelValues(r).Inc()
}

// Families lists the metric families this package exports (beyond the Go
// runtime and process ones), by area. A family whose series all carry
// labels appears on /metrics once it has a series; the certificate expiry
// only when STARTTLS is configured.
var Families = map[string][]string{
	"smtp": {
		"syncrelay_smtp_connections_total", "syncrelay_smtp_connections_refused_total",
		"syncrelay_smtp_connections_active", "syncrelay_smtp_sessions_total",
		"syncrelay_smtp_replies_total", "syncrelay_smtp_data_reply_seconds",
	},
	"inbound": {
		"syncrelay_messages_total", "syncrelay_auth_results_total",
		"syncrelay_store_commit_seconds",
	},
	"tls":   {"syncrelay_tls_certificate_expiry_timestamp_seconds", "syncrelay_tls_reloads_total"},
	"build": {"syncrelay_build_info", "go_build_info"},
}

// OtherFamilies are registered on the same registry by the components that
// own them (through their Options.Registerer), listed here so that one
// place names everything the daemon exports.
var OtherFamilies = map[string][]string{
	"outbound": {"syncrelay_outbound_sends_total", "syncrelay_outbound_retries_total"},
	"oauth":    {"syncrelay_oauth_refreshes_total"},
	"http":     {"syncrelay_http_requests_total", "syncrelay_http_request_duration_seconds"},
	"webhook": {
		"syncrelay_webhook_deliveries_total", "syncrelay_webhook_delivery_seconds",
		"syncrelay_webhook_outbox_pending", "syncrelay_webhook_outbox_oldest_pending_age_seconds",
		"syncrelay_webhook_dead_letters",
	},
}

// RegisterStoreCommits exports the store's group-commit counts, read at
// each scrape: the batches committed, the requests they carried and the
// seconds spent committing them. Their rates give the mean batch size
// (how many messages share each durable flush) and the mean batch time.
func RegisterStoreCommits(reg prometheus.Registerer, stats func() (batches, requests int64, busy time.Duration)) {
	reg.MustRegister(
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "syncrelay_store_commit_batches_total",
			Help: "Group-commit batches (durable transactions) this process committed.",
		}, func() float64 { b, _, _ := stats(); return float64(b) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "syncrelay_store_commit_batched_requests_total",
			Help: "Requests carried by those batches; divided by the batches, the mean batch size.",
		}, func() float64 { _, r, _ := stats(); return float64(r) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "syncrelay_store_commit_batch_seconds_total",
			Help: "Seconds spent committing those batches (batches committing at once add up).",
		}, func() float64 { _, _, d := stats(); return d.Seconds() }),
	)
}
