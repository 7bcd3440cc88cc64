// Package daemon wires config, store, router, SMTP and HTTP into one
// running syncrelay process, and builds the same pipeline for replay.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"syncrelay/api"
	"syncrelay/config"
	"syncrelay/dnsres"
	"syncrelay/metrics"
	"syncrelay/oauth"
	"syncrelay/outbound"
	"syncrelay/router"
	"syncrelay/smtpd"
	"syncrelay/store"
	"syncrelay/store/bolt"
	"syncrelay/store/postgres"
	"syncrelay/token"
	"syncrelay/trust"
	"syncrelay/webhook"
)

// NewLogger builds the process logger from [log].
func NewLogger(c *config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.Log.SlogLevel()}
	if c.Log.Format == "json" {
		return withContextAttrs(slog.New(slog.NewJSONHandler(w, opts)))
	}
	return withContextAttrs(slog.New(slog.NewTextHandler(w, opts)))
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
	log = withContextAttrs(log)
	st, err := OpenStore(ctx, c, log)
	if err != nil {
		return err
	}
	defer st.Close()
	// The key first: a refusal (SPEC §12) must leave everything as it was.
	keys, created, err := OpenKeys(ctx, c, st)
	if err != nil {
		return err
	}
	if created {
		log.Info("generated a new secret key; back it up with the data dir", "path", c.SecretKeyPath())
	}
	if n, err := st.CollectOrphans(ctx); err != nil {
		return fmt.Errorf("collect orphaned raw files: %w", err)
	} else if n > 0 {
		log.Info("collected orphaned raw files from an interrupted commit", "count", n)
	}

	tokens, fresh, err := LoadTokens(c)
	if err != nil {
		return err
	}
	if fresh != "" {
		fmt.Fprintf(stdout, "syncrelay: generated a development API token (shown once, stored in %s):\n  %s\n", c.APITokenPath(), fresh)
	}

	reg := metrics.NewRegistry()
	m := metrics.New(reg)
	metrics.RegisterStoreCommits(reg, func() (int64, int64, time.Duration) {
		c := st.CommitStats()
		return c.Batches, c.Requests, c.Busy
	})
	m.KnownDecisions(Outcomes())
	m.KnownReplies(smtpd.ReplyCodes())

	p, err := NewPipeline(c, timedStore{st, m}, keys, log)
	if err != nil {
		return err
	}
	if err := warnPolicyOff(ctx, st, log); err != nil {
		return err
	}

	tlsConf, err := loadTLS(c, m, log)
	if err != nil {
		return err
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
		Observer:            m,
	}, st, &Deliverer{Router: p.Router, Metrics: m, Auth: st})
	if err != nil {
		return err
	}

	outb, err := newOutbound(c, st, keys, p.Keys, reg, log)
	if err != nil {
		return err
	}
	pg, err := newPages(c, st, keys, outb.Sender, p.Router, log)
	if err != nil {
		return err
	}
	p.Router.Probes = pg
	ap, err := newApprovals(c, st, keys, outb.Sender, log)
	if err != nil {
		return err
	}
	outb.Approvals = ap
	pg.EnableDelegationApproval(ap)
	apiSrv := api.New(api.Options{
		Store: st, Tokens: tokens, Hostname: c.SMTP.Hostname,
		MaxBodyBytes: c.HTTP.MaxBodyBytes, Gatherer: reg, Log: log, StaleAfter: c.Status.StaleAfter.Duration,
		Outbound: outb, Backup: backupSource(st), Registerer: reg, AdminLinks: pg,
	})
	unused := &unusedConns{}
	httpSrv := &http.Server{
		Handler:           withPages(apiSrv, pg),
		ReadHeaderTimeout: c.HTTP.ReadHeaderTimeout.Duration,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnState:         unused.track,
	}

	stopWebhooks, err := startWebhooks(c, st, reg, log)
	if err != nil {
		return err
	}
	defer stopWebhooks()
	stopApprovals := startApprovals(ap)
	defer stopApprovals()

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
	go storeHousekeeping(ctx, st, log)
	go outboundJanitor(ctx, st, log)
	// SIGHUP reloads the certificate; handled until Run returns, so a
	// SIGHUP while draining does not kill the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go reloadTLSOnHUP(ctx, hup, c, smtpSrv, tlsConf != nil, m, log)
	// Ready only now: the store is open (orphans collected) and both
	// listeners accept.
	apiSrv.SetReady(true)
	stopProbe := probeStore(ctx, st, apiSrv, log, c.Store.ProbeInterval)
	log.Info("syncrelay serving", "smtp", smtpLn.Addr().String(), "http", httpLn.Addr().String(),
		"hostname", c.SMTP.Hostname, "starttls", tlsConf != nil, "data", c.Store.Dir)

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-errc:
		runErr = fmt.Errorf("listener stopped: %w", err)
	}
	stopProbe()
	apiSrv.SetReady(false)
	log.Info("shutting down: no new connections, finishing sessions in flight", "timeout", c.SMTP.ShutdownTimeout.Duration.String())

	sctx, cancel := context.WithTimeout(context.Background(), c.SMTP.ShutdownTimeout.Duration)
	defer cancel()
	if err := smtpSrv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		log.Warn("smtp shutdown", "err", err)
	}
	hctx, hcancel := context.WithTimeout(context.Background(), c.HTTP.ShutdownTimeout.Duration)
	defer hcancel()
	stopUnused := unused.closeAfter(unusedGrace)
	defer stopUnused()
	if err := httpSrv.Shutdown(hctx); err != nil {
		// Requests still running (a long backup download): cut them so
		// the store can close within the bound.
		log.Warn("http shutdown: closing requests still in flight", "err", err)
		httpSrv.Close()
	}
	stopWebhooks() // finishes deliveries in flight and records their outcome
	stopApprovals()
	if err := st.Close(); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	log.Info("stopped")
	return runErr
}

// Store is what the daemon runs on: the store contract, which both
// backends provide.
type Store = store.Store

var (
	_ Store = (*bolt.Store)(nil)
	_ Store = (*postgres.Store)(nil)
)

// OpenStore opens the backend [store] names: the bbolt database in
// store.dir, or the PostgreSQL database at store.dsn (migrated forward).
func OpenStore(ctx context.Context, c *config.Config, log *slog.Logger) (Store, error) {
	if c.Store.Backend == config.BackendPostgres {
		octx, cancel := context.WithTimeout(ctx, max(c.Store.OpenTimeout.Duration, 10*time.Second))
		defer cancel()
		st, err := postgres.Open(octx, c.Store.DSN, postgres.Options{Log: log})
		if err != nil {
			return nil, fmt.Errorf("store: %w", err)
		}
		return st, nil
	}
	st, err := bolt.Open(c.Store.Dir, bolt.Options{LockTimeout: c.Store.OpenTimeout.Duration, Log: log})
	if err != nil {
		return nil, err
	}
	return st, nil
}

// backupSource is the API's backup stream: the bbolt store's own; none
// for PostgreSQL, whose backup is pg_dump or PITR.
func backupSource(st Store) api.BackupSource {
	if b, ok := st.(*bolt.Store); ok {
		return b
	}
	return nil
}

// pinger is a store whose database can become unreachable while the
// process runs (PostgreSQL).
type pinger interface {
	Ping(ctx context.Context) error
}

// probeStore keeps /readyz in step with the database of a shared store:
// 503 while it does not answer (mail then gets 451 and is retried), 200
// again once it does. The returned function stops the probe and waits.
func probeStore(ctx context.Context, st Store, srv *api.Server, log *slog.Logger, every time.Duration) (stop func()) {
	p, ok := st.(pinger)
	if !ok {
		return func() {}
	}
	if every <= 0 {
		every = storeProbeInterval
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		up := true
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			pctx, pcancel := context.WithTimeout(ctx, every)
			err := p.Ping(pctx)
			pcancel()
			if ctx.Err() != nil {
				return
			}
			if (err == nil) != up {
				up = err == nil
				if up {
					log.Info("store reachable again: ready")
				} else {
					log.Warn("store unreachable: not ready", "err", err)
				}
			}
			srv.SetReady(up)
		}
	}()
	return func() { cancel(); <-done }
}

// storeProbeInterval is how often probeStore asks the database, unless
// store.ProbeInterval says otherwise.
const storeProbeInterval = time.Second

func warnPolicyOff(ctx context.Context, st Store, log *slog.Logger) error {
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

// storeHousekeeping expires quarantined messages and then compacts the
// store every hour, so the bytes of removed and expired messages leave the
// disk within a couple of hours (SPEC §11: within 24).
func storeHousekeeping(ctx context.Context, st Store, log *slog.Logger) {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		if n, err := st.ExpireQuarantine(ctx); err != nil {
			log.Warn("quarantine expiry", "err", err)
		} else if n > 0 {
			log.Info("expired quarantined messages", "count", n)
		}
		if cs, err := st.Compact(ctx); err != nil && ctx.Err() == nil {
			log.Warn("store compaction", "err", err)
		} else if cs.Segments > 0 {
			log.Info("store compacted", "segments", cs.Segments, "moved", cs.Moved, "freed_bytes", cs.FreedBytes)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// startWebhooks runs the webhook deliverer over the store's outbox when
// webhooks.url is set; the returned function stops it and waits for the
// deliveries in flight. With no URL, events stay in the durable outbox
// (and in the outbox metrics) until one is configured.
func startWebhooks(c *config.Config, st Store, reg prometheus.Registerer, log *slog.Logger) (stop func(), err error) {
	if c.Webhooks.URL == "" {
		reg.MustRegister(webhook.NewOutboxCollector(st, log, time.Now))
		log.Info("webhooks disabled (webhooks.url is empty): events are kept in the outbox until a URL is configured")
		return func() {}, nil
	}
	d, err := webhook.New(st, webhook.Options{
		URL: c.Webhooks.URL, Secret: c.Webhooks.Secret, MaxAttempts: c.Webhooks.MaxAttempts,
		Timeout: c.Webhooks.Timeout.Duration, Registerer: reg, Log: log,
	})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { d.Run(ctx); close(done) }()
	var once sync.Once
	return func() { once.Do(func() { cancel(); <-done }) }, nil
}

// newOutbound builds the OAuth grant manager and the sender from
// [providers.*] and [outbound] (issue 4). A provider without client_id
// cannot be connected; sending through it is refused until it is.
func newOutbound(c *config.Config, st Store, keys *Keys, kr *token.Keyring, reg prometheus.Registerer, log *slog.Logger) (api.OutboundOptions, error) {
	pc := func(p config.Provider) oauth.ProviderConfig {
		return oauth.ProviderConfig{ClientID: p.ClientID, ClientSecret: p.ClientSecret, RedirectURL: p.RedirectURL,
			AuthURL: p.AuthURL, TokenURL: p.TokenURL}
	}
	client := &http.Client{Timeout: 30 * time.Second}
	om, err := oauth.New(oauth.Options{Store: st, GrantKey: keys.Grants, StateKey: keys.State,
		Google: pc(c.Providers.Google), Microsoft: pc(c.Providers.Microsoft), HTTPClient: client, Log: log, Registerer: reg})
	if err != nil {
		return api.OutboundOptions{}, err
	}
	o := c.Outbound
	svc, err := outbound.New(outbound.Options{Store: st, Tokens: om, Keys: kr,
		Providers: map[string]outbound.Provider{
			oauth.Google:    &outbound.Gmail{BaseURL: c.Providers.Google.APIBase, Client: client},
			oauth.Microsoft: &outbound.Graph{BaseURL: c.Providers.Microsoft.APIBase, Client: client},
		},
		Category: o.Category, MaxRetries: o.MaxRetries, RetryBaseDelay: o.RetryBaseDelay.Duration,
		MaxRetryDelay: o.MaxRetryDelay.Duration, SenderRatePerMinute: o.SenderRatePerMinute, Log: log, Registerer: reg})
	if err != nil {
		return api.OutboundOptions{}, err
	}
	for _, p := range []string{oauth.Google, oauth.Microsoft} {
		if !om.Configured(p) {
			log.Info("outbound: provider not configured; its users cannot connect mailboxes", "provider", p)
		}
	}
	return api.OutboundOptions{Store: st, Sender: svc, OAuth: om}, nil
}

// outboundJanitor removes expired OAuth states, idempotency keys and rate
// slots, and fails sends left "sending" by a process that stopped during the
// provider call (no send lasts an hour: retries are bounded by [outbound]).
func outboundJanitor(ctx context.Context, st Store, log *slog.Logger) {
	t := time.NewTicker(10 * time.Minute)
	defer t.Stop()
	for {
		if n, err := st.PurgeExpiredKV(ctx); err != nil {
			log.Warn("outbound: purge expired state", "err", err)
		} else if n > 0 {
			log.Debug("outbound: purged expired state", "count", n)
		}
		const why = "interrupted: syncrelay stopped during the provider call; the message may or may not have been sent"
		if n, err := st.FailStaleSends(ctx, time.Now().Add(-time.Hour), why); err != nil {
			log.Warn("outbound: fail interrupted sends", "err", err)
		} else if n > 0 {
			log.Warn("outbound: marked interrupted sends failed", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
