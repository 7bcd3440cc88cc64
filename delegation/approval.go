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
	Now     func() time.Time
	Log     *slog.Logger
}

// Approvals emails approval links and acts on them.
type Approvals struct{ o Options }

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
	return &Approvals{o: o}, nil
}

// Email outcomes.
const (
	EmailSent    = "sent"
	EmailNotSent = "not_sent"
)

// EmailOutcome says whether the grantor was emailed (the API answers it
// as approval_email).
type EmailOutcome struct {
	Status string `json:"status"` // sent | not_sent
	// Via is the user whose mailbox sent it (the requester).
	Via       string    `json:"via"`
	To        string    `json:"to"` // the grantor's user id
	ExpiresAt time.Time `json:"expires_at,omitzero"`
	// Error says why it was not sent.
	Error string `json:"error,omitempty"`
}

// Requested emails d's grantor a link to approve or decline, through the
// requester's grant, when tenant t asks for it (delegation_approval
// "email"); it returns nil otherwise. The request itself stands whatever
// happens here: a missing or broken grant, or a provider failure, is
// reported in the outcome and logged (user ids and the reason only).
func (a *Approvals) Requested(ctx context.Context, t *store.Tenant, d *store.Delegation) *EmailOutcome {
	if t.ApprovalBy() != store.ApprovalEmail {
		return nil
	}
	out := &EmailOutcome{Status: EmailNotSent, Via: d.Requester, To: d.Grantor}
	err := a.email(ctx, t, d, out)
	log := a.o.Log.With("tenant", t.ID, "delegation", store.DelegationRef(d.ID), "requester", d.Requester, "grantor", d.Grantor)
	if err != nil {
		out.Error, out.ExpiresAt = err.Error(), time.Time{}
		log.WarnContext(ctx, "delegation: approval email not sent; the grantor must approve in the ATS", "err", out.Error)
		return out
	}
	out.Status = EmailSent
	log.InfoContext(ctx, "delegation: approval email sent", "expires", out.ExpiresAt)
	return out
}

func (a *Approvals) email(ctx context.Context, t *store.Tenant, d *store.Delegation, out *EmailOutcome) error {
	if a.o.Sender == nil {
		return errors.New("sending is not configured on this server")
	}
	req, err := a.o.Store.User(ctx, t.ID, d.Requester)
	if err != nil {
		return fmt.Errorf("requester: %w", err)
	}
	gr, err := a.o.Store.User(ctx, t.ID, d.Grantor)
	if err != nil {
		return fmt.Errorf("grantor: %w", err)
	}
	exp := a.o.Now().Add(a.o.LinkTTL).UTC().Truncate(time.Second)
	tok, err := a.o.Signer.Sign(signedlink.Claims{Purpose: signedlink.PurposeDelegation, Tenant: t.ID,
		Subject: store.DelegationRef(d.ID), Nonce: signedlink.NewNonce(), Expires: exp})
	if err != nil {
		return err
	}
	link := a.o.BaseURL + PagePath + "?t=" + url.QueryEscape(tok)
	n := outbound.Notice{Tenant: t.ID, Sender: req.ID, To: mail.Address{Name: gr.Name, Address: gr.Email}}
	if err := compose(&n, req, gr, link, exp); err != nil {
		return err
	}
	if err := a.o.Sender.SendNotice(ctx, n); err != nil {
		var rf *outbound.Refusal
		if errors.As(err, &rf) {
			return errors.New(rf.Detail)
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
