package api

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"syncrelay/oauth"
	"syncrelay/outbound"
	"syncrelay/store"
)

// OutboundStore is what the sending, OAuth and delegation endpoints need
// from the store beyond Store.
type OutboundStore interface {
	Grant(ctx context.Context, tenant, user string) (*store.Grant, error)
	Grants(ctx context.Context, tenant string) ([]*store.Grant, error)
	CreateDelegation(ctx context.Context, d *store.Delegation, by string) error
	TransitionDelegation(ctx context.Context, tenant string, id uint64, by, to string, check func(*store.Delegation) error) (*store.Delegation, error)
	Delegation(ctx context.Context, tenant string, id uint64) (*store.Delegation, error)
	Delegations(ctx context.Context, tenant string) ([]*store.Delegation, error)
	CreateKV(ctx context.Context, k string, v any, ttl time.Duration) error
	GetKV(ctx context.Context, k string, v any) error
	PutKV(ctx context.Context, k string, v any, ttl time.Duration) error
	DeleteKV(ctx context.Context, k string) error
}

// OutboundOptions wire issue 4's endpoints: sending, OAuth consent and
// Send For delegations.
type OutboundOptions struct {
	// Store is the store again, with the operations above; when nil, Options.Store
	// is used if it has them.
	Store OutboundStore
	// Sender sends mail; nil answers 503 on the send endpoints.
	Sender *outbound.Service
	// OAuth runs consent flows; nil answers 503 on /oauth/.
	OAuth *oauth.Manager
	// IdempotencyTTL is how long an Idempotency-Key is remembered (24 h).
	IdempotencyTTL time.Duration
	// MaxBulk bounds the messages of one bulk request (500).
	MaxBulk int
	// Approvals emails Send For approval links for tenants with
	// delegation_approval "email" (delegations.go); nil: they get
	// approval_email "not_sent".
	Approvals ApprovalMailer
}

func (s *Server) outboundRoutes() {
	s.handle("POST /v1/tenants/{t}/messages", s.auth(s.sendMessage))
	s.handle("POST /v1/tenants/{t}/messages/bulk", s.auth(s.sendBulk))
	s.handle("GET /oauth/{provider}/start", s.auth(s.oauthStart))
	s.handle("GET /oauth/{provider}/callback", http.HandlerFunc(s.oauthCallback))
	s.handle("POST /v1/tenants/{t}/delegations", s.auth(s.createDelegation))
	s.handle("GET /v1/tenants/{t}/delegations", s.auth(s.listDelegations))
	s.handle("GET /v1/tenants/{t}/delegations/{id}", s.auth(s.getDelegation))
	s.handle("POST /v1/tenants/{t}/delegations/{id}/approve", s.auth(s.approveDelegation))
	s.handle("POST /v1/tenants/{t}/delegations/{id}/decline", s.auth(s.declineDelegation))
	s.handle("DELETE /v1/tenants/{t}/delegations/{id}", s.auth(s.revokeDelegation))
}

// obStore returns the store with the outbound operations.
func (s *Server) obStore() OutboundStore {
	if s.o.Outbound.Store != nil {
		return s.o.Outbound.Store
	}
	return s.o.Store
}

// --- sending ---

type obSendJSON struct {
	SendFor        string   `json:"send_for"`
	Candidate      string   `json:"candidate"`
	To             []string `json:"to"`
	Cc             []string `json:"cc"`
	Subject        string   `json:"subject"`
	Text           string   `json:"text"`
	HTML           string   `json:"html"`
	ReplyToMessage string   `json:"reply_to_message"`
	Kind           string   `json:"kind"`
}

func (in *obSendJSON) request(tenant, actor, defaultKind string) outbound.Request {
	kind := in.Kind
	if kind == "" {
		kind = defaultKind
	}
	return outbound.Request{Tenant: tenant, ActingUser: actor, SendFor: in.SendFor, Candidate: in.Candidate,
		To: in.To, Cc: in.Cc, Subject: in.Subject, Text: in.Text, HTML: in.HTML, ReplyTo: in.ReplyToMessage, Kind: kind}
}

type obBulkResultJSON struct {
	MessageID         string   `json:"message_id"`
	ThreadID          string   `json:"thread_id"`
	Status            string   `json:"status"`
	InternetMessageID string   `json:"internet_message_id"`
	Error             string   `json:"error,omitempty"`
	Problem           *problem `json:"problem,omitempty"`
}

// obReply is a handler's answer, kept so an obIdempotent replay can repeat it.
type obReply struct {
	status     int
	body       any
	problem    *problem
	retryAfter time.Duration
}

func obRefusalReply(rf *outbound.Refusal) *obReply {
	return &obReply{status: rf.Status, retryAfter: rf.RetryAfter,
		problem: &problem{Type: "https://syncrelay.dev/problems/" + rf.Type, Title: rf.Title, Status: rf.Status, Detail: rf.Detail}}
}

func (s *Server) obErrReply(r *http.Request, err error) *obReply {
	var rf *outbound.Refusal
	if errors.As(err, &rf) {
		return obRefusalReply(rf)
	}
	if errors.Is(err, store.ErrNotFound) {
		return &obReply{status: http.StatusNotFound, problem: &problem{Type: "https://syncrelay.dev/problems/not-found",
			Title: "Not found", Status: http.StatusNotFound, Detail: err.Error()}}
	}
	s.o.Log.ErrorContext(r.Context(), "api: send failed on local trouble", "path", r.URL.Path, "err", err)
	return &obReply{status: http.StatusServiceUnavailable, problem: &problem{Type: "https://syncrelay.dev/problems/unavailable",
		Title: "Temporarily unavailable", Status: http.StatusServiceUnavailable,
		Detail: "syncrelay could not complete the request; check the thread before retrying (with the same Idempotency-Key)"}}
}

func (rp *obReply) write(w http.ResponseWriter) {
	if rp.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int((rp.retryAfter+time.Second-1)/time.Second)))
	}
	if rp.problem != nil {
		w.Header().Set("Content-Type", "application/problem+json")
		w.WriteHeader(rp.status)
		_ = json.NewEncoder(w).Encode(rp.problem)
		return
	}
	writeJSON(w, rp.status, rp.body)
}

// obReadBody reads the whole (size-limited) body so it can be fingerprinted,
// then puts it back for decode.
func obReadBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeProblem(w, http.StatusRequestEntityTooLarge, "too-large", "Request body too large", fmt.Sprintf("the limit is %d bytes", tooBig.Limit))
		} else {
			writeProblem(w, http.StatusBadRequest, "invalid-body", "Unreadable body", "the request body could not be read")
		}
		return nil, false
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	return b, true
}

func (s *Server) obSender(w http.ResponseWriter) (*outbound.Service, bool) {
	if s.o.Outbound.Sender == nil {
		writeProblem(w, http.StatusServiceUnavailable, "sending-not-configured", "Sending not available",
			"this syncrelay runs without outbound providers")
		return nil, false
	}
	return s.o.Outbound.Sender, true
}

func (s *Server) sendMessage(w http.ResponseWriter, r *http.Request) {
	snd, ok := s.obSender(w)
	if !ok {
		return
	}
	var in obSendJSON
	rq, ok := s.begin(w, r, prelude{tenant: true, actor: requiredActor, raw: true, body: &in})
	if !ok {
		return
	}
	t, actor, body := rq.tenant, rq.actor, rq.raw
	req := in.request(t.ID, actor.ID, outbound.KindOneOff)
	if err := outbound.Validate(&req); err != nil {
		var rf *outbound.Refusal
		if errors.As(err, &rf) && rf.Status == http.StatusBadRequest {
			obRefusalReply(rf).write(w)
			return
		}
	}
	s.obIdempotent(w, r, "messages", t.ID, actor.ID, body, func() *obReply {
		res, err := snd.Send(r.Context(), req)
		if err != nil {
			return s.obErrReply(r, err)
		}
		return &obReply{status: http.StatusCreated, body: res}
	})
}

func (s *Server) sendBulk(w http.ResponseWriter, r *http.Request) {
	snd, ok := s.obSender(w)
	if !ok {
		return
	}
	var in struct {
		Messages []obSendJSON `json:"messages"`
	}
	rq, ok := s.begin(w, r, prelude{tenant: true, actor: requiredActor, raw: true, body: &in})
	if !ok {
		return
	}
	t, actor, body := rq.tenant, rq.actor, rq.raw
	maxBulk := s.o.Outbound.MaxBulk
	if maxBulk <= 0 {
		maxBulk = 500
	}
	if len(in.Messages) == 0 || len(in.Messages) > maxBulk {
		invalid(w, fmt.Sprintf("messages: give 1 to %d messages", maxBulk))
		return
	}
	reqs := make([]outbound.Request, len(in.Messages))
	for i := range in.Messages {
		reqs[i] = in.Messages[i].request(t.ID, actor.ID, outbound.KindBulk)
		// A malformed item fails the whole request before anything is
		// sent; refusals that depend on state are reported per item.
		if err := outbound.Validate(&reqs[i]); err != nil {
			var rf *outbound.Refusal
			if errors.As(err, &rf) && rf.Status == http.StatusBadRequest {
				invalid(w, fmt.Sprintf("messages[%d]: %s", i, rf.Detail))
				return
			}
		}
	}
	s.obIdempotent(w, r, "messages/bulk", t.ID, actor.ID, body, func() *obReply {
		results := make([]obBulkResultJSON, len(reqs))
		var broken error
		for i, req := range reqs {
			if broken != nil {
				results[i] = obBulkResultJSON{Status: outbound.StatusFailed, Error: "not attempted: syncrelay stopped the bulk send after a local error"}
				continue
			}
			res, err := snd.Send(r.Context(), req)
			var rf *outbound.Refusal
			switch {
			case err == nil:
				results[i] = obBulkResultJSON{MessageID: res.MessageID, ThreadID: res.ThreadID, Status: res.Status,
					InternetMessageID: res.InternetMessageID, Error: res.Error}
			case errors.As(err, &rf):
				rp := obRefusalReply(rf)
				results[i] = obBulkResultJSON{Status: outbound.StatusFailed, Error: rf.Detail, Problem: rp.problem}
			default:
				broken = err
				rp := s.obErrReply(r, err)
				results[i] = obBulkResultJSON{Status: outbound.StatusFailed, Error: rp.problem.Detail, Problem: rp.problem}
			}
		}
		return &obReply{status: http.StatusCreated, body: map[string]any{"results": results}}
	})
}

// --- idempotency (draft-ietf-httpapi-idempotency-key-header) ---

type obIdemRecord struct {
	Fingerprint string          `json:"fingerprint"`
	State       string          `json:"state"` // pending | done
	Started     time.Time       `json:"started"`
	Status      int             `json:"status,omitempty"`
	Body        json.RawMessage `json:"body,omitempty"`
}

const obMaxIdempotencyKey = 255

// obIdempotent runs fn once per Idempotency-Key: the first request reserves
// the key in the store, a repeat with the same payload gets the stored
// answer (Idempotent-Replayed: true) without running fn, a repeat with a
// different payload is 422 and a repeat while the first is running 409.
// Only created results are remembered; a refused request releases the key.
func (s *Server) obIdempotent(w http.ResponseWriter, r *http.Request, route, tenant, actor string, body []byte, fn func() *obReply) {
	key := r.Header.Get("Idempotency-Key")
	st := s.obStore()
	if key == "" || st == nil {
		fn().write(w)
		return
	}
	if len(key) > obMaxIdempotencyKey {
		invalid(w, fmt.Sprintf("Idempotency-Key: at most %d characters", obMaxIdempotencyKey))
		return
	}
	ttl := s.o.Outbound.IdempotencyTTL
	if ttl <= 0 {
		ttl = 24 * time.Hour
	}
	kh := sha256.Sum256([]byte(route + "\x00" + key))
	kvk := "idem/" + tenant + "/" + hex.EncodeToString(kh[:])
	fh := sha256.New()
	fmt.Fprintf(fh, "%s\x00%s\x00%s\x00", route, tenant, actor)
	fh.Write(body)
	fp := hex.EncodeToString(fh.Sum(nil))
	ctx := r.Context()

	for attempt := 0; ; attempt++ {
		err := st.CreateKV(ctx, kvk, obIdemRecord{Fingerprint: fp, State: "pending", Started: time.Now().UTC()}, ttl)
		if err == nil {
			break
		}
		if !errors.Is(err, store.ErrExists) {
			s.storeError(w, r, err)
			return
		}
		var rec obIdemRecord
		if err := st.GetKV(ctx, kvk, &rec); err != nil {
			if errors.Is(err, store.ErrNotFound) && attempt < 2 {
				continue // released or expired meanwhile: try to reserve again
			}
			s.storeError(w, r, err)
			return
		}
		switch {
		case rec.Fingerprint != fp:
			writeProblem(w, http.StatusUnprocessableEntity, "idempotency-key-reused", "Idempotency-Key reused",
				"this Idempotency-Key was already used for a different request; use a new key")
		case rec.State == "done":
			w.Header().Set("Idempotent-Replayed", "true")
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(rec.Status)
			_, _ = w.Write(append(rec.Body, '\n'))
		default:
			writeProblem(w, http.StatusConflict, "idempotency-in-progress", "Request in progress",
				fmt.Sprintf("a request with this Idempotency-Key started at %s and has not finished; retry later",
					rec.Started.Format(time.RFC3339)))
		}
		return
	}

	rp := fn()
	// Record the outcome even if the client went away: it must not be
	// sent twice by a retry.
	sctx := context.WithoutCancel(ctx)
	if rp.problem != nil {
		if err := st.DeleteKV(sctx, kvk); err != nil {
			s.o.Log.ErrorContext(ctx, "api: could not release an idempotency key", "err", err)
		}
	} else {
		data, err := json.Marshal(rp.body)
		if err == nil {
			err = st.PutKV(sctx, kvk, obIdemRecord{Fingerprint: fp, State: "done", Started: time.Now().UTC(),
				Status: rp.status, Body: data}, ttl)
		}
		if err != nil {
			s.o.Log.ErrorContext(ctx, "api: could not record an obIdempotent result; retries with this key will get 409", "err", err)
		}
	}
	rp.write(w)
}
