package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"syncrelay/store"
)

// Small cross-request state with an expiry (OAuth state, idempotency keys,
// rate-limit slots), shared by every node. Expired rows are ignored on
// read and deleted by PurgeExpiredKV. A NULL expiry never expires.

// expiry is the row's expiry for ttl (nil: none).
func expiry(now time.Time, ttl time.Duration) *time.Time {
	if ttl <= 0 {
		return nil
	}
	t := now.Add(ttl)
	return &t
}

const liveKV = "(expires IS NULL OR expires > $2)"

// PutKV stores v (as JSON) under k for ttl (0: no expiry), replacing any value.
func (s *Store) PutKV(ctx context.Context, k string, v any, ttl time.Duration) error {
	val, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("kv %s: %w", k, err)
	}
	now := s.now().UTC()
	return s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO kv (k, expires, value) VALUES ($1, $2, $3)
			ON CONFLICT (k) DO UPDATE SET expires = excluded.expires, value = excluded.value`, k, expiry(now, ttl), val)
		return err
	})
}

// CreateKV stores v under k for ttl unless a live value is already there
// (ErrExists): first request wins, across nodes too.
func (s *Store) CreateKV(ctx context.Context, k string, v any, ttl time.Duration) error {
	val, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("kv %s: %w", k, err)
	}
	now := s.now().UTC()
	return s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO kv (k, expires, value) VALUES ($1, $3, $4)
			ON CONFLICT (k) DO UPDATE SET expires = excluded.expires, value = excluded.value
			WHERE kv.expires IS NOT NULL AND kv.expires <= $2`, k, now, expiry(now, ttl), val)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return fmt.Errorf("kv %s: %w", k, store.ErrExists)
		}
		return nil
	})
}

// GetKV reads the live value under k into v, or returns ErrNotFound.
func (s *Store) GetKV(ctx context.Context, k string, v any) error {
	var val []byte
	err := s.pool.QueryRow(ctx, "SELECT value FROM kv WHERE k = $1 AND "+liveKV, k, s.now().UTC()).Scan(&val)
	if err != nil {
		return fmt.Errorf("kv %s: %w", k, notFound(err))
	}
	return json.Unmarshal(val, v)
}

// TakeKV reads the live value under k into v and deletes it in the same
// commit: whoever takes it first gets it, on any node; every later caller
// gets ErrNotFound.
func (s *Store) TakeKV(ctx context.Context, k string, v any) error {
	now := s.now().UTC()
	var val []byte
	err := s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		return notFound(tx.QueryRow(ctx, "DELETE FROM kv WHERE k = $1 AND "+liveKV+" RETURNING value", k, now).Scan(&val))
	})
	if err != nil {
		return fmt.Errorf("kv %s: %w", k, err)
	}
	return json.Unmarshal(val, v)
}

// DeleteKV removes k (no error if absent).
func (s *Store) DeleteKV(ctx context.Context, k string) error {
	return s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "DELETE FROM kv WHERE k = $1", k)
		return err
	})
}

// PurgeExpiredKV removes expired entries and returns how many it removed.
func (s *Store) PurgeExpiredKV(ctx context.Context) (int, error) {
	tag, err := s.pool.Exec(ctx, "DELETE FROM kv WHERE expires IS NOT NULL AND expires <= $1", s.now().UTC())
	if err != nil {
		return 0, err
	}
	return int(tag.RowsAffected()), nil
}

// ReserveSlot is a shared rate limiter (GCRA) keyed by k: one event every
// interval on average, bursts of up to burst. It reserves the next slot and
// returns how long to wait before using it; when that exceeds maxWait
// nothing is reserved and ok is false. See store/bolt for the algorithm.
func (s *Store) ReserveSlot(ctx context.Context, k string, interval time.Duration, burst int, maxWait time.Duration) (wait time.Duration, ok bool, err error) {
	if interval <= 0 {
		return 0, true, nil
	}
	burst = max(burst, 1)
	now := s.now().UTC()
	tolerance := interval * time.Duration(burst-1)
	err = s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		// An expired placeholder makes the row exist, so that FOR UPDATE
		// serialises nodes reserving the same key.
		if _, err := tx.Exec(ctx, "INSERT INTO kv (k, expires, value) VALUES ($1, $2, 'null') ON CONFLICT DO NOTHING", k, now); err != nil {
			return err
		}
		var val []byte
		var exp *time.Time
		if err := tx.QueryRow(ctx, "SELECT value, expires FROM kv WHERE k = $1 FOR UPDATE", k).Scan(&val, &exp); err != nil {
			return err
		}
		tat := now // the theoretical arrival time of the next event
		var t time.Time
		if (exp == nil || exp.After(now)) && json.Unmarshal(val, &t) == nil && t.After(now) {
			tat = t
		}
		wait, ok = 0, true
		if allowAt := tat.Add(-tolerance); allowAt.After(now) {
			wait = allowAt.Sub(now)
		}
		if wait > maxWait {
			ok = false
			return nil
		}
		newTAT := tat.Add(interval)
		b, err := json.Marshal(newTAT)
		if err != nil {
			return err
		}
		// The entry is useless once the bucket has fully drained.
		_, err = tx.Exec(ctx, "UPDATE kv SET value = $2, expires = $3 WHERE k = $1", k, b, expiry(now, newTAT.Sub(now)+time.Second))
		return err
	})
	return wait, ok, err
}
