package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/jackc/pgx/v5"

	"syncrelay/store"
)

// ErrBackupUnsupported is Backup's answer (it wraps errors.ErrUnsupported):
// PostgreSQL's own tools are the backup of this backend.
var ErrBackupUnsupported = fmt.Errorf("the postgres backend is backed up with PostgreSQL's tools (pg_dump, or base backups with WAL archiving for point-in-time recovery), not syncrelay backup: %w", errors.ErrUnsupported)

// Backup is not done by syncrelay for this backend (ErrBackupUnsupported).
func (s *Store) Backup(ctx context.Context, w io.Writer) (*store.BackupManifest, error) {
	return nil, ErrBackupUnsupported
}

// Compact has nothing to do: removed bytes are deleted in the transaction
// that removes their record, and autovacuum gives the space back.
func (s *Store) Compact(ctx context.Context) (store.CompactStats, error) {
	return store.CompactStats{}, nil
}

// CollectOrphans has nothing to collect: raw bytes are written in the
// transaction of the record that refers to them.
func (s *Store) CollectOrphans(ctx context.Context) (int, error) { return 0, nil }

// KeyFingerprint returns the fingerprint of the secret key recorded with
// this data, if any.
func (s *Store) KeyFingerprint(ctx context.Context) (string, bool, error) {
	var fp string
	err := s.pool.QueryRow(ctx, "SELECT v FROM meta WHERE k = 'key_fingerprint'").Scan(&fp)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", false, nil
	}
	return fp, err == nil, err
}

// SetKeyFingerprint records fp as the fingerprint of this data's secret
// key. The same value again is a no-op; a different one is ErrExists.
func (s *Store) SetKeyFingerprint(ctx context.Context, fp string) error {
	var cur string
	err := s.pool.QueryRow(ctx, `WITH ins AS (INSERT INTO meta (k, v) VALUES ('key_fingerprint', $1) ON CONFLICT DO NOTHING RETURNING v)
		SELECT v FROM ins UNION ALL SELECT v FROM meta WHERE k = 'key_fingerprint' LIMIT 1`, fp).Scan(&cur)
	if err != nil {
		return err
	}
	if cur != fp {
		return fmt.Errorf("store: a different secret key fingerprint is recorded: %w", store.ErrExists)
	}
	return nil
}

// HasData reports whether the database holds anything made with a secret
// key, or that a new key would orphan.
func (s *Store) HasData(ctx context.Context) (bool, error) {
	var has bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM meta WHERE k = 'key_fingerprint')
		OR EXISTS (SELECT 1 FROM tenants) OR EXISTS (SELECT 1 FROM threads) OR EXISTS (SELECT 1 FROM messages)
		OR EXISTS (SELECT 1 FROM grants) OR EXISTS (SELECT 1 FROM quarantine)`).Scan(&has)
	return has, err
}

// ErrDryRunUnsupported is DryRun's answer (it wraps errors.ErrUnsupported).
var ErrDryRunUnsupported = fmt.Errorf("the postgres backend has no scratch copy for a dry run: replay against a running node with -smtp: %w", errors.ErrUnsupported)

// DryRun is not offered: a copy of a shared database whose writes vanish
// would need a transaction held open across the whole replay on one
// connection, which the concurrent commit loop cannot share.
func (s *Store) DryRun(ctx context.Context) (store.Store, error) {
	return nil, ErrDryRunUnsupported
}
