package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bGrants = []byte("grants") // tenant/user -> Grant

// PutGrant stores a freshly consented grant for an existing user, replacing
// any earlier one (a reconnect repairs a broken grant). It sets Status to
// active, the timestamps and the next Version.
func (s *Store) PutGrant(ctx context.Context, g *Grant) error {
	now := s.now().UTC()
	var out Grant
	err := s.group(ctx, func(tx *bolt.Tx) error {
		if tx.Bucket(bUsers).Get(key(g.Tenant, g.User)) == nil {
			return fmt.Errorf("user %q: %w", g.User, ErrNotFound)
		}
		b := tx.Bucket(bGrants)
		var old Grant
		_ = getJSON(b, key(g.Tenant, g.User), &old)
		out = *g
		out.Status, out.Version = GrantActive, old.Version+1
		out.Connected, out.Refreshed, out.BrokenAt, out.BrokenReason = now, time.Time{}, time.Time{}, ""
		return putJSON(b, key(g.Tenant, g.User), &out)
	})
	if err != nil {
		return err
	}
	*g = out
	return nil
}

// Grant returns a user's grant, or ErrNotFound when the user never connected.
func (s *Store) Grant(ctx context.Context, tenant, user string) (*Grant, error) {
	var g Grant
	err := s.db.View(func(tx *bolt.Tx) error {
		return getJSON(tx.Bucket(bGrants), key(tenant, user), &g)
	})
	if err != nil {
		return nil, fmt.Errorf("grant of %q: %w", user, err)
	}
	return &g, nil
}

// UpdateGrantToken replaces the sealed token of an active grant after a
// refresh, if the grant is still at version (else ErrStale: it was
// reconnected, broken or refreshed elsewhere in the meantime).
func (s *Store) UpdateGrantToken(ctx context.Context, tenant, user string, version uint64, sealed []byte) (*Grant, error) {
	now := s.now().UTC()
	var out Grant
	err := s.group(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bGrants)
		var g Grant
		if err := getJSON(b, key(tenant, user), &g); err != nil {
			return fmt.Errorf("grant of %q: %w", user, err)
		}
		if g.Version != version || g.Status != GrantActive {
			return fmt.Errorf("grant of %q: %w", user, ErrStale)
		}
		g.Sealed, g.Version, g.Refreshed = sealed, g.Version+1, now
		out = g
		return putJSON(b, key(tenant, user), &g)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// MarkGrantBroken marks a grant broken (its refresh token was refused with
// invalid_grant, or the provider revoked it), drops the useless ciphertext
// and enqueues grant.broken in the same transaction. It does nothing and
// reports false when the grant is no longer at version (it was reconnected
// meanwhile) or is already broken, so one failure raises one event.
func (s *Store) MarkGrantBroken(ctx context.Context, tenant, user string, version uint64, reason string) (bool, error) {
	now := s.now().UTC()
	changed := false
	err := s.group(ctx, func(tx *bolt.Tx) error {
		changed = false
		b := tx.Bucket(bGrants)
		var g Grant
		if err := getJSON(b, key(tenant, user), &g); err != nil {
			return fmt.Errorf("grant of %q: %w", user, err)
		}
		if g.Version != version || g.Status != GrantActive {
			return nil
		}
		g.Status, g.Sealed, g.Version, g.BrokenAt, g.BrokenReason = GrantBroken, nil, g.Version+1, now, reason
		if err := putJSON(b, key(tenant, user), &g); err != nil {
			return err
		}
		changed = true
		return s.enqueue(tx, tenant, "grant.broken", map[string]any{
			"user": user, "provider": g.Provider, "reason": reason, "broken_at": now,
		}, now)
	})
	return changed, err
}

// DeleteGrant forgets a user's grant (a disconnect). No error if none.
func (s *Store) DeleteGrant(ctx context.Context, tenant, user string) error {
	return s.group(ctx, func(tx *bolt.Tx) error { return tx.Bucket(bGrants).Delete(key(tenant, user)) })
}

// Grants lists a tenant's grants by user id, without their ciphertext: for
// user listings and forwarding health (users with broken grants).
func (s *Store) Grants(ctx context.Context, tenant string) ([]*Grant, error) {
	var out []*Grant
	err := s.db.View(func(tx *bolt.Tx) error {
		return forPrefix(tx.Bucket(bGrants), []byte(tenant+"/"), func(_, v []byte) error {
			var g Grant
			if err := json.Unmarshal(v, &g); err != nil {
				return err
			}
			g.Sealed = nil
			out = append(out, &g)
			return nil
		})
	})
	return out, err
}

// FailStaleSends marks outbound messages still "sending" that were recorded
// before cutoff as failed with reason: their process stopped during the
// provider call (a crash or kill), so whether the provider sent them is
// unknown, and "sending" must not last forever. It returns how many it
// marked.
func (s *Store) FailStaleSends(ctx context.Context, cutoff time.Time, reason string) (int, error) {
	var keys [][]byte
	// The status as either form of record writes it: a cheap filter before
	// decoding (this scans every message, every 10 minutes).
	markers := [][]byte{[]byte(`"status":"sending"`), []byte("\x07sending")}
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bMessages).ForEach(func(k, v []byte) error {
			if !bytes.Contains(v, markers[0]) && !bytes.Contains(v, markers[1]) {
				return nil
			}
			var m Message
			if err := decodeMessage(v, &m); err != nil {
				return err
			}
			if m.Status == "sending" && m.Received.Before(cutoff) {
				keys = append(keys, bytes.Clone(k))
			}
			return nil
		})
	})
	if err != nil || len(keys) == 0 {
		return 0, err
	}
	n := 0
	err = s.group(ctx, func(tx *bolt.Tx) error {
		n = 0
		mb := tx.Bucket(bMessages)
		for _, k := range keys {
			var m Message
			if err := getMessage(mb, k, &m); err != nil || m.Status != "sending" {
				continue
			}
			m.Status, m.Error = "failed", reason
			if err := putMessageRec(mb, k, &m); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}
