package delegation

import (
	"context"
	"errors"
	"fmt"
	"html/template"
	"log/slog"
	"net/mail"
	"net/url"
	"strings"
	"time"

	"syncrelay/outbound"
	"syncrelay/signedlink"
	"syncrelay/store"
)

// Store is what approval by email needs from the store.
type Store interface {
	Transitioner
	User(ctx context.Context, tenant, id string) (*store.User, error)
	Delegation(ctx context.Context, tenant string, id uint64) (*store.Delegation, error)
	CreateKV(ctx context.Context, k string, v any, ttl time.Duration) error
	GetKV(ctx context.Context, k string, v any) error
	DeleteKV(ctx context.Context, k string) error
	ClaimApprovalEmails(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]*store.Delegation, error)
	FinishApprovalEmail(ctx context.Context, tenant string, id uint64, attempt int, e *store.ApprovalMail) (*store.Delegation, error)
}

// Sender sends a notice through a user's own grant (*outbound.Service).
type Sender interface {
	SendNotice(ctx context.Context, n outbound.Notice) error
}

// DefaultLinkTTL is how long an emailed approval link works.
const DefaultLinkTTL = 7 * 24 * time.Hour

// PagePath is the hosted approval page (package pages serves it).
const PagePath = "/p/delegation"

// Options configure Approvals.
type Options struct {
	Store Store
	// Sender sends the email; nil: tenants asking for email get
	// "not_sent" (sending is not configured).
	Sender Sender
	// Signer signs and verifies the links (key: daemon.Keys.Links).
	Signer *signedlink.Signer
	// BaseURL is where people reach syncrelay's HTTP listener, e.g.
	// "https://relay.example.com" (http.public_url); links are
	// BaseURL + PagePath + "?t=TOKEN".
	BaseURL string
	// LinkTTL is the links' lifetime (DefaultLinkTTL).
	LinkTTL time.Duration
	// The queue of approval emails (Run): an email is retried after a
	// temporary failure (a provider 5xx or 429 that outlasted the outbound
	// retries, a transport error) RetryBase later, doubling up to
	// RetryMax, MaxAttempts times in all; each attempt holds the email
	// for Lease (longer than a send with all its outbound retries), after
	// which another worker may take it. Run looks for due emails every
	// PollInterval, and at once after Notify.
	MaxAttempts         int
	RetryBase, RetryMax time.Duration
	Lease, PollInterval time.Duration
	Now                 func() time.Time
	Log                 *slog.Logger
}

// Queue defaults.
const (
	DefaultMaxAttempts = 8
	DefaultRetryBase   = time.Minute
	DefaultRetryMax    = time.Hour
	DefaultLease       = 5 * time.Minute
	// As often as the webhook outbox is polled: the claim is one cheap
	// query, and an email due after a restart should not wait long.
	DefaultPollInterval = 2 * time.Second
)

// Approvals emails approval links and acts on them.
type Approvals struct {
	o    Options
	wake chan struct{}
}

// New builds Approvals; Store and Signer are required.
func New(o Options) (*Approvals, error) {
	if o.Store == nil || o.Signer == nil {
		return nil, errors.New("delegation: store and signer are required")
	}
	if _, err := url.Parse(o.BaseURL); err != nil || o.BaseURL == "" {
		return nil, fmt.Errorf("delegation: base URL %q: not a URL", o.BaseURL)
	}
	o.BaseURL = strings.TrimRight(o.BaseURL, "/")
	if o.LinkTTL <= 0 {
		o.LinkTTL = DefaultLinkTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = DefaultMaxAttempts
	}
	if o.RetryBase <= 0 {
		o.RetryBase = DefaultRetryBase
	}
	if o.RetryMax <= 0 {
		o.RetryMax = DefaultRetryMax
	}
	if o.Lease <= 0 {
		o.Lease = DefaultLease
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	return &Approvals{o: o, wake: make(chan struct{}, 1)}, nil
}

// Email outcomes.
const (
	EmailQueued  = store.EmailQueued
	EmailSent    = store.EmailSent
	EmailNotSent = store.EmailNotSent
)

// EmailOutcome says whether the grantor was emailed (the API answers it
// as approval_email): queued, sent, or not_sent with the reason.
type EmailOutcome = store.ApprovalMail

// Queue sets d.ApprovalEmail, before d is created, when tenant t asks for
// approval by email: the email is then queued in the commit that creates
// the delegation, held by the creating request (attempt 1, leased), which
// sends it with Requested. If the process dies first, Run sends it once
// the lease ends. Without a Sender the email is not_sent at once.
func (a *Approvals) Queue(t *store.Tenant, d *store.Delegation) {
	if t.ApprovalBy() != store.ApprovalEmail {
		return
	}
	e := &store.ApprovalMail{Status: EmailQueued, Via: d.Requester, To: d.Grantor, Attempts: 1,
		NextAttempt: a.o.Now().Add(a.o.Lease).UTC()}
	if a.o.Sender == nil {
		e = &store.ApprovalMail{Status: EmailNotSent, Via: d.Requester, To: d.Grantor, Error: "sending is not configured on this server"}
	}
	d.ApprovalEmail = e
}

// Requested makes the creating request's attempt at d's queued approval
// email (see Queue) and returns its state: sent, not_sent with the reason
// (no or broken grant, a provider refusal), or queued again after a
// temporary failure (Run retries it). It returns nil when d has no
// approval email. The request itself stands whatever happens here.
func (a *Approvals) Requested(ctx context.Context, t *store.Tenant, d *store.Delegation) *EmailOutcome {
	if d.ApprovalEmail == nil {
		return nil
	}
	if d.ApprovalEmail.Status != EmailQueued {
		e := *d.ApprovalEmail
		return &e
	}
	return a.attempt(ctx, d)
}

// Notify wakes Run (a new email may be due).
func (a *Approvals) Notify() {
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

// claimBatch is how many due emails Run takes at once.
const claimBatch = 4

// Run sends the queued approval emails that are due (left by a request
// that failed temporarily, or by a process that stopped before sending)
// until ctx ends. Several processes sharing a store may run it: a claim
// leases an email to one of them.
func (a *Approvals) Run(ctx context.Context) {
	t := time.NewTicker(a.o.PollInterval)
	defer t.Stop()
	for {
		for ctx.Err() == nil {
			ds, err := a.o.Store.ClaimApprovalEmails(ctx, a.o.Now(), claimBatch, a.o.Lease)
			if err != nil {
				if ctx.Err() == nil {
					a.o.Log.WarnContext(ctx, "delegation: claim approval emails", "err", err)
				}
				break
			}
			for _, d := range ds {
				a.attempt(ctx, d)
			}
			if len(ds) < claimBatch {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-a.wake:
		}
	}
}

// permanentError is a reason not to try again.
type permanentError struct{ error }

// temporary reports whether a failed attempt is worth retrying later: the
// provider (or the network) failed, not the request.
func temporary(err error) bool {
	var pe permanentError
	var rf *outbound.Refusal
	var oe *outbound.Error
	switch {
	case errors.As(err, &pe), errors.As(err, &rf), errors.Is(err, store.ErrNotFound):
		return false
	case errors.As(err, &oe):
		return oe.Temporary
	}
	return true
}

// attempt sends d's claimed approval email (d.ApprovalEmail.Attempts is
// the claim) and records the outcome.
func (a *Approvals) attempt(ctx context.Context, d *store.Delegation) *EmailOutcome {
	claim := d.ApprovalEmail.Attempts
	e := *d.ApprovalEmail
	log := a.o.Log.With("tenant", d.Tenant, "delegation", store.DelegationRef(d.ID), "requester", d.Requester, "grantor", d.Grantor, "attempt", claim)
	err := a.email(ctx, d, &e)
	now := a.o.Now().UTC()
	switch {
	case err == nil:
		e.Status, e.Error, e.SentAt, e.NextAttempt = EmailSent, "", now, time.Time{}
		log.InfoContext(ctx, "delegation: approval email sent", "expires", e.ExpiresAt)
	case temporary(err) && claim < a.o.MaxAttempts:
		wait := a.o.RetryBase << min(claim-1, 20)
		if wait > a.o.RetryMax || wait <= 0 {
			wait = a.o.RetryMax
		}
		e.Status, e.Error, e.ExpiresAt, e.NextAttempt = EmailQueued, err.Error(), time.Time{}, now.Add(wait)
		log.WarnContext(ctx, "delegation: approval email not sent yet; will retry", "err", e.Error, "retry_at", e.NextAttempt)
	default:
		e.Status, e.Error, e.ExpiresAt, e.NextAttempt = EmailNotSent, err.Error(), time.Time{}, time.Time{}
		if temporary(err) {
			e.Error = fmt.Sprintf("%s (gave up after %d attempts)", e.Error, claim)
		}
		log.WarnContext(ctx, "delegation: approval email not sent; the grantor must approve in the ATS", "err", e.Error)
	}
	// Record the outcome even if the caller went away: the email went.
	got, ferr := a.o.Store.FinishApprovalEmail(context.WithoutCancel(ctx), d.Tenant, d.ID, claim, &e)
	if ferr != nil {
		// The lease ended before this attempt finished and another one
		// took the email (at-least-once: it may be sent twice), or the
		// store failed: report what the store holds.
		log.WarnContext(ctx, "delegation: record approval email outcome", "err", ferr)
		if cur, err := a.o.Store.Delegation(context.WithoutCancel(ctx), d.Tenant, d.ID); err == nil && cur.ApprovalEmail != nil {
			out := *cur.ApprovalEmail
			return &out
		}
		return &e
	}
	out := *got.ApprovalEmail
	return &out
}

func (a *Approvals) email(ctx context.Context, d *store.Delegation, out *EmailOutcome) error {
	if a.o.Sender == nil {
		return permanentError{errors.New("sending is not configured on this server")}
	}
	if d.Status != store.DelegationRequested {
		return permanentError{fmt.Errorf("the request is no longer waiting for a decision (%s)", d.Status)}
	}
	tenant := d.Tenant
	req, err := a.o.Store.User(ctx, tenant, d.Requester)
	if err != nil {
		return fmt.Errorf("requester: %w", err)
	}
	gr, err := a.o.Store.User(ctx, tenant, d.Grantor)
	if err != nil {
		return fmt.Errorf("grantor: %w", err)
	}
	exp := a.o.Now().Add(a.o.LinkTTL).UTC().Truncate(time.Second)
	tok, err := a.o.Signer.Sign(signedlink.Claims{Purpose: signedlink.PurposeDelegation, Tenant: tenant,
		Subject: store.DelegationRef(d.ID), Nonce: signedlink.NewNonce(), Expires: exp})
	if err != nil {
		return err
	}
	link := a.o.BaseURL + PagePath + "?t=" + url.QueryEscape(tok)
	n := outbound.Notice{Tenant: tenant, Sender: req.ID, To: mail.Address{Name: gr.Name, Address: gr.Email}}
	if err := compose(&n, req, gr, link, exp); err != nil {
		return err
	}
	if err := a.o.Sender.SendNotice(ctx, n); err != nil {
		var rf *outbound.Refusal
		if errors.As(err, &rf) {
			if rf.Status == 429 || rf.Status >= 500 { // pacing, or unavailable: later
				return errors.New(rf.Detail)
			}
			return permanentError{errors.New(rf.Detail)}
		}
		return err
	}
	out.ExpiresAt = exp
	return nil
}

// who is how a person is named in the email and on the page.
func who(u *store.User) string {
	if u.Name == "" {
		return u.Email
	}
	return u.Name + " <" + u.Email + ">"
}

func firstName(u *store.User) string {
	if u.Name == "" {
		return u.Email
	}
	return u.Name
}

var emailHTML = template.Must(template.New("email").Parse(`<!doctype html>
<html><body style="font-family:sans-serif">
<p>Hello {{.Grantor}},</p>
<p><strong>{{.Requester}}</strong> asks for <strong>Send For</strong> permission: to send recruiting email
as you from the ATS (one-off, bulk and nurture emails; never automations). Those emails leave from your
mailbox and sit in your Sent folder; candidates' replies reach your inbox.</p>
<p><a href="{{.Link}}">Approve or decline the request</a></p>
<p>The link works once and until {{.Expires}}. If you did not expect this, decline it.</p>
</body></html>
`))

// compose writes the email's subject and bodies.
func compose(n *outbound.Notice, req, gr *store.User, link string, exp time.Time) error {
	expires := exp.Format("Mon 2 Jan 2006 15:04 MST")
	n.Subject = fmt.Sprintf("%s asks to send email for you (Send For)", firstName(req))
	n.Text = fmt.Sprintf(`Hello %s,

%s asks for Send For permission: to send recruiting email as you from the
ATS (one-off, bulk and nurture emails; never automations). Those emails leave
from your mailbox and sit in your Sent folder; candidates' replies reach your
inbox.

Approve or decline the request:
%s

The link works once and until %s. If you did not expect this, decline it.
`, firstName(gr), who(req), link, expires)
	var b strings.Builder
	if err := emailHTML.Execute(&b, map[string]string{"Grantor": firstName(gr), "Requester": who(req), "Link": link, "Expires": expires}); err != nil {
		return fmt.Errorf("delegation: email: %w", err)
	}
	n.HTML = b.String()
	return nil
}
