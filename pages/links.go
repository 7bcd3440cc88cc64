package pages

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"syncrelay/signedlink"
	"syncrelay/store"
)

// Admin links: POST /v1/tenants/{t}/admin-links mints one (MintAdmin), and
// .../admin-links/rotate revokes every earlier one (RotateAdmin) by bumping
// the tenant's link generation, kept in the store's KV so every node sees
// it. A link verifies only while its Gen equals the current generation.

// Admin link lifetimes.
const (
	DefaultAdminTTL = 24 * time.Hour
	MaxAdminTTL     = 7 * 24 * time.Hour
	MinAdminTTL     = time.Minute
)

var errRevoked = errors.New("pages: link revoked")

func adminGenKey(tenant string) string { return "pages/admin-gen/" + tenant }

// adminGen is the tenant's current admin link generation (0 when never
// rotated).
func (s *Server) adminGen(ctx context.Context, tenant string) (uint64, error) {
	var g uint64
	err := s.o.Store.GetKV(ctx, adminGenKey(tenant), &g)
	if errors.Is(err, store.ErrNotFound) {
		return 0, nil
	}
	return g, err
}

// ErrTTL is returned by MintAdmin for a ttl out of bounds.
var ErrTTL = fmt.Errorf("ttl must be between %s and %s", MinAdminTTL, "168h (7 days)")

// MintAdmin returns a signed admin page URL for tenant, valid for ttl
// (0: DefaultAdminTTL; longer than MaxAdminTTL or shorter than MinAdminTTL:
// ErrTTL). The tenant must exist (store.ErrNotFound).
func (s *Server) MintAdmin(ctx context.Context, tenant string, ttl time.Duration) (string, time.Time, error) {
	if ttl == 0 {
		ttl = DefaultAdminTTL
	}
	if ttl < MinAdminTTL || ttl > MaxAdminTTL {
		return "", time.Time{}, ErrTTL
	}
	if _, err := s.o.Store.Tenant(ctx, tenant); err != nil {
		return "", time.Time{}, err
	}
	gen, err := s.adminGen(ctx, tenant)
	if err != nil {
		return "", time.Time{}, err
	}
	exp := s.o.Now().Add(ttl).UTC().Truncate(time.Second)
	tok, err := s.o.Links.Sign(signedlink.Claims{Purpose: signedlink.PurposeAdmin, Tenant: tenant,
		Nonce: signedlink.NewNonce(), Gen: gen, Expires: exp})
	if err != nil {
		return "", time.Time{}, err
	}
	return s.o.PublicURL + "/p/admin?t=" + url.QueryEscape(tok), exp, nil
}

// RotateAdmin revokes every admin link of tenant issued so far and returns
// the new generation.
func (s *Server) RotateAdmin(ctx context.Context, tenant string) (uint64, error) {
	if _, err := s.o.Store.Tenant(ctx, tenant); err != nil {
		return 0, err
	}
	g, err := s.adminGen(ctx, tenant)
	if err != nil {
		return 0, err
	}
	// Two rotations racing may both write g+1: every link older than the
	// call is revoked either way, which is all rotation promises.
	if err := s.o.Store.PutKV(ctx, adminGenKey(tenant), g+1, 0); err != nil {
		return 0, err
	}
	return g + 1, nil
}

// verifyAdmin checks an admin link: signature, purpose, expiry, generation,
// and that its tenant exists.
func (s *Server) verifyAdmin(ctx context.Context, tok string) (signedlink.Claims, *store.Tenant, error) {
	c, err := s.o.Links.Verify(tok, signedlink.PurposeAdmin)
	if err != nil {
		return c, nil, err
	}
	gen, err := s.adminGen(ctx, c.Tenant)
	if err != nil {
		return c, nil, err
	}
	if c.Gen != gen {
		return c, nil, errRevoked
	}
	t, err := s.o.Store.Tenant(ctx, c.Tenant)
	if err != nil {
		return c, nil, err
	}
	return c, t, nil
}
