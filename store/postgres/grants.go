package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"syncrelay/store"
)

func putGrant(ctx context.Context, tx pgx.Tx, g *store.Grant) error {
	data, err := encode(g)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO grants (tenant, "user", data) VALUES ($1, $2, $3)
		ON CONFLICT (tenant, "user") DO UPDATE SET data = excluded.data`, g.Tenant, g.User, data)
	return err
}

func lockGrant(ctx context.Context, tx pgx.Tx, tenant, user string) (*store.Grant, error) {
	var g store.Grant
	if err := getJSON(ctx, tx, &g, `SELECT data FROM grants WHERE tenant = $1 AND "user" = $2 FOR UPDATE`, tenant, user); err != nil {
		return nil, fmt.Errorf("grant of %q: %w", user, err)
	}
	return &g, nil
}

// PutGrant stores a freshly consented grant for an existing user,
// replacing any earlier one, with Status active and the next Version.
func (s *Store) PutGrant(ctx context.Context, g *store.Grant) error {
	now := s.now().UTC()
	var out store.Grant
	err := s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		var ok bool
		if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM users WHERE tenant = $1 AND id = $2)", g.Tenant, g.User).Scan(&ok); err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("user %q: %w", g.User, store.ErrNotFound)
		}
		// The placeholder row makes FOR UPDATE serialise two consents.
		if _, err := tx.Exec(ctx, `INSERT INTO grants (tenant, "user", data) VALUES ($1, $2, '{}') ON CONFLICT DO NOTHING`, g.Tenant, g.User); err != nil {
			return err
		}
		old, err := lockGrant(ctx, tx, g.Tenant, g.User)
		if err != nil {
			return err
		}
		out = *g
		out.Status, out.Version = store.GrantActive, old.Version+1
		out.Connected, out.Refreshed, out.BrokenAt, out.BrokenReason = now, time.Time{}, time.Time{}, ""
		return putGrant(ctx, tx, &out)
	})
	if err != nil {
		return err
	}
	*g = out
	return nil
}

// Grant returns a user's grant, or ErrNotFound when the user never connected.
func (s *Store) Grant(ctx context.Context, tenant, user string) (*store.Grant, error) {
	var g store.Grant
	if err := getJSON(ctx, s.pool, &g, `SELECT data FROM grants WHERE tenant = $1 AND "user" = $2`, tenant, user); err != nil {
		return nil, fmt.Errorf("grant of %q: %w", user, err)
	}
	return &g, nil
}

// Grants lists a tenant's grants by user id, without their ciphertext.
func (s *Store) Grants(ctx context.Context, tenant string) ([]*store.Grant, error) {
	out, err := listJSON[store.Grant](ctx, s.pool, `SELECT data FROM grants WHERE tenant = $1 ORDER BY "user" COLLATE "C"`, tenant)
	for _, g := range out {
		g.Sealed = nil
	}
	return out, err
}

// UpdateGrantToken replaces the sealed token of an active grant after a
// refresh if the grant is still at version (else ErrStale).
func (s *Store) UpdateGrantToken(ctx context.Context, tenant, user string, version uint64, sealed []byte) (*store.Grant, error) {
	now := s.now().UTC()
	var out store.Grant
	err := s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		g, err := lockGrant(ctx, tx, tenant, user)
		if err != nil {
			return err
		}
		if g.Version != version || g.Status != store.GrantActive {
			return fmt.Errorf("grant of %q: %w", user, store.ErrStale)
		}
		g.Sealed, g.Version, g.Refreshed = sealed, g.Version+1, now
		out = *g
		return putGrant(ctx, tx, g)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// MarkGrantBroken marks a grant at version broken, drops its ciphertext
// and enqueues grant.broken in the same commit; false when the grant moved
// on or is already broken (one failure, one event).
func (s *Store) MarkGrantBroken(ctx context.Context, tenant, user string, version uint64, reason string) (bool, error) {
	now := s.now().UTC()
	changed := false
	err := s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		changed = false
		g, err := lockGrant(ctx, tx, tenant, user)
		if err != nil {
			return err
		}
		if g.Version != version || g.Status != store.GrantActive {
			return nil
		}
		g.Status, g.Sealed, g.Version, g.BrokenAt, g.BrokenReason = store.GrantBroken, nil, g.Version+1, now, reason
		if err := putGrant(ctx, tx, g); err != nil {
			return err
		}
		changed = true
		return enqueue(ctx, tx, tenant, "grant.broken", map[string]any{
			"user": user, "provider": g.Provider, "reason": reason, "broken_at": now,
		}, now)
	})
	return changed, err
}

// DeleteGrant forgets a user's grant. No error if none.
func (s *Store) DeleteGrant(ctx context.Context, tenant, user string) error {
	return s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `DELETE FROM grants WHERE tenant = $1 AND "user" = $2`, tenant, user)
		return err
	})
}

// FailStaleSends marks outbound messages still "sending" recorded before
// cutoff as failed with reason (their process stopped during the provider
// call) and returns how many it marked.
func (s *Store) FailStaleSends(ctx context.Context, cutoff time.Time, reason string) (int, error) {
	n := 0
	err := s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		n = 0
		msgs, err := listJSON[store.Message](ctx, tx, "SELECT data FROM messages WHERE status = 'sending' AND received < $1 FOR UPDATE", cutoff)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			m.Status, m.Error = "failed", reason
			if err := updateMessage(ctx, tx, m); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}
