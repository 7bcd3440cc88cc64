package api

import (
	"net/http"

	"syncrelay/store"
)

// Every handler starts the same way: resolve the path's tenant, the acting
// user, read and decode the body. begin does it in one place so that the
// problems a client gets (their codes, and which comes first) are the same
// everywhere.

// actorNeed says whether a handler needs X-Acting-User.
type actorNeed int

const (
	noActor       actorNeed = iota // not looked at
	optionalActor                  // resolved when given: 403 when it names no user of the tenant
	requiredActor                  // and 400 when missing
)

// prelude is what a handler needs before its own work. begin resolves it
// in this order: the path's tenant {t} (404 when missing), the acting
// user of that tenant, the path's thread id {th}, the raw body, the JSON
// body.
type prelude struct {
	tenant bool // look up the path's {t}
	actor  actorNeed
	thread bool // parse the path's {th} (404 when it is not a thread id)
	raw    bool // read the whole body first (the idempotency key hashes it)
	body   any  // decode the JSON body into it (strictly, see decode)
}

// request is what begin resolved.
type request struct {
	tenant *store.Tenant // nil unless prelude.tenant
	actor  *store.User   // nil unless given (or required)
	thread uint64        // when prelude.thread
	raw    []byte        // the body, when prelude.raw
}

// begin resolves p for r. When it returns false it has written the problem
// and the handler must return.
func (s *Server) begin(w http.ResponseWriter, r *http.Request, p prelude) (request, bool) {
	var q request
	tenantID := r.PathValue("t")
	if p.tenant {
		t, err := s.o.Store.Tenant(r.Context(), tenantID)
		if err != nil {
			s.storeError(w, r, err)
			return q, false
		}
		q.tenant, tenantID = t, t.ID
	}
	if p.actor != noActor {
		u, ok := s.actingUser(w, r, tenantID, p.actor == requiredActor)
		if !ok {
			return q, false
		}
		q.actor = u
	}
	if p.thread {
		id, ok := s.threadID(w, r)
		if !ok {
			return q, false
		}
		q.thread = id
	}
	if p.raw {
		b, ok := obReadBody(w, r)
		if !ok {
			return q, false
		}
		q.raw = b
	}
	if p.body != nil && !decode(w, r, p.body) {
		return q, false
	}
	return q, true
}
