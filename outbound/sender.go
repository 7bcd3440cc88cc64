// Package outbound sends the ATS's mail through the users' own mailboxes
// (Gmail API or Microsoft Graph, SPEC §6): it checks Send For delegations,
// records the message and its thread before calling the provider (so a
// reply or sent copy that arrives first still matches), composes the MIME
// with the thread token headers, paces each sender under the provider's
// per-user quota, and retries 429/5xx with backoff and jitter, honouring
// Retry-After.
package outbound

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/mail"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/oauth2"

	"syncrelay/oauth"
	"syncrelay/store"
	"syncrelay/token"
)

// Kinds of send (SPEC §7).
const (
	KindOneOff      = "one_off"
	KindBulk        = "bulk"
	KindBulkArchive = "bulk_archive"
	KindNurture     = "nurture"
	KindAutomation  = "automation"
)

// ValidKind reports whether k is a kind of send.
func ValidKind(k string) bool {
	switch k {
	case KindOneOff, KindBulk, KindBulkArchive, KindNurture, KindAutomation:
		return true
	}
	return false
}

// Message statuses.
const (
	StatusSending = "sending"
	StatusSent    = "sent"
	StatusFailed  = "failed"
)

// Store is what the sender needs from the store.
type Store interface {
	Tenant(ctx context.Context, id string) (*store.Tenant, error)
	User(ctx context.Context, tenant, id string) (*store.User, error)
	Candidate(ctx context.Context, tenant, id string) (*store.Candidate, error)
	Message(ctx context.Context, tenant string, id uint64) (*store.Message, error)
	Thread(ctx context.Context, tenant string, id uint64) (*store.Thread, error)
	ThreadMessages(ctx context.Context, tenant string, thread uint64) ([]*store.Message, error)
	CreateOutbound(ctx context.Context, th *store.Thread, m *store.Message, mint store.MintFunc) error
	UpdateMessage(ctx context.Context, tenant string, id uint64, raw *store.Raw, fn func(*store.Message) error) (*store.Message, error)
	Grant(ctx context.Context, tenant, user string) (*store.Grant, error)
	OpenDelegation(ctx context.Context, tenant, requester, grantor string) (*store.Delegation, error)
	ReserveSlot(ctx context.Context, k string, interval time.Duration, burst int, maxWait time.Duration) (time.Duration, bool, error)
}

// Tokens hands out access tokens for users' grants (*oauth.Manager).
type Tokens interface {
	Token(ctx context.Context, tenant, user string) (*oauth2.Token, error)
	Refresh(ctx context.Context, tenant, user, rejected string) (*oauth2.Token, error)
}

// Options configure a Service.
type Options struct {
	Store  Store
	Tokens Tokens
	Keys   *token.Keyring
	// Providers by name ("google", "microsoft").
	Providers map[string]Provider
	// Category is the Outlook category of Microsoft tenants' mail ("": none).
	Category string
	// MaxRetries after a 429/5xx (0: none). RetryBaseDelay doubles per
	// retry up to MaxRetryDelay, with jitter; a Retry-After longer than
	// MaxRetryDelay fails the send instead of waiting.
	MaxRetries     int
	RetryBaseDelay time.Duration
	MaxRetryDelay  time.Duration
	// SenderRatePerMinute paces each sending mailbox (0: unlimited), with
	// bursts of up to SenderBurst (default min(rate, 10)). A send waits up
	// to MaxRateWait (default MaxRetryDelay) for its slot, else it is
	// refused with 429 and Retry-After.
	SenderRatePerMinute int
	SenderBurst         int
	MaxRateWait         time.Duration
	Now                 func() time.Time
	// Sleep waits d or until ctx ends (tests replace it).
	Sleep      func(ctx context.Context, d time.Duration) error
	Log        *slog.Logger
	Registerer prometheus.Registerer
}

// Service sends mail. It is safe for concurrent use.
type Service struct {
	o       Options
	sends   *prometheus.CounterVec
	retries *prometheus.CounterVec
}

// New builds a Service.
func New(o Options) (*Service, error) {
	if o.Store == nil || o.Tokens == nil || o.Keys == nil {
		return nil, errors.New("outbound: store, tokens and keys are required")
	}
	if o.RetryBaseDelay <= 0 {
		o.RetryBaseDelay = time.Second
	}
	if o.MaxRetryDelay <= 0 {
		o.MaxRetryDelay = 2 * time.Minute
	}
	if o.MaxRetries < 0 {
		o.MaxRetries = 0
	}
	if o.SenderBurst <= 0 {
		o.SenderBurst = min(max(o.SenderRatePerMinute, 1), 10)
	}
	if o.MaxRateWait <= 0 {
		o.MaxRateWait = o.MaxRetryDelay
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Sleep == nil {
		o.Sleep = sleep
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	s := &Service{o: o,
		sends: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncrelay_outbound_sends_total", Help: "Outbound sends by provider and result (sent, failed, refused).",
		}, []string{"provider", "result"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "syncrelay_outbound_retries_total", Help: "Provider calls retried after a 429, 5xx or transport error.",
		}, []string{"provider"}),
	}
	// Every provider's series at 0 from start, so that rate() alerts fire
	// on the first failure after a restart.
	for _, p := range o.Providers {
		for _, r := range []string{StatusSent, StatusFailed, "refused"} {
			s.sends.WithLabelValues(p.Name(), r)
		}
		s.retries.WithLabelValues(p.Name())
	}
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{s.sends, s.retries} {
			if err := o.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("outbound: metrics: %w", err)
			}
		}
	}
	return s, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Request is one message to send.
type Request struct {
	Tenant string
	// ActingUser is the person sending (X-Acting-User); with SendFor it is
	// the Send For requester.
	ActingUser string
	// SendFor names the grantor to send as ("" or ActingUser: nobody).
	SendFor   string
	Candidate string
	To, Cc    []string // default To: the candidate's first email
	Subject   string   // default on a reply: "Re: " + the replied message's subject
	Text      string
	HTML      string
	// ReplyTo is the external id ("m-12") of a message of the candidate's
	// thread to reply to; "" starts a new thread.
	ReplyTo string
	Kind    string // default one_off
}

// Result is the outcome of a send that was recorded (Appendix A).
type Result struct {
	MessageID         string `json:"message_id"`
	ThreadID          string `json:"thread_id"`
	Status            string `json:"status"`
	InternetMessageID string `json:"internet_message_id"`
	Error             string `json:"error,omitempty"`
}

// Refusal is a send refused before anything was recorded or sent. Status
// is the HTTP status the API answers with; Type names the problem.
type Refusal struct {
	Status     int
	Type       string
	Title      string
	Detail     string
	RetryAfter time.Duration
}

func (r *Refusal) Error() string { return r.Detail }

func refuse(status int, typ, title, format string, args ...any) *Refusal {
	return &Refusal{Status: status, Type: typ, Title: title, Detail: fmt.Sprintf(format, args...)}
}

// Limits of a request.
const (
	MaxRecipients   = 100
	MaxSubjectBytes = 998
)

// Validate checks and normalises the parts of a request that need no
// store: kind, addresses, subject, body. Errors are *Refusal (400, or 422 for
// a Send For automation).
func Validate(r *Request) error {
	if r.Kind == "" {
		r.Kind = KindOneOff
	}
	if !ValidKind(r.Kind) {
		return refuse(http.StatusBadRequest, "invalid", "Invalid request", "kind: must be one of one_off, bulk, bulk_archive, nurture, automation")
	}
	if r.SendFor == r.ActingUser {
		r.SendFor = ""
	}
	if r.SendFor != "" && r.Kind == KindAutomation {
		return refuse(http.StatusUnprocessableEntity, "send-for-automation", "Send For is not allowed for automations",
			"send_for cannot be used with kind automation: automated mail is only ever sent as its own sender (allowed kinds: one_off, bulk, bulk_archive, nurture)")
	}
	if strings.TrimSpace(r.Candidate) == "" {
		return refuse(http.StatusBadRequest, "invalid", "Invalid request", "candidate: required")
	}
	var err error
	if r.To, err = normAddrs("to", r.To); err != nil {
		return err
	}
	if r.Cc, err = normAddrs("cc", r.Cc); err != nil {
		return err
	}
	if len(r.To)+len(r.Cc) > MaxRecipients {
		return refuse(http.StatusBadRequest, "invalid", "Invalid request", "to, cc: at most %d recipients", MaxRecipients)
	}
	r.Subject = oneLine(r.Subject)
	if r.Subject == "" && r.ReplyTo == "" {
		return refuse(http.StatusBadRequest, "invalid", "Invalid request", "subject: required to start a thread")
	}
	if len(r.Subject) > MaxSubjectBytes {
		return refuse(http.StatusBadRequest, "invalid", "Invalid request", "subject: longer than %d bytes", MaxSubjectBytes)
	}
	if strings.TrimSpace(r.Text) == "" && strings.TrimSpace(r.HTML) == "" {
		return refuse(http.StatusBadRequest, "invalid", "Invalid request", "text: required (html is optional)")
	}
	if r.ReplyTo != "" {
		if _, ok := store.ParseRef("m-", r.ReplyTo); !ok {
			return refuse(http.StatusBadRequest, "invalid", "Invalid request", "reply_to_message: %q is not a message id (m-<n>)", r.ReplyTo)
		}
	}
	return nil
}

func normAddrs(field string, in []string) ([]string, error) {
	out := make([]string, 0, len(in))
	for _, a := range in {
		p, err := mail.ParseAddress(a)
		if err != nil || p.Name != "" || p.Address != strings.TrimSpace(a) || strings.ContainsAny(a, "\r\n") {
			return nil, refuse(http.StatusBadRequest, "invalid", "Invalid request", "%s: %q is not a plain email address", field, a)
		}
		if l := strings.ToLower(p.Address); !slices.Contains(out, l) {
			out = append(out, l)
		}
	}
	return out, nil
}

// plan is a validated send, ready to record.
type plan struct {
	req      Request
	tenant   *store.Tenant
	provider Provider
	acting   *store.User
	sender   *store.User // whose grant and mailbox: the grantor for Send For
	cand     *store.Candidate
	thread   *store.Thread    // nil: a new thread
	earlier  []*store.Message // the thread's messages so far
	target   *store.Message   // the message replied to
}

// Send validates, records and sends one message. A request refused before
// anything was recorded returns a *Refusal; once recorded, the outcome
// (sent or failed, with the provider's error) is in the Result and err is
// nil. Other errors are local trouble (store).
func (s *Service) Send(ctx context.Context, req Request) (*Result, error) {
	if err := Validate(&req); err != nil {
		return nil, err
	}
	p, err := s.prepare(ctx, req)
	if err != nil {
		var rf *Refusal
		if errors.As(err, &rf) {
			s.sends.WithLabelValues(providerOf(p), "refused").Inc()
		}
		return nil, err
	}
	if err := s.pace(ctx, p); err != nil {
		s.sends.WithLabelValues(p.provider.Name(), "refused").Inc()
		return nil, err
	}
	// Once the slot is taken, finish even if the caller goes away: the
	// provider call and the outcome's commit must not be cut halfway.
	return s.deliver(context.WithoutCancel(ctx), p)
}

func providerOf(p *plan) string {
	if p != nil && p.provider != nil {
		return p.provider.Name()
	}
	return "unknown"
}

func notFound(err error) bool { return errors.Is(err, store.ErrNotFound) }

func (s *Service) prepare(ctx context.Context, req Request) (*plan, error) {
	p := &plan{req: req}
	var err error
	if p.tenant, err = s.o.Store.Tenant(ctx, req.Tenant); err != nil {
		if notFound(err) {
			return nil, refuse(http.StatusNotFound, "not-found", "Not found", "tenant %q not found", req.Tenant)
		}
		return nil, err
	}
	p.provider = s.o.Providers[p.tenant.Provider]
	if p.provider == nil {
		return p, refuse(http.StatusServiceUnavailable, "provider-not-configured", "Provider not available",
			"no %s sending provider is configured", p.tenant.Provider)
	}
	if p.acting, err = s.o.Store.User(ctx, req.Tenant, req.ActingUser); err != nil {
		if notFound(err) {
			return p, refuse(http.StatusForbidden, "unknown-acting-user", "Unknown acting user",
				"X-Acting-User %q is not a user of tenant %q", req.ActingUser, req.Tenant)
		}
		return nil, err
	}
	p.sender = p.acting
	if req.SendFor != "" {
		grantor, err := s.o.Store.User(ctx, req.Tenant, req.SendFor)
		if err != nil {
			if notFound(err) {
				return p, refuse(http.StatusNotFound, "not-found", "Not found", "send_for: user %q not found", req.SendFor)
			}
			return nil, err
		}
		d, err := s.o.Store.OpenDelegation(ctx, req.Tenant, req.ActingUser, req.SendFor)
		switch {
		case notFound(err):
			return p, refuse(http.StatusForbidden, "send-for-not-allowed", "Send For not allowed",
				"%s has no Send For delegation from %s: request one (POST /v1/tenants/%s/delegations) and have %s approve it",
				req.ActingUser, req.SendFor, req.Tenant, req.SendFor)
		case err != nil:
			return nil, err
		case d.Status != store.DelegationActive:
			return p, refuse(http.StatusForbidden, "send-for-not-allowed", "Send For not allowed",
				"the Send For delegation %s from %s to %s is %s, not active: %s must approve it first",
				store.DelegationRef(d.ID), req.SendFor, req.ActingUser, d.Status, req.SendFor)
		}
		p.sender = grantor
	}
	if p.cand, err = s.o.Store.Candidate(ctx, req.Tenant, req.Candidate); err != nil {
		if notFound(err) {
			return p, refuse(http.StatusNotFound, "not-found", "Not found", "candidate %q not found", req.Candidate)
		}
		return nil, err
	}
	if req.ReplyTo != "" {
		if err := s.prepareReply(ctx, p); err != nil {
			return p, err
		}
	}
	if len(p.req.To) == 0 {
		if len(p.cand.Emails) == 0 {
			return p, refuse(http.StatusUnprocessableEntity, "no-recipient", "No recipient", "candidate %q has no email address; give to", p.cand.ID)
		}
		p.req.To = []string{strings.ToLower(p.cand.Emails[0])}
	}
	return p, s.checkGrant(ctx, p)
}

func (s *Service) prepareReply(ctx context.Context, p *plan) error {
	id, _ := store.ParseRef("m-", p.req.ReplyTo)
	m, err := s.o.Store.Message(ctx, p.req.Tenant, id)
	if notFound(err) || (err == nil && m.Removed) {
		return refuse(http.StatusNotFound, "not-found", "Not found", "reply_to_message: message %q not found", p.req.ReplyTo)
	}
	if err != nil {
		return err
	}
	th, err := s.o.Store.Thread(ctx, p.req.Tenant, m.Thread)
	if err != nil {
		return err
	}
	if !visible(th, p.acting) {
		return refuse(http.StatusNotFound, "not-found", "Not found", "reply_to_message: message %q not found", p.req.ReplyTo)
	}
	if th.Candidate != p.cand.ID {
		return refuse(http.StatusUnprocessableEntity, "wrong-candidate", "Message of another candidate",
			"reply_to_message %s is on a thread of candidate %q, not %q", p.req.ReplyTo, th.Candidate, p.cand.ID)
	}
	msgs, err := s.o.Store.ThreadMessages(ctx, p.req.Tenant, th.ID)
	if err != nil {
		return err
	}
	p.thread, p.earlier, p.target = th, msgs, m
	if p.req.Subject == "" {
		p.req.Subject = replySubject(m.Subject)
		if p.req.Subject == "" {
			p.req.Subject = replySubject(th.Subject)
		}
	}
	return nil
}

// visible applies SPEC §7's rule for secret threads to the acting user.
func visible(th *store.Thread, u *store.User) bool {
	if !th.Secret || store.RoleRank(u.Role) >= store.RoleRank(store.RoleAdmin) {
		return true
	}
	return th.SecretBy == u.ID || th.CreatedBy == u.ID || slices.Contains(th.Participants, u.ID)
}

func replySubject(s string) string {
	s = oneLine(s)
	if s == "" {
		return ""
	}
	if len(s) >= 3 && strings.EqualFold(s[:3], "re:") {
		return s
	}
	return "Re: " + s
}

// pace takes the sender's next rate-limit slot, waiting for it when it is
// near enough.
func (s *Service) pace(ctx context.Context, p *plan) error {
	if s.o.SenderRatePerMinute <= 0 {
		return nil
	}
	interval := time.Minute / time.Duration(s.o.SenderRatePerMinute)
	k := "rate/" + p.tenant.ID + "/" + p.sender.ID
	wait, ok, err := s.o.Store.ReserveSlot(ctx, k, interval, s.o.SenderBurst, s.o.MaxRateWait)
	if err != nil {
		return err
	}
	if !ok {
		r := refuse(http.StatusTooManyRequests, "sender-rate-limited", "Sender rate limit",
			"%s's mailbox may send %d messages a minute (outbound.sender_rate_per_minute); retry in %s",
			p.sender.ID, s.o.SenderRatePerMinute, wait.Round(time.Second))
		r.RetryAfter = wait
		return r
	}
	return s.o.Sleep(ctx, wait)
}

// deliver records, composes and sends.
func (s *Service) deliver(ctx context.Context, p *plan) (*Result, error) {
	now := s.o.Now().UTC()
	microsoft := p.tenant.Provider == "microsoft"
	th := store.Thread{Tenant: p.tenant.ID, Candidate: p.cand.ID, Subject: p.req.Subject, CreatedBy: p.acting.ID}
	if p.thread != nil {
		th.ID = p.thread.ID
	}
	msg := store.Message{From: strings.ToLower(p.sender.Email), To: p.req.To, Cc: p.req.Cc, Subject: p.req.Subject,
		Date: now, SentBy: p.acting.ID, Status: StatusSending}
	if p.sender.ID != p.acting.ID {
		msg.SendFor = p.sender.ID
	}
	var tok, msgid string
	err := s.o.Store.CreateOutbound(ctx, &th, &msg, func(thread, message uint64) (string, string) {
		id := token.ID{Tenant: p.tenant.ID, Thread: thread, Message: message}
		tok = s.o.Keys.Mint(id)
		msgid = strings.Trim(s.o.Keys.MessageID(id), "<>")
		conv := ""
		if microsoft {
			c := s.o.Keys.ConversationIndex(p.tenant.ID, thread)
			conv = hex.EncodeToString(c[:])
		}
		return msgid, conv
	})
	if err != nil {
		return nil, fmt.Errorf("outbound: record message: %w", err)
	}
	res := &Result{MessageID: store.MessageRef(msg.ID), ThreadID: store.ThreadRef(th.ID), InternetMessageID: msg.InternetMessageID}
	log := s.o.Log.With("tenant", p.tenant.ID, "thread", res.ThreadID, "message", res.MessageID,
		"provider", p.provider.Name(), "sender", p.sender.ID, "kind", p.req.Kind)

	mm := s.mail(p, &th, now, msgid, tok)
	raw, err := Compose(mm)
	if err == nil {
		// The raw copy is durable before the provider is called, like
		// the record: a reply may arrive before the send returns.
		_, err = s.o.Store.UpdateMessage(ctx, p.tenant.ID, msg.ID,
			&store.Raw{Body: bytes.NewReader(raw), Size: int64(len(raw))}, func(*store.Message) error { return nil })
	}
	if err != nil {
		log.ErrorContext(ctx, "outbound: could not compose or store the message; not sent", "err", err)
		s.finish(ctx, p, msg.ID, errors.New("syncrelay could not prepare the message (local storage error); it was not sent"))
		return nil, fmt.Errorf("outbound: prepare message: %w", err)
	}

	start := time.Now()
	_, attempts, sendErr := s.submit(ctx, p, raw)
	res.Status = StatusSent
	if sendErr != nil {
		res.Status, res.Error = StatusFailed, errorText(sendErr)
	}
	s.sends.WithLabelValues(p.provider.Name(), res.Status).Inc()
	if err := s.finish(ctx, p, msg.ID, sendErr); err != nil {
		log.ErrorContext(ctx, "outbound: could not record the send outcome", "status", res.Status, "err", err)
		return nil, fmt.Errorf("outbound: record outcome: %w", err)
	}
	if sendErr != nil {
		log.WarnContext(ctx, "outbound: send failed", "attempts", attempts, "elapsed", time.Since(start).Round(time.Millisecond), "err", res.Error)
	} else {
		log.InfoContext(ctx, "outbound: sent", "attempts", attempts, "elapsed", time.Since(start).Round(time.Millisecond))
	}
	return res, nil
}

// finish records the outcome on the message.
func (s *Service) finish(ctx context.Context, p *plan, id uint64, sendErr error) error {
	_, err := s.o.Store.UpdateMessage(ctx, p.tenant.ID, id, nil, func(m *store.Message) error {
		if sendErr != nil {
			m.Status, m.Error = StatusFailed, errorText(sendErr)
		} else {
			m.Status, m.Error = StatusSent, ""
		}
		return nil
	})
	return err
}

func errorText(err error) string {
	var rf *Refusal
	if errors.As(err, &rf) {
		return clean(rf.Detail, 1000)
	}
	return clean(err.Error(), 1000)
}

// mail builds the message to compose for plan p on thread th.
func (s *Service) mail(p *plan, th *store.Thread, now time.Time, msgid, tok string) *Mail {
	m := &Mail{
		From:        mail.Address{Name: p.sender.Name, Address: strings.ToLower(p.sender.Email)},
		Subject:     p.req.Subject,
		Text:        p.req.Text,
		HTML:        p.req.HTML,
		Date:        now,
		MessageID:   msgid,
		ThreadToken: tok,
	}
	for _, a := range p.req.To {
		m.To = append(m.To, mail.Address{Name: s.nameOf(p, a), Address: a})
	}
	for _, a := range p.req.Cc {
		m.Cc = append(m.Cc, mail.Address{Name: s.nameOf(p, a), Address: a})
	}
	if p.target != nil {
		m.InReplyTo = visibleID(p.target)
		m.References = references(p.earlier, p.target)
	}
	if p.tenant.Provider == "microsoft" {
		m.ThreadIndex = s.o.Keys.ThreadIndex(p.tenant.ID, th.ID, now, len(p.earlier))
		m.ThreadTopic = strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(th.Subject, "Re: "), "RE: "))
		if s.o.Category != "" {
			m.Keywords = []string{s.o.Category}
		}
	}
	return m
}

func (s *Service) nameOf(p *plan, addr string) string {
	for _, e := range p.cand.Emails {
		if strings.EqualFold(e, addr) {
			return p.cand.Name
		}
	}
	return ""
}

// visibleID is the Message-ID recipients saw for m: the provider's, when
// syncrelay learned that it rewrote ours, else the original.
func visibleID(m *store.Message) string {
	if m.Direction == store.Outbound && len(m.LearnedIDs) > 0 {
		return m.LearnedIDs[len(m.LearnedIDs)-1]
	}
	if strings.HasPrefix(m.InternetMessageID, "no-id.") {
		return ""
	}
	return m.InternetMessageID
}

// maxReferences bounds the References header; like RFC 5322 §3.6.4 suggests
// for long threads, the first (root) id and the latest ones are kept.
const maxReferences = 20

// references lists the ids of the thread's messages up to and including
// target, oldest first: each message's own id and any provider-assigned id
// learned for it, so replies match whichever one a client keeps.
func references(msgs []*store.Message, target *store.Message) []string {
	var ids []string
	add := func(id string) {
		if id != "" && !strings.HasPrefix(id, "no-id.") && !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	for _, m := range msgs {
		if m.ID > target.ID {
			break
		}
		add(m.InternetMessageID)
		for _, l := range m.LearnedIDs {
			add(l)
		}
	}
	if !slices.ContainsFunc(msgs, func(m *store.Message) bool { return m.ID == target.ID }) {
		add(target.InternetMessageID)
	}
	if len(ids) > maxReferences {
		ids = append(ids[:1], ids[len(ids)-(maxReferences-1):]...)
	}
	return ids
}

// submit calls the provider with the sender's token, refreshing once on a
// 401 and retrying 429/5xx/transport errors with backoff. It returns the
// number of provider calls made.
func (s *Service) submit(ctx context.Context, p *plan, raw []byte) (Sent, int, error) {
	tenant, user, prov := p.tenant.ID, p.sender.ID, p.provider
	calls, retries := 0, 0
	refreshed := false
	for {
		tok, err := s.o.Tokens.Token(ctx, tenant, user)
		if err != nil {
			var re *oauth.RefreshError
			if errors.As(err, &re) && re.Temporary {
				if d, ok := s.retryDelay(retries, 0); ok {
					retries++
					s.retries.WithLabelValues(prov.Name()).Inc()
					if err := s.o.Sleep(ctx, d); err != nil {
						return Sent{}, calls, err
					}
					continue
				}
			}
			return Sent{}, calls, grantErr(err)
		}
		calls++
		sent, err := prov.Send(ctx, tok.AccessToken, raw)
		if err == nil {
			return sent, calls, nil
		}
		var pe *Error
		if !errors.As(err, &pe) {
			return Sent{}, calls, err
		}
		if pe.Unauthorized && !refreshed {
			// The provider refused a token we thought valid (revoked or
			// rotated elsewhere): refresh once and try again.
			refreshed = true
			if _, rerr := s.o.Tokens.Refresh(ctx, tenant, user, tok.AccessToken); rerr != nil {
				var re *oauth.RefreshError
				if !errors.As(rerr, &re) || !re.Temporary {
					return Sent{}, calls, grantErr(rerr)
				}
			}
			continue
		}
		if !pe.Temporary {
			return Sent{}, calls, err
		}
		d, ok := s.retryDelay(retries, pe.RetryAfter)
		if !ok {
			if retries < s.o.MaxRetries && pe.RetryAfter > s.o.MaxRetryDelay {
				return Sent{}, calls, fmt.Errorf("%w (it asked to retry after %s, longer than outbound.max_retry_delay %s)",
					err, pe.RetryAfter, s.o.MaxRetryDelay)
			}
			return Sent{}, calls, fmt.Errorf("%w (gave up after %d attempts)", err, calls)
		}
		retries++
		s.retries.WithLabelValues(prov.Name()).Inc()
		if err := s.o.Sleep(ctx, d); err != nil {
			return Sent{}, calls, err
		}
	}
}

// retryDelay is the wait before retry number n+1: exponential from
// RetryBaseDelay, capped at MaxRetryDelay, with "equal jitter" (half fixed,
// half random), and at least the provider's Retry-After. ok is false when no
// retry is left or the provider asks for more than MaxRetryDelay.
func (s *Service) retryDelay(n int, retryAfter time.Duration) (time.Duration, bool) {
	if n >= s.o.MaxRetries || retryAfter > s.o.MaxRetryDelay {
		return 0, false
	}
	d := s.o.MaxRetryDelay
	if n < 30 {
		d = min(s.o.RetryBaseDelay<<n, s.o.MaxRetryDelay)
	}
	d = d/2 + rand.N(d/2+1)
	return max(d, retryAfter), true
}

// grantErr words token errors for the message's error field.
func grantErr(err error) error {
	switch {
	case errors.Is(err, oauth.ErrNoGrant):
		return errors.New("the sender has not connected a mailbox")
	default:
		return err
	}
}
