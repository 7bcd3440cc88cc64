package api

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"syncrelay/mailtext"
	"syncrelay/store"
)

// TimelineStore is what the timeline, thread and removal endpoints need.
type TimelineStore interface {
	Thread(ctx context.Context, tenant string, id uint64) (*store.Thread, error)
	UpdateThread(ctx context.Context, tenant string, id uint64, fn func(*store.Thread) error) (*store.Thread, error)
	CandidateThreads(ctx context.Context, tenant, cand string) ([]*store.Thread, error)
	ThreadMessagesPage(ctx context.Context, tenant string, thread, after uint64, limit int) ([]*store.Message, bool, error)
	ThreadInvolves(ctx context.Context, tenant string, thread uint64, userID, email string) (bool, error)
	Message(ctx context.Context, tenant string, id uint64) (*store.Message, error)
	RemoveMessage(ctx context.Context, tenant string, id uint64) error
	OpenRaw(ctx context.Context, loc string) (store.RawFile, error)
}

// Pagination bounds.
const (
	defaultThreadLimit  = 20
	maxThreadLimit      = 100
	defaultMessageLimit = 100
	maxMessageLimit     = 500
	defaultTextCache    = 32 << 20
)

func newTextCache(n int) *mailtext.Cache {
	if n == 0 {
		n = defaultTextCache
	}
	return mailtext.NewCache(n)
}

func (s *Server) timelineRoutes() {
	s.handle("GET /v1/tenants/{t}/candidates/{c}/threads", s.auth(s.listThreads))
	s.handle("GET /v1/tenants/{t}/threads/{th}", s.auth(s.getThread))
	s.handle("PATCH /v1/tenants/{t}/threads/{th}", s.auth(s.patchThread))
	s.handle("GET /v1/tenants/{t}/threads/{th}/messages", s.auth(s.listThreadMessages))
	s.handle("GET /v1/tenants/{t}/messages/{m}", s.auth(s.getMessage))
	s.handle("DELETE /v1/tenants/{t}/messages/{m}", s.auth(s.deleteMessage))
	s.handle("GET /v1/tenants/{t}/messages/{m}/raw", s.auth(s.rawMessage))
	s.handle("GET /v1/tenants/{t}/messages/{m}/attachments/{a}", s.auth(s.getAttachment))
}

// --- JSON shapes (SPEC Appendix A, plus pagination and attachments) ---

type threadJSON struct {
	ID                 string        `json:"id"`
	Subject            string        `json:"subject"`
	Secret             bool          `json:"secret"`
	SecretBy           *string       `json:"secret_by"`
	CreatedBy          string        `json:"created_by"`
	Candidate          string        `json:"candidate"`
	CreatedAt          time.Time     `json:"created_at"`
	LastActivity       time.Time     `json:"last_activity"`
	Messages           []messageJSON `json:"messages"`
	MessagesNextCursor *string       `json:"messages_next_cursor"`
}

type messageJSON struct {
	ID               string             `json:"id"`
	ThreadID         string             `json:"thread_id"`
	Direction        string             `json:"direction"`
	From             string             `json:"from"`
	To               []string           `json:"to"`
	Cc               []string           `json:"cc"`
	Subject          string             `json:"subject"`
	Date             time.Time          `json:"date"`
	Text             string             `json:"text"`
	TextTruncated    bool               `json:"text_truncated,omitempty"`
	AutoReply        bool               `json:"auto_reply"`
	Bounced          bool               `json:"bounced"`
	BounceStatus     *string            `json:"bounce_status"`
	BounceDiagnostic string             `json:"bounce_diagnostic,omitempty"`
	SentBy           *string            `json:"sent_by"`
	SendFor          *string            `json:"send_for"`
	DKIM             []store.AuthResult `json:"dkim"`
	Status           string             `json:"status,omitempty"`
	Error            string             `json:"error,omitempty"`
	Attachments      []attachmentJSON   `json:"attachments"`
}

type attachmentJSON struct {
	ID          string `json:"id"`
	Filename    string `json:"filename"`
	ContentType string `json:"content_type"`
	Size        int64  `json:"size"`
	Inline      bool   `json:"inline"`
	ContentID   string `json:"content_id,omitempty"`
	URL         string `json:"url"`
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func (s *Server) messageOut(ctx context.Context, m *store.Message) messageJSON {
	ex := s.extract(ctx, m)
	date := m.Date
	if date.IsZero() {
		date = m.Received
	}
	out := messageJSON{
		ID: store.MessageRef(m.ID), ThreadID: store.ThreadRef(m.Thread), Direction: m.Direction,
		From: m.From, To: nonNil(m.To), Cc: nonNil(m.Cc), Subject: m.Subject, Date: date.UTC(),
		Text: ex.Text, TextTruncated: ex.Truncated, AutoReply: m.AutoReply, Bounced: m.Bounced,
		BounceStatus: strPtr(m.BounceStatus), BounceDiagnostic: m.BounceDiagnostic,
		SentBy: strPtr(m.SentBy), SendFor: strPtr(m.SendFor), DKIM: m.DKIM,
		Status: m.Status, Error: m.Error, Attachments: []attachmentJSON{},
	}
	if out.DKIM == nil {
		out.DKIM = []store.AuthResult{}
	}
	for _, a := range ex.Attachments {
		out.Attachments = append(out.Attachments, attachmentJSON{ID: a.Part, Filename: a.Filename,
			ContentType: a.ContentType, Size: a.Size, Inline: a.Inline, ContentID: a.ContentID,
			URL: "/v1/tenants/" + m.Tenant + "/messages/" + store.MessageRef(m.ID) + "/attachments/" + a.Part})
	}
	return out
}

var emptyExtract = &mailtext.Extract{Attachments: []mailtext.Attachment{}}

// extract returns the readable text and attachments of a stored message,
// from the cache (raw files are content-addressed, so never stale) or by
// parsing the raw file. A message without a raw copy has no text.
func (s *Server) extract(ctx context.Context, m *store.Message) *mailtext.Extract {
	if m.Raw == "" {
		return emptyExtract
	}
	if ex, ok := s.texts.Get(m.Raw); ok {
		return ex
	}
	f, err := s.o.Store.OpenRaw(ctx, m.Raw)
	if err != nil {
		s.o.Log.ErrorContext(ctx, "api: raw file of a stored message is unreadable", "tenant", m.Tenant,
			"message", store.MessageRef(m.ID), "err", err)
		return emptyExtract
	}
	defer f.Close()
	ex, err := mailtext.Parse(f, mailtext.Options{})
	if err != nil {
		s.o.Log.WarnContext(ctx, "api: message text not extracted", "tenant", m.Tenant, "message", store.MessageRef(m.ID), "err", err)
	}
	s.texts.Add(m.Raw, ex)
	return ex
}

func threadOut(th *store.Thread) threadJSON {
	return threadJSON{ID: store.ThreadRef(th.ID), Subject: th.Subject, Secret: th.Secret, SecretBy: strPtr(th.SecretBy),
		CreatedBy: th.CreatedBy, Candidate: th.Candidate, CreatedAt: th.Created.UTC(), LastActivity: th.LastActivity.UTC(),
		Messages: []messageJSON{}}
}

// --- cursors (opaque to clients) ---

func encodeCursor(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

func decodeCursor(c, kind string) ([]string, bool) {
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil || len(b) > 100 {
		return nil, false
	}
	parts := strings.Split(string(b), ".")
	if len(parts) < 2 || parts[0] != kind {
		return nil, false
	}
	return parts[1:], true
}

func threadCursor(th *store.Thread) string {
	return encodeCursor(fmt.Sprintf("t1.%d.%d", th.LastActivity.UnixNano(), th.ID))
}

func messageCursor(id uint64) string { return encodeCursor(fmt.Sprintf("m1.%d", id)) }

func parseMessageCursor(c string) (uint64, bool) {
	if c == "" {
		return 0, true
	}
	p, ok := decodeCursor(c, "m1")
	if !ok || len(p) != 1 {
		return 0, false
	}
	id, err := strconv.ParseUint(p[0], 10, 64)
	return id, err == nil
}

// queryLimit parses ?name= in [1, max], def when absent.
func queryLimit(w http.ResponseWriter, r *http.Request, name string, def, max int) (int, bool) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > max {
		invalid(w, fmt.Sprintf("%s: must be an integer from 1 to %d", name, max))
		return 0, false
	}
	return n, true
}

// threadWithMessages fills a thread's first page of messages (after
// message id after).
func (s *Server) threadWithMessages(ctx context.Context, th *store.Thread, after uint64, limit int) (threadJSON, error) {
	out := threadOut(th)
	msgs, more, err := s.o.Store.ThreadMessagesPage(ctx, th.Tenant, th.ID, after, limit)
	if err != nil {
		return out, err
	}
	for _, m := range msgs {
		out.Messages = append(out.Messages, s.messageOut(ctx, m))
	}
	if more && len(msgs) > 0 {
		c := messageCursor(msgs[len(msgs)-1].ID)
		out.MessagesNextCursor = &c
	}
	return out, nil
}

// --- handlers ---

// listThreads is the candidate's timeline: threads by latest activity,
// newest first; in each, messages oldest first; removed messages absent;
// secret threads only for their audience; threads whose every message was
// removed left out.
func (s *Server) listThreads(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	tenant, cand := r.PathValue("t"), r.PathValue("c")
	rq, ok := s.begin(w, r, prelude{tenant: true, actor: requiredActor})
	if !ok {
		return
	}
	u := rq.actor
	if _, err := s.o.Store.Candidate(ctx, tenant, cand); err != nil {
		s.storeError(w, r, err)
		return
	}
	limit, ok := queryLimit(w, r, "limit", defaultThreadLimit, maxThreadLimit)
	if !ok {
		return
	}
	mlimit, ok := queryLimit(w, r, "messages_limit", defaultMessageLimit, maxMessageLimit)
	if !ok {
		return
	}
	var afterAt int64
	var afterID uint64
	cursor := r.URL.Query().Get("cursor")
	if cursor != "" {
		p, ok := decodeCursor(cursor, "t1")
		var err1, err2 error
		if ok && len(p) == 2 {
			afterAt, err1 = strconv.ParseInt(p[0], 10, 64)
			afterID, err2 = strconv.ParseUint(p[1], 10, 64)
		}
		if !ok || len(p) != 2 || err1 != nil || err2 != nil {
			invalid(w, "cursor: not a cursor of this listing (use next_cursor as given)")
			return
		}
	}
	ths, err := s.o.Store.CandidateThreads(ctx, tenant, cand)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	slices.SortStableFunc(ths, func(a, b *store.Thread) int {
		if c := b.LastActivity.Compare(a.LastActivity); c != 0 {
			return c
		}
		switch {
		case a.ID > b.ID:
			return -1
		case a.ID < b.ID:
			return 1
		}
		return 0
	})
	out := []threadJSON{}
	var next *string
	for i, th := range ths {
		if cursor != "" {
			at := th.LastActivity.UnixNano()
			if at > afterAt || (at == afterAt && th.ID >= afterID) {
				continue
			}
		}
		if len(out) == limit {
			c := threadCursor(ths[i-1])
			next = &c
			break
		}
		visible, err := s.canSee(ctx, th, u)
		if err != nil {
			s.storeError(w, r, err)
			return
		}
		if !visible {
			continue
		}
		tj, err := s.threadWithMessages(ctx, th, 0, mlimit)
		if err != nil {
			s.storeError(w, r, err)
			return
		}
		if len(tj.Messages) == 0 {
			continue // every message removed from the profile
		}
		out = append(out, tj)
	}
	writeJSON(w, http.StatusOK, map[string]any{"threads": out, "next_cursor": next})
}

// visibleThread loads a thread the actor may see; anything else is a 404
// that does not reveal whether the thread exists.
func (s *Server) visibleThread(w http.ResponseWriter, r *http.Request, tenant string, id uint64, u *store.User) (*store.Thread, bool) {
	th, err := s.o.Store.Thread(r.Context(), tenant, id)
	if err == nil {
		var ok bool
		ok, err = s.canSee(r.Context(), th, u)
		if err == nil && !ok {
			err = store.ErrNotFound
		}
	}
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			writeProblem(w, http.StatusNotFound, "not-found", "Not found", "no such thread: "+store.ThreadRef(id))
			return nil, false
		}
		s.storeError(w, r, err)
		return nil, false
	}
	return th, true
}

// visibleMessage loads a message on the profile (not removed) whose thread
// the actor may see.
func (s *Server) visibleMessage(w http.ResponseWriter, r *http.Request, u *store.User, allowRemoved bool) (*store.Message, *store.Thread, bool) {
	tenant, ref := r.PathValue("t"), r.PathValue("m")
	notFound := func() {
		writeProblem(w, http.StatusNotFound, "not-found", "Not found", "no such message: "+ref)
	}
	id, ok := store.ParseRef("m-", ref)
	if !ok {
		notFound()
		return nil, nil, false
	}
	m, err := s.o.Store.Message(r.Context(), tenant, id)
	if errors.Is(err, store.ErrNotFound) || (err == nil && m.Removed && !allowRemoved) {
		notFound()
		return nil, nil, false
	}
	if err != nil {
		s.storeError(w, r, err)
		return nil, nil, false
	}
	th, err := s.o.Store.Thread(r.Context(), tenant, m.Thread)
	if err == nil {
		var ok bool
		ok, err = s.canSee(r.Context(), th, u)
		if err == nil && !ok {
			err = store.ErrNotFound
		}
	}
	if errors.Is(err, store.ErrNotFound) {
		notFound()
		return nil, nil, false
	}
	if err != nil {
		s.storeError(w, r, err)
		return nil, nil, false
	}
	return m, th, true
}

func (s *Server) threadID(w http.ResponseWriter, r *http.Request) (uint64, bool) {
	id, ok := store.ParseRef("th-", r.PathValue("th"))
	if !ok {
		writeProblem(w, http.StatusNotFound, "not-found", "Not found", "no such thread: "+r.PathValue("th"))
	}
	return id, ok
}

func (s *Server) getThread(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("t")
	rq, ok := s.begin(w, r, prelude{tenant: true, actor: requiredActor, thread: true})
	if !ok {
		return
	}
	u, id := rq.actor, rq.thread
	mlimit, ok := queryLimit(w, r, "messages_limit", defaultMessageLimit, maxMessageLimit)
	if !ok {
		return
	}
	th, ok := s.visibleThread(w, r, tenant, id, u)
	if !ok {
		return
	}
	tj, err := s.threadWithMessages(r.Context(), th, 0, mlimit)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, tj)
}

func (s *Server) listThreadMessages(w http.ResponseWriter, r *http.Request) {
	tenant := r.PathValue("t")
	rq, ok := s.begin(w, r, prelude{tenant: true, actor: requiredActor, thread: true})
	if !ok {
		return
	}
	u, id := rq.actor, rq.thread
	limit, ok := queryLimit(w, r, "limit", defaultMessageLimit, maxMessageLimit)
	if !ok {
		return
	}
	after, ok := parseMessageCursor(r.URL.Query().Get("cursor"))
	if !ok {
		invalid(w, "cursor: not a cursor of this listing (use next_cursor as given)")
		return
	}
	th, ok := s.visibleThread(w, r, tenant, id, u)
	if !ok {
		return
	}
	tj, err := s.threadWithMessages(r.Context(), th, after, limit)
	if err != nil {
		s.storeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"messages": tj.Messages, "next_cursor": tj.MessagesNextCursor})
}

func (s *Server) getMessage(w http.ResponseWriter, r *http.Request) {
	rq, ok := s.begin(w, r, prelude{tenant: true, actor: requiredActor})
	if !ok {
		return
	}
	u := rq.actor
	m, _, ok := s.visibleMessage(w, r, u, false)
	if !ok {
		return
	}
	writeJSON(w, http.StatusOK, s.messageOut(r.Context(), m))
}

// rawMessage streams the stored .eml (with syncrelay's
// Authentication-Results on top), with Range and ETag support.
func (s *Server) rawMessage(w http.ResponseWriter, r *http.Request) {
	rq, ok := s.begin(w, r, prelude{tenant: true, actor: requiredActor})
	if !ok {
		return
	}
	u := rq.actor
	m, _, ok := s.visibleMessage(w, r, u, false)
	if !ok {
		return
	}
	if m.Raw == "" {
		writeProblem(w, http.StatusNotFound, "no-raw", "No raw copy",
			"syncrelay holds no raw copy of "+store.MessageRef(m.ID)+" (a message it sent whose MIME was not kept)")
		return
	}
	f, err := s.o.Store.OpenRaw(r.Context(), m.Raw)
	if err != nil {
		s.o.Log.ErrorContext(r.Context(), "api: raw file of a stored message is unreadable", "tenant", m.Tenant, "message", store.MessageRef(m.ID), "err", err)
		writeProblem(w, http.StatusServiceUnavailable, "unavailable", "Temporarily unavailable", "the raw message could not be read; retry later")
		return
	}
	defer f.Close()
	h := w.Header()
	h.Set("Content-Type", "message/rfc822")
	h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": store.MessageRef(m.ID) + ".eml"}))
	h.Set("ETag", `"`+m.Raw+`"`)
	h.Set("Cache-Control", "private, no-cache")
	h.Set("X-Content-Type-Options", "nosniff")
	http.ServeContent(w, r, "", time.Time{}, f)
}

func (s *Server) getAttachment(w http.ResponseWriter, r *http.Request) {
	rq, ok := s.begin(w, r, prelude{tenant: true, actor: requiredActor})
	if !ok {
		return
	}
	u := rq.actor
	m, _, ok := s.visibleMessage(w, r, u, false)
	if !ok {
		return
	}
	part := r.PathValue("a")
	ex := s.extract(r.Context(), m)
	i := slices.IndexFunc(ex.Attachments, func(a mailtext.Attachment) bool { return a.Part == part })
	if i < 0 || m.Raw == "" {
		writeProblem(w, http.StatusNotFound, "not-found", "Not found", "no attachment "+part+" on "+store.MessageRef(m.ID))
		return
	}
	listed := ex.Attachments[i]
	f, err := s.o.Store.OpenRaw(r.Context(), m.Raw)
	if err != nil {
		s.o.Log.ErrorContext(r.Context(), "api: raw file of a stored message is unreadable", "tenant", m.Tenant, "message", store.MessageRef(m.ID), "err", err)
		writeProblem(w, http.StatusServiceUnavailable, "unavailable", "Temporarily unavailable", "the message could not be read; retry later")
		return
	}
	defer f.Close()
	err = mailtext.OpenPart(f, part, mailtext.Options{}, func(a mailtext.Attachment, body io.Reader) error {
		ct := a.ContentType
		if strings.HasPrefix(ct, "text/") {
			ct += "; charset=utf-8" // text parts are served decoded to UTF-8
		}
		h := w.Header()
		h.Set("Content-Type", ct)
		h.Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": a.Filename}))
		h.Set("Content-Length", strconv.FormatInt(listed.Size, 10))
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Content-Security-Policy", "sandbox")
		h.Set("Cache-Control", "private, no-cache")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodHead {
			return nil
		}
		_, err := io.Copy(w, io.LimitReader(body, listed.Size))
		return err
	})
	if errors.Is(err, mailtext.ErrNoPart) {
		writeProblem(w, http.StatusNotFound, "not-found", "Not found", "no attachment "+part+" on "+store.MessageRef(m.ID))
		return
	}
	if err != nil {
		s.o.Log.WarnContext(r.Context(), "api: attachment download interrupted", "message", store.MessageRef(m.ID), "err", err)
	}
}
