package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"
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
		if err := s.linkNew(tx, loc, ownerKey(ownerQuarantine, q.Tenant, seq)); err != nil {
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
// bytes (freed for good by the next compaction); act, when not nil, is
// recorded in the same transaction.
func (s *Store) DeleteQuarantined(ctx context.Context, tenant string, id uint64, act *QuarantineAction) error {
	now := s.now().UTC()
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
		if act != nil {
			if err := putQuarantineAction(tx, &q, act, now); err != nil {
				return err
			}
		}
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

// putQuarantineAction records a copy of act for q and drops the tenant's
// oldest actions beyond QuarantineActionsKept.
func putQuarantineAction(tx *bolt.Tx, q *Quarantined, act *QuarantineAction, now time.Time) error {
	b := tx.Bucket(bQuarantineActs)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	a := *act // the callback may run again: never change the caller's record
	a.Tenant, a.Seq, a.Quarantine, a.Reason, a.At = q.Tenant, seq, q.ID, q.Reason, now
	if err := putJSON(b, keyU64(q.Tenant, seq), &a); err != nil {
		return err
	}
	prefix := []byte(q.Tenant + "/")
	n := 0
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		n++
	}
	for k, _ := c.Seek(prefix); n > QuarantineActionsKept && k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Seek(prefix) {
		if err := c.Delete(); err != nil {
			return err
		}
		n--
	}
	return nil
}

// QuarantineActions lists a tenant's recorded actions, newest first.
func (s *Store) QuarantineActions(ctx context.Context, tenant string, limit int) ([]*QuarantineAction, error) {
	var out []*QuarantineAction
	err := s.db.View(func(tx *bolt.Tx) error {
		return forPrefix(tx.Bucket(bQuarantineActs), []byte(tenant+"/"), func(_, v []byte) error {
			var a QuarantineAction
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			out = append(out, &a)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	slices.Reverse(out)
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out, nil
}
