package pages

import (
	"context"
	"errors"
	"net/http"
	"time"

	"syncrelay/delegation"
	"syncrelay/store"
)

// The Send For approval page (SPEC §7a): GET /p/delegation?t=TOKEN, the
// link emailed to a grantor (package delegation). It shows who asks to
// send as whom (those two users' names and addresses, nothing else) and,
// while the request waits, Approve and Decline buttons. They POST (with
// the CSRF token) to the same URL, which decides through the same rule and
// transition as the API (grantor acting, delegation.changed raised). The
// link decides once; viewing it never uses it (mail scanners fetch links).
// A used, decided, revoked or expired link shows that instead of buttons.

// DelegationLinks open and act on approval links (*delegation.Approvals).
type DelegationLinks interface {
	Open(ctx context.Context, tok string) (*delegation.Link, error)
	Act(ctx context.Context, tok, action string) (*delegation.Link, error)
}

// EnableDelegationApproval serves the approval page with links checked and
// acted on by dl. Without it /p/delegation is "no page here". Call it
// before serving.
func (s *Server) EnableDelegationApproval(dl DelegationLinks) {
	s.mux.HandleFunc("GET /p/delegation", func(w http.ResponseWriter, r *http.Request) { s.delegationPage(w, r, dl) })
	s.mux.HandleFunc("POST /p/delegation", func(w http.ResponseWriter, r *http.Request) { s.delegationAct(w, r, dl) })
}

type personView struct{ Name, Email string }

type delegationData struct {
	Title     string
	Token     string
	CSRF      string
	Ref       string
	Requester personView
	Grantor   personView
	// State is requested | active | declined | revoked; StateText says it
	// in words.
	State     string
	StateText string
	Pending   bool
	Expires   time.Time
	// Used says how and when the link was used, if it was.
	Used *delegation.Use
	// Done is the sentence after a successful decision; Problem why
	// nothing was done.
	Done    string
	Problem string
}

func person(u *store.User) personView { return personView{Name: u.Name, Email: u.Email} }

var stateText = map[string]string{
	store.DelegationRequested: "Waiting for your decision",
	store.DelegationActive:    "Approved",
	store.DelegationDeclined:  "Declined",
	store.DelegationRevoked:   "Revoked",
}

func (s *Server) delegationView(l *delegation.Link) *delegationData {
	d := &delegationData{Title: "Send For request", Ref: store.DelegationRef(l.Delegation.ID),
		Requester: person(l.Requester), Grantor: person(l.Grantor),
		State: l.Delegation.Status, StateText: stateText[l.Delegation.Status], Pending: l.Pending(),
		Expires: l.Claims.Expires, Used: l.Used}
	if d.StateText == "" {
		d.StateText = l.Delegation.Status
	}
	return d
}

// delegationLinkError answers a link that does not open.
func (s *Server) delegationLinkError(w http.ResponseWriter, r *http.Request, err error) {
	switch {
	case errors.Is(err, delegation.ErrExpired):
		s.errorPage(w, r, http.StatusGone, "This approval link has expired (links work for 7 days). Ask your colleague to request Send For again in the ATS.")
	case errors.Is(err, delegation.ErrInvalid):
		s.errorPage(w, r, http.StatusForbidden, "This approval link is not valid. Check that you opened the whole link from the email.")
	default:
		s.o.Log.ErrorContext(r.Context(), "pages: delegation link", "err", err)
		s.errorPage(w, r, http.StatusServiceUnavailable, "The page is unavailable right now. Try again in a minute.")
	}
}

func (s *Server) delegationPage(w http.ResponseWriter, r *http.Request, dl DelegationLinks) {
	tok := r.URL.Query().Get("t")
	if tok == "" {
		s.errorPage(w, r, http.StatusBadRequest, "This link is incomplete: it has no token. Check that you opened the whole link from the email.")
		return
	}
	l, err := dl.Open(r.Context(), tok)
	if err != nil {
		s.delegationLinkError(w, r, err)
		return
	}
	d := s.delegationView(l)
	if d.Pending {
		d.Token, d.CSRF = tok, s.csrfToken(w, r, tok)
	} else if l.Used != nil {
		d.Problem = "This link was already used."
	}
	s.render(w, r, http.StatusOK, "delegation", d)
}

func (s *Server) delegationAct(w http.ResponseWriter, r *http.Request, dl DelegationLinks) {
	tok := r.PostFormValue("t")
	if tok == "" {
		s.errorPage(w, r, http.StatusBadRequest, "This form is incomplete: it has no link token. Open the link from the email again.")
		return
	}
	if !s.csrfOK(r, tok) {
		s.errorPage(w, r, http.StatusForbidden, "This form could not be checked (it came from another page, or your browser blocks cookies). Open the link from the email again.")
		return
	}
	action := r.PostFormValue("action")
	if action != delegation.Approve && action != delegation.Decline {
		s.errorPage(w, r, http.StatusBadRequest, "Choose Approve or Decline.")
		return
	}
	l, err := dl.Act(r.Context(), tok, action)
	switch {
	case err == nil:
		d := s.delegationView(l)
		if action == delegation.Approve {
			d.Done = "You approved the request: " + nameOr(l.Requester) + " can now send email as you from the ATS. Either of you can revoke it there."
		} else {
			d.Done = "You declined the request: " + nameOr(l.Requester) + " cannot send email as you."
		}
		s.o.Log.InfoContext(r.Context(), "pages: Send For decided by link", "tenant", l.Claims.Tenant,
			"delegation", d.Ref, "status", l.Delegation.Status)
		s.render(w, r, http.StatusOK, "delegation", d)
	case errors.Is(err, delegation.ErrUsed):
		d := s.delegationView(l)
		d.Problem = "This link was already used; nothing was changed."
		s.render(w, r, http.StatusConflict, "delegation", d)
	case errors.Is(err, delegation.ErrDecided):
		d := s.delegationView(l)
		d.Problem = "This request is no longer waiting for a decision; nothing was changed."
		s.render(w, r, http.StatusConflict, "delegation", d)
	default:
		s.delegationLinkError(w, r, err)
	}
}

func nameOr(u *store.User) string {
	if u.Name != "" {
		return u.Name
	}
	return u.Email
}
