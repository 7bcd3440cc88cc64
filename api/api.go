// Package api serves syncrelay's HTTP API: the ATS's JSON endpoints,
// health checks and metrics.
package api

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"syncrelay/mailtext"
	"syncrelay/store"
)

// Store is what the API needs from the store.
type Store interface {
	CreateTenant(ctx context.Context, t *store.Tenant) error
	UpdateTenant(ctx context.Context, id string, fn func(*store.Tenant) error) (*store.Tenant, error)
	Tenant(ctx context.Context, id string) (*store.Tenant, error)
	Tenants(ctx context.Context) ([]*store.Tenant, error)
	CreateUser(ctx context.Context, u *store.User) error
	User(ctx context.Context, tenant, id string) (*store.User, error)
	Users(ctx context.Context, tenant string) ([]*store.User, error)
	CreateCandidate(ctx context.Context, c *store.Candidate) error
	Candidate(ctx context.Context, tenant, id string) (*store.Candidate, error)
	Candidates(ctx context.Context, tenant string) ([]*store.Candidate, error)
	TimelineStore       // timeline.go, threads.go
	OutboxStore         // webhooks.go
	statusStore         // status.go
	keyFingerprintStore // admin.go
	OutboundStore       // messages.go, delegations.go
}

// Options configure the API server.
type Options struct {
	Store Store
	// Tokens are the accepted bearer tokens.
	Tokens []string
	// Hostname is the relay hostname: inbound addresses live under it.
	Hostname     string
	MaxBodyBytes int64
	Gatherer     prometheus.Gatherer
	Log          *slog.Logger
	// TextCacheBytes bounds the cache of text extracted from raw messages
	// (0: 32 MiB; negative: no cache).
	TextCacheBytes int
	// Outbound wires sending, OAuth consent and delegations (messages.go).
	Outbound OutboundOptions
	// StaleAfter is status.stale_after, see forwardingVerdict (0: 24h).
	StaleAfter time.Duration
	// Backup streams backups (GET /v1/admin/backup); nil where the
	// backend's backup is the database's own (PostgreSQL: pg_dump, PITR).
	Backup BackupSource
	// Registerer gets the API's own metrics (syncrelay_http_*); nil: not
	// registered (they are still kept).
	Registerer prometheus.Registerer
	// AdminLinks mints email admin page links (adminlinks.go); nil: 501.
	AdminLinks AdminLinker
}

// Server is the HTTP API.
type Server struct {
	o      Options
	tokens [][32]byte
	ready  atomic.Bool
	mux    *http.ServeMux
	// patterns lists every route registered through handle, for Routes
	// and the OpenAPI consistency test.
	patterns []string
	texts    *mailtext.Cache
	metrics  *httpMetrics
}

// New builds the API server. It reports not ready until SetReady(true).
func New(o Options) *Server {
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 10 << 20
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Gatherer == nil {
		o.Gatherer = prometheus.NewRegistry()
	}
	s := &Server{o: o, mux: http.NewServeMux()}
	for _, t := range o.Tokens {
		s.tokens = append(s.tokens, sha256.Sum256([]byte(t)))
	}
	s.texts = newTextCache(o.TextCacheBytes)
	s.metrics = newHTTPMetrics(o.Registerer)
	s.routes()
	return s
}

// SetReady flips /readyz.
func (s *Server) SetReady(v bool) { s.ready.Store(v) }

// Handle registers an extra route (used by packages that own their endpoints).
func (s *Server) Handle(pattern string, h http.Handler) { s.handle(pattern, h) }

// handle registers a route and records its pattern. Every route goes
// through here so that Routes (and the OpenAPI test) sees all of them.
func (s *Server) handle(pattern string, h http.Handler) {
	s.patterns = append(s.patterns, pattern)
	s.mux.Handle(pattern, h)
}

// Routes lists the registered route patterns ("METHOD /path/{param}").
func (s *Server) Routes() []string { return slices.Clone(s.patterns) }

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.metrics.serve(s.mux, w, r) }

func (s *Server) routes() {
	s.handle("GET /healthz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}))
	s.handle("GET /readyz", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.ready.Load() {
			writeProblem(w, http.StatusServiceUnavailable, "not-ready", "Not ready", "the store or listeners are not up yet")
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
	}))
	s.handle("GET /metrics", promhttp.HandlerFor(s.o.Gatherer, promhttp.HandlerOpts{}))

	s.handle("POST /v1/tenants", s.auth(s.createTenant))
	s.handle("GET /v1/tenants", s.auth(s.listTenants))
	s.handle("GET /v1/tenants/{t}", s.auth(s.getTenant))
	s.handle("PATCH /v1/tenants/{t}", s.auth(s.patchTenant))
	s.handle("POST /v1/tenants/{t}/users", s.auth(s.createUser))
	s.handle("GET /v1/tenants/{t}/users", s.auth(s.listUsers))
	s.handle("GET /v1/tenants/{t}/users/{u}", s.auth(s.getUser))
	s.handle("POST /v1/tenants/{t}/candidates", s.auth(s.createCandidate))
	s.handle("GET /v1/tenants/{t}/candidates", s.auth(s.listCandidates))
	s.handle("GET /v1/tenants/{t}/candidates/{c}", s.auth(s.getCandidate))
	s.handle("POST /v1/tenants/{t}/candidates/{c}/sync", s.auth(s.syncCandidate))
	s.timelineRoutes() // timeline.go, threads.go
	s.webhookRoutes()  // webhooks.go
	s.openAPIRoutes()  // openapi.go
	s.outboundRoutes() // messages.go, oauth.go, delegations.go
	s.opsRoutes()      // status.go, admin.go
	s.adminLinkRoutes()
	s.mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeProblem(w, http.StatusNotFound, "not-found", "Not found", "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
}

// auth wraps a handler with bearer-token authentication and a body limit.
func (s *Server) auth(h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || !s.validToken(strings.TrimSpace(tok)) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="syncrelay"`)
			writeProblem(w, http.StatusUnauthorized, "unauthorized", "Unauthorized", "send Authorization: Bearer <token> with a token from api.tokens_file")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, s.o.MaxBodyBytes)
		h(w, r)
	})
}

func (s *Server) validToken(tok string) bool {
	if tok == "" {
		return false
	}
	sum := sha256.Sum256([]byte(tok))
	found := 0
	for _, t := range s.tokens {
		found |= subtle.ConstantTimeCompare(sum[:], t[:])
	}
	return found == 1
}

// --- JSON and problems (RFC 9457) ---

type problem struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

func writeProblem(w http.ResponseWriter, status int, typ, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(problem{Type: "https://syncrelay.dev/problems/" + typ, Title: title, Status: status, Detail: detail})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// decode reads a JSON body strictly: unknown fields, trailing data and
// oversized bodies are 400/413 problems. It reports whether to go on.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	if err == nil && dec.Decode(&struct{}{}) != io.EOF {
		err = errors.New("unexpected data after the JSON object")
	}
	if err == nil {
		return true
	}
	var tooBig *http.MaxBytesError
	switch {
	case errors.As(err, &tooBig):
		writeProblem(w, http.StatusRequestEntityTooLarge, "too-large", "Request body too large", fmt.Sprintf("the limit is %d bytes", tooBig.Limit))
	case errors.Is(err, io.EOF):
		writeProblem(w, http.StatusBadRequest, "invalid-json", "Invalid JSON", "the request body is empty")
	default:
		writeProblem(w, http.StatusBadRequest, "invalid-json", "Invalid JSON", err.Error())
	}
	return false
}

// storeError maps a store error to a problem.
func (s *Server) storeError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, store.ErrNotFound):
		writeProblem(w, http.StatusNotFound, "not-found", "Not found", err.Error())
	case errors.Is(err, store.ErrExists):
		writeProblem(w, http.StatusConflict, "exists", "Already exists", err.Error())
	default:
		s.o.Log.ErrorContext(r.Context(), "api: store error", "path", r.URL.Path, "err", err)
		writeProblem(w, http.StatusServiceUnavailable, "unavailable", "Temporarily unavailable", "the store could not complete the request; retry later")
	}
}

func invalid(w http.ResponseWriter, detail string) {
	writeProblem(w, http.StatusBadRequest, "invalid", "Invalid request", detail)
}

// newInboundAddress makes a tenant's secret inbound address:
// <id>-<16 base32 chars = 80 random bits>@<hostname>.
func newInboundAddress(id, hostname string) string {
	b := make([]byte, 10)
	_, _ = rand.Read(b)
	r := strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
	return id + "-" + r + "@" + strings.ToLower(hostname)
}

// actingUser resolves X-Acting-User for tenant t. When the header is
// absent it answers 400 if required, else returns (nil, true). A header that
// names no user of the tenant is 403.
func (s *Server) actingUser(w http.ResponseWriter, r *http.Request, t string, required bool) (*store.User, bool) {
	id := strings.TrimSpace(r.Header.Get("X-Acting-User"))
	if id == "" {
		if required {
			writeProblem(w, http.StatusBadRequest, "acting-user-required", "X-Acting-User required",
				"name the person acting with the X-Acting-User header (a user id of the tenant)")
			return nil, false
		}
		return nil, true
	}
	u, err := s.o.Store.User(r.Context(), t, id)
	if errors.Is(err, store.ErrNotFound) {
		writeProblem(w, http.StatusForbidden, "unknown-acting-user", "Unknown acting user",
			fmt.Sprintf("X-Acting-User %q is not a user of tenant %q", id, t))
		return nil, false
	}
	if err != nil {
		s.storeError(w, r, err)
		return nil, false
	}
	return u, true
}

// isAdmin reports whether u is an admin or super admin (nil: no).
func isAdmin(u *store.User) bool {
	return u != nil && store.RoleRank(u.Role) >= store.RoleRank(store.RoleAdmin)
}
