package bolt

import (
	"context"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// The secret key's fingerprint is recorded with the data it protects, so
// that a daemon started with another key (a typo in key_file, a restore
// without its key) refuses to start instead of silently making every grant
// undecryptable and every thread token unknown (SPEC §12). It is a one-way
// value computed by the caller; the store never sees the key.

var keyKeyFingerprint = []byte("key_fingerprint")

// KeyFingerprint returns the fingerprint of the secret key recorded with
// this data, if any. It works on a read-only store.
func (s *Store) KeyFingerprint(ctx context.Context) (fp string, ok bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bMeta).Get(keyKeyFingerprint); v != nil {
			fp, ok = string(v), true
		}
		return nil
	})
	return fp, ok, err
}

// SetKeyFingerprint records fp as the fingerprint of this data's secret
// key. Recording the same value again is a no-op; a different value never
// replaces the recorded one (ErrExists).
func (s *Store) SetKeyFingerprint(ctx context.Context, fp string) error {
	return s.group(ctx, func(tx *bolt.Tx) error {
		m := tx.Bucket(bMeta)
		switch old := m.Get(keyKeyFingerprint); {
		case old == nil:
			return m.Put(keyKeyFingerprint, []byte(fp))
		case string(old) != fp:
			return fmt.Errorf("store: a different secret key fingerprint is recorded: %w", ErrExists)
		}
		return nil
	})
}

// HasData reports whether the store holds anything made with a secret
// key, or that a new key would orphan: a tenant, thread, message, grant or
// quarantined message, or a recorded key fingerprint. Each test is one
// cursor step, whatever the store's size.
func (s *Store) HasData(ctx context.Context) (bool, error) {
	has := false
	err := s.db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bMeta).Get(keyKeyFingerprint) != nil {
			has = true
			return nil
		}
		for _, b := range [][]byte{bTenants, bThreads, bMessages, bGrants, bQuarantine} {
			if k, _ := tx.Bucket(b).Cursor().First(); k != nil {
				has = true
				return nil
			}
		}
		return nil
	})
	return has, err
}
