package outbound

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/mail"
	"strings"
	"time"

	"syncrelay/store"
)

// Notice is a message from one user of a tenant to a colleague about
// syncrelay itself (the Send For approval request, SPEC §7a), sent through
// the sender's own grant. It is not candidate mail: it starts no thread,
// carries no thread token and is recorded nowhere, so its sent copy, if a
// routing rule forwards it, matches nothing and is discarded.
type Notice struct {
	Tenant string
	// Sender is the user id whose grant and mailbox send it (From).
	Sender  string
	To      mail.Address
	Subject string
	Text    string
	HTML    string // optional alternative
}

// SendNotice sends n through the sender's grant: paced like any send from
// that mailbox, 429/5xx retried with backoff, a refused token refreshed
// once. A refusal before the provider was called (no grant, broken grant,
// unknown sender, bad recipient, provider not configured) is a *Refusal;
// the provider's own refusal is an *Error.
func (s *Service) SendNotice(ctx context.Context, n Notice) error {
	p, err := s.prepareNotice(ctx, n)
	if err != nil {
		var rf *Refusal
		if errors.As(err, &rf) {
			s.sends.WithLabelValues(providerOf(p), "refused").Inc()
		}
		return err
	}
	if err := s.pace(ctx, p); err != nil {
		s.sends.WithLabelValues(p.provider.Name(), "refused").Inc()
		return err
	}
	now := s.o.Now().UTC()
	raw, err := Compose(&Mail{
		From:      mail.Address{Name: p.sender.Name, Address: strings.ToLower(p.sender.Email)},
		To:        []mail.Address{{Name: n.To.Name, Address: strings.ToLower(n.To.Address)}},
		Subject:   n.Subject,
		Text:      n.Text,
		HTML:      n.HTML,
		Date:      now,
		MessageID: noticeMessageID(p.sender.Email),
	})
	if err != nil {
		return fmt.Errorf("outbound: compose notice: %w", err)
	}
	// As for Send: once the provider is called, finish even if the caller
	// goes away, so a retry does not send the notice twice.
	_, attempts, err := s.submit(context.WithoutCancel(ctx), p, raw)
	result := StatusSent
	if err != nil {
		result = StatusFailed
	}
	s.sends.WithLabelValues(p.provider.Name(), result).Inc()
	log := s.o.Log.With("tenant", n.Tenant, "sender", p.sender.ID, "provider", p.provider.Name(), "attempts", attempts)
	if err != nil {
		log.WarnContext(ctx, "outbound: notice not sent", "err", errorText(err))
		return err
	}
	log.InfoContext(ctx, "outbound: notice sent")
	return nil
}

// prepareNotice checks what SendNotice needs before any provider call.
func (s *Service) prepareNotice(ctx context.Context, n Notice) (*plan, error) {
	to, err := mail.ParseAddress(n.To.Address)
	if err != nil || to.Name != "" || to.Address != strings.TrimSpace(n.To.Address) {
		return nil, refuse(http.StatusBadRequest, "invalid", "Invalid request", "notice recipient %q is not a plain email address", n.To.Address)
	}
	if strings.TrimSpace(n.Subject) == "" || strings.TrimSpace(n.Text) == "" {
		return nil, refuse(http.StatusBadRequest, "invalid", "Invalid request", "notice: subject and text are required")
	}
	p := &plan{req: Request{Tenant: n.Tenant, ActingUser: n.Sender}}
	if p.tenant, err = s.o.Store.Tenant(ctx, n.Tenant); err != nil {
		if notFound(err) {
			return nil, refuse(http.StatusNotFound, "not-found", "Not found", "tenant %q not found", n.Tenant)
		}
		return nil, err
	}
	p.provider = s.o.Providers[p.tenant.Provider]
	if p.provider == nil {
		return p, refuse(http.StatusServiceUnavailable, "provider-not-configured", "Provider not available",
			"no %s sending provider is configured", p.tenant.Provider)
	}
	if p.sender, err = s.o.Store.User(ctx, n.Tenant, n.Sender); err != nil {
		if notFound(err) {
			return p, refuse(http.StatusNotFound, "unknown-sender", "Unknown sender", "user %q of tenant %q not found", n.Sender, n.Tenant)
		}
		return nil, err
	}
	p.acting = p.sender
	return p, s.checkGrant(ctx, p)
}

// checkGrant refuses a send whose sender has no usable grant for the
// tenant's provider.
func (s *Service) checkGrant(ctx context.Context, p *plan) error {
	g, err := s.o.Store.Grant(ctx, p.tenant.ID, p.sender.ID)
	switch {
	case notFound(err) || (err == nil && g.Provider != p.tenant.Provider):
		return refuse(http.StatusConflict, "grant-missing", "Mailbox not connected",
			"%s has not connected their %s mailbox: send them to GET /oauth/%s/start?tenant=%s&user=%s",
			p.sender.ID, p.tenant.Provider, p.tenant.Provider, p.tenant.ID, p.sender.ID)
	case err != nil:
		return err
	case g.Status == store.GrantBroken:
		return refuse(http.StatusConflict, "grant-broken", "Mailbox connection broken",
			"%s's %s grant is broken (%s): they must reconnect at GET /oauth/%s/start?tenant=%s&user=%s",
			p.sender.ID, g.Provider, g.BrokenReason, g.Provider, p.tenant.ID, p.sender.ID)
	}
	return nil
}

// noticeMessageID is a random Message-ID under the sender's domain: not
// syncrelay's sr. form, so nothing ever matches it to a thread.
func noticeMessageID(senderEmail string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	domain := "localhost"
	if _, d, ok := strings.Cut(senderEmail, "@"); ok && d != "" {
		domain = strings.ToLower(d)
	}
	return fmt.Sprintf("notice.%d.%s@%s", time.Now().Unix(), hex.EncodeToString(b), domain)
}
