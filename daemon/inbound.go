package daemon

import (
	"context"
	"log/slog"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"

	"syncrelay/router"
	"syncrelay/smtpd"
)

// deliverer adapts the router to smtpd: one Route per distinct tenant among
// the recipients, and one SMTP reply for the transaction.
type deliverer struct {
	router  *router.Router
	metrics *metrics
	log     *slog.Logger
}

// severity orders outcomes: the worst one answers the transaction. A
// tempfail for one tenant makes the sender retry the whole message, which is
// safe because a second copy is a duplicate for the tenants that kept it.
func severity(d string) int {
	switch d {
	case router.Tempfail:
		return 3
	case router.Rejected:
		return 2
	}
	return 1
}

func (d *deliverer) Deliver(ctx context.Context, del *smtpd.Delivery) error {
	start := time.Now()
	var worst *router.Outcome
	seen := map[string]bool{}
	for _, t := range del.Tenants {
		if seen[t] {
			continue
		}
		seen[t] = true
		out, err := d.router.Route(ctx, router.Input{Tenant: t, Body: del.Message})
		if err != nil {
			d.log.ErrorContext(ctx, "route failed; answering 451", "session", del.SessionID, "tenant", t, "err", err)
		}
		d.metrics.decisions.WithLabelValues(out.Decision, out.Reason).Inc()
		if worst == nil || severity(out.Decision) > severity(worst.Decision) {
			o := out
			worst = &o
		}
	}
	d.metrics.dataLatency.Observe(time.Since(start).Seconds())
	if worst == nil {
		return nil
	}
	if worst.Code == 250 {
		// Naming the decision helps admins and replay -smtp; it reveals
		// nothing the tenant's own forwarding server should not know.
		return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: " + worst.Decision}
	}
	return &smtp.SMTPError{Code: worst.Code, EnhancedCode: smtp.EnhancedCode(worst.Enhanced), Message: worst.Text}
}

type metrics struct {
	decisions   *prometheus.CounterVec
	dataLatency prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncrelay_messages_total", Help: "Inbound messages by decision and reason.",
		}, []string{"decision", "reason"}),
		dataLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "syncrelay_data_decision_seconds", Help: "Time from end of DATA to the decision (incl. durable commit).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}),
	}
	reg.MustRegister(m.decisions, m.dataLatency)
	return m
}
