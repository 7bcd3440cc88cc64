package metrics

import (
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func TestInboundMetrics(t *testing.T) {
	reg := NewRegistry()
	m := New(reg)

	m.ConnOpened()
	m.ConnOpened()
	m.ConnClosed()
	m.ConnRefused("max_connections_per_ip")
	m.SessionEnded(false)
	m.SessionEnded(true)
	m.Reply("rcpt", 550)
	m.Reply("data", 250)
	m.Reply("data", 250)
	m.Reply("data", 99)
	m.Decision("discarded", "no_match")
	m.Decision("stored", "token")
	m.DKIMResult("pass")
	m.DKIMResult("fail")
	m.ARCResult("pass")
	m.DKIMResult("") // ignored
	m.DataReply(3 * time.Millisecond)
	m.StoreCommit(OpCommitInbound, time.Millisecond)
	m.TLSReload(true)

	for _, tc := range []struct {
		c    prometheus.Collector
		want float64
	}{
		{m.connsAccepted, 2},
		{m.connsActive, 1},
		{m.connsRefused.WithLabelValues("max_connections_per_ip"), 1},
		{m.connsRefused.WithLabelValues("shutting_down"), 0},
		{m.sessions.WithLabelValues("true"), 1},
		{m.replies.WithLabelValues("data", "250"), 2},
		{m.replies.WithLabelValues("rcpt", "550"), 1},
		{m.replies.WithLabelValues("data", "other"), 1},
		{m.messages.WithLabelValues("discarded", "no_match"), 1},
		{m.auth.WithLabelValues("dkim", "pass"), 1},
		{m.auth.WithLabelValues("arc", "pass"), 1},
		{m.tlsReloads.WithLabelValues("ok"), 1},
	} {
		if got := value(t, tc.c); got != tc.want {
			t.Errorf("%v = %v, want %v", tc.c, got, tc.want)
		}
	}
	if n, want := count(m.auth), len(DKIMResults)+len(ARCResults); n != want {
		t.Errorf("auth series %d, want %d (all at 0 from start; empty result ignored)", n, want)
	}

	names := gathered(t, reg)
	for comp, fams := range Families {
		for _, f := range fams {
			if f == "syncrelay_tls_certificate_expiry_timestamp_seconds" {
				continue // checked below
			}
			if !names[f] {
				t.Errorf("%s family %s not exported", comp, f)
			}
		}
	}
	for _, f := range []string{"go_goroutines", "process_open_fds"} {
		if !names[f] && !(f == "process_open_fds" && !processMetricsSupported()) {
			t.Errorf("standard family %s missing", f)
		}
	}

	// The certificate expiry appears only once a certificate is known.
	if names["syncrelay_tls_certificate_expiry_timestamp_seconds"] {
		t.Fatal("expiry exported without a certificate")
	}
	exp := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	m.TLSCertificate(exp)
	m.TLSCertificate(exp) // registers once
	if !gathered(t, reg)["syncrelay_tls_certificate_expiry_timestamp_seconds"] {
		t.Fatal("expiry not exported after TLSCertificate")
	}
	if got := value(t, m.tlsExpiry.(*lazyGauge).Gauge); got != float64(exp.Unix()) {
		t.Fatalf("expiry %v", got)
	}
}

// value reads the single series of c (counter, gauge or untyped).
func value(t *testing.T, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 16)
	c.Collect(ch)
	close(ch)
	var out []float64
	for m := range ch {
		var d dto.Metric
		if err := m.Write(&d); err != nil {
			t.Fatal(err)
		}
		switch {
		case d.Counter != nil:
			out = append(out, d.Counter.GetValue())
		case d.Gauge != nil:
			out = append(out, d.Gauge.GetValue())
		}
	}
	if len(out) != 1 {
		t.Fatalf("%d series, want 1", len(out))
	}
	return out[0]
}

func count(c prometheus.Collector) int {
	ch := make(chan prometheus.Metric, 64)
	c.Collect(ch)
	close(ch)
	n := 0
	for range ch {
		n++
	}
	return n
}

func gathered(t *testing.T, g prometheus.Gatherer) map[string]bool {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		names[mf.GetName()] = true
	}
	return names
}

func processMetricsSupported() bool { return runtime.GOOS == "linux" }

func TestNilMetricsAreNoOps(t *testing.T) {
	var m *Metrics
	m.ConnOpened()
	m.ConnClosed()
	m.ConnRefused("x")
	m.SessionEnded(true)
	m.Reply("data", 250)
	m.Decision("stored", "token")
	m.DKIMResult("pass")
	m.ARCResult("pass")
	m.DataReply(time.Second)
	m.StoreCommit(OpQuarantine, time.Second)
	m.TLSCertificate(time.Now())
	m.TLSReload(false)
}

func TestIndependentRegistries(t *testing.T) {
	a, b := prometheus.NewRegistry(), prometheus.NewRegistry()
	ma, mb := New(a), New(b)
	ma.Decision("stored", "token")
	if value(t, mb.messages.WithLabelValues("stored", "token")) != 0 {
		t.Fatal("registries share state")
	}
	defer func() {
		if recover() == nil {
			t.Fatal("registering twice on one registry did not panic")
		}
	}()
	New(a)
}

// Every known series exists at 0 before anything happened.
func TestSeriesAtZeroFromStart(t *testing.T) {
	m := New(prometheus.NewRegistry())
	m.KnownDecisions([][2]string{{"tempfail", "local_error"}, {"stored", "token"}})
	for _, c := range []prometheus.Collector{
		m.messages.WithLabelValues("tempfail", "local_error"),
		m.auth.WithLabelValues("dkim", "temperror"),
		m.auth.WithLabelValues("arc", "fail"),
	} {
		if v := value(t, c); v != 0 {
			t.Errorf("%v = %v", c, v)
		}
	}
	if n := count(m.messages); n != 2 {
		t.Errorf("%d decision series, want 2", n)
	}
	var nilM *Metrics
	nilM.KnownDecisions([][2]string{{"a", "b"}})
	nilM.KnownReplies(map[string][]int{"data": {250}})
}

// The reply codes smtpd can send exist at 0 from start, by stage.
func TestKnownRepliesAtZero(t *testing.T) {
	m := New(prometheus.NewRegistry())
	m.KnownReplies(map[string][]int{"mail": {250, 421}, "data": {250, 552, 554}})
	for _, c := range []prometheus.Collector{
		m.replies.WithLabelValues("mail", "421"),
		m.replies.WithLabelValues("data", "552"),
	} {
		if v := value(t, c); v != 0 {
			t.Errorf("%v = %v", c, v)
		}
	}
	if n := count(m.replies); n != 5 {
		t.Errorf("%d reply series, want 5", n)
	}
}

// The known series (KnownReplies, KnownDecisions) are counted through
// their precomputed counters: the same series WithLabelValues finds, and
// series not known in advance still counted.
func TestKnownSeriesCounted(t *testing.T) {
	m := New(prometheus.NewRegistry())
	m.KnownReplies(map[string][]int{"data": {250, 451}, "rcpt": {250}})
	m.KnownDecisions([][2]string{{"discarded", "no_match"}, {"stored", "token"}})
	m.KnownDecisions([][2]string{{"tempfail", "local_error"}}) // adds, keeps the others
	m.Reply("data", 250)
	m.Reply("data", 250)
	m.Reply("rcpt", 250)
	m.Reply("mail", 250) // not known in advance
	m.Decision("discarded", "no_match")
	m.Decision("stored", "token")
	m.Decision("stored", "token")
	m.Decision("tempfail", "local_error")
	m.Decision("rejected", "bare_eol") // not known in advance
	for _, tc := range []struct {
		c    prometheus.Collector
		want float64
	}{
		{m.replies.WithLabelValues("data", "250"), 2},
		{m.replies.WithLabelValues("data", "451"), 0},
		{m.replies.WithLabelValues("rcpt", "250"), 1},
		{m.replies.WithLabelValues("mail", "250"), 1},
		{m.messages.WithLabelValues("discarded", "no_match"), 1},
		{m.messages.WithLabelValues("stored", "token"), 2},
		{m.messages.WithLabelValues("tempfail", "local_error"), 1},
		{m.messages.WithLabelValues("rejected", "bare_eol"), 1},
	} {
		if got := value(t, tc.c); got != tc.want {
			t.Errorf("%v = %v, want %v", tc.c, got, tc.want)
		}
	}
}
