package bolt

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Quarantine records a quarantined message with its raw bytes.
func (s *Store) Quarantine(ctx context.Context, q *Quarantined, raw *Raw, keep time.Duration) error {
	now := s.now().UTC()
	loc, size, err := s.writeRaw(raw)
	if err != nil {
		return err
	}
	var out Quarantined
	err = s.group(ctx, func(tx *bolt.Tx) error {
		b := tx.Bucket(bQuarantine)
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		out = *q
		out.ID, out.Received, out.Expires = seq, now, now.Add(keep)
		out.Raw, out.Size = loc, size
		if err := linkRaw(tx, loc, ownerKey(ownerQuarantine, q.Tenant, seq)); err != nil {
			return err
		}
		return putJSON(b, keyU64(q.Tenant, seq), &out)
	})
	if err == nil {
		*q = out
	}
	return err
}

// QuarantinedMessages lists a tenant's quarantine.
func (s *Store) QuarantinedMessages(ctx context.Context, tenant string) ([]*Quarantined, error) {
	var out []*Quarantined
	err := s.db.View(func(tx *bolt.Tx) error {
		return forPrefix(tx.Bucket(bQuarantine), []byte(tenant+"/"), func(_, v []byte) error {
			var q Quarantined
			if err := json.Unmarshal(v, &q); err != nil {
				return err
			}
			out = append(out, &q)
			return nil
		})
	})
	return out, err
}

// ExpireQuarantine deletes quarantined messages past their expiry and
// gives up their raw bytes (freed for good by the next compaction).
func (s *Store) ExpireQuarantine(ctx context.Context) (int, error) {
	now := s.now()
	var freed []string
	n := 0
	err := s.group(ctx, func(tx *bolt.Tx) error {
		freed, n = nil, 0
		c := tx.Bucket(bQuarantine).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var q Quarantined
			if err := json.Unmarshal(v, &q); err != nil {
				return fmt.Errorf("quarantine record: %w", err)
			}
			if now.After(q.Expires) {
				name, err := unlinkRaw(tx, q.Raw)
				if err != nil {
					return err
				}
				if name != "" {
					freed = append(freed, name)
				}
				if err := c.Delete(); err != nil {
					return err
				}
				n++
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, name := range freed {
		_ = s.big.remove(name)
	}
	return n, nil
}

// DeleteQuarantined removes one quarantined message and unlinks its raw
// bytes (freed for good by the next compaction).
func (s *Store) DeleteQuarantined(ctx context.Context, tenant string, id uint64) error {
	var freed string
	err := s.group(ctx, func(tx *bolt.Tx) error {
		freed = ""
		b := tx.Bucket(bQuarantine)
		k := keyU64(tenant, id)
		v := b.Get(k)
		if v == nil {
			return fmt.Errorf("quarantined message %d of %s: %w", id, tenant, ErrNotFound)
		}
		var q Quarantined
		if err := json.Unmarshal(v, &q); err != nil {
			return fmt.Errorf("quarantine record: %w", err)
		}
		name, err := unlinkRaw(tx, q.Raw)
		if err != nil {
			return err
		}
		freed = name
		return b.Delete(k)
	})
	if err != nil {
		return err
	}
	if freed != "" {
		_ = s.big.remove(freed)
	}
	return nil
}
