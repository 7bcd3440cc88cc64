package delegation

import (
	"context"
	"errors"
	"fmt"
	"time"

	"syncrelay/signedlink"
	"syncrelay/store"
)

// Errors of Open and Act besides store errors. ErrExpired and ErrInvalid
// wrap signedlink's, so a page tells "expired" from "not a valid link".
var (
	ErrExpired = fmt.Errorf("this approval link has expired: %w", signedlink.ErrExpired)
	ErrInvalid = fmt.Errorf("this is not a valid approval link: %w", signedlink.ErrInvalid)
	// ErrUsed: the link was already used to approve or decline.
	ErrUsed = errors.New("this approval link was already used")
	// ErrDecided: the request is no longer waiting for a decision
	// (approved or declined elsewhere, or revoked).
	ErrDecided = errors.New("this Send For request is no longer waiting for a decision")
)

// Actions on a link.
const (
	Approve = "approve"
	Decline = "decline"
)

// Use records a link's single use in the store KV.
type Use struct {
	Action string    `json:"action"`
	At     time.Time `json:"at"`
}

// Link is what a verified approval link shows: the delegation as it is
// now, its two users, and the link's use if it was used.
type Link struct {
	Claims     signedlink.Claims
	Delegation *store.Delegation
	Requester  *store.User
	Grantor    *store.User
	Used       *Use
}

// Pending reports whether the link can still approve or decline.
func (l *Link) Pending() bool {
	return l.Used == nil && l.Delegation.Status == store.DelegationRequested
}

func useKey(c signedlink.Claims) string {
	return "deleglink/" + c.Tenant + "/" + c.Nonce
}

// Open verifies tok and loads what the page shows. It never uses the link
// (mail scanners fetch links; only a POST decides).
func (a *Approvals) Open(ctx context.Context, tok string) (*Link, error) {
	c, err := a.o.Signer.Verify(tok, signedlink.PurposeDelegation)
	switch {
	case errors.Is(err, signedlink.ErrExpired):
		return nil, ErrExpired
	case err != nil:
		return nil, ErrInvalid
	}
	id, ok := store.ParseDelegationRef(c.Subject)
	if !ok || c.Nonce == "" {
		return nil, ErrInvalid
	}
	l := &Link{Claims: c}
	if l.Delegation, err = a.o.Store.Delegation(ctx, c.Tenant, id); err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, ErrInvalid
		}
		return nil, err
	}
	if l.Requester, err = a.o.Store.User(ctx, c.Tenant, l.Delegation.Requester); err != nil {
		return nil, err
	}
	if l.Grantor, err = a.o.Store.User(ctx, c.Tenant, l.Delegation.Grantor); err != nil {
		return nil, err
	}
	var u Use
	switch err := a.o.Store.GetKV(ctx, useKey(c), &u); {
	case err == nil:
		l.Used = &u
	case !errors.Is(err, store.ErrNotFound):
		return nil, err
	}
	return l, nil
}

// Act approves or declines through the link, as its grantor: the same rule
// and transition as the API (Decide), so delegation.changed is raised the
// same way. The link's nonce is taken first (CreateKV: one winner), so a
// link decides at most once; a used link is ErrUsed, a request no longer
// waiting is ErrDecided, both with the Link as it is now.
func (a *Approvals) Act(ctx context.Context, tok, action string) (*Link, error) {
	to := map[string]string{Approve: store.DelegationActive, Decline: store.DelegationDeclined}[action]
	if to == "" {
		return nil, fmt.Errorf("delegation: unknown action %q", action)
	}
	l, err := a.Open(ctx, tok)
	if err != nil {
		return nil, err
	}
	if l.Used != nil {
		return l, ErrUsed
	}
	if l.Delegation.Status != store.DelegationRequested {
		return l, ErrDecided
	}
	ttl := l.Claims.Expires.Sub(a.o.Now()) + time.Hour // kept past the link's own expiry
	u := Use{Action: action, At: a.o.Now().UTC()}
	if err := a.o.Store.CreateKV(ctx, useKey(l.Claims), u, ttl); err != nil {
		if errors.Is(err, store.ErrExists) {
			return a.reopen(ctx, tok, ErrUsed)
		}
		return nil, err
	}
	d, err := Decide(ctx, a.o.Store, l.Claims.Tenant, l.Delegation.ID, l.Delegation.Grantor, to)
	if err != nil {
		if errors.Is(err, store.ErrTransition) {
			// Revoked or decided between Open and here: the link stays
			// used, the page shows the state.
			return a.reopen(ctx, tok, ErrDecided)
		}
		// Local trouble: give the link back so the grantor can retry.
		_ = a.o.Store.DeleteKV(context.WithoutCancel(ctx), useKey(l.Claims))
		return nil, err
	}
	l.Delegation, l.Used = d, &u
	return l, nil
}

func (a *Approvals) reopen(ctx context.Context, tok string, why error) (*Link, error) {
	l, err := a.Open(ctx, tok)
	if err != nil {
		return nil, err
	}
	return l, why
}
