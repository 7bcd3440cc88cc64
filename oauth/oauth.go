// Package oauth runs syncrelay's send-only OAuth grants (SPEC §6): the
// consent flow (signed, single-use state with PKCE), encrypted storage of
// the tokens, and a token source that refreshes and persists them.
//
// Only send-only scopes are ever requested: Google
// https://www.googleapis.com/auth/gmail.send (offline, prompt=consent) and
// Microsoft "Mail.Send offline_access". Tokens are sealed with AES-256-GCM
// (fresh nonce per write, the grant's record id as associated data) before
// they reach the store and are never logged. A refresh that the provider
// answers with invalid_grant marks the grant broken and enqueues
// grant.broken; it is never retried.
package oauth

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/oauth2"

	"syncrelay/store"
)

// Providers.
const (
	Google    = "google"
	Microsoft = "microsoft"
)

// Scopes requested from each provider: send-only, nothing more.
var (
	GoogleScopes    = []string{"https://www.googleapis.com/auth/gmail.send"}
	MicrosoftScopes = []string{"Mail.Send", "offline_access"}
)

// Store is what the grant manager needs from the store.
type Store interface {
	CreateKV(ctx context.Context, k string, v any, ttl time.Duration) error
	TakeKV(ctx context.Context, k string, v any) error
	PutGrant(ctx context.Context, g *store.Grant) error
	Grant(ctx context.Context, tenant, user string) (*store.Grant, error)
	UpdateGrantToken(ctx context.Context, tenant, user string, version uint64, sealed []byte) (*store.Grant, error)
	MarkGrantBroken(ctx context.Context, tenant, user string, version uint64, reason string) (bool, error)
}

// ProviderConfig is one provider's OAuth client. A provider with an empty
// ClientID is not configured: its consent flow answers ErrNotConfigured.
type ProviderConfig struct {
	ClientID     string
	ClientSecret string
	RedirectURL  string
	AuthURL      string
	TokenURL     string
}

// Options configure a Manager.
type Options struct {
	Store Store
	// GrantKey is the 32-byte AES-256-GCM key sealing stored tokens.
	GrantKey []byte
	// StateKey is the HMAC key signing OAuth state parameters.
	StateKey  []byte
	Google    ProviderConfig
	Microsoft ProviderConfig
	// HTTPClient calls the token endpoints; a client with a 30 s timeout
	// when nil.
	HTTPClient *http.Client
	// StateTTL bounds the time between start and callback (default 10 min).
	StateTTL time.Duration
	// ExpiryDelta: an access token this close to its expiry is refreshed
	// before use (default 1 min).
	ExpiryDelta time.Duration
	Now         func() time.Time
	Log         *slog.Logger
	// Registerer receives the refresh metrics when set.
	Registerer prometheus.Registerer
}

// Errors callers branch on.
var (
	ErrUnknownProvider = errors.New("unknown provider")
	ErrNotConfigured   = errors.New("provider is not configured")
	ErrNoGrant         = errors.New("no grant")
)

// BrokenError is returned when the user's grant is broken: the provider
// refused its refresh token (revoked, expired, password changed ...). Only
// a new consent repairs it.
type BrokenError struct {
	Provider string
	Reason   string
}

func (e *BrokenError) Error() string {
	return fmt.Sprintf("the %s grant is broken (%s): the user must reconnect their mailbox", e.Provider, e.Reason)
}

// RefreshError is a failed refresh that did not break the grant: the token
// endpoint was unreachable or failing (Temporary), or refused the client.
type RefreshError struct {
	Provider  string
	Temporary bool
	Detail    string
}

func (e *RefreshError) Error() string {
	return fmt.Sprintf("%s token refresh failed: %s", e.Provider, e.Detail)
}

// ConsentError is a callback that cannot produce a usable grant: the user
// declined, the code was refused, or the consent lacks what sending needs.
// Status is the HTTP status to show (400, or 502 when the provider failed).
type ConsentError struct {
	Status int
	Detail string
}

func (e *ConsentError) Error() string { return e.Detail }

// Manager runs consent flows and hands out access tokens.
type Manager struct {
	store     Store
	seal      *sealer
	stateKey  []byte
	providers map[string]*oauth2.Config
	client    *http.Client
	stateTTL  time.Duration
	delta     time.Duration
	now       func() time.Time
	log       *slog.Logger
	refreshes *prometheus.CounterVec

	mu    sync.Mutex
	locks map[string]chan struct{}
}

// New builds a Manager.
func New(o Options) (*Manager, error) {
	if o.Store == nil {
		return nil, errors.New("oauth: no store")
	}
	s, err := newSealer(o.GrantKey)
	if err != nil {
		return nil, err
	}
	if len(o.StateKey) < 32 {
		return nil, errors.New("oauth: state key must be at least 32 bytes")
	}
	m := &Manager{store: o.Store, seal: s, stateKey: append([]byte(nil), o.StateKey...),
		providers: map[string]*oauth2.Config{}, client: o.HTTPClient, stateTTL: o.StateTTL,
		delta: o.ExpiryDelta, now: o.Now, log: o.Log, locks: map[string]chan struct{}{}}
	if m.client == nil {
		m.client = &http.Client{Timeout: 30 * time.Second}
	}
	if m.stateTTL <= 0 {
		m.stateTTL = 10 * time.Minute
	}
	if m.delta <= 0 {
		m.delta = time.Minute
	}
	if m.now == nil {
		m.now = time.Now
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	for name, pc := range map[string]ProviderConfig{Google: o.Google, Microsoft: o.Microsoft} {
		if pc.ClientID == "" {
			continue
		}
		scopes := GoogleScopes
		if name == Microsoft {
			scopes = MicrosoftScopes
		}
		m.providers[name] = &oauth2.Config{
			ClientID: pc.ClientID, ClientSecret: pc.ClientSecret, RedirectURL: pc.RedirectURL,
			Scopes: append([]string(nil), scopes...),
			// Explicit: no probing of the token endpoint with two styles.
			Endpoint: oauth2.Endpoint{AuthURL: pc.AuthURL, TokenURL: pc.TokenURL, AuthStyle: oauth2.AuthStyleInParams},
		}
	}
	m.refreshes = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "syncrelay_oauth_refreshes_total",
		Help: "Access token refreshes by provider and result (ok, invalid_grant, error).",
	}, []string{"provider", "result"})
	// Every series at 0 from start: a rate() alert on invalid_grant fires
	// on the first one after a restart.
	for _, p := range []string{Google, Microsoft} {
		for _, r := range []string{"ok", "invalid_grant", "error"} {
			m.refreshes.WithLabelValues(p, r)
		}
	}
	if o.Registerer != nil {
		if err := o.Registerer.Register(m.refreshes); err != nil {
			return nil, fmt.Errorf("oauth: metrics: %w", err)
		}
	}
	return m, nil
}

// Configured reports whether provider has an OAuth client configured.
func (m *Manager) Configured(provider string) bool { return m.providers[provider] != nil }

func (m *Manager) config(provider string) (*oauth2.Config, error) {
	if provider != Google && provider != Microsoft {
		return nil, fmt.Errorf("%w %q", ErrUnknownProvider, provider)
	}
	c := m.providers[provider]
	if c == nil {
		return nil, fmt.Errorf("%s: %w (set [providers.%s] client_id and client_secret)", provider, ErrNotConfigured, provider)
	}
	return c, nil
}

func (m *Manager) httpCtx(ctx context.Context, provider string) context.Context {
	c := m.client
	if provider == Microsoft {
		// The Microsoft identity platform wants the scope again on a
		// refresh (x/oauth2 does not send it): add it on the way out.
		c = &http.Client{Timeout: m.client.Timeout, Jar: m.client.Jar, CheckRedirect: m.client.CheckRedirect,
			Transport: &refreshScope{base: m.client.Transport, scope: strings.Join(MicrosoftScopes, " ")}}
	}
	return context.WithValue(ctx, oauth2.HTTPClient, c)
}

// refreshScope adds scope to refresh_token grant requests that lack one.
type refreshScope struct {
	base  http.RoundTripper
	scope string
}

func (t *refreshScope) RoundTrip(r *http.Request) (*http.Response, error) {
	base := t.base
	if base == nil {
		base = http.DefaultTransport
	}
	if r.Method != http.MethodPost || r.Body == nil || r.Header.Get("Content-Type") != "application/x-www-form-urlencoded" {
		return base.RoundTrip(r)
	}
	body, err := io.ReadAll(r.Body)
	r.Body.Close()
	if err != nil {
		return nil, err
	}
	if form, err := url.ParseQuery(string(body)); err == nil && form.Get("grant_type") == "refresh_token" && form.Get("scope") == "" {
		form.Set("scope", t.scope)
		body = []byte(form.Encode())
	}
	r2 := r.Clone(r.Context())
	r2.Body = io.NopCloser(bytes.NewReader(body))
	r2.ContentLength = int64(len(body))
	r2.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	return base.RoundTrip(r2)
}

// AuthCodeURL starts a consent flow for an existing user of tenant (the
// caller checks that) and returns the provider URL to redirect the browser
// to. The state it carries is signed, bound to provider, tenant and user,
// expires after StateTTL and can be used once; the PKCE verifier stays in
// the store.
func (m *Manager) AuthCodeURL(ctx context.Context, provider, tenant, user string) (string, error) {
	cfg, err := m.config(provider)
	if err != nil {
		return "", err
	}
	nb := make([]byte, 18)
	if _, err := rand.Read(nb); err != nil {
		return "", err
	}
	nonce := base64.RawURLEncoding.EncodeToString(nb)
	now := m.now()
	verifier := oauth2.GenerateVerifier()
	rec := stateRecord{Provider: provider, Tenant: tenant, User: user, Verifier: verifier, Created: now.UTC()}
	if err := m.store.CreateKV(ctx, stateKVKey(nonce), rec, m.stateTTL); err != nil {
		return "", fmt.Errorf("oauth: save state: %w", err)
	}
	state, err := signState(m.stateKey, statePayload{Provider: provider, Tenant: tenant, User: user,
		Nonce: nonce, Expires: now.Add(m.stateTTL).Unix()})
	if err != nil {
		return "", err
	}
	opts := []oauth2.AuthCodeOption{oauth2.S256ChallengeOption(verifier)}
	if provider == Google {
		opts = append(opts, oauth2.AccessTypeOffline, oauth2.ApprovalForce)
	}
	return cfg.AuthCodeURL(state, opts...), nil
}

// takeState verifies a callback's state and consumes it (single use).
func (m *Manager) takeState(ctx context.Context, provider, state string) (stateRecord, error) {
	var rec stateRecord
	p, err := verifyState(m.stateKey, state, m.now())
	if err != nil {
		return rec, err
	}
	if p.Provider != provider {
		return rec, ErrState
	}
	if err := m.store.TakeKV(ctx, stateKVKey(p.Nonce), &rec); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return rec, ErrState
		}
		return rec, fmt.Errorf("oauth: take state: %w", err)
	}
	if rec.Provider != p.Provider || rec.Tenant != p.Tenant || rec.User != p.User {
		return rec, ErrState
	}
	return rec, nil
}

// Decline consumes the state of a consent the user declined (the provider
// redirected back with error=...) and says whose it was.
func (m *Manager) Decline(ctx context.Context, provider, state string) (tenant, user string, err error) {
	rec, err := m.takeState(ctx, provider, state)
	return rec.Tenant, rec.User, err
}

// sealedToken is what is encrypted into Grant.Sealed.
type sealedToken struct {
	AccessToken  string    `json:"access_token"`
	TokenType    string    `json:"token_type,omitempty"`
	RefreshToken string    `json:"refresh_token"`
	Expiry       time.Time `json:"expiry,omitzero"`
}

func (t *sealedToken) oauth2() *oauth2.Token {
	return &oauth2.Token{AccessToken: t.AccessToken, TokenType: t.TokenType, RefreshToken: t.RefreshToken, Expiry: t.Expiry}
}

// stamp computes the expiry from expires_in on the Manager's clock, so
// every expiry decision uses one clock.
func (m *Manager) stamp(t *oauth2.Token) {
	if t.ExpiresIn > 0 {
		t.Expiry = m.now().Add(time.Duration(t.ExpiresIn) * time.Second)
	}
}

func (m *Manager) sealToken(tenant, user string, t *oauth2.Token) ([]byte, error) {
	plain, err := json.Marshal(sealedToken{AccessToken: t.AccessToken, TokenType: t.TokenType,
		RefreshToken: t.RefreshToken, Expiry: t.Expiry.UTC()})
	if err != nil {
		return nil, err
	}
	return m.seal.seal(plain, store.GrantRecordID(tenant, user))
}

// Complete finishes a consent flow: it verifies and consumes state,
// exchanges code (with the PKCE verifier) at the token endpoint, checks that
// the consent gives a refresh token and the send scope, and stores the grant
// encrypted. It returns the stored grant (without its token).
func (m *Manager) Complete(ctx context.Context, provider, state, code string) (*store.Grant, error) {
	cfg, err := m.config(provider)
	if err != nil {
		return nil, err
	}
	rec, err := m.takeState(ctx, provider, state)
	if err != nil {
		return nil, err
	}
	if code == "" {
		return nil, &ConsentError{Status: http.StatusBadRequest, Detail: "the provider sent no authorization code"}
	}
	tok, err := cfg.Exchange(m.httpCtx(ctx, provider), code, oauth2.VerifierOption(rec.Verifier))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.Response != nil && re.Response.StatusCode < 500 {
			return nil, &ConsentError{Status: http.StatusBadRequest, Detail: "the provider refused the authorization code: " + describe(re)}
		}
		m.log.WarnContext(ctx, "oauth: code exchange failed", "provider", provider, "tenant", rec.Tenant, "user", rec.User, "err", describe(err))
		return nil, &ConsentError{Status: http.StatusBadGateway, Detail: "the provider's token endpoint failed; start the connection again"}
	}
	m.stamp(tok)
	if tok.AccessToken == "" {
		return nil, &ConsentError{Status: http.StatusBadGateway, Detail: "the provider returned no access token"}
	}
	if tok.RefreshToken == "" {
		return nil, &ConsentError{Status: http.StatusBadRequest, Detail: "the provider returned no refresh token, so syncrelay could not send after an hour; " +
			"connect again and accept offline access"}
	}
	granted := grantedScopes(tok)
	if granted != nil && !hasSendScope(provider, granted) {
		return nil, &ConsentError{Status: http.StatusBadRequest, Detail: "the consent did not include permission to send mail; connect again and allow sending"}
	}
	sealed, err := m.sealToken(rec.Tenant, rec.User, tok)
	if err != nil {
		return nil, err
	}
	g := &store.Grant{Tenant: rec.Tenant, User: rec.User, Provider: provider, Scopes: granted, Sealed: sealed}
	if err := m.store.PutGrant(ctx, g); err != nil {
		return nil, fmt.Errorf("oauth: store grant: %w", err)
	}
	m.log.InfoContext(ctx, "oauth: grant connected", "provider", provider, "tenant", rec.Tenant, "user", rec.User)
	g.Sealed = nil
	return g, nil
}

// grantedScopes reads the token response's space-separated scope, or nil.
func grantedScopes(t *oauth2.Token) []string {
	s, _ := t.Extra("scope").(string)
	if strings.TrimSpace(s) == "" {
		return nil
	}
	return strings.Fields(s)
}

func hasSendScope(provider string, scopes []string) bool {
	for _, s := range scopes {
		switch provider {
		case Google:
			if s == GoogleScopes[0] {
				return true
			}
		case Microsoft:
			// Microsoft answers with the resource-qualified name.
			if strings.EqualFold(s, "Mail.Send") || strings.EqualFold(s, "https://graph.microsoft.com/Mail.Send") {
				return true
			}
		}
	}
	return false
}

// describe renders a token endpoint error without anything secret: the RFC
// 6749 error code and the first line of its description, bounded.
func describe(err error) string {
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) {
		msg := err.Error()
		if len(msg) > 200 {
			msg = msg[:200]
		}
		return msg
	}
	s := re.ErrorCode
	if s == "" && re.Response != nil {
		s = "HTTP " + re.Response.Status
	}
	if d := strings.TrimSpace(re.ErrorDescription); d != "" {
		if i := strings.IndexAny(d, "\r\n"); i >= 0 {
			d = d[:i]
		}
		if len(d) > 200 {
			d = d[:200]
		}
		s += ": " + d
	}
	return s
}

// load reads and decrypts a user's grant.
func (m *Manager) load(ctx context.Context, tenant, user string) (*store.Grant, *sealedToken, error) {
	g, err := m.store.Grant(ctx, tenant, user)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil, ErrNoGrant
	}
	if err != nil {
		return nil, nil, err
	}
	if g.Status == store.GrantBroken {
		return g, nil, &BrokenError{Provider: g.Provider, Reason: g.BrokenReason}
	}
	plain, err := m.seal.open(g.Sealed, store.GrantRecordID(tenant, user))
	if err != nil {
		return g, nil, err
	}
	var t sealedToken
	if err := json.Unmarshal(plain, &t); err != nil {
		return g, nil, errUnseal
	}
	return g, &t, nil
}

func (m *Manager) usable(t *sealedToken, rejected string) bool {
	if t.AccessToken == "" || (rejected != "" && t.AccessToken == rejected) {
		return false
	}
	return t.Expiry.IsZero() || m.now().Add(m.delta).Before(t.Expiry)
}

// lock serialises refreshes of one grant within this process (another node
// is handled by the store's version check).
func (m *Manager) lock(ctx context.Context, tenant, user string) (func(), error) {
	k := store.GrantRecordID(tenant, user)
	m.mu.Lock()
	ch := m.locks[k]
	if ch == nil {
		ch = make(chan struct{}, 1)
		m.locks[k] = ch
	}
	m.mu.Unlock()
	select {
	case ch <- struct{}{}:
		return func() { <-ch }, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Token returns a usable access token for the user's grant, refreshing it
// (and persisting the result) when it expires within ExpiryDelta. Errors:
// ErrNoGrant, *BrokenError, *RefreshError, or a store error.
func (m *Manager) Token(ctx context.Context, tenant, user string) (*oauth2.Token, error) {
	return m.token(ctx, tenant, user, "")
}

// Refresh forces a refresh after the provider refused access token rejected
// (HTTP 401), unless the stored token already differs from it because
// another caller refreshed meanwhile.
func (m *Manager) Refresh(ctx context.Context, tenant, user, rejected string) (*oauth2.Token, error) {
	if rejected == "" {
		rejected = "\x00" // never equal to a real token: always refresh
	}
	return m.token(ctx, tenant, user, rejected)
}

func (m *Manager) token(ctx context.Context, tenant, user, rejected string) (*oauth2.Token, error) {
	for range 3 {
		_, t, err := m.load(ctx, tenant, user)
		if err != nil {
			return nil, err
		}
		if m.usable(t, rejected) {
			return t.oauth2(), nil
		}
		unlock, err := m.lock(ctx, tenant, user)
		if err != nil {
			return nil, err
		}
		g, t, err := m.load(ctx, tenant, user) // someone may have refreshed while we waited
		if err != nil {
			unlock()
			return nil, err
		}
		if m.usable(t, rejected) {
			unlock()
			return t.oauth2(), nil
		}
		nt, err := m.refresh(ctx, g, t)
		unlock()
		if errors.Is(err, store.ErrStale) {
			continue // reconnected or refreshed elsewhere: read again
		}
		return nt, err
	}
	return nil, fmt.Errorf("oauth: grant of %q keeps changing during refresh: %w", user, store.ErrStale)
}

// refresh exchanges the refresh token through x/oauth2's refreshing token
// source and persists the result (x/oauth2 has no hook for that, so this is
// the wrapper): the new access token and, when the provider rotated it
// (Microsoft does), the new refresh token.
func (m *Manager) refresh(ctx context.Context, g *store.Grant, t *sealedToken) (*oauth2.Token, error) {
	cfg, err := m.config(g.Provider)
	if err != nil {
		return nil, &RefreshError{Provider: g.Provider, Detail: err.Error()}
	}
	if t.RefreshToken == "" {
		return nil, m.broken(ctx, g, "no refresh token stored")
	}
	nt, err := cfg.TokenSource(m.httpCtx(ctx, g.Provider), &oauth2.Token{RefreshToken: t.RefreshToken}).Token()
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.ErrorCode == "invalid_grant" {
			m.refreshes.WithLabelValues(g.Provider, "invalid_grant").Inc()
			return nil, m.broken(ctx, g, describe(re))
		}
		m.refreshes.WithLabelValues(g.Provider, "error").Inc()
		temporary := true
		if re != nil && re.Response != nil {
			code := re.Response.StatusCode
			temporary = code >= 500 || code == http.StatusTooManyRequests || code == http.StatusRequestTimeout
		}
		if ctx.Err() != nil {
			temporary = false
		}
		m.log.WarnContext(ctx, "oauth: token refresh failed", "provider", g.Provider, "tenant", g.Tenant, "user", g.User,
			"temporary", temporary, "err", describe(err))
		return nil, &RefreshError{Provider: g.Provider, Temporary: temporary, Detail: describe(err)}
	}
	m.refreshes.WithLabelValues(g.Provider, "ok").Inc()
	m.stamp(nt)
	if nt.RefreshToken == "" {
		nt.RefreshToken = t.RefreshToken
	}
	sealed, err := m.sealToken(g.Tenant, g.User, nt)
	if err != nil {
		return nil, err
	}
	if _, err := m.store.UpdateGrantToken(ctx, g.Tenant, g.User, g.Version, sealed); err != nil {
		if errors.Is(err, store.ErrStale) {
			return nil, err
		}
		// The access token is good for this send even if it could not be
		// saved; the stored refresh token still works for the next one
		// unless the provider rotated it, which the warning says.
		m.log.WarnContext(ctx, "oauth: could not persist the refreshed token", "provider", g.Provider,
			"tenant", g.Tenant, "user", g.User, "rotated", nt.RefreshToken != t.RefreshToken, "err", err)
	}
	return nt, nil
}

// broken marks the grant broken (raising grant.broken once) and returns the
// error the send reports.
func (m *Manager) broken(ctx context.Context, g *store.Grant, reason string) error {
	changed, err := m.store.MarkGrantBroken(ctx, g.Tenant, g.User, g.Version, reason)
	if err != nil {
		m.log.ErrorContext(ctx, "oauth: could not mark grant broken", "provider", g.Provider, "tenant", g.Tenant, "user", g.User, "err", err)
	} else if changed {
		m.log.WarnContext(ctx, "oauth: grant broken; the user must reconnect", "provider", g.Provider,
			"tenant", g.Tenant, "user", g.User, "reason", reason)
	}
	return &BrokenError{Provider: g.Provider, Reason: reason}
}

// TokenSource returns an oauth2.TokenSource for the user's grant that
// refreshes and persists through the Manager (bound to ctx).
func (m *Manager) TokenSource(ctx context.Context, tenant, user string) oauth2.TokenSource {
	return &source{ctx: ctx, m: m, tenant: tenant, user: user}
}

type source struct {
	ctx          context.Context
	m            *Manager
	tenant, user string
}

func (s *source) Token() (*oauth2.Token, error) { return s.m.Token(s.ctx, s.tenant, s.user) }
