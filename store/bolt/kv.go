package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Small cross-request state with an expiry: OAuth state parameters,
// idempotency keys and per-sender rate-limit slots. It lives in the kv bucket
// under "ttl/" (so a second node sharing the store sees it, SPEC §11) and
// expired entries are ignored on read and removed by PurgeExpiredKV.
//
// Keys are opaque strings chosen by the caller; a namespace prefix such as
// "oauth_state/" keeps users apart. Callers must not put secrets or
// unbounded user input in keys (hash them): keys are not encrypted and bbolt
// limits them to 32 KiB.

const kvPrefix = "ttl/"

type kvEntry struct {
	Expires time.Time       `json:"expires"`
	Value   json.RawMessage `json:"value"`
}

func kvKey(k string) []byte { return []byte(kvPrefix + k) }

// liveKV returns the entry under k if it exists and has not expired.
func liveKV(b *bolt.Bucket, k []byte, now time.Time) (kvEntry, bool) {
	raw := b.Get(k)
	if raw == nil {
		return kvEntry{}, false
	}
	var e kvEntry
	if err := json.Unmarshal(raw, &e); err != nil {
		return kvEntry{}, false // unreadable: treat as absent; PutKV overwrites it
	}
	if !e.Expires.IsZero() && !now.Before(e.Expires) {
		return kvEntry{}, false
	}
	return e, true
}

func encodeKV(v any, now time.Time, ttl time.Duration) ([]byte, error) {
	val, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	e := kvEntry{Value: val}
	if ttl > 0 {
		e.Expires = now.Add(ttl)
	}
	return json.Marshal(e)
}

// PutKV stores v (as JSON) under k for ttl (0: no expiry), replacing any
// value. It returns once the write is durable.
func (s *Store) PutKV(ctx context.Context, k string, v any, ttl time.Duration) error {
	data, err := encodeKV(v, s.now().UTC(), ttl)
	if err != nil {
		return fmt.Errorf("kv %s: %w", k, err)
	}
	return s.group(ctx, func(tx *bolt.Tx) error { return tx.Bucket(bKV).Put(kvKey(k), data) })
}

// CreateKV stores v under k for ttl unless a live value is already there,
// in which case it returns ErrExists. It is the primitive of "first request
// wins" reservations (idempotency keys).
func (s *Store) CreateKV(ctx context.Context, k string, v any, ttl time.Duration) error {
	now := s.now().UTC()
	data, err := encodeKV(v, now, ttl)
	if err != nil {
		return fmt.Errorf("kv %s: %w", k, err)
	}
	return s.group(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bKV)
		if _, ok := liveKV(b, kvKey(k), now); ok {
			return fmt.Errorf("kv %s: %w", k, ErrExists)
		}
		return b.Put(kvKey(k), data)
	})
}

// GetKV reads the live value under k into v, or returns ErrNotFound.
func (s *Store) GetKV(ctx context.Context, k string, v any) error {
	now := s.now().UTC()
	var val json.RawMessage
	err := s.db.View(func(tx *bolt.Tx) error {
		e, ok := liveKV(tx.Bucket(bKV), kvKey(k), now)
		if !ok {
			return ErrNotFound
		}
		val = e.Value
		return nil
	})
	if err != nil {
		return fmt.Errorf("kv %s: %w", k, err)
	}
	return json.Unmarshal(val, v)
}

// TakeKV reads the live value under k into v and deletes it in the same
// durable transaction: whoever takes it first gets it, every later caller
// gets ErrNotFound. It is the primitive of single-use values (OAuth state).
func (s *Store) TakeKV(ctx context.Context, k string, v any) error {
	now := s.now().UTC()
	var val json.RawMessage
	err := s.group(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bKV)
		e, ok := liveKV(b, kvKey(k), now)
		if !ok {
			return ErrNotFound // an expired entry is left to PurgeExpiredKV
		}
		val = e.Value
		return b.Delete(kvKey(k))
	})
	if err != nil {
		return fmt.Errorf("kv %s: %w", k, err)
	}
	return json.Unmarshal(val, v)
}

// DeleteKV removes k (no error if absent).
func (s *Store) DeleteKV(ctx context.Context, k string) error {
	return s.group(ctx, func(tx *bolt.Tx) error { return tx.Bucket(bKV).Delete(kvKey(k)) })
}

// PurgeExpiredKV removes expired entries and returns how many it removed.
func (s *Store) PurgeExpiredKV(ctx context.Context) (int, error) {
	now := s.now().UTC()
	var dead [][]byte
	err := s.db.View(func(tx *bolt.Tx) error {
		return forPrefix(tx.Bucket(bKV), []byte(kvPrefix), func(k, v []byte) error {
			var e kvEntry
			if json.Unmarshal(v, &e) != nil || (!e.Expires.IsZero() && !now.Before(e.Expires)) {
				dead = append(dead, bytes.Clone(k))
			}
			return nil
		})
	})
	if err != nil || len(dead) == 0 {
		return 0, err
	}
	n := 0
	err = s.group(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bKV)
		n = 0
		for _, k := range dead {
			// Re-check: the entry may have been replaced since the scan.
			if _, live := liveKV(b, k, now); live || b.Get(k) == nil {
				continue
			}
			if err := b.Delete(k); err != nil {
				return err
			}
			n++
		}
		return nil
	})
	return n, err
}

// ReserveSlot is a shared rate limiter (GCRA, the generic cell rate
// algorithm) keyed by k: it admits one event every interval on average, with
// bursts of up to burst events. It reserves the next slot and returns how
// long the caller must wait before using it (0: now). When that wait would
// exceed maxWait nothing is reserved, ok is false and wait says how far
// away the next free slot is.
func (s *Store) ReserveSlot(ctx context.Context, k string, interval time.Duration, burst int, maxWait time.Duration) (wait time.Duration, ok bool, err error) {
	if interval <= 0 {
		return 0, true, nil
	}
	if burst < 1 {
		burst = 1
	}
	now := s.now().UTC()
	tolerance := interval * time.Duration(burst-1)
	err = s.group(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bKV)
		// TAT: the theoretical arrival time of the next event.
		tat := now
		if e, live := liveKV(b, kvKey(k), now); live {
			var t time.Time
			if json.Unmarshal(e.Value, &t) == nil && t.After(now) {
				tat = t
			}
		}
		allowAt := tat.Add(-tolerance)
		wait, ok = 0, true
		if allowAt.After(now) {
			wait = allowAt.Sub(now)
		}
		if wait > maxWait {
			ok = false
			return nil
		}
		newTAT := tat.Add(interval)
		// The entry is useless once the bucket has fully drained.
		data, err := encodeKV(newTAT, now, newTAT.Sub(now)+time.Second)
		if err != nil {
			return err
		}
		return b.Put(kvKey(k), data)
	})
	return wait, ok, err
}
