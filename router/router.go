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
	"slices"
	"strconv"
	"strings"
	"sync"
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

// Outcomes lists every decision and reason Route can return (a test of
// this package checks each outcome its tests see against it), so that the
// daemon exports every syncrelay_messages_total series at 0 from start.
func Outcomes() [][2]string {
	return [][2]string{
		{Stored, ByToken}, {Stored, ByLearnedID}, {Stored, ByThreadToken}, {Stored, ByThreadIndex}, {Stored, "bounce"},
		{Duplicate, "duplicate"}, {Duplicate, "sent_copy"}, {Duplicate, "removed"}, {Duplicate, "bounce"},
		{Discarded, "no_match"}, {Discarded, "delivery_report"}, {Discarded, ReasonProbe},
		{Quarantined, "dkim_fail"}, {Quarantined, ReasonDKIMUnaligned},
		{Rejected, "header_too_large"}, {Rejected, "malformed_header"}, {Rejected, "mime_too_deep"},
		{Rejected, "dkim_fail"}, {Rejected, ReasonDKIMUnaligned},
		{Tempfail, "dkim_temperror"}, {Tempfail, "local_error"},
	}
}

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
	// Probes recognises the email admin page's forwarding probes (nil:
	// none are sent). See ProbeSink.
	Probes ProbeSink
}

// ProbeSink recognises a forwarding probe (pages.Server): a message that
// carries HeaderProbe and whose value is the tenant's current probe is
// recorded as returned and discarded, never matched or stored.
type ProbeSink interface {
	ProbeReturned(ctx context.Context, tenant, value string) (bool, error)
}

// HeaderProbe is the header of a forwarding probe (pages.HeaderProbe).
const HeaderProbe = "X-Syncrelay-Probe"

// ReasonProbe is the discard reason of a returned forwarding probe.
const ReasonProbe = "probe"

// Input is one message as received by one tenant's inbound address.
type Input struct {
	Tenant string
	Body   Body
	// Released marks a quarantined copy an admin released to the profile
	// (email admin page): a DKIM refusal no longer holds it back; it is
	// stored with its failing results recorded, and From vouches for no
	// participant.
	Released bool
}

// Outcome is the decision for one message; its JSON is replay's output
// line. It holds no SMTP reply: smtpd's reply table turns Decision, Reason
// and Detail into one.
type Outcome struct {
	Decision  string             `json:"decision"`
	Reason    string             `json:"reason"`
	Tenant    string             `json:"tenant"`
	Thread    string             `json:"thread"`
	Candidate string             `json:"candidate"`
	Direction string             `json:"direction"`
	MatchedBy string             `json:"matched_by"`
	AutoReply bool               `json:"auto_reply"`
	DKIM      []store.AuthResult `json:"dkim"`
	ARC       string             `json:"arc"`
	Message   string             `json:"message,omitempty"`
	// Detail completes the reply to a refusal in fixed words (which DKIM
	// check failed, a limit); never resolver addresses, paths or Go errors.
	Detail string `json:"-"`
	// Log is the decision's log line as key-value pairs, "decision" first
	// (reason, thread, msgid_hash ...): the caller writes it, on the SMTP
	// session's one "message" line. Route logs only warnings itself.
	Log []any `json:"-"`
}

func (o *Outcome) decide(decision, reason string) { o.Decision, o.Reason = decision, reason }

// withThread is args, plus the thread once the message was matched to one.
func withThread(o *Outcome, args ...any) []any {
	if o.Thread != "" {
		args = append(args, "thread", o.Thread)
	}
	return args
}

// logAs sets the decision's log line.
func (o *Outcome) logAs(decision string, args ...any) {
	o.Log = append(append(make([]any, 0, len(args)+2), "decision", decision), args...)
}

// Route decides one message: parse, match (default-deny), authenticate,
// commit. It returns an error only together with a tempfail outcome, for
// storage or other local trouble the sender should retry; every other
// problem is a decision.
func (r *Router) Route(ctx context.Context, in Input) (out Outcome, err error) {
	out = Outcome{Tenant: in.Tenant, DKIM: []store.AuthResult{}}
	defer func() {
		if err != nil {
			out.decide(Tempfail, "local_error")
			// The message line says what the 451 was (the error itself
			// is logged by smtpd's error mapping, with the session id).
			out.logAs(Tempfail, withThread(&out, "reason", "local_error")...)
		}
		r.Store.Count(in.Tenant, out.Decision, out.Reason)
	}()

	msg, refusal := r.parse(in)
	if refusal != "" {
		r.refuse(&out, refusal)
		return out, nil
	}
	if v := msg.fields().Get(HeaderProbe); v != "" && r.Probes != nil {
		ok, err := r.Probes.ProbeReturned(ctx, in.Tenant, v)
		if err != nil {
			return out, fmt.Errorf("router: probe: %w", err)
		}
		if ok {
			out.decide(Discarded, ReasonProbe)
			out.logAs(Discarded, "reason", ReasonProbe)
			return out, nil
		}
	}
	m, discard, err := r.matchThread(ctx, msg)
	if err != nil {
		return out, err
	}
	if discard != "" {
		out.decide(Discarded, discard)
		out.logAs(Discarded, "reason", discard, "msgid_hash", r.hashID(msg.msgID))
		return out, nil
	}
	if err := r.wholeHeader(msg); err != nil {
		return out, err
	}
	// Matching needs only the tenant's id; its record (domains, DKIM
	// policy) is read once the message is of interest, so discarded mail
	// costs no tenant read (a bbolt read and a JSON decode: 6% of the
	// discard path's CPU under bench/run.sh).
	if msg.tenant, err = r.Store.Tenant(ctx, in.Tenant); err != nil {
		return out, fmt.Errorf("router: %w", err)
	}
	out.MatchedBy = m.by
	out.Thread = store.ThreadRef(m.thread.ID)
	out.Candidate = m.thread.Candidate
	if refusal := r.checkMIME(msg); refusal != "" {
		r.refuse(&out, refusal)
		return out, nil
	}

	a, err := r.authenticate(ctx, msg, &out)
	if err == nil && a.refusal != "" && in.Released {
		a.refusal = ""
	}
	switch {
	case err != nil:
		return out, err
	case a.temporary:
		out.decide(Tempfail, "dkim_temperror")
		return out, nil
	case a.refusal != "" && a.policy == store.PolicyQuarantine:
		return out, r.quarantine(ctx, &out, msg, a, m)
	case a.refusal != "":
		out.decide(Rejected, a.refusal)
		out.Detail = trust.ReplyReason(a.verdict, a.sealers)
		out.logAs(Rejected, "reason", a.refusal, "why", a.why, "thread", out.Thread)
		return out, nil
	case m.dsn != nil:
		return out, r.bounce(ctx, msg, m, &out)
	}
	return out, r.commit(ctx, msg, m, a, &out)
}

// refuse decides a refusal of the message's content (reason as parse and
// checkMIME name it).
func (r *Router) refuse(out *Outcome, reason string) {
	out.decide(Rejected, reason)
	out.logAs(Rejected, withThread(out, "reason", reason)...)
	switch reason {
	case "header_too_large":
		out.Detail = strconv.FormatInt(r.MaxHeaderBytes, 10)
	case "mime_too_deep":
		out.Detail = strconv.Itoa(r.MaxMIMEDepth)
	}
}

// parsed is a message whose header has been read.
type parsed struct {
	in Input
	// narrow holds narrowKeys' fields, until wholeHeader reads them all
	// into hdr (fields says which to read).
	narrow *narrowHeader
	hdr    textproto.Header
	// headerLen is the header block's length in bytes: where the body starts.
	headerLen int64
	from      string // the first From address, lowercased ("" if none)
	msgID     string // normalized Message-ID ("" if none)
	tenant    *store.Tenant
	// fromUser is the tenant user From names, read only when needed
	// (lookupUser).
	fromUser  *store.User
	userKnown bool
}

// parse reads the header fields that matching needs (scanHeader); refusal
// names what is wrong with the header ("header_too_large",
// "malformed_header"), "" when nothing is.
func (r *Router) parse(in Input) (msg *parsed, refusal string) {
	hdr, headerLen, err := r.scanHeader(in.Body)
	if err != nil {
		var tooBig *headerTooLarge
		if errors.As(err, &tooBig) {
			return nil, "header_too_large"
		}
		return nil, "malformed_header"
	}
	msgID, _ := mailhdr.NormalizeMsgID(hdr.Get("Message-Id"))
	return &parsed{
		in: in, narrow: hdr, headerLen: headerLen, from: firstAddress(hdr.Get("From")), msgID: msgID,
		tenant: &store.Tenant{ID: in.Tenant},
	}, ""
}

// wholeHeader reads every field of the header, for a message that
// matched a thread or is a report: scanHeader kept only narrowKeys'.
func (r *Router) wholeHeader(msg *parsed) error {
	if msg.narrow == nil {
		return nil
	}
	hdr, _, err := r.readHeader(msg.in.Body)
	if err != nil { // scanHeader read the same bytes without error
		return fmt.Errorf("router: header read again: %w", err)
	}
	msg.hdr, msg.narrow = hdr, nil
	return nil
}

// fields is the header as read so far: narrowKeys' fields, or all.
func (msg *parsed) fields() header {
	if msg.narrow != nil {
		return msg.narrow
	}
	return &msg.hdr
}

// checkMIME refuses a message nested deeper than MaxMIMEDepth
// ("mime_too_deep"); only mail of interest gets this far.
func (r *Router) checkMIME(msg *parsed) (refusal string) {
	if r.MaxMIMEDepth <= 0 {
		return ""
	}
	if _, err := mailhdr.MIMEDepth(msg.hdr, bodyAfterHeader(msg.in.Body, msg.headerLen), r.MaxMIMEDepth); err != nil {
		return "mime_too_deep"
	}
	return ""
}

// lookupUser reads the tenant user From names, once. Whether From is a
// tenant user matters to matching only through X-Syncrelay-Thread (rule 3,
// sent copies), and to the direction of a kept message: discarded mail
// without that header skips the read.
func (r *Router) lookupUser(ctx context.Context, msg *parsed) error {
	if msg.userKnown || msg.from == "" {
		return nil
	}
	msg.userKnown = true
	u, err := r.Store.UserByEmail(ctx, msg.tenant.ID, msg.from)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	msg.fromUser = u
	return nil
}

// matchThread applies default-deny: it returns the thread the message
// belongs to, or the reason it is discarded ("no_match", or
// "delivery_report" for a delay or relay notice about our mail).
func (r *Router) matchThread(ctx context.Context, msg *parsed) (m match, discard string, err error) {
	if msg.fields().Get("X-Syncrelay-Thread") != "" {
		if err := r.lookupUser(ctx, msg); err != nil {
			return m, "", err
		}
	}
	// A DSN is tried first: bounces often carry References to the
	// original, and must mark it bounced rather than be stored as a reply.
	if isReport(msg.fields()) {
		if err := r.wholeHeader(msg); err != nil {
			return m, "", err
		}
		if m, err = r.matchDSN(ctx, msg.tenant, msg.hdr, msg.in.Body, msg.headerLen); err != nil {
			return m, "", err
		}
	}
	if m.dsn != nil && !strings.EqualFold(m.dsn.Action, "failed") {
		// A delay or relay notice about our message is not a bounce and
		// not the candidate's mail: nothing to keep.
		return match{}, "delivery_report", nil
	}
	if !m.ok {
		if m, err = r.match(ctx, msg.tenant, msg.fields(), msg.fromUser); err != nil {
			return m, "", err
		}
	}
	if !m.ok {
		return m, "no_match", nil
	}
	return m, "", nil
}

// auth is what authenticate found.
type auth struct {
	verdict   trust.Verdict
	sealers   []string
	policy    string // the tenant's DKIM policy, store.PolicyRequire if unset
	pass      bool   // trust.DecideFor passed
	why       string // for the log: why it did not
	temporary bool   // not passed for a temporary DNS failure: tempfail
	refusal   string // "dkim_fail" or "dkim_unaligned": refuse or quarantine
}

// authenticate checks DKIM and ARC (only mail of interest gets this far:
// discards never cost a DNS query) and applies the tenant's policy. It
// records the results on out.
func (r *Router) authenticate(ctx context.Context, msg *parsed, out *Outcome) (a auth, err error) {
	ten := msg.tenant
	if a.verdict, err = r.Verifier.Verify(ctx, msg.in.Body.Open()); err != nil {
		return a, fmt.Errorf("router: dkim: %w", err)
	}
	for _, d := range a.verdict.DKIM {
		out.DKIM = append(out.DKIM, store.AuthResult{Domain: d.Domain, Result: d.Result})
	}
	out.ARC = a.verdict.ARC.Result
	a.sealers = trustedSealers(ten)
	a.pass, a.why = trust.DecideFor(a.verdict, owner(ten), a.sealers)
	if a.policy = ten.DKIMPolicy; a.policy == "" {
		a.policy = store.PolicyRequire
	}
	if a.pass || a.policy == store.PolicyOff {
		return a, nil
	}
	if a.verdict.Temporary {
		a.temporary = true
		return a, nil
	}
	a.refusal = "dkim_fail"
	if signers := trust.PassedDomains(a.verdict); len(signers) > 0 {
		if err := r.lookupUser(ctx, msg); err != nil {
			return a, err
		}
		if store.IsTenantAddress(ten, msg.fromUser, msg.from) {
			// The tenant's own mail, validly signed by a domain it has
			// not declared: a setup problem at the company (custom
			// DKIM, or signing_domains) that status and check name.
			a.refusal = ReasonDKIMUnaligned
			for _, d := range signers {
				r.Store.Count(ten.ID, store.UnalignedSigners, d)
			}
		}
	}
	return a, nil
}

// bounce marks the sent message a failed DSN reports on.
func (r *Router) bounce(ctx context.Context, msg *parsed, m match, out *Outcome) error {
	already, err := r.Store.MarkBounced(ctx, msg.tenant.ID, m.ref.Message, m.dsn.Status, m.dsn.Diagnostic)
	if err != nil {
		return fmt.Errorf("router: bounce: %w", err)
	}
	out.Direction = store.Inbound
	out.Message = store.MessageRef(m.ref.Message)
	if already {
		out.decide(Duplicate, "bounce")
		return nil
	}
	out.decide(Stored, "bounce")
	out.logAs("bounce recorded", "thread", out.Thread, "message", out.Message, "status", m.dsn.Status)
	return nil
}

// commit stores a message of interest durably, or records it as a
// duplicate of what the thread holds.
func (r *Router) commit(ctx context.Context, msg *parsed, m match, a auth, out *Outcome) error {
	if err := r.lookupUser(ctx, msg); err != nil {
		return err
	}
	ten, hdr := msg.tenant, msg.hdr
	out.Direction = store.Inbound
	if msg.fromUser != nil || (msg.from != "" && store.IsTenantAddress(ten, nil, msg.from)) {
		out.Direction = store.Outbound
	}
	auto, _ := mailhdr.AutoReply(hdr)
	out.AutoReply = auto

	inc := &store.Incoming{Mailbox: mailbox(hdr, msg.from, out.Direction), Learn: m.sentCopy}
	inc.Message = store.Message{
		Tenant: ten.ID, Thread: m.thread.ID, Direction: out.Direction, InternetMessageID: msg.msgID,
		From: msg.from, To: addresses(hdr.Get("To")), Cc: addresses(hdr.Get("Cc")), Subject: decodeHeader(hdr.Get("Subject")),
		AutoReply: auto, MatchedBy: m.by, DKIM: out.DKIM, ARC: out.ARC,
		// Under dkim_policy=off nothing vouches for From, so it names no participant.
		AuthAligned: a.pass && a.policy != store.PolicyOff,
	}
	if d, derr := mailhdr.ParseDate(hdr.Get("Date")); derr == nil {
		inc.Message.Date = d.UTC()
	}
	var err error
	if m.sentCopy == nil && msg.msgID == "" {
		if inc.Digest, err = contentDigest(msg.in.Body); err != nil {
			return err
		}
	}
	if m.sentCopy == nil {
		// A copy of a message this thread already holds needs no second raw file.
		if _, dup, lerr := r.Store.LookupCopy(ctx, ten.ID, m.thread.ID, msg.msgID, inc.Digest); lerr != nil {
			return fmt.Errorf("router: %w", lerr)
		} else if !dup {
			inc.Raw = r.raw(msg, a.verdict)
		}
		inc.Event = map[string]any{"direction": out.Direction, "auto_reply": auto, "notify_users": notifyUsers(m.thread, out.Direction, auto)}
	}
	res, err := r.Store.CommitInbound(ctx, inc)
	if err != nil {
		return fmt.Errorf("router: commit: %w", err)
	}
	out.Message = store.MessageRef(res.Ref.Message)
	switch {
	case m.sentCopy != nil:
		out.decide(Duplicate, "sent_copy")
	case res.Decision == store.Duplicate && res.Removed:
		out.decide(Duplicate, "removed")
	case res.Decision == store.Duplicate:
		out.decide(Duplicate, "duplicate")
	default:
		out.decide(Stored, m.by)
	}
	out.logAs(out.Decision, "reason", out.Reason, "thread", out.Thread, "message", out.Message,
		"matched_by", out.MatchedBy, "direction", out.Direction)
	return nil
}

// raw is the message as stored: our Authentication-Results, then the DATA.
func (r *Router) raw(msg *parsed, v trust.Verdict) *store.Raw {
	head := []byte("Authentication-Results: " + trust.AuthResults(r.Hostname, v) + "\r\n")
	return &store.Raw{Head: head, Body: msg.in.Body.Open(), Size: msg.in.Body.Size()}
}

// quarantine keeps a message that failed DKIM under dkim_policy=quarantine
// for review instead of refusing it.
func (r *Router) quarantine(ctx context.Context, out *Outcome, msg *parsed, a auth, m match) error {
	q := &store.Quarantined{Tenant: msg.tenant.ID, Reason: a.why, Thread: m.thread.ID, DKIM: out.DKIM}
	keep := r.QuarantineFor
	if keep <= 0 {
		keep = 7 * 24 * time.Hour
	}
	if err := r.Store.Quarantine(ctx, q, r.raw(msg, a.verdict), keep); err != nil {
		return fmt.Errorf("router: quarantine: %w", err)
	}
	out.decide(Quarantined, a.refusal)
	if r.Log != nil {
		r.Log.WarnContext(ctx, "quarantined", "why", a.why, "thread", out.Thread)
	}
	return nil
}

// match is the outcome of the thread-matching rules.
type match struct {
	ok       bool
	by       string
	ref      store.Ref // the referenced message, when known
	thread   *store.Thread
	sentCopy *store.Ref   // set when the message is a user's forwarded sent copy
	dsn      *mailhdr.DSN // set when the message is a failed DSN about our mail
}

// match applies SPEC §3's rules in order.
func (r *Router) match(ctx context.Context, ten *store.Tenant, hdr header, fromUser *store.User) (match, error) {
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
func (r *Router) withSentCopy(ctx context.Context, tenant string, hdr header, fromUser *store.User, m match, err error) (match, error) {
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
// returned original (m.dsn is set when it does).
func (r *Router) matchDSN(ctx context.Context, ten *store.Tenant, hdr textproto.Header, body Body, headerLen int64) (match, error) {
	d, ok, err := mailhdr.ParseDSN(hdr, bodyAfterHeader(body, headerLen), max(r.MaxMIMEDepth, 1), body.Size())
	if err != nil || !ok {
		return match{}, nil // not a DSN we can read: match it as ordinary mail
	}
	for _, id := range d.OriginalMessageIDs {
		var ref store.Ref
		if tok, ok := r.Keys.ParseMessageID(id); ok && tok.Tenant == ten.ID {
			ref = store.Ref{Thread: tok.Thread, Message: tok.Message}
		} else if lref, ok, err := r.Store.LookupMsgID(ctx, ten.ID, id); err != nil {
			return match{}, fmt.Errorf("router: %w", err)
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
			return match{}, fmt.Errorf("router: %w", err)
		}
		if sent.Direction != store.Outbound {
			continue
		}
		m, err := r.threadMatch(ctx, ten.ID, ByDSN, ref)
		if err != nil || !m.ok {
			return m, err
		}
		m.dsn = &d
		return m, nil
	}
	return match{}, nil
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

// headerReaders pools readHeader's bufio.Readers (4 KiB each, one per
// message otherwise). textproto.ReadHeader copies every line out of the
// buffer, so nothing it returns points into a pooled reader.
var headerReaders = sync.Pool{New: func() any { return bufio.NewReader(nil) }}

// readHeader parses the header block and returns it with its length in
// bytes (up to and including the empty line), where the body starts.
func (r *Router) readHeader(b Body) (h textproto.Header, n int64, err error) {
	n, err = r.headerBlock(b, func(br *bufio.Reader) (err error) {
		h, err = textproto.ReadHeader(br)
		return err
	})
	return h, n, err
}

// headerBlock runs read over the start of b, held to MaxHeaderBytes, and
// returns the header block's length: what read consumed (what was read from
// the body, less what the buffered reader holds unread). A header past the
// limit is headerTooLarge, whatever read returned.
func (r *Router) headerBlock(b Body, read func(*bufio.Reader) error) (int64, error) {
	limit := r.MaxHeaderBytes
	if limit <= 0 {
		limit = 1 << 20
	}
	lr := &io.LimitedReader{R: b.Open(), N: limit + 1}
	br := headerReaders.Get().(*bufio.Reader)
	br.Reset(lr)
	err := read(br)
	n := limit + 1 - lr.N - int64(br.Buffered())
	br.Reset(nil)
	headerReaders.Put(br)
	if lr.N <= 0 {
		return n, &headerTooLarge{}
	}
	return n, err
}

// bodyAfterHeader returns a reader of the body after the header block,
// which parse found to be headerLen bytes long. It does nothing until it is
// first read: a single-part message's MIME walk never reads it. (It used to
// parse the header a second time to find the body: 40 allocations and a
// 4 KiB buffer per stored message.)
func bodyAfterHeader(b Body, headerLen int64) io.Reader {
	return &afterHeader{b: b, off: headerLen}
}

type afterHeader struct {
	b   Body
	off int64
	r   io.Reader // nil until the first Read
}

func (a *afterHeader) Read(p []byte) (int, error) {
	if a.r == nil {
		r := a.b.Open()
		if s, ok := r.(io.Seeker); ok {
			if _, err := s.Seek(a.off, io.SeekStart); err != nil {
				a.r = errReader{err}
				return 0, err
			}
		} else if _, err := io.CopyN(io.Discard, r, a.off); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			a.r = errReader{err}
			return 0, err
		}
		a.r = r
	}
	return a.r.Read(p)
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// referencedIDs lists In-Reply-To then References (newest first), without
// duplicates.
func referencedIDs(h header) []string {
	var ids []string
	var seen map[string]bool // made once there are more than a few ids
	add := func(id string) {
		if seen == nil && len(ids) < 8 {
			if !slices.Contains(ids, id) {
				ids = append(ids, id)
			}
			return
		}
		if seen == nil {
			seen = make(map[string]bool, 2*len(ids))
			for _, s := range ids {
				seen[s] = true
			}
		}
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

func isReport(h header) bool {
	v := h.Get("Content-Type")
	// ParseMediaType's media type, without parsing the parameters (a map
	// per message) of what is not a report: almost all mail.
	if base, _, _ := strings.Cut(v, ";"); strings.TrimSpace(strings.ToLower(base)) != "multipart/report" {
		return false
	}
	mt, params, err := mime.ParseMediaType(v)
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
	if a, ok := plainAddress(v); ok {
		return strings.ToLower(a)
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
