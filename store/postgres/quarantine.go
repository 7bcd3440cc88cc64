package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"syncrelay/store"
)

// Quarantine records a quarantined message with its raw bytes.
func (s *Store) Quarantine(ctx context.Context, q *store.Quarantined, raw *store.Raw, keep time.Duration) error {
	body, err := readRaw(raw)
	if err != nil {
		return err
	}
	now := s.now().UTC()
	var out store.Quarantined
	err = s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		out = *q
		if err := tx.QueryRow(ctx, "SELECT nextval('quarantine_ids')").Scan(&out.ID); err != nil {
			return err
		}
		out.Received, out.Expires = now, now.Add(keep)
		out.Raw, out.Size = "", 0
		var rawID *int64
		if raw != nil {
			loc, err := putRaw(ctx, tx, body)
			if err != nil {
				return err
			}
			id, _ := parseLoc(loc)
			out.Raw, out.Size, rawID = loc, int64(len(body)), &id
		}
		data, err := encode(&out)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, "INSERT INTO quarantine (tenant, id, expires, raw_id, data) VALUES ($1, $2, $3, $4, $5)",
			out.Tenant, out.ID, out.Expires, rawID, data)
		return err
	})
	if err == nil {
		*q = out
	}
	return err
}

// QuarantinedMessages lists a tenant's quarantine, oldest first.
func (s *Store) QuarantinedMessages(ctx context.Context, tenant string) ([]*store.Quarantined, error) {
	return listJSON[store.Quarantined](ctx, s.pool, "SELECT data FROM quarantine WHERE tenant = $1 ORDER BY id", tenant)
}

// ExpireQuarantine deletes quarantined messages past their expiry with
// their raw bytes, in one commit.
func (s *Store) ExpireQuarantine(ctx context.Context) (int, error) {
	now := s.now()
	n := 0
	err := s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		return tx.QueryRow(ctx, `WITH gone AS (DELETE FROM quarantine WHERE expires < $1 RETURNING raw_id),
			blobs AS (DELETE FROM raw_blobs WHERE id IN (SELECT raw_id FROM gone WHERE raw_id IS NOT NULL))
			SELECT count(*) FROM gone`, now).Scan(&n)
	})
	return n, err
}

// DeleteQuarantined removes one quarantined message with its raw bytes, in
// one commit with act (when not nil).
func (s *Store) DeleteQuarantined(ctx context.Context, tenant string, id uint64, act *store.QuarantineAction) error {
	now := s.now().UTC()
	return s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		var data []byte
		err := tx.QueryRow(ctx, `WITH gone AS (DELETE FROM quarantine WHERE tenant = $1 AND id = $2 RETURNING raw_id, data),
			blobs AS (DELETE FROM raw_blobs WHERE id IN (SELECT raw_id FROM gone WHERE raw_id IS NOT NULL))
			SELECT data FROM gone`, tenant, int64(id)).Scan(&data)
		if errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("quarantined message %d of %s: %w", id, tenant, store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		if act == nil {
			return nil
		}
		var q store.Quarantined
		if err := decode(data, &q); err != nil {
			return fmt.Errorf("quarantine record: %w", err)
		}
		a := *act // the callback may run again: never change the caller's record
		a.Tenant, a.Quarantine, a.Reason, a.At = tenant, id, q.Reason, now
		if err := tx.QueryRow(ctx, "SELECT nextval('quarantine_action_seq')").Scan(&a.Seq); err != nil {
			return err
		}
		enc, err := encode(&a)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "INSERT INTO quarantine_actions (tenant, seq, data) VALUES ($1, $2, $3)", tenant, int64(a.Seq), enc); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `DELETE FROM quarantine_actions WHERE tenant = $1 AND seq <= (
			SELECT seq FROM quarantine_actions WHERE tenant = $1 ORDER BY seq DESC OFFSET $2 LIMIT 1)`, tenant, store.QuarantineActionsKept)
		return err
	})
}

// QuarantineActions lists a tenant's recorded actions, newest first.
func (s *Store) QuarantineActions(ctx context.Context, tenant string, limit int) ([]*store.QuarantineAction, error) {
	if limit <= 0 {
		limit = store.QuarantineActionsKept
	}
	return listJSON[store.QuarantineAction](ctx, s.pool, "SELECT data FROM quarantine_actions WHERE tenant = $1 ORDER BY seq DESC LIMIT $2", tenant, limit)
}
