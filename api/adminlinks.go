package api

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// Email admin page links (SPEC §7a): the ATS asks for a signed, expiring
// URL of the tenant's admin page and hands it to the company's email
// admin, who has no API token. Rotating revokes every link issued so far.

// AdminLinker mints and revokes admin page links (*pages.Server).
type AdminLinker interface {
	// MintAdmin returns the URL and its expiry; ttl 0 is the default
	// (the API checks the bounds first). store.ErrNotFound for an unknown
	// tenant.
	MintAdmin(ctx context.Context, tenant string, ttl time.Duration) (string, time.Time, error)
	RotateAdmin(ctx context.Context, tenant string) (uint64, error)
}

// Admin link lifetimes the API accepts (the pages server enforces the same).
const (
	AdminLinkMaxTTL = 7 * 24 * time.Hour
	AdminLinkMinTTL = time.Minute
)

func (s *Server) adminLinkRoutes() {
	s.handle("POST /v1/tenants/{t}/admin-links", s.auth(s.createAdminLink))
	s.handle("POST /v1/tenants/{t}/admin-links/rotate", s.auth(s.rotateAdminLinks))
}

type adminLinkReq struct {
	TTL string `json:"ttl"`
}

type adminLinkJSON struct {
	URL       string    `json:"url"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (s *Server) adminLinker(w http.ResponseWriter) (AdminLinker, bool) {
	if s.o.AdminLinks == nil {
		writeProblem(w, http.StatusNotImplemented, "not-implemented", "Not implemented", "hosted pages are not enabled on this server")
		return nil, false
	}
	return s.o.AdminLinks, true
}

func (s *Server) createAdminLink(w http.ResponseWriter, r *http.Request) {
	var req adminLinkReq
	p := prelude{tenant: true}
	if r.ContentLength != 0 {
		p.body = &req
	}
	rq, ok := s.begin(w, r, p)
	if !ok {
		return
	}
	al, ok := s.adminLinker(w)
	if !ok {
		return
	}
	var ttl time.Duration
	if req.TTL != "" {
		d, err := time.ParseDuration(req.TTL)
		if err != nil {
			invalid(w, fmt.Sprintf("ttl: %q is not a duration (e.g. \"24h\", \"90m\")", req.TTL))
			return
		}
		if d < AdminLinkMinTTL || d > AdminLinkMaxTTL {
			invalid(w, fmt.Sprintf("ttl: %s is out of bounds: between %s and %s (7 days)", req.TTL, formatDuration(AdminLinkMinTTL), formatDuration(AdminLinkMaxTTL)))
			return
		}
		ttl = d
	}
	u, exp, err := al.MintAdmin(r.Context(), rq.tenant.ID, ttl)
	if err != nil {
		s.storeError(w, r, err) // logs what is not a not-found
		return
	}
	writeJSON(w, http.StatusCreated, adminLinkJSON{URL: u, ExpiresAt: exp.UTC()})
}

func (s *Server) rotateAdminLinks(w http.ResponseWriter, r *http.Request) {
	rq, ok := s.begin(w, r, prelude{tenant: true})
	if !ok {
		return
	}
	al, ok := s.adminLinker(w)
	if !ok {
		return
	}
	gen, err := al.RotateAdmin(r.Context(), rq.tenant.ID)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"tenant": rq.tenant.ID, "generation": gen, "rotated_at": time.Now().UTC()})
}
