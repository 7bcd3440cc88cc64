// Package daemon wires config, store, router, SMTP and HTTP into one
// running syncrelay process, and builds the same pipeline for replay.
package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"syncrelay/api"
	"syncrelay/config"
	"syncrelay/dnsres"
	"syncrelay/router"
	"syncrelay/smtpd"
	"syncrelay/store"
	"syncrelay/token"
	"syncrelay/trust"
)

// NewLogger builds the process logger from [log].
func NewLogger(c *config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.Log.SlogLevel()}
	if c.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// Pipeline is the inbound decision pipeline shared by serve and replay.
type Pipeline struct {
	Router *router.Router
	Keys   *token.Keyring
}

// NewPipeline builds the router over st exactly as the daemon does.
func NewPipeline(c *config.Config, st router.Store, keys *Keys, log *slog.Logger) (*Pipeline, error) {
	kr, err := token.New(keys.Token, c.SMTP.Hostname)
	if err != nil {
		return nil, fmt.Errorf("thread tokens: %w", err)
	}
	res, err := dnsres.New(dnsres.Options{
		Server:      c.DNS.Resolver,
		ZoneFile:    c.DNS.ZoneFile,
		Timeout:     c.DNS.Timeout.Duration,
		TTL:         c.DNS.CacheTTL.Duration,
		NegativeTTL: c.DNS.NegativeTTL.Duration,
	})
	if err != nil {
		return nil, fmt.Errorf("dns: %w", err)
	}
	r := &router.Router{
		Store:          st,
		Keys:           kr,
		Verifier:       &trust.Verifier{Resolver: res, MaxSignatures: c.SMTP.MaxDKIMSignatures},
		Hostname:       c.SMTP.Hostname,
		MaxHeaderBytes: c.SMTP.MaxHeaderBytes,
		MaxMIMEDepth:   c.SMTP.MaxMIMEDepth,
		Salt:           keys.LogSalt,
		Log:            log,
	}
	return &Pipeline{Router: r, Keys: kr}, nil
}

// Run serves SMTP and HTTP until ctx ends, then shuts down gracefully.
// stdout receives the one-time dev token notice.
func Run(ctx context.Context, c *config.Config, log *slog.Logger, stdout io.Writer) error {
	st, err := store.Open(c.Store.Dir, store.Options{LockTimeout: c.Store.OpenTimeout.Duration})
	if err != nil {
		return err
	}
	defer st.Close()
	if n, err := st.CollectOrphans(); err != nil {
		return fmt.Errorf("collect orphaned raw files: %w", err)
	} else if n > 0 {
		log.Info("collected orphaned raw files from an interrupted commit", "count", n)
	}

	keys, created, err := LoadKeys(c, true)
	if err != nil {
		return err
	}
	if created {
		log.Info("generated a new secret key; back it up with the data dir", "path", c.SecretKeyPath())
	}
	tokens, fresh, err := LoadTokens(c)
	if err != nil {
		return err
	}
	if fresh != "" {
		fmt.Fprintf(stdout, "syncrelay: generated a development API token (shown once, stored in %s):\n  %s\n", c.APITokenPath(), fresh)
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := newMetrics(reg)

	p, err := NewPipeline(c, st, keys, log)
	if err != nil {
		return err
	}
	if err := warnPolicyOff(ctx, st, log); err != nil {
		return err
	}

	var tlsConf *tls.Config
	if c.SMTP.TLSEnabled() {
		cert, err := tls.LoadX509KeyPair(c.SMTP.TLSCertFile, c.SMTP.TLSKeyFile)
		if err != nil {
			return fmt.Errorf("smtp tls: %w", err)
		}
		tlsConf = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	}
	spoolDir := c.RawDir() + "/spool"
	if err := os.MkdirAll(spoolDir, 0o700); err != nil {
		return err
	}
	smtpSrv, err := smtpd.New(smtpd.Options{
		Addr:                c.SMTP.Listen,
		Hostname:            c.SMTP.Hostname,
		TLS:                 tlsConf,
		MaxMessageBytes:     c.SMTP.MaxMessageBytes,
		MaxRecipients:       c.SMTP.MaxRecipients,
		MaxLineLength:       c.SMTP.MaxLineLength,
		CommandTimeout:      c.SMTP.CommandTimeout.Duration,
		DataTimeout:         c.SMTP.DataTimeout.Duration,
		MaxConnections:      c.SMTP.MaxConnections,
		MaxConnectionsPerIP: c.SMTP.MaxConnectionsPerIP,
		MaxHeaderBytes:      c.SMTP.MaxHeaderBytes,
		SpoolDir:            spoolDir,
		Logger:              log,
	}, st, &deliverer{router: p.Router, metrics: m, log: log})
	if err != nil {
		return err
	}

	apiSrv := api.New(api.Options{
		Store: st, Tokens: tokens, Hostname: c.SMTP.Hostname, Marker: p.Keys.Marker(),
		MaxBodyBytes: c.HTTP.MaxBodyBytes, Gatherer: reg, Log: log,
	})
	httpSrv := &http.Server{
		Handler:           apiSrv,
		ReadHeaderTimeout: c.HTTP.ReadHeaderTimeout.Duration,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	smtpLn, err := net.Listen("tcp", c.SMTP.Listen)
	if err != nil {
		return fmt.Errorf("smtp: listen %s: %w", c.SMTP.Listen, err)
	}
	httpLn, err := net.Listen("tcp", c.HTTP.Listen)
	if err != nil {
		smtpLn.Close()
		return fmt.Errorf("http: listen %s: %w", c.HTTP.Listen, err)
	}

	errc := make(chan error, 2)
	go func() { errc <- smtpSrv.Serve(smtpLn) }()
	go func() { errc <- httpSrv.Serve(httpLn) }()
	go expireQuarantine(ctx, st, log)
	apiSrv.SetReady(true)
	log.Info("syncrelay serving", "smtp", smtpLn.Addr().String(), "http", httpLn.Addr().String(),
		"hostname", c.SMTP.Hostname, "starttls", tlsConf != nil, "data", c.Store.Dir)

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-errc:
		runErr = fmt.Errorf("listener stopped: %w", err)
	}
	apiSrv.SetReady(false)
	log.Info("shutting down: no new connections, finishing sessions in flight", "timeout", c.SMTP.ShutdownTimeout.Duration.String())

	sctx, cancel := context.WithTimeout(context.Background(), c.SMTP.ShutdownTimeout.Duration)
	defer cancel()
	if err := smtpSrv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Warn("smtp shutdown", "err", err)
	}
	hctx, hcancel := context.WithTimeout(context.Background(), c.HTTP.ShutdownTimeout.Duration)
	defer hcancel()
	if err := httpSrv.Shutdown(hctx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	if err := st.Close(); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	log.Info("stopped")
	return runErr
}

func warnPolicyOff(ctx context.Context, st *store.Store, log *slog.Logger) error {
	ts, err := st.Tenants(ctx)
	if err != nil {
		return err
	}
	for _, t := range ts {
		if t.DKIMPolicy == store.PolicyOff {
			log.Warn("DKIM POLICY IS OFF for this tenant: unauthenticated mail can reach profiles; lab use only", "tenant", t.ID)
		}
	}
	return nil
}

func expireQuarantine(ctx context.Context, st *store.Store, log *slog.Logger) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := st.ExpireQuarantine(ctx); err != nil {
			log.Warn("quarantine expiry", "err", err)
		} else if n > 0 {
			log.Info("expired quarantined messages", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
