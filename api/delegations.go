package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"syncrelay/delegation"
	"syncrelay/store"
)

// Send For delegations (SPEC §6, §7): the requester asks, only the grantor
// approves or declines, either of them (or an admin) revokes. Every change
// is kept in the delegation's history and raises delegation.requested or
// delegation.changed in the same transaction.

type obDelegationJSON struct {
	ID        string                  `json:"id"`
	Requester string                  `json:"requester"`
	Grantor   string                  `json:"grantor"`
	Status    string                  `json:"status"`
	CreatedAt time.Time               `json:"created_at"`
	UpdatedAt time.Time               `json:"updated_at"`
	History   []store.DelegationEvent `json:"history"`
	// ApprovalEmail is the approval email's state (tenants with
	// delegation_approval "email"): queued, sent or not_sent.
	ApprovalEmail *delegation.EmailOutcome `json:"approval_email,omitempty"`
}

func obDelegationOut(d *store.Delegation) obDelegationJSON {
	h := d.History
	if h == nil {
		h = []store.DelegationEvent{}
	}
	return obDelegationJSON{ID: store.DelegationRef(d.ID), Requester: d.Requester, Grantor: d.Grantor, Status: d.Status,
		CreatedAt: d.Created, UpdatedAt: d.Updated, History: h, ApprovalEmail: d.ApprovalEmail}
}

func (s *Server) obDelegationStore(w http.ResponseWriter) (OutboundStore, bool) {
	st := s.obStore()
	if st == nil {
		writeProblem(w, http.StatusServiceUnavailable, "unavailable", "Not available", "this store does not keep delegations")
		return nil, false
	}
	return st, true
}

func (s *Server) createDelegation(w http.ResponseWriter, r *http.Request) {
	st, ok := s.obDelegationStore(w)
	if !ok {
		return
	}
	var in struct {
		Requester string `json:"requester"`
		Grantor   string `json:"grantor"`
	}
	rq, ok := s.begin(w, r, prelude{tenant: true, actor: optionalActor, body: &in})
	if !ok {
		return
	}
	t, actor := rq.tenant, rq.actor
	if in.Requester == "" || in.Grantor == "" {
		invalid(w, "requester and grantor: both required (user ids)")
		return
	}
	if in.Requester == in.Grantor {
		writeProblem(w, http.StatusUnprocessableEntity, "self-delegation", "Cannot delegate to oneself",
			"requester and grantor are the same user")
		return
	}
	if actor != nil && actor.ID != in.Requester && !isAdmin(actor) {
		writeProblem(w, http.StatusForbidden, "forbidden", "Forbidden",
			"a Send For request is made by the requester (or an admin)")
		return
	}
	if _, err := s.o.Store.User(r.Context(), t.ID, in.Requester); err != nil {
		s.storeError(w, r, fmt.Errorf("requester: %w", err))
		return
	}
	grantor, err := s.o.Store.User(r.Context(), t.ID, in.Grantor)
	if err != nil {
		s.storeError(w, r, fmt.Errorf("grantor: %w", err))
		return
	}
	if store.RoleRank(grantor.Role) < store.RoleRank(store.RoleLimitedTeamMember) {
		writeProblem(w, http.StatusUnprocessableEntity, "grantor-role", "Grantor cannot be asked",
			fmt.Sprintf("Send For can only be requested from users with at least the limited_team_member role; %s has role %q", grantor.ID, grantor.Role))
		return
	}
	by := ""
	if actor != nil {
		by = actor.ID
	}
	d := &store.Delegation{Tenant: t.ID, Requester: in.Requester, Grantor: in.Grantor}
	if t.ApprovalBy() == store.ApprovalEmail {
		// The approval email is queued in the commit that creates the
		// request, so a crash before it is sent does not lose it.
		if s.o.Outbound.Approvals != nil {
			s.o.Outbound.Approvals.Queue(t, d)
		} else {
			d.ApprovalEmail = &delegation.EmailOutcome{Status: delegation.EmailNotSent, Via: d.Requester, To: d.Grantor,
				Error: "approval emails are not configured on this server (no link key or public URL)"}
			s.o.Log.WarnContext(r.Context(), "delegation: approval email not sent: not configured", "tenant", t.ID)
		}
	}
	if err := st.CreateDelegation(r.Context(), d, by); err != nil {
		s.storeError(w, r, err)
		return
	}
	out := obDelegationOut(d)
	if d.ApprovalEmail != nil && s.o.Outbound.Approvals != nil {
		// The request is committed (and its webhook queued) whatever
		// happens to the email: approval_email says whether it went, or
		// that it is queued for a retry (GET shows the outcome).
		out.ApprovalEmail = s.o.Outbound.Approvals.Requested(r.Context(), t, d)
	}
	writeJSON(w, http.StatusCreated, out)
}

// ApprovalMailer emails a Send For request's grantor a link to approve or
// decline (*delegation.Approvals): Queue before the request is created,
// Requested after.
type ApprovalMailer interface {
	Queue(t *store.Tenant, d *store.Delegation)
	Requested(ctx context.Context, t *store.Tenant, d *store.Delegation) *delegation.EmailOutcome
}

func (s *Server) listDelegations(w http.ResponseWriter, r *http.Request) {
	st, ok := s.obDelegationStore(w)
	if !ok {
		return
	}
	rq, ok := s.begin(w, r, prelude{tenant: true, actor: optionalActor})
	if !ok {
		return
	}
	t := rq.tenant
	q := r.URL.Query()
	ds, err := st.Delegations(r.Context(), t.ID)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	out := make([]obDelegationJSON, 0, len(ds))
	for _, d := range ds {
		if (q.Get("requester") != "" && d.Requester != q.Get("requester")) ||
			(q.Get("grantor") != "" && d.Grantor != q.Get("grantor")) ||
			(q.Get("status") != "" && d.Status != q.Get("status")) {
			continue
		}
		out = append(out, obDelegationOut(d))
	}
	writeJSON(w, http.StatusOK, map[string]any{"delegations": out})
}

func (s *Server) obDelegationID(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	id, ok := store.ParseDelegationRef(r.PathValue("id"))
	if !ok {
		writeProblem(w, http.StatusNotFound, "not-found", "Not found", fmt.Sprintf("delegation %q not found", r.PathValue("id")))
	}
	return id, ok
}

func (s *Server) getDelegation(w http.ResponseWriter, r *http.Request) {
	st, ok := s.obDelegationStore(w)
	if !ok {
		return
	}
	rq, ok := s.begin(w, r, prelude{tenant: true})
	if !ok {
		return
	}
	t := rq.tenant
	id, ok := s.obDelegationID(w, r)
	if !ok {
		return
	}
	d, err := st.Delegation(r.Context(), t.ID, id)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, obDelegationOut(d))
}

func (s *Server) approveDelegation(w http.ResponseWriter, r *http.Request) {
	s.obDecide(w, r, store.DelegationActive)
}

func (s *Server) declineDelegation(w http.ResponseWriter, r *http.Request) {
	s.obDecide(w, r, store.DelegationDeclined)
}

// obDecide approves or declines: only the grantor, named by X-Acting-User
// (the same rule the hosted approval page applies, package delegation).
func (s *Server) obDecide(w http.ResponseWriter, r *http.Request, to string) {
	st, ok := s.obDelegationStore(w)
	if !ok {
		return
	}
	rq, ok := s.begin(w, r, prelude{tenant: true, actor: requiredActor})
	if !ok {
		return
	}
	t, actor := rq.tenant, rq.actor
	id, ok := s.obDelegationID(w, r)
	if !ok {
		return
	}
	d, err := delegation.Decide(r.Context(), st, t.ID, id, actor.ID, to)
	s.obTransitionReply(w, r, d, err)
}

// revokeDelegation ends a delegation: the requester, the grantor or an
// admin (by X-Acting-User); without the header the ATS itself revokes it.
func (s *Server) revokeDelegation(w http.ResponseWriter, r *http.Request) {
	st, ok := s.obDelegationStore(w)
	if !ok {
		return
	}
	rq, ok := s.begin(w, r, prelude{tenant: true, actor: optionalActor})
	if !ok {
		return
	}
	t, actor := rq.tenant, rq.actor
	id, ok := s.obDelegationID(w, r)
	if !ok {
		return
	}
	by := ""
	if actor != nil {
		by = actor.ID
	}
	d, err := st.TransitionDelegation(r.Context(), t.ID, id, by, store.DelegationRevoked, func(d *store.Delegation) error {
		if actor != nil && actor.ID != d.Requester && actor.ID != d.Grantor && !isAdmin(actor) {
			return &delegation.NotAllowedError{Detail: "only the requester, the grantor or an admin can revoke a Send For delegation"}
		}
		return nil
	})
	s.obTransitionReply(w, r, d, err)
}

func (s *Server) obTransitionReply(w http.ResponseWriter, r *http.Request, d *store.Delegation, err error) {
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, obDelegationOut(d))
	case delegation.IsNotAllowed(err):
		writeProblem(w, http.StatusForbidden, "forbidden", "Forbidden", err.Error())
	case errors.Is(err, store.ErrTransition):
		writeProblem(w, http.StatusConflict, "delegation-state", "Not possible in this state", err.Error())
	default:
		s.storeError(w, r, err)
	}
}
