// Package pages serves syncrelay's hosted HTML pages (SPEC §7a) for people
// without a shell or an API token: the email admin page (admin.go) and, in
// files of their own, the Send For approval page. A page is reached through
// a signed, expiring link (package signedlink); the link is the
// authentication, so these routes take no bearer token.
//
// Every response carries a strict Content-Security-Policy (no inline
// script or style, no third-party origin), no-store caching and no
// referrer (the token is in the URL). Every POST is CSRF-checked with a
// double-submit token bound to the signed link (csrf.go). Errors are pages
// with one sentence and a 4xx/5xx status, never a stack trace or a Go error.
package pages

import (
	"context"
	"embed"
	"errors"
	"html/template"
	"io/fs"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"syncrelay/signedlink"
	"syncrelay/store"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// CSP is the Content-Security-Policy of every page response.
const CSP = "default-src 'none'; style-src 'self'; img-src 'self' data:; script-src 'self'; " +
	"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"

// Store is what the pages read and write.
type Store interface {
	Tenant(ctx context.Context, id string) (*store.Tenant, error)
	User(ctx context.Context, tenant, id string) (*store.User, error)
	Users(ctx context.Context, tenant string) ([]*store.User, error)
	Grants(ctx context.Context, tenant string) ([]*store.Grant, error)
	TenantActivity(ctx context.Context, tenant string, now, sentSince time.Time) (*store.TenantActivity, error)
	Counts(ctx context.Context, tenant string, since time.Time) (map[string]uint64, time.Time, error)
	QuarantinedMessages(ctx context.Context, tenant string) ([]*store.Quarantined, error)
	QuarantineActions(ctx context.Context, tenant string, limit int) ([]*store.QuarantineAction, error)
	PutKV(ctx context.Context, k string, v any, ttl time.Duration) error
	GetKV(ctx context.Context, k string, v any) error
}

// ProbeSender sends a message composed by the caller through a user's
// mailbox grant (*outbound.Service).
type ProbeSender interface {
	SendRaw(ctx context.Context, tenant, user string, raw []byte) error
}

// Options configure the pages.
type Options struct {
	Store Store
	// Links signs and verifies page links (key: daemon.Keys.Links).
	Links *signedlink.Signer
	// CSRFKey keys the CSRF tokens (any secret; the links key is fine:
	// the MAC's input is domain-separated).
	CSRFKey []byte
	// PublicURL is where people reach the HTTP listener, without a
	// trailing slash ("https://relay.example.com"); links start with it.
	PublicURL string
	// Hostname is smtp.hostname: the routing rules and the probe's
	// Message-ID use it.
	Hostname string
	// Probes sends Verify forwarding probes (nil: the action says that
	// sending is not configured).
	Probes ProbeSender
	// ProbeTimeout is how long a probe may take to come back before the
	// page says what is likely wrong (0: 10 minutes).
	ProbeTimeout time.Duration
	// ProbeRefresh is how often the admin page reloads itself while a
	// probe is out (0: 5 s), in whole seconds (a meta refresh's unit).
	ProbeRefresh time.Duration
	// Quarantine releases and deletes quarantined messages (nil: the
	// page lists them without actions).
	Quarantine QuarantineActions
	Log        *slog.Logger
	Now        func() time.Time
}

// Server serves the pages under /p/.
type Server struct {
	o    Options
	tmpl map[string]*template.Template
	mux  *http.ServeMux
}

// New builds the pages server.
func New(o Options) (*Server, error) {
	if o.Store == nil || o.Links == nil || len(o.CSRFKey) == 0 {
		return nil, errors.New("pages: store, links signer and CSRF key are required")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.ProbeTimeout <= 0 {
		o.ProbeTimeout = 10 * time.Minute
	}
	if o.ProbeRefresh < time.Second {
		o.ProbeRefresh = 5 * time.Second
	}
	o.PublicURL = strings.TrimRight(o.PublicURL, "/")
	s := &Server{o: o, tmpl: map[string]*template.Template{}, mux: http.NewServeMux()}
	pages, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	for _, p := range pages {
		name := strings.TrimSuffix(strings.TrimPrefix(p, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", p)
		if err != nil {
			return nil, err
		}
		s.tmpl[name] = t
	}
	static, _ := fs.Sub(staticFS, "static")
	s.mux.Handle("GET /p/static/", http.StripPrefix("/p/static/", http.FileServerFS(static)))
	s.adminRoutes()
	s.mux.HandleFunc("/p/", func(w http.ResponseWriter, r *http.Request) {
		s.errorPage(w, r, http.StatusNotFound, "There is no page here. Check that you copied the whole link.")
	})
	return s, nil
}

// ServeHTTP serves /p/... with the security headers every page carries.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", CSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	h.Set("Cross-Origin-Opener-Policy", "same-origin")
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	s.mux.ServeHTTP(w, r)
}

var funcs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return t.UTC().Format("2006-01-02 15:04 UTC")
	},
}

// render executes page name into a buffer first, so a template error is
// an error page and never half a page.
func (s *Server) render(w http.ResponseWriter, r *http.Request, status int, name string, data any) {
	t := s.tmpl[name]
	var b strings.Builder
	if t == nil {
		s.o.Log.ErrorContext(r.Context(), "pages: no template", "name", name)
		s.errorPage(w, r, http.StatusInternalServerError, "This page could not be shown. Try again later.")
		return
	}
	if err := t.Execute(&b, data); err != nil {
		s.o.Log.ErrorContext(r.Context(), "pages: render", "name", name, "err", err)
		s.errorPage(w, r, http.StatusInternalServerError, "This page could not be shown. Try again later.")
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(b.String()))
}

type errorData struct {
	Title   string
	Status  int
	Message string
}

// errorPage answers with a page holding one sentence.
func (s *Server) errorPage(w http.ResponseWriter, r *http.Request, status int, sentence string) {
	t := s.tmpl["error"]
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	d := errorData{Title: http.StatusText(status), Status: status, Message: sentence}
	if t == nil || t.Execute(w, d) != nil {
		_, _ = w.Write([]byte(template.HTMLEscapeString(sentence)))
	}
}

// linkError answers a link that did not verify (or was revoked, or used).
func (s *Server) linkError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, signedlink.ErrExpired):
		s.errorPage(w, r, http.StatusGone, "This link has expired. Ask for a new one in your ATS.")
	case errors.Is(err, errRevoked):
		s.errorPage(w, r, http.StatusGone, "This link was revoked. Ask for a new one in your ATS.")
	case errors.Is(err, store.ErrNotFound):
		s.errorPage(w, r, http.StatusNotFound, "The company this link was made for no longer exists.")
	case errors.Is(err, signedlink.ErrInvalid):
		s.errorPage(w, r, http.StatusForbidden, "This link is not valid. Check that you copied the whole link, or ask for a new one in your ATS.")
	default:
		s.o.Log.ErrorContext(r.Context(), "pages: link check", "err", err)
		s.errorPage(w, r, http.StatusServiceUnavailable, "The page is unavailable right now. Try again in a minute.")
	}
}
