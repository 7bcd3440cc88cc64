package api

import (
	"fmt"
	"net/http"
	"net/mail"
	"regexp"
	"slices"
	"strings"
	"time"

	"syncrelay/setup"
	"syncrelay/store"
)

var (
	slugRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)
	idRE     = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	domainRE = regexp.MustCompile(`^(?i)[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+$`)
)

type tenantJSON struct {
	ID                 string       `json:"id"`
	Name               string       `json:"name"`
	Domains            []string     `json:"domains"`
	Provider           string       `json:"provider"`
	InboundAddress     string       `json:"inbound_address"`
	DKIMPolicy         string       `json:"dkim_policy"`
	TrustedForwarders  []string     `json:"trusted_forwarders"`
	SigningDomains     []string     `json:"signing_domains"`
	DelegationApproval string       `json:"delegation_approval"`
	Setup              *setup.Rules `json:"setup,omitempty"`
}

func (s *Server) tenantOut(t *store.Tenant, withSetup bool) tenantJSON {
	out := tenantJSON{ID: t.ID, Name: t.Name, Domains: nonNil(t.Domains), Provider: t.Provider,
		InboundAddress: t.InboundAddress, DKIMPolicy: t.DKIMPolicy, TrustedForwarders: nonNil(t.TrustedForwarders),
		SigningDomains: nonNil(t.SigningDomains), DelegationApproval: t.ApprovalBy()}
	if withSetup {
		// The same rules `syncrelay check -tenant` prints.
		out.Setup = setup.For(s.o.Hostname, t)
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func validDomains(ds []string) error {
	for _, d := range ds {
		if !domainRE.MatchString(d) {
			return fmt.Errorf("domains: %q is not a domain name", d)
		}
	}
	return nil
}

func lowerAll(ds []string) []string {
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = strings.ToLower(d)
	}
	return out
}

func (s *Server) createTenant(w http.ResponseWriter, r *http.Request) {
	var in struct {
		ID                 string   `json:"id"`
		Name               string   `json:"name"`
		Domains            []string `json:"domains"`
		Provider           string   `json:"provider"`
		DKIMPolicy         string   `json:"dkim_policy"`
		TrustedForwarders  []string `json:"trusted_forwarders"`
		SigningDomains     []string `json:"signing_domains"`
		DelegationApproval string   `json:"delegation_approval"`
	}
	if _, ok := s.begin(w, r, prelude{body: &in}); !ok {
		return
	}
	switch {
	case !validApproval(in.DelegationApproval, true):
		invalid(w, approvalHint)
		return
	case !slugRE.MatchString(in.ID):
		invalid(w, "id: must be 1-63 lowercase letters, digits or '-', starting with a letter or digit")
		return
	case strings.TrimSpace(in.Name) == "":
		invalid(w, "name: required")
		return
	case len(in.Domains) == 0:
		invalid(w, "domains: at least one domain is required")
		return
	case in.Provider != "google" && in.Provider != "microsoft":
		invalid(w, `provider: must be "google" or "microsoft"`)
		return
	}
	if err := validDomains(in.Domains); err != nil {
		invalid(w, err.Error())
		return
	}
	if err := validDomains(in.TrustedForwarders); err != nil {
		invalid(w, "trusted_forwarders: "+err.Error())
		return
	}
	if err := validDomains(in.SigningDomains); err != nil {
		invalid(w, "signing_domains: "+err.Error())
		return
	}
	if in.DKIMPolicy == "" {
		in.DKIMPolicy = store.PolicyRequire
	}
	if !validPolicy(in.DKIMPolicy) {
		invalid(w, `dkim_policy: must be "require", "quarantine" or "off"`)
		return
	}
	t := &store.Tenant{ID: in.ID, Name: in.Name, Domains: lowerAll(in.Domains), Provider: in.Provider,
		InboundAddress: newInboundAddress(in.ID, s.o.Hostname), DKIMPolicy: in.DKIMPolicy,
		TrustedForwarders: lowerAll(in.TrustedForwarders), SigningDomains: lowerAll(in.SigningDomains),
		DelegationApproval: in.DelegationApproval}
	if err := s.o.Store.CreateTenant(r.Context(), t); err != nil {
		s.storeError(w, r, err)
		return
	}
	if t.DKIMPolicy == store.PolicyOff {
		s.o.Log.Warn("tenant created with dkim_policy=off: forged mail can reach profiles (lab use only)", "tenant", t.ID)
	}
	writeJSON(w, http.StatusCreated, s.tenantOut(t, true))
}

const approvalHint = `delegation_approval: must be "webhook" (the ATS asks the grantor) or "email" (syncrelay also emails the grantor a link to approve or decline)`

// validApproval checks a delegation_approval value ("" only where absent
// means the default).
func validApproval(v string, emptyOK bool) bool {
	return (emptyOK && v == "") || v == store.ApprovalWebhook || v == store.ApprovalEmail
}

func validPolicy(p string) bool {
	return p == store.PolicyRequire || p == store.PolicyQuarantine || p == store.PolicyOff
}

func (s *Server) listTenants(w http.ResponseWriter, r *http.Request) {
	ts, err := s.o.Store.Tenants(r.Context())
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	out := make([]tenantJSON, 0, len(ts))
	for _, t := range ts {
		out = append(out, s.tenantOut(t, false))
	}
	writeJSON(w, http.StatusOK, map[string]any{"tenants": out})
}

func (s *Server) getTenant(w http.ResponseWriter, r *http.Request) {
	rq, ok := s.begin(w, r, prelude{tenant: true})
	if !ok {
		return
	}
	t := rq.tenant
	writeJSON(w, http.StatusOK, s.tenantOut(t, true))
}

func (s *Server) patchTenant(w http.ResponseWriter, r *http.Request) {
	var in struct {
		DKIMPolicy         *string   `json:"dkim_policy"`
		TrustedForwarders  *[]string `json:"trusted_forwarders"`
		Domains            *[]string `json:"domains"`
		SigningDomains     *[]string `json:"signing_domains"`
		DelegationApproval *string   `json:"delegation_approval"`
	}
	if _, ok := s.begin(w, r, prelude{body: &in}); !ok {
		return
	}
	if in.DelegationApproval != nil && !validApproval(*in.DelegationApproval, false) {
		invalid(w, approvalHint)
		return
	}
	if in.DKIMPolicy != nil && !validPolicy(*in.DKIMPolicy) {
		invalid(w, `dkim_policy: must be "require", "quarantine" or "off"`)
		return
	}
	if in.Domains != nil {
		if len(*in.Domains) == 0 {
			invalid(w, "domains: at least one domain is required")
			return
		}
		if err := validDomains(*in.Domains); err != nil {
			invalid(w, err.Error())
			return
		}
	}
	if in.TrustedForwarders != nil {
		if err := validDomains(*in.TrustedForwarders); err != nil {
			invalid(w, "trusted_forwarders: "+err.Error())
			return
		}
	}
	if in.SigningDomains != nil {
		if err := validDomains(*in.SigningDomains); err != nil {
			invalid(w, "signing_domains: "+err.Error())
			return
		}
	}
	t, err := s.o.Store.UpdateTenant(r.Context(), r.PathValue("t"), func(t *store.Tenant) error {
		if in.DKIMPolicy != nil {
			t.DKIMPolicy = *in.DKIMPolicy
		}
		if in.Domains != nil {
			t.Domains = lowerAll(*in.Domains)
		}
		if in.TrustedForwarders != nil {
			t.TrustedForwarders = lowerAll(*in.TrustedForwarders)
		}
		if in.SigningDomains != nil {
			t.SigningDomains = lowerAll(*in.SigningDomains)
		}
		if in.DelegationApproval != nil {
			t.DelegationApproval = *in.DelegationApproval
		}
		return nil
	})
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	if t.DKIMPolicy == store.PolicyOff {
		s.o.Log.Warn("tenant set to dkim_policy=off: forged mail can reach profiles (lab use only)", "tenant", t.ID)
	}
	writeJSON(w, http.StatusOK, s.tenantOut(t, false))
}

// --- users ---

type userJSON struct {
	ID    string    `json:"id"`
	Email string    `json:"email"`
	Name  string    `json:"name"`
	Role  string    `json:"role"`
	Grant grantJSON `json:"grant"`
}

type grantJSON struct {
	Status      string    `json:"status"` // none | active | broken
	Provider    string    `json:"provider,omitempty"`
	ConnectedAt time.Time `json:"connected_at,omitzero"`
	BrokenAt    time.Time `json:"broken_at,omitzero"`
	Error       string    `json:"error,omitempty"` // why a broken grant broke
}

// userOut shows a user with its grant (nil: never connected; see obGrantOut).
func userOut(u *store.User, g *store.Grant) userJSON {
	return userJSON{ID: u.ID, Email: u.Email, Name: u.Name, Role: u.Role, Grant: obGrantOut(g)}
}

func validEmail(e string) bool {
	a, err := mail.ParseAddress(e)
	return err == nil && a.Address == e && a.Name == ""
}

func (s *Server) createUser(w http.ResponseWriter, r *http.Request) {
	var in struct {
		ID    string `json:"id"`
		Email string `json:"email"`
		Name  string `json:"name"`
		Role  string `json:"role"`
	}
	if _, ok := s.begin(w, r, prelude{body: &in}); !ok {
		return
	}
	switch {
	case !idRE.MatchString(in.ID):
		invalid(w, "id: must be 1-128 letters, digits, '.', '_' or '-'")
		return
	case !validEmail(in.Email):
		invalid(w, fmt.Sprintf("email: %q is not a plain email address", in.Email))
		return
	case store.RoleRank(in.Role) == 0:
		invalid(w, "role: must be one of super_admin, admin, team_member, limited_team_member")
		return
	}
	u := &store.User{Tenant: r.PathValue("t"), ID: in.ID, Email: strings.ToLower(in.Email), Name: in.Name, Role: in.Role}
	if err := s.o.Store.CreateUser(r.Context(), u); err != nil {
		s.storeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, userOut(u, nil))
}

func (s *Server) listUsers(w http.ResponseWriter, r *http.Request) {
	t := r.PathValue("t")
	if _, ok := s.begin(w, r, prelude{tenant: true}); !ok {
		return
	}
	us, err := s.o.Store.Users(r.Context(), t)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	grants, err := s.obGrants(r, t)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	out := make([]userJSON, 0, len(us))
	for _, u := range us {
		out = append(out, userOut(u, grants[u.ID]))
	}
	writeJSON(w, http.StatusOK, map[string]any{"users": out})
}

func (s *Server) getUser(w http.ResponseWriter, r *http.Request) {
	u, err := s.o.Store.User(r.Context(), r.PathValue("t"), r.PathValue("u"))
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	g, err := s.obGrant(r, u.Tenant, u.ID)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, userOut(u, g))
}

// --- candidates ---

type candidateJSON struct {
	ID     string   `json:"id"`
	Name   string   `json:"name"`
	Emails []string `json:"emails"`
}

func (s *Server) createCandidate(w http.ResponseWriter, r *http.Request) {
	var in candidateJSON
	if _, ok := s.begin(w, r, prelude{body: &in}); !ok {
		return
	}
	if !idRE.MatchString(in.ID) {
		invalid(w, "id: must be 1-128 letters, digits, '.', '_' or '-'")
		return
	}
	if len(in.Emails) == 0 {
		invalid(w, "emails: at least one email address is required")
		return
	}
	for _, e := range in.Emails {
		if !validEmail(e) {
			invalid(w, fmt.Sprintf("emails: %q is not a plain email address", e))
			return
		}
	}
	emails := lowerAll(in.Emails)
	slices.Sort(emails)
	if len(slices.Compact(slices.Clone(emails))) != len(emails) {
		invalid(w, "emails: listed twice")
		return
	}
	c := &store.Candidate{Tenant: r.PathValue("t"), ID: in.ID, Name: in.Name, Emails: lowerAll(in.Emails)}
	if err := s.o.Store.CreateCandidate(r.Context(), c); err != nil {
		s.storeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, candidateJSON{ID: c.ID, Name: c.Name, Emails: c.Emails})
}

func (s *Server) listCandidates(w http.ResponseWriter, r *http.Request) {
	t := r.PathValue("t")
	if _, ok := s.begin(w, r, prelude{tenant: true}); !ok {
		return
	}
	cs, err := s.o.Store.Candidates(r.Context(), t)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	out := make([]candidateJSON, 0, len(cs))
	for _, c := range cs {
		out = append(out, candidateJSON{ID: c.ID, Name: c.Name, Emails: c.Emails})
	}
	writeJSON(w, http.StatusOK, map[string]any{"candidates": out})
}

func (s *Server) getCandidate(w http.ResponseWriter, r *http.Request) {
	c, err := s.o.Store.Candidate(r.Context(), r.PathValue("t"), r.PathValue("c"))
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, candidateJSON{ID: c.ID, Name: c.Name, Emails: c.Emails})
}

func (s *Server) syncCandidate(w http.ResponseWriter, r *http.Request) {
	if _, err := s.o.Store.Candidate(r.Context(), r.PathValue("t"), r.PathValue("c")); err != nil {
		s.storeError(w, r, err)
		return
	}
	writeProblem(w, http.StatusConflict, "limited-sync", "Mailbox import is not available",
		"syncrelay runs in limited sync: it holds only a send-only grant and never reads mailboxes, so older conversations "+
			"or ones the candidate started cannot be imported. Replies to threads started in the ATS sync automatically.")
}
