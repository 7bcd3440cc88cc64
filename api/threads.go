package api

import (
	"context"
	"errors"
	"net/http"
	"slices"

	"syncrelay/store"
)

// Who sees and changes what (SPEC §7; README "Secret threads and removal"):
//
//   - A thread that is not secret is visible to every user of the tenant.
//   - A secret thread is visible to the user who made it secret, to its
//     participants and to admins and super admins; everyone else gets 404
//     and does not see it in lists. Participants come only from syncrelay's
//     own records (SPEC §3): the user who started it, every user who sent
//     on it through syncrelay or for whom it was sent with Send For (both
//     grantor and requester), every user in the To or Cc of a message sent
//     through syncrelay, and every user who wrote on it from their own
//     mailbox with a DKIM pass aligned with From. What a sender controls
//     (X-Original-To, Delivered-To, the To/Cc of other mail, a reused
//     Message-ID) never adds anyone.
//   - Any user who can see a thread may make it secret (they become its
//     "secret_by"). Only the user who made it secret, or an admin or super
//     admin, may make it visible again: a participant cannot undo another
//     person's decision to restrict it.
//   - Removing a message from the profile is irreversible (its raw copy is
//     deleted), so only the thread's participants, the user who made it
//     secret, and admins / super admins may do it; other users who can see
//     it get 403.

var errForbidden = errors.New("forbidden")

// isParticipant reports whether u took part in th (see the rules above).
func (s *Server) isParticipant(ctx context.Context, th *store.Thread, u *store.User) (bool, error) {
	if th.CreatedBy == u.ID || slices.Contains(th.Participants, u.ID) {
		return true, nil
	}
	return s.o.Store.ThreadInvolves(ctx, th.Tenant, th.ID, u.ID, u.Email)
}

// canSee applies the secret-thread rule.
func (s *Server) canSee(ctx context.Context, th *store.Thread, u *store.User) (bool, error) {
	if !th.Secret || isAdmin(u) || (th.SecretBy != "" && th.SecretBy == u.ID) {
		return true, nil
	}
	return s.isParticipant(ctx, th, u)
}

func (s *Server) patchThread(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("t")
	var in struct {
		Secret *bool `json:"secret"`
	}
	if _, ok := s.begin(w, r, prelude{body: &in}); !ok {
		return
	}
	if in.Secret == nil {
		invalid(w, "secret: required (true or false); it applies to the whole thread")
		return
	}
	rq, ok := s.begin(w, r, prelude{tenant: true, actor: requiredActor, thread: true})
	if !ok {
		return
	}
	u, id := rq.actor, rq.thread
	if _, ok := s.visibleThread(w, r, tenant, id, u); !ok {
		return
	}
	th, err := s.o.Store.UpdateThread(r.Context(), tenant, id, func(th *store.Thread) error {
		switch {
		case *in.Secret == th.Secret:
			return nil // no change; the original maker stays
		case *in.Secret:
			th.Secret, th.SecretBy = true, u.ID
		case th.SecretBy == u.ID || isAdmin(u):
			th.Secret, th.SecretBy = false, ""
		default:
			return errForbidden
		}
		return nil
	})
	if errors.Is(err, errForbidden) {
		writeProblem(w, http.StatusForbidden, "forbidden", "Forbidden",
			"only the user who made this thread secret, or an admin, can make it visible again")
		return
	}
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	s.o.Log.InfoContext(r.Context(), "thread secret flag set", "tenant", tenant, "thread", store.ThreadRef(id), "by", u.ID, "secret", th.Secret)
	tj, err := s.threadWithMessages(r.Context(), th, 0, defaultMessageLimit)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, tj)
}

// deleteMessage removes a message from the profile: its record becomes a
// tombstone (so a later forwarded copy does not bring it back) and its raw
// copy is deleted. No mailbox is ever touched. Removing a removed message
// again is a no-op 204.
func (s *Server) deleteMessage(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("t")
	rq, ok := s.begin(w, r, prelude{tenant: true, actor: requiredActor})
	if !ok {
		return
	}
	u := rq.actor
	m, th, ok := s.visibleMessage(w, r, u, true)
	if !ok {
		return
	}
	allowed := isAdmin(u) || (th.SecretBy != "" && th.SecretBy == u.ID)
	if !allowed {
		p, err := s.isParticipant(r.Context(), th, u)
		if err != nil {
			s.storeError(w, r, err)
			return
		}
		allowed = p
	}
	if !allowed {
		writeProblem(w, http.StatusForbidden, "forbidden", "Forbidden",
			"only the thread's participants and admins can remove its messages from the profile")
		return
	}
	if !m.Removed {
		if err := s.o.Store.RemoveMessage(r.Context(), tenant, m.ID); err != nil {
			s.storeError(w, r, err)
			return
		}
		s.o.Log.InfoContext(r.Context(), "message removed from profile", "tenant", tenant, "message", store.MessageRef(m.ID),
			"thread", store.ThreadRef(th.ID), "by", u.ID)
	}
	w.WriteHeader(http.StatusNoContent)
}
