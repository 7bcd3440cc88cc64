package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"time"

	"syncrelay/oauth"
	"syncrelay/store"
)

// GET /oauth/{provider}/start?tenant=T&user=U (bearer auth: the ATS calls
// it and forwards the browser to the Location) redirects to the provider's
// consent page. GET /oauth/{provider}/callback is where the provider sends
// the browser back; it carries no bearer token, its proof is the signed,
// single-use state.

func obValidProvider(p string) bool { return p == oauth.Google || p == oauth.Microsoft }

func (s *Server) oauthStart(w http.ResponseWriter, r *http.Request) {
	provider := r.PathValue("provider")
	if !obValidProvider(provider) {
		writeProblem(w, http.StatusNotFound, "not-found", "Not found", fmt.Sprintf("unknown provider %q: use google or microsoft", provider))
		return
	}
	m := s.o.Outbound.OAuth
	if m == nil || !m.Configured(provider) {
		writeProblem(w, http.StatusServiceUnavailable, "provider-not-configured", "Provider not configured",
			fmt.Sprintf("set [providers.%s] client_id and client_secret to connect %s mailboxes", provider, provider))
		return
	}
	q := r.URL.Query()
	tid, uid := q.Get("tenant"), q.Get("user")
	if tid == "" || uid == "" {
		invalid(w, "tenant and user query parameters are required")
		return
	}
	t, err := s.o.Store.Tenant(r.Context(), tid)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	if t.Provider != provider {
		writeProblem(w, http.StatusConflict, "wrong-provider", "Wrong provider",
			fmt.Sprintf("tenant %q sends through %s; use /oauth/%s/start", t.ID, t.Provider, t.Provider))
		return
	}
	u, err := s.o.Store.User(r.Context(), t.ID, uid)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	actor, ok := s.actingUser(w, r, t.ID, false)
	if !ok {
		return
	}
	if actor != nil && actor.ID != u.ID && !isAdmin(actor) {
		writeProblem(w, http.StatusForbidden, "forbidden", "Forbidden", "only the user or an admin can connect a user's mailbox")
		return
	}
	target, err := m.AuthCodeURL(r.Context(), provider, t.ID, u.ID)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	w.Header().Set("Location", target)
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusFound)
	_ = json.NewEncoder(w).Encode(map[string]string{"auth_url": target})
}

var obOAuthPage = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}} - syncrelay</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family: system-ui, sans-serif; max-width: 36em; margin: 4em auto; line-height: 1.5">
<h1>{{.Title}}</h1>
<p>{{.Message}}</p>
{{if .Hint}}<p>{{.Hint}}</p>{{end}}
</body></html>
`))

type obPage struct{ Title, Message, Hint string }

func obWritePage(w http.ResponseWriter, status int, d obPage) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	// The callback URL carries the code and state: never leak it onward.
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = obOAuthPage.Execute(w, d)
}

var obProviderNames = map[string]string{oauth.Google: "Google", oauth.Microsoft: "Microsoft"}

func (s *Server) oauthCallback(w http.ResponseWriter, r *http.Request) {
	provider := r.PathValue("provider")
	if !obValidProvider(provider) {
		obWritePage(w, http.StatusNotFound, obPage{Title: "Not found", Message: "There is no such provider."})
		return
	}
	m := s.o.Outbound.OAuth
	if m == nil || !m.Configured(provider) {
		obWritePage(w, http.StatusServiceUnavailable, obPage{Title: "Not available",
			Message: obProviderNames[provider] + " mailboxes cannot be connected to this syncrelay."})
		return
	}
	q := r.URL.Query()
	start := time.Now()
	if e := q.Get("error"); e != "" {
		tenant, user, err := m.Decline(r.Context(), provider, q.Get("state"))
		if err == nil {
			s.o.Log.InfoContext(r.Context(), "oauth: consent not given", "provider", provider, "tenant", tenant, "user", user, "error", obClip(e, 64))
		}
		msg := "The mailbox was not connected"
		if e == "access_denied" {
			msg += " because the permission was declined."
		} else {
			msg += fmt.Sprintf(" (%s says: %s).", obProviderNames[provider], obClip(obFirst(q.Get("error_description"), e), 200))
		}
		obWritePage(w, http.StatusBadRequest, obPage{Title: "Not connected", Message: msg,
			Hint: "Start again from the recruiting application to try again."})
		return
	}
	g, err := m.Complete(r.Context(), provider, q.Get("state"), q.Get("code"))
	var ce *oauth.ConsentError
	switch {
	case err == nil:
		s.o.Log.InfoContext(r.Context(), "oauth: callback completed", "provider", provider, "tenant", g.Tenant, "user", g.User,
			"elapsed", time.Since(start).Round(time.Millisecond))
		obWritePage(w, http.StatusOK, obPage{Title: "Mailbox connected",
			Message: fmt.Sprintf("Your %s mailbox is connected: the recruiting application can now send mail as you. "+
				"syncrelay can only send; it cannot read your mailbox.", obProviderNames[provider]),
			Hint: "You can close this window."})
	case errors.Is(err, oauth.ErrState):
		obWritePage(w, http.StatusBadRequest, obPage{Title: "Link expired",
			Message: "This connection link is invalid, has expired or was already used.",
			Hint:    "Start again from the recruiting application."})
	case errors.As(err, &ce):
		obWritePage(w, ce.Status, obPage{Title: "Not connected", Message: ce.Detail + ".",
			Hint: "Start again from the recruiting application."})
	case errors.Is(err, store.ErrNotFound):
		obWritePage(w, http.StatusBadRequest, obPage{Title: "Not connected", Message: "The user no longer exists."})
	default:
		s.o.Log.ErrorContext(r.Context(), "oauth: callback failed", "provider", provider, "err", err)
		obWritePage(w, http.StatusServiceUnavailable, obPage{Title: "Try again",
			Message: "syncrelay could not save the connection.", Hint: "Start again from the recruiting application in a moment."})
	}
}

func obClip(s string, n int) string {
	r := []rune(s)
	if len(r) > n {
		return string(r[:n]) + "…"
	}
	return s
}

func obFirst(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}

// --- grant status on users ---

// obGrants returns the tenant's grants by user id (empty without a store
// that keeps them).
func (s *Server) obGrants(r *http.Request, tenant string) (map[string]*store.Grant, error) {
	out := map[string]*store.Grant{}
	st := s.obStore()
	if st == nil {
		return out, nil
	}
	gs, err := st.Grants(r.Context(), tenant)
	for _, g := range gs {
		out[g.User] = g
	}
	return out, err
}

// obGrant returns one user's grant, or nil.
func (s *Server) obGrant(r *http.Request, tenant, user string) (*store.Grant, error) {
	st := s.obStore()
	if st == nil {
		return nil, nil
	}
	g, err := st.Grant(r.Context(), tenant, user)
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	return g, err
}

// obGrantOut is a user's grant as the API shows it.
func obGrantOut(g *store.Grant) grantJSON {
	if g == nil {
		return grantJSON{Status: store.GrantNone}
	}
	return grantJSON{Status: g.Status, Provider: g.Provider, ConnectedAt: g.Connected, BrokenAt: g.BrokenAt, Error: g.BrokenReason}
}
