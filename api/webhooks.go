package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"syncrelay/store"
)

// OutboxStore is what the webhook administration endpoints need.
type OutboxStore interface {
	DeadLetters(ctx context.Context, tenant string, after uint64, limit int) ([]store.DeadLetter, bool, error)
	Redeliver(ctx context.Context, tenant string, seqs []uint64, now time.Time) ([]*store.Event, error)
}

const (
	defaultFailedLimit = 50
	maxFailedLimit     = 500
	maxRedeliverIDs    = 1000
)

func (s *Server) webhookRoutes() {
	s.handle("GET /v1/webhooks/failed", s.auth(s.listFailedWebhooks))
	s.handle("POST /v1/webhooks/failed/redeliver", s.auth(s.redeliverWebhooks))
	s.handle("POST /v1/webhooks/failed/{id}/redeliver", s.auth(s.redeliverWebhook))
}

type deadEventJSON struct {
	ID        string    `json:"id"`
	Type      string    `json:"type"`
	CreatedAt time.Time `json:"created_at"`
	Tenant    string    `json:"tenant"`
	Data      any       `json:"data"`
	Attempts  int       `json:"attempts"`
	LastError string    `json:"last_error"`
	DeadAt    time.Time `json:"dead_at"`
}

// listFailedWebhooks lists dead-lettered events, oldest first, optionally
// of one tenant (?tenant=), paginated by ?cursor= / ?limit=.
func (s *Server) listFailedWebhooks(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	limit, ok := queryLimit(w, r, "limit", defaultFailedLimit, maxFailedLimit)
	if !ok {
		return
	}
	var after uint64
	if c := q.Get("cursor"); c != "" {
		p, ok := decodeCursor(c, "e1")
		var err error
		if ok && len(p) == 1 {
			after, err = strconv.ParseUint(p[0], 10, 64)
		}
		if !ok || len(p) != 1 || err != nil {
			invalid(w, "cursor: not a cursor of this listing (use next_cursor as given)")
			return
		}
	}
	tenant := q.Get("tenant")
	if tenant != "" {
		if _, err := s.o.Store.Tenant(r.Context(), tenant); err != nil {
			s.storeError(w, r, err)
			return
		}
	}
	dl, more, err := s.o.Store.DeadLetters(r.Context(), tenant, after, limit)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	out := make([]deadEventJSON, 0, len(dl))
	for _, d := range dl {
		e := d.Event
		data := e.Data
		if data == nil {
			data = map[string]any{}
		}
		out = append(out, deadEventJSON{ID: e.ID, Type: e.Type, CreatedAt: e.Created.UTC(), Tenant: e.Tenant, Data: data,
			Attempts: e.Attempts, LastError: e.LastError, DeadAt: d.DeadAt})
	}
	var next *string
	if more && len(dl) > 0 {
		c := encodeCursor(fmt.Sprintf("e1.%d", dl[len(dl)-1].Event.Seq))
		next = &c
	}
	writeJSON(w, http.StatusOK, map[string]any{"events": out, "next_cursor": next})
}

type redeliveredJSON struct {
	Redelivered int      `json:"redelivered"`
	IDs         []string `json:"ids"`
}

func redelivered(evs []*store.Event) redeliveredJSON {
	out := redeliveredJSON{Redelivered: len(evs), IDs: make([]string, 0, len(evs))}
	for _, e := range evs {
		out.IDs = append(out.IDs, e.ID)
	}
	return out
}

func (s *Server) redeliverError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, store.ErrNotDead) {
		writeProblem(w, http.StatusConflict, "not-dead", "Event is not dead-lettered",
			err.Error()+": only events listed by GET /v1/webhooks/failed can be redelivered")
		return
	}
	s.storeError(w, r, err)
}

// redeliverWebhook requeues one dead-lettered event with a fresh attempt
// budget. The receiver gets the same event id and body again.
func (s *Server) redeliverWebhook(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	seq, ok := store.ParseRef("evt-", id)
	if !ok {
		writeProblem(w, http.StatusNotFound, "not-found", "Not found", "no such event: "+id)
		return
	}
	evs, err := s.o.Store.Redeliver(r.Context(), "", []uint64{seq}, time.Now())
	if err != nil {
		s.redeliverError(w, r, err)
		return
	}
	s.o.Log.InfoContext(r.Context(), "webhook event requeued", "event", id)
	writeJSON(w, http.StatusAccepted, redelivered(evs))
}

// redeliverWebhooks requeues dead-lettered events in bulk: the listed ids,
// or every dead event (of one tenant when "tenant" is given).
func (s *Server) redeliverWebhooks(w http.ResponseWriter, r *http.Request) {
	var in struct {
		Tenant string   `json:"tenant"`
		IDs    []string `json:"ids"`
	}
	if _, ok := s.begin(w, r, prelude{body: &in}); !ok {
		return
	}
	if len(in.IDs) > maxRedeliverIDs {
		invalid(w, fmt.Sprintf("ids: at most %d per request", maxRedeliverIDs))
		return
	}
	var seqs []uint64
	for _, id := range in.IDs {
		seq, ok := store.ParseRef("evt-", id)
		if !ok {
			invalid(w, fmt.Sprintf("ids: %q is not an event id", id))
			return
		}
		seqs = append(seqs, seq)
	}
	if in.Tenant != "" {
		if _, err := s.o.Store.Tenant(r.Context(), in.Tenant); err != nil {
			s.storeError(w, r, err)
			return
		}
	}
	evs, err := s.o.Store.Redeliver(r.Context(), in.Tenant, seqs, time.Now())
	if err != nil {
		s.redeliverError(w, r, err)
		return
	}
	s.o.Log.InfoContext(r.Context(), "webhook events requeued", "count", len(evs), "tenant", in.Tenant)
	writeJSON(w, http.StatusAccepted, redelivered(evs))
}
