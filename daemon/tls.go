package daemon

// The STARTTLS certificate: load, check, reload on SIGHUP.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"time"

	"syncrelay/config"
	"syncrelay/metrics"
	"syncrelay/smtpd"
)

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
