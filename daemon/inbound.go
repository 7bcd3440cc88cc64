package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/emersion/go-smtp"

	"syncrelay/config"
	"syncrelay/metrics"
	"syncrelay/router"
	"syncrelay/smtpd"
	"syncrelay/store"
)

// deliverer adapts the router to smtpd: one Route per distinct tenant among
// the recipients, and one SMTP reply for the transaction.
type deliverer struct {
	router  *router.Router
	metrics *metrics.Metrics
	// auth counts DKIM/ARC outcomes per tenant for the status endpoint
	// (nil: not counted).
	auth authCounter
	log  *slog.Logger
}

// authCounter is store.Store.CountAuth.
type authCounter interface {
	CountAuth(tenant string, dkimPass, arcPass bool)
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
	// Every log line written while deciding this message (the router's
	// too) carries the session id of its connection.
	ctx = WithLogAttrs(ctx, slog.String("session", del.SessionID))
	var worst *router.Outcome
	seen := map[string]bool{}
	for _, t := range del.Tenants {
		if seen[t] {
			continue
		}
		seen[t] = true
		rctx, dl := router.WithDecisionLog(ctx)
		out, err := d.router.Route(rctx, router.Input{Tenant: t, Body: del.Message})
		if err != nil {
			d.log.ErrorContext(ctx, "route failed; answering 451", "tenant", t, "err", err)
		}
		// The decision goes on the session's "message" line; with several
		// tenants, each under its own name.
		if len(del.Tenants) == 1 {
			del.LogArgs = append(del.LogArgs, dl.Args...)
		} else if len(dl.Args) > 0 {
			del.LogArgs = append(del.LogArgs, slog.Group("tenant_"+t, dl.Args...))
		}
		d.observe(t, &out)
		if worst == nil || severity(out.Decision) > severity(worst.Decision) {
			o := out
			worst = &o
		}
	}
	d.metrics.DataReply(time.Since(start))
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

// observe counts one tenant's outcome: the decision, and for a message of
// interest that was authenticated (the router sets ARC only then) its
// DKIM and ARC results.
func (d *deliverer) observe(tenant string, out *router.Outcome) {
	d.metrics.Decision(out.Decision, out.Reason)
	if out.ARC == "" {
		return
	}
	dkimPass := false
	for _, r := range out.DKIM {
		d.metrics.DKIMResult(r.Result)
		dkimPass = dkimPass || r.Result == "pass"
	}
	d.metrics.ARCResult(out.ARC)
	if d.auth != nil {
		d.auth.CountAuth(tenant, dkimPass, out.ARC == "pass")
	}
}

// timedStore times the inbound path's durable writes.
type timedStore struct {
	router.Store
	m *metrics.Metrics
}

func (s timedStore) CommitInbound(ctx context.Context, in *store.Incoming) (store.CommitResult, error) {
	t := time.Now()
	res, err := s.Store.CommitInbound(ctx, in)
	s.m.StoreCommit(metrics.OpCommitInbound, time.Since(t))
	return res, err
}

func (s timedStore) MarkBounced(ctx context.Context, tenant string, id uint64, status, diag string) (bool, error) {
	t := time.Now()
	already, err := s.Store.MarkBounced(ctx, tenant, id, status, diag)
	s.m.StoreCommit(metrics.OpMarkBounced, time.Since(t))
	return already, err
}

func (s timedStore) Quarantine(ctx context.Context, q *store.Quarantined, raw *store.Raw, keep time.Duration) error {
	t := time.Now()
	err := s.Store.Quarantine(ctx, q, raw, keep)
	s.m.StoreCommit(metrics.OpQuarantine, time.Since(t))
	return err
}

// --- logging: attributes carried by the context ---

type logAttrsKey struct{}

// WithLogAttrs returns a context whose log lines (written with the
// *Context methods of a logger built by NewLogger or wrapped by Run) carry
// attrs, e.g. the SMTP session id.
func WithLogAttrs(ctx context.Context, attrs ...slog.Attr) context.Context {
	if prev, ok := ctx.Value(logAttrsKey{}).([]slog.Attr); ok {
		attrs = append(append([]slog.Attr(nil), prev...), attrs...)
	}
	return context.WithValue(ctx, logAttrsKey{}, attrs)
}

// ctxHandler adds the attributes of WithLogAttrs to every record.
type ctxHandler struct{ slog.Handler }

func (h ctxHandler) Handle(ctx context.Context, r slog.Record) error {
	if attrs, ok := ctx.Value(logAttrsKey{}).([]slog.Attr); ok {
		r = r.Clone()
		r.AddAttrs(attrs...)
	}
	return h.Handler.Handle(ctx, r)
}

func (h ctxHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return ctxHandler{h.Handler.WithAttrs(attrs)}
}

func (h ctxHandler) WithGroup(name string) slog.Handler { return ctxHandler{h.Handler.WithGroup(name)} }

// withContextAttrs makes log honour WithLogAttrs (once).
func withContextAttrs(log *slog.Logger) *slog.Logger {
	if _, ok := log.Handler().(ctxHandler); ok {
		return log
	}
	return slog.New(ctxHandler{log.Handler()})
}

// --- STARTTLS certificate: load, check, reload on SIGHUP ---

// certWarnBefore: a certificate closer than this to its expiry is logged
// loudly at start and at each reload (`syncrelay check` fails it too).
const certWarnBefore = 14 * 24 * time.Hour

// loadTLS loads smtp.tls_cert_file / tls_key_file (nil when not
// configured), records its expiry and warns about a certificate that is
// expired, about to expire or not valid for smtp.hostname: senders that
// verify certificates would refuse it.
func loadTLS(c *config.Config, m *metrics.Metrics, log *slog.Logger) (*tls.Config, error) {
	if !c.SMTP.TLSEnabled() {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.SMTP.TLSCertFile, c.SMTP.TLSKeyFile)
	if err != nil {
		return nil, fmt.Errorf("smtp tls: %w", err)
	}
	checkCert(c, &cert, m, log)
	return &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}, nil
}

func checkCert(c *config.Config, cert *tls.Certificate, m *metrics.Metrics, log *slog.Logger) {
	leaf := cert.Leaf
	if leaf == nil && len(cert.Certificate) > 0 {
		leaf, _ = x509.ParseCertificate(cert.Certificate[0])
	}
	if leaf == nil {
		return
	}
	m.TLSCertificate(leaf.NotAfter)
	now := time.Now()
	attrs := []any{"cert", c.SMTP.TLSCertFile, "not_after", leaf.NotAfter.UTC().Format(time.RFC3339)}
	switch {
	case now.After(leaf.NotAfter):
		log.Error("the SMTP TLS certificate has EXPIRED: renew it, then send SIGHUP to load it", attrs...)
	case leaf.NotAfter.Sub(now) < certWarnBefore:
		log.Warn("the SMTP TLS certificate expires in less than 14 days: renew it, then send SIGHUP to load it", attrs...)
	}
	if err := leaf.VerifyHostname(c.SMTP.Hostname); err != nil {
		log.Warn("the SMTP TLS certificate is not valid for smtp.hostname", append(attrs, "hostname", c.SMTP.Hostname)...)
	}
}

// reloadTLSOnHUP reloads the certificate on each signal on hup until ctx
// ends.
// Sessions already in progress keep theirs; new STARTTLS handshakes use
// the new one. A certificate that does not load is logged and the current
// one stays in use.
func reloadTLSOnHUP(ctx context.Context, hup <-chan os.Signal, c *config.Config, srv *smtpd.Server, enabled bool, m *metrics.Metrics, log *slog.Logger) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if !enabled {
			log.Warn("SIGHUP: no TLS certificate is configured (smtp.tls_cert_file); nothing to reload. Enabling STARTTLS needs a restart")
			continue
		}
		conf, err := loadTLS(c, m, log)
		if err != nil {
			m.TLSReload(false)
			log.Error("SIGHUP: the new TLS certificate could not be loaded; still using the previous one", "err", err)
			continue
		}
		srv.SetTLSConfig(conf)
		m.TLSReload(true)
		log.Info("SIGHUP: TLS certificate reloaded", "cert", c.SMTP.TLSCertFile)
	}
}
