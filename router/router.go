// Package router decides what happens to one forwarded message: it parses
// the header, matches it to a thread (default-deny), authenticates it (DKIM,
// ARC), classifies it and, for a message of interest, commits it durably.
package router

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/mail"
	"strings"
	"time"

	"github.com/emersion/go-message/textproto"

	"syncrelay/mailhdr"
	"syncrelay/store"
	"syncrelay/token"
	"syncrelay/trust"
)

// Decisions (SPEC §8, replay output).
const (
	Stored      = "stored"
	Duplicate   = "duplicate"
	Discarded   = "discarded"
	Quarantined = "quarantined"
	Rejected    = "rejected"
	Tempfail    = "tempfail"
)

// ReasonDKIMUnaligned is the reason of a DKIM refusal (or quarantine) of
// the tenant's own users' mail that carries a valid signature, but none
// aligned or from the tenant's signing domains (SPEC §5, §7).
const ReasonDKIMUnaligned = "dkim_unaligned"

// How a message was matched to its thread (SPEC §3, rules 1-4, plus DSNs).
const (
	ByToken       = "token"
	ByLearnedID   = "learned_id"
	ByThreadToken = "x_syncrelay_thread"
	ByThreadIndex = "thread_index"
	ByDSN         = "dsn"
)

// Store is what the router needs from the store.
type Store interface {
	Tenant(ctx context.Context, id string) (*store.Tenant, error)
	UserByEmail(ctx context.Context, tenant, email string) (*store.User, error)
	LookupMsgID(ctx context.Context, tenant, msgid string) (store.Ref, bool, error)
	LookupMsgIDs(ctx context.Context, tenant string, ids []string) ([]store.Ref, error)
	LookupCopy(ctx context.Context, tenant string, thread uint64, msgid, digest string) (store.Ref, bool, error)
	ThreadByConvIndex(ctx context.Context, tenant, conv string) (uint64, bool, error)
	Thread(ctx context.Context, tenant string, id uint64) (*store.Thread, error)
	Message(ctx context.Context, tenant string, id uint64) (*store.Message, error)
	CommitInbound(ctx context.Context, in *store.Incoming) (store.CommitResult, error)
	MarkBounced(ctx context.Context, tenant string, id uint64, status, diag string) (already bool, err error)
	Quarantine(ctx context.Context, q *store.Quarantined, raw *store.Raw, keep time.Duration) error
	Count(tenant, decision, reason string)
}

// Verifier checks DKIM signatures and the ARC chain of a whole message.
type Verifier interface {
	Verify(ctx context.Context, r io.Reader) (trust.Verdict, error)
}

// Body is a message's DATA, readable from the start as often as needed.
type Body interface {
	Open() io.Reader
	Size() int64
}

// Router routes messages. All fields but Log are required.
type Router struct {
	Store          Store
	Keys           *token.Keyring
	Verifier       Verifier
	Hostname       string
	MaxHeaderBytes int64
	MaxMIMEDepth   int
	QuarantineFor  time.Duration
	// Salt keys the hash that is the only trace a discarded message leaves in logs.
	Salt []byte
	Log  *slog.Logger
}

// Input is one message as received by one tenant's inbound address.
type Input struct {
	Tenant string
	Body   Body
}

// Outcome is the decision for one message; its JSON is replay's output line.
type Outcome struct {
	Decision  string             `json:"decision"`
	Reason    string             `json:"reason"`
	Code      int                `json:"smtp_code"`
	Enhanced  [3]int             `json:"-"`
	Text      string             `json:"-"`
	Tenant    string             `json:"tenant"`
	Thread    string             `json:"thread"`
	Candidate string             `json:"candidate"`
	Direction string             `json:"direction"`
	MatchedBy string             `json:"matched_by"`
	AutoReply bool               `json:"auto_reply"`
	DKIM      []store.AuthResult `json:"dkim"`
	ARC       string             `json:"arc"`
	Message   string             `json:"message,omitempty"`
}

func (o *Outcome) reply(decision, reason string, code int, enh [3]int, text string) {
	o.Decision, o.Reason, o.Code, o.Enhanced, o.Text = decision, reason, code, enh, text
}

// Route decides one message. It returns an error only together with a
// tempfail outcome, for storage or other local trouble the sender should
// retry; every other problem is a decision.
func (r *Router) Route(ctx context.Context, in Input) (out Outcome, err error) {
	out = Outcome{Tenant: in.Tenant, DKIM: []store.AuthResult{}}
	defer func() {
		if err != nil {
			out.reply(Tempfail, "local_error", 451, [3]int{4, 3, 0}, "Temporary local problem, try again later")
		}
		r.Store.Count(in.Tenant, out.Decision, out.Reason)
	}()

	// Matching needs only the tenant's id; its record (domains, DKIM
	// policy) is read once the message is of interest, so discarded mail
	// costs no tenant read (a bbolt read and a JSON decode: 6% of the
	// discard path's CPU under bench/run.sh).
	ten := &store.Tenant{ID: in.Tenant}

	hdr, err := r.readHeader(in.Body)
	if err != nil {
		var tooBig *headerTooLarge
		if errors.As(err, &tooBig) {
			out.reply(Rejected, "header_too_large", 552, [3]int{5, 3, 4}, fmt.Sprintf("Message header exceeds %d bytes", r.MaxHeaderBytes))
		} else {
			out.reply(Rejected, "malformed_header", 554, [3]int{5, 6, 0}, "Malformed message header")
		}
		return out, nil
	}

	fromAddr := firstAddress(hdr.Get("From"))
	// Whether From is a tenant user matters to matching only through
	// X-Syncrelay-Thread (rule 3, sent copies), and to the direction of a
	// kept message: discarded mail without that header skips the read.
	var fromUser *store.User
	userKnown := false
	lookupUser := func() error {
		if userKnown || fromAddr == "" {
			return nil
		}
		userKnown = true
		u, err := r.Store.UserByEmail(ctx, ten.ID, fromAddr)
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("router: %w", err)
		}
		fromUser = u
		return nil
	}
	if hdr.Get("X-Syncrelay-Thread") != "" {
		if err := lookupUser(); err != nil {
			return out, err
		}
	}
	msgID, _ := mailhdr.NormalizeMsgID(hdr.Get("Message-Id"))

	// A DSN is tried first: bounces often carry References to the
	// original, and must mark it bounced rather than be stored as a reply.
	var dsn *mailhdr.DSN
	var m match
	if isReport(hdr) {
		dsn, m, err = r.matchDSN(ctx, ten, hdr, in.Body)
		if err != nil {
			return out, err
		}
	}
	if dsn != nil && !strings.EqualFold(dsn.Action, "failed") {
		// A delay or relay notice about our message is not a bounce and
		// not the candidate's mail: nothing to keep.
		out.reply(Discarded, "delivery_report", 250, [3]int{2, 0, 0}, "OK")
		r.logf(ctx, slog.LevelInfo, "discarded", "reason", "delivery_report", "msgid_hash", r.hashID(msgID))
		return out, nil
	}
	if !m.ok {
		m, err = r.match(ctx, ten, hdr, fromUser)
		if err != nil {
			return out, err
		}
	}
	if !m.ok {
		out.reply(Discarded, "no_match", 250, [3]int{2, 0, 0}, "OK")
		r.logf(ctx, slog.LevelInfo, "discarded", "reason", "no_match", "msgid_hash", r.hashID(msgID))
		return out, nil
	}
	if ten, err = r.Store.Tenant(ctx, in.Tenant); err != nil {
		return out, fmt.Errorf("router: %w", err)
	}
	out.MatchedBy = m.by
	out.Thread = store.ThreadRef(m.thread.ID)
	out.Candidate = m.thread.Candidate

	if r.MaxMIMEDepth > 0 {
		if _, derr := mailhdr.MIMEDepth(hdr, bodyAfterHeader(in.Body), r.MaxMIMEDepth); derr != nil {
			out.reply(Rejected, "mime_too_deep", 554, [3]int{5, 6, 0}, fmt.Sprintf("MIME nesting deeper than %d", r.MaxMIMEDepth))
			return out, nil
		}
	}

	// Authenticate only what is of interest: discards never cost a DNS query.
	verdict, err := r.Verifier.Verify(ctx, in.Body.Open())
	if err != nil {
		return out, fmt.Errorf("router: dkim: %w", err)
	}
	for _, d := range verdict.DKIM {
		out.DKIM = append(out.DKIM, store.AuthResult{Domain: d.Domain, Result: d.Result})
	}
	out.ARC = verdict.ARC.Result
	sealers := trustedSealers(ten)
	pass, why := trust.DecideFor(verdict, owner(ten), sealers)
	policy := ten.DKIMPolicy
	if policy == "" {
		policy = store.PolicyRequire
	}
	if !pass && policy != store.PolicyOff {
		if verdict.Temporary {
			out.reply(Tempfail, "dkim_temperror", 451, [3]int{4, 4, 3}, "Temporary DNS failure verifying DKIM, try again later")
			return out, nil
		}
		reason := "dkim_fail"
		if signers := trust.PassedDomains(verdict); len(signers) > 0 {
			if err := lookupUser(); err != nil {
				return out, err
			}
			if store.IsTenantAddress(ten, fromUser, fromAddr) {
				// The tenant's own mail, validly signed by a domain it has
				// not declared: a setup problem at the company (custom
				// DKIM, or signing_domains) that status and check name.
				reason = ReasonDKIMUnaligned
				for _, d := range signers {
					r.Store.Count(ten.ID, store.UnalignedSigners, d)
				}
			}
		}
		if policy == store.PolicyQuarantine {
			return r.quarantine(ctx, out, in, verdict, m, reason, why)
		}
		// The reply gives the reason in fixed words; resolver addresses,
		// zone file paths and Go errors stay in the log.
		out.reply(Rejected, reason, 550, [3]int{5, 7, 1}, "DKIM verification failed: "+trust.ReplyReason(verdict, sealers))
		r.logf(ctx, slog.LevelInfo, "rejected", "reason", reason, "why", why, "thread", out.Thread)
		return out, nil
	}

	if dsn != nil {
		already, err := r.Store.MarkBounced(ctx, ten.ID, m.ref.Message, dsn.Status, dsn.Diagnostic)
		if err != nil {
			return out, fmt.Errorf("router: bounce: %w", err)
		}
		out.Direction = store.Inbound
		out.Message = store.MessageRef(m.ref.Message)
		if already {
			out.reply(Duplicate, "bounce", 250, [3]int{2, 0, 0}, "OK")
			return out, nil
		}
		out.reply(Stored, "bounce", 250, [3]int{2, 0, 0}, "OK")
		r.logf(ctx, slog.LevelInfo, "bounce recorded", "thread", out.Thread, "message", out.Message, "status", dsn.Status)
		return out, nil
	}

	if err := lookupUser(); err != nil {
		return out, err
	}
	out.Direction = store.Inbound
	if fromUser != nil || (fromAddr != "" && store.IsTenantAddress(ten, nil, fromAddr)) {
		out.Direction = store.Outbound
	}
	auto, _ := mailhdr.AutoReply(hdr)
	out.AutoReply = auto

	inc := &store.Incoming{Mailbox: mailbox(hdr, fromAddr, out.Direction), Learn: m.sentCopy}
	inc.Message = store.Message{
		Tenant: ten.ID, Thread: m.thread.ID, Direction: out.Direction, InternetMessageID: msgID,
		From: fromAddr, To: addresses(hdr.Get("To")), Cc: addresses(hdr.Get("Cc")), Subject: decodeHeader(hdr.Get("Subject")),
		AutoReply: auto, MatchedBy: m.by, DKIM: out.DKIM, ARC: out.ARC,
		// Under dkim_policy=off nothing vouches for From, so it names no participant.
		AuthAligned: pass && policy != store.PolicyOff,
	}
	if d, derr := mail.ParseDate(hdr.Get("Date")); derr == nil {
		inc.Message.Date = d.UTC()
	}
	if m.sentCopy == nil && msgID == "" {
		if inc.Digest, err = contentDigest(in.Body); err != nil {
			return out, err
		}
	}
	if m.sentCopy == nil {
		// A copy of a message this thread already holds needs no second raw file.
		if _, dup, lerr := r.Store.LookupCopy(ctx, ten.ID, m.thread.ID, msgID, inc.Digest); lerr != nil {
			return out, fmt.Errorf("router: %w", lerr)
		} else if !dup {
			head := []byte("Authentication-Results: " + trust.AuthResults(r.Hostname, verdict) + "\r\n")
			inc.Raw = &store.Raw{Head: head, Body: in.Body.Open(), Size: in.Body.Size()}
		}
		inc.Event = map[string]any{"direction": out.Direction, "auto_reply": auto, "notify_users": notifyUsers(m.thread, out.Direction, auto)}
	}
	res, err := r.Store.CommitInbound(ctx, inc)
	if err != nil {
		return out, fmt.Errorf("router: commit: %w", err)
	}
	out.Message = store.MessageRef(res.Ref.Message)
	switch {
	case m.sentCopy != nil:
		out.reply(Duplicate, "sent_copy", 250, [3]int{2, 0, 0}, "OK")
	case res.Decision == store.Duplicate && res.Removed:
		out.reply(Duplicate, "removed", 250, [3]int{2, 0, 0}, "OK")
	case res.Decision == store.Duplicate:
		out.reply(Duplicate, "duplicate", 250, [3]int{2, 0, 0}, "OK")
	default:
		out.reply(Stored, m.by, 250, [3]int{2, 0, 0}, "OK")
	}
	r.logf(ctx, slog.LevelInfo, out.Decision, "reason", out.Reason, "thread", out.Thread, "message", out.Message,
		"matched_by", out.MatchedBy, "direction", out.Direction)
	return out, nil
}

func (r *Router) quarantine(ctx context.Context, out Outcome, in Input, v trust.Verdict, m match, reason, why string) (Outcome, error) {
	head := []byte("Authentication-Results: " + trust.AuthResults(r.Hostname, v) + "\r\n")
	raw := &store.Raw{Head: head, Body: in.Body.Open(), Size: in.Body.Size()}
	q := &store.Quarantined{Tenant: in.Tenant, Reason: why, Thread: m.thread.ID, DKIM: out.DKIM}
	keep := r.QuarantineFor
	if keep <= 0 {
		keep = 7 * 24 * time.Hour
	}
	if err := r.Store.Quarantine(ctx, q, raw, keep); err != nil {
		return out, fmt.Errorf("router: quarantine: %w", err)
	}
	out.reply(Quarantined, reason, 250, [3]int{2, 0, 0}, "OK")
	r.logf(ctx, slog.LevelWarn, "quarantined", "why", why, "thread", out.Thread)
	return out, nil
}

// match is the outcome of the thread-matching rules.
type match struct {
	ok       bool
	by       string
	ref      store.Ref // the referenced message, when known
	thread   *store.Thread
	sentCopy *store.Ref // set when the message is a user's forwarded sent copy
}

// match applies SPEC §3's rules in order.
func (r *Router) match(ctx context.Context, ten *store.Tenant, hdr textproto.Header, fromUser *store.User) (match, error) {
	ids := referencedIDs(hdr)
	// Rule 1: a referenced msg-id is a valid token of this tenant.
	for _, id := range ids {
		if tok, ok := r.Keys.ParseMessageID(id); ok && tok.Tenant == ten.ID {
			m, err := r.threadMatch(ctx, ten.ID, ByToken, store.Ref{Thread: tok.Thread, Message: tok.Message})
			if err != nil || m.ok {
				return r.withSentCopy(ctx, ten.ID, hdr, fromUser, m, err)
			}
		}
	}
	// Rule 2: a referenced msg-id is one we learned or received on a
	// thread (one read for all of them).
	refs, err := r.Store.LookupMsgIDs(ctx, ten.ID, ids)
	if err != nil {
		return match{}, fmt.Errorf("router: %w", err)
	}
	for _, ref := range refs {
		m, err := r.threadMatch(ctx, ten.ID, ByLearnedID, ref)
		if err != nil || m.ok {
			return r.withSentCopy(ctx, ten.ID, hdr, fromUser, m, err)
		}
	}
	// Rule 3: X-Syncrelay-Thread, only on mail from a tenant user.
	if fromUser != nil {
		if tok, ok := r.Keys.Parse(strings.TrimSpace(hdr.Get("X-Syncrelay-Thread"))); ok && tok.Tenant == ten.ID {
			m, err := r.threadMatch(ctx, ten.ID, ByThreadToken, store.Ref{Thread: tok.Thread, Message: tok.Message})
			if err != nil || m.ok {
				return r.withSentCopy(ctx, ten.ID, hdr, fromUser, m, err)
			}
		}
	}
	// Rule 4: the Thread-Index conversation header is one we issued.
	if conv, ok := token.ParseThreadIndex(hdr.Get("Thread-Index")); ok {
		id, ok, err := r.Store.ThreadByConvIndex(ctx, ten.ID, hex.EncodeToString(conv[:]))
		if err != nil {
			return match{}, fmt.Errorf("router: %w", err)
		}
		if ok {
			m, err := r.threadMatch(ctx, ten.ID, ByThreadIndex, store.Ref{Thread: id})
			return r.withSentCopy(ctx, ten.ID, hdr, fromUser, m, err)
		}
	}
	return match{}, nil
}

func (r *Router) threadMatch(ctx context.Context, tenant, by string, ref store.Ref) (match, error) {
	th, err := r.Store.Thread(ctx, tenant, ref.Thread)
	if errors.Is(err, store.ErrNotFound) {
		return match{}, nil // a valid MAC for a thread we no longer have counts as unknown
	}
	if err != nil {
		return match{}, fmt.Errorf("router: %w", err)
	}
	return match{ok: true, by: by, ref: ref, thread: th}, nil
}

// withSentCopy marks m as a user's forwarded sent copy when the message
// carries our X-Syncrelay-Thread for an outbound message of the same thread
// and comes from a tenant user: such a copy is never a second message.
func (r *Router) withSentCopy(ctx context.Context, tenant string, hdr textproto.Header, fromUser *store.User, m match, err error) (match, error) {
	if err != nil || !m.ok || fromUser == nil {
		return m, err
	}
	tok, ok := r.Keys.Parse(strings.TrimSpace(hdr.Get("X-Syncrelay-Thread")))
	if !ok || tok.Tenant != tenant || tok.Thread != m.thread.ID {
		return m, nil
	}
	sent, err := r.Store.Message(ctx, tenant, tok.Message)
	if errors.Is(err, store.ErrNotFound) {
		return m, nil
	}
	if err != nil {
		return m, fmt.Errorf("router: %w", err)
	}
	if sent.Direction == store.Outbound && sent.Thread == m.thread.ID {
		m.sentCopy = &store.Ref{Thread: sent.Thread, Message: sent.ID}
	}
	return m, nil
}

// matchDSN matches a delivery status notification by the Message-IDs of the
// returned original.
func (r *Router) matchDSN(ctx context.Context, ten *store.Tenant, hdr textproto.Header, body Body) (*mailhdr.DSN, match, error) {
	d, ok, err := mailhdr.ParseDSN(hdr, bodyAfterHeader(body), max(r.MaxMIMEDepth, 1), body.Size())
	if err != nil || !ok {
		return nil, match{}, nil // not a DSN we can read: match it as ordinary mail
	}
	for _, id := range d.OriginalMessageIDs {
		var ref store.Ref
		if tok, ok := r.Keys.ParseMessageID(id); ok && tok.Tenant == ten.ID {
			ref = store.Ref{Thread: tok.Thread, Message: tok.Message}
		} else if lref, ok, err := r.Store.LookupMsgID(ctx, ten.ID, id); err != nil {
			return nil, match{}, fmt.Errorf("router: %w", err)
		} else if ok {
			ref = lref
		} else {
			continue
		}
		sent, err := r.Store.Message(ctx, ten.ID, ref.Message)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, match{}, fmt.Errorf("router: %w", err)
		}
		if sent.Direction != store.Outbound {
			continue
		}
		m, err := r.threadMatch(ctx, ten.ID, ByDSN, ref)
		if err != nil || !m.ok {
			return nil, m, err
		}
		return &d, m, nil
	}
	return nil, match{}, nil
}

func (r *Router) logf(ctx context.Context, level slog.Level, msg string, args ...any) {
	if dl, ok := ctx.Value(decisionLogKey{}).(*DecisionLog); ok && level == slog.LevelInfo {
		dl.Args = append(append(dl.Args, "decision", msg), args...)
		return
	}
	if r.Log != nil {
		r.Log.Log(ctx, level, msg, args...)
	}
}

// DecisionLog collects the router's info-level decision line (the decision
// and its attributes: reason, thread, msgid_hash ...) instead of logging
// it, for a caller that writes one line per message: the SMTP session's
// "message" line carries it, which halves the log lines (and a tenth of the
// discard path's CPU went to logging). Warnings are still logged directly.
type DecisionLog struct {
	Args []any // key-value pairs, "decision" first
}

type decisionLogKey struct{}

// WithDecisionLog returns a context under which Route collects its decision
// line in the returned DecisionLog.
func WithDecisionLog(ctx context.Context) (context.Context, *DecisionLog) {
	dl := &DecisionLog{}
	return context.WithValue(ctx, decisionLogKey{}, dl), dl
}

// hashID is the only trace of a discarded message: a salted hash of its
// Message-ID, enough to correlate with the sender's logs on request.
func (r *Router) hashID(id string) string {
	h := sha256.New()
	h.Write(r.Salt)
	h.Write([]byte(id))
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// contentDigest is the duplicate key of mail without a usable Message-ID
// (SPEC §3): the sha256 of its DATA, the same on every redelivery.
func contentDigest(b Body) (string, error) {
	h := sha256.New()
	if _, err := io.Copy(h, b.Open()); err != nil {
		return "", fmt.Errorf("router: digest: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// --- header helpers ---

type headerTooLarge struct{}

func (*headerTooLarge) Error() string { return "header too large" }

func (r *Router) readHeader(b Body) (textproto.Header, error) {
	limit := r.MaxHeaderBytes
	if limit <= 0 {
		limit = 1 << 20
	}
	lr := &io.LimitedReader{R: b.Open(), N: limit + 1}
	h, err := textproto.ReadHeader(bufio.NewReader(lr))
	if lr.N <= 0 {
		return h, &headerTooLarge{}
	}
	return h, err
}

// bodyAfterHeader returns a reader positioned after the header block.
func bodyAfterHeader(b Body) io.Reader {
	br := bufio.NewReader(b.Open())
	_, _ = textproto.ReadHeader(br)
	return br
}

// referencedIDs lists In-Reply-To then References (newest first), without
// duplicates.
func referencedIDs(h textproto.Header) []string {
	var ids []string
	seen := map[string]bool{}
	add := func(id string) {
		if !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	for _, v := range h.Values("In-Reply-To") {
		for _, id := range mailhdr.MsgIDs(v) {
			add(id)
		}
	}
	var refs []string
	for _, v := range h.Values("References") {
		refs = append(refs, mailhdr.MsgIDs(v)...)
	}
	for i := len(refs) - 1; i >= 0; i-- {
		add(refs[i])
	}
	return ids
}

func isReport(h textproto.Header) bool {
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	return err == nil && mt == "multipart/report" && strings.EqualFold(params["report-type"], "delivery-status")
}

var wordDecoder = &mime.WordDecoder{CharsetReader: charsetReader}

func decodeHeader(v string) string {
	if d, err := wordDecoder.DecodeHeader(v); err == nil {
		return d
	}
	return v
}

func firstAddress(v string) string {
	if v == "" {
		return ""
	}
	if a, err := (&mail.AddressParser{WordDecoder: wordDecoder}).Parse(v); err == nil {
		return strings.ToLower(a.Address)
	}
	// Lenient fallback: the text between the last <>, or the whole value.
	if i, j := strings.LastIndexByte(v, '<'), strings.LastIndexByte(v, '>'); i >= 0 && j > i {
		v = v[i+1 : j]
	}
	v = strings.TrimSpace(v)
	if strings.Count(v, "@") != 1 || strings.ContainsAny(v, " \t,;") {
		return ""
	}
	return strings.ToLower(v)
}

func addresses(v string) []string {
	if v == "" {
		return nil
	}
	list, err := (&mail.AddressParser{WordDecoder: wordDecoder}).ParseList(v)
	if err != nil {
		if a := firstAddress(v); a != "" {
			return []string{a}
		}
		return nil
	}
	out := make([]string, 0, len(list))
	for _, a := range list {
		out = append(out, strings.ToLower(a.Address))
	}
	return out
}

// mailbox names the mailbox a forwarded copy came through.
func mailbox(h textproto.Header, from, direction string) string {
	for _, k := range []string{"X-Original-To", "Delivered-To", "X-Forwarded-To"} {
		if a := firstAddress(h.Get(k)); a != "" {
			return a
		}
	}
	if direction == store.Outbound {
		return from
	}
	return ""
}

func trustedSealers(t *store.Tenant) []string {
	s := append([]string(nil), t.TrustedForwarders...)
	switch t.Provider {
	case "google":
		s = append(s, "google.com")
	case "microsoft":
		s = append(s, "microsoft.com")
	}
	return s
}

// owner is what counts as the tenant's own DKIM signing domains.
func owner(t *store.Tenant) trust.Owner {
	return trust.Owner{Domains: t.Domains, SigningDomains: t.SigningDomains, Google: t.Provider == "google"}
}

// notifyUsers names who hears of a candidate's reply: the thread's owner
// and participants (Send For grantor and requester). Nobody for the user's
// own mail or for auto-replies.
func notifyUsers(th *store.Thread, direction string, auto bool) []string {
	users := []string{}
	if direction != store.Inbound || auto {
		return users
	}
	seen := map[string]bool{}
	for _, u := range append([]string{th.CreatedBy}, th.Participants...) {
		if u != "" && !seen[u] {
			seen[u] = true
			users = append(users, u)
		}
	}
	return users
}
