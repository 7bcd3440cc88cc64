package outbound

import (
	"context"
	"errors"
	"fmt"
	"net/http"

	"syncrelay/store"
)

// SendRaw sends a message the caller composed (the email admin page's
// forwarding probe) through user's mailbox grant, with the same token
// refresh and retries as Send, but records nothing: it is not an ATS
// message and belongs on no profile. Refusals (no provider, no or broken
// grant) are *Refusal.
func (s *Service) SendRaw(ctx context.Context, tenant, user string, raw []byte) error {
	if len(raw) == 0 {
		return errors.New("outbound: empty message")
	}
	p := &plan{}
	var err error
	if p.tenant, err = s.o.Store.Tenant(ctx, tenant); err != nil {
		return err
	}
	if p.provider = s.o.Providers[p.tenant.Provider]; p.provider == nil {
		return refuse(http.StatusServiceUnavailable, "provider-not-configured", "Provider not available",
			"no %s sending provider is configured", p.tenant.Provider)
	}
	if p.sender, err = s.o.Store.User(ctx, tenant, user); err != nil {
		return err
	}
	g, err := s.o.Store.Grant(ctx, tenant, user)
	switch {
	case notFound(err) || (err == nil && g.Provider != p.tenant.Provider):
		return refuse(http.StatusConflict, "grant-missing", "Mailbox not connected", "%s has not connected their %s mailbox", user, p.tenant.Provider)
	case err != nil:
		return err
	case g.Status == store.GrantBroken:
		return refuse(http.StatusConflict, "grant-broken", "Mailbox connection broken", "%s's %s grant is broken (%s)", user, g.Provider, g.BrokenReason)
	}
	p.acting = p.sender
	if err := s.pace(ctx, p); err != nil {
		s.sends.WithLabelValues(p.provider.Name(), "refused").Inc()
		return err
	}
	if _, _, err := s.submit(context.WithoutCancel(ctx), p, raw); err != nil {
		s.sends.WithLabelValues(p.provider.Name(), "failed").Inc()
		return fmt.Errorf("outbound: %w", err)
	}
	s.sends.WithLabelValues(p.provider.Name(), "sent").Inc()
	return nil
}
