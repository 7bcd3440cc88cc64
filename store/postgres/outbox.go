package postgres

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"syncrelay/store"
)

// The webhook outbox: one row per event, moved through
//
//	pending --(2xx)--> delivered --(retention)--> pruned
//	   \--(max attempts)--> dead --(redeliver)--> pending
//
// Nodes claim due events with FOR UPDATE SKIP LOCKED and a lease; the
// attempt count is the fence that makes an outcome of an older claim void.

// enqueue adds an event in the caller's transaction.
func enqueue(ctx context.Context, tx pgx.Tx, tenant, typ string, data any, now time.Time) error {
	b, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("event %s: %w", typ, err)
	}
	_, err = tx.Exec(ctx, `INSERT INTO outbox (tenant, type, created, state, next_attempt, data)
		VALUES ($1, $2, $3, 'pending', $3, $4)`, tenant, typ, now, b)
	return err
}

// Enqueue adds an event to the durable outbox on its own.
func (s *Store) Enqueue(ctx context.Context, tenant, typ string, data any) error {
	now := s.now().UTC()
	return s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error { return enqueue(ctx, tx, tenant, typ, data, now) })
}

// claimAnswerTimeout bounds how long a claim waits for its answer after
// its caller's context has ended (see ClaimEvents).
const claimAnswerTimeout = 30 * time.Second

const eventCols = "seq, tenant, type, created, state, attempts, next_attempt, last_error, data"

// scanEvent reads one row of eventCols (plus extra destinations).
func scanEvent(row pgx.Row, extra ...any) (*store.Event, error) {
	var e store.Event
	var next *time.Time
	var data []byte
	dest := append([]any{&e.Seq, &e.Tenant, &e.Type, &e.Created, &e.State, &e.Attempts, &next, &e.LastError, &data}, extra...)
	if err := row.Scan(dest...); err != nil {
		return nil, err
	}
	e.ID = fmt.Sprintf("evt-%d", e.Seq)
	e.Created = e.Created.UTC()
	if next != nil {
		e.NextAttempt = next.UTC()
	}
	if len(data) > 0 {
		e.Data = json.RawMessage(data)
	}
	return &e, nil
}

func collectEvents(rows pgx.Rows, err error) ([]*store.Event, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*store.Event
	for rows.Next() {
		e, err := scanEvent(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

// ClaimEvents takes up to limit pending events due at now for delivery:
// their attempt count is raised and their next attempt moved to now+lease
// in one committed statement before they are returned (at least once).
// Events another node is claiming are skipped, not waited for.
//
// Once the statement is sent, ctx no longer cuts it short: the claim
// commits at the server before its answer is read, so a caller that gave
// up on the answer (a node told to stop, a loaded node reading late) would
// leave the events claimed by nobody until the lease ends, long after the
// stop. The answer is read to the end (bounded by claimAnswerTimeout) and
// returned, as store/bolt returns a claim once it is queued.
func (s *Store) ClaimEvents(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]*store.Event, error) {
	if limit <= 0 {
		return nil, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("claim events: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), claimAnswerTimeout)
	defer cancel()
	rows, err := s.pool.Query(ctx, `WITH due AS (
			SELECT seq, next_attempt AS was FROM outbox
			WHERE state = 'pending' AND next_attempt <= $1
			ORDER BY next_attempt, seq LIMIT $2
			FOR UPDATE SKIP LOCKED)
		UPDATE outbox o SET attempts = o.attempts + 1, next_attempt = $3
		FROM due WHERE o.seq = due.seq
		RETURNING o.seq, o.tenant, o.type, o.created, o.state, o.attempts, o.next_attempt, o.last_error, o.data, due.was`,
		now, limit, now.Add(lease).UTC())
	if err != nil {
		return nil, fmt.Errorf("claim events: %w", err)
	}
	defer rows.Close()
	type claimed struct {
		e   *store.Event
		was time.Time
	}
	var cs []claimed
	for rows.Next() {
		var was time.Time
		e, err := scanEvent(rows, &was)
		if err != nil {
			return nil, err
		}
		cs = append(cs, claimed{e, was})
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("claim events: %w", err)
	}
	// RETURNING has no order: give them in due order, as store/bolt does.
	slices.SortFunc(cs, func(a, b claimed) int {
		if c := a.was.Compare(b.was); c != 0 {
			return c
		}
		return cmp.Compare(a.e.Seq, b.e.Seq)
	})
	out := make([]*store.Event, len(cs))
	for i, c := range cs {
		out[i] = c.e
	}
	return out, nil
}

// EventDelivered records a successful delivery of event seq.
func (s *Store) EventDelivered(ctx context.Context, seq uint64, at time.Time) error {
	tag, err := s.pool.Exec(ctx, `UPDATE outbox SET state = 'delivered', last_error = '', next_attempt = NULL, done_at = $2
		WHERE seq = $1 AND state <> 'delivered'`, seq, at.UTC())
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return s.eventExists(ctx, seq)
	}
	return nil
}

func (s *Store) eventExists(ctx context.Context, seq uint64) error {
	var ok bool
	if err := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM outbox WHERE seq = $1)", seq).Scan(&ok); err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("event %d: %w", seq, store.ErrNotFound)
	}
	return nil
}

// EventFailed records a failed delivery attempt of event seq: retried at
// next, or dead-lettered when dead is set. An outcome for an older attempt
// than the event's current one is ignored.
func (s *Store) EventFailed(ctx context.Context, seq uint64, attempt int, at time.Time, errText string, next time.Time, dead bool) error {
	var tag interface{ RowsAffected() int64 }
	var err error
	if dead {
		tag, err = s.pool.Exec(ctx, `UPDATE outbox SET state = 'dead', last_error = $3, next_attempt = NULL, done_at = $4
			WHERE seq = $1 AND state = 'pending' AND attempts = $2`, seq, attempt, errText, at.UTC())
	} else {
		tag, err = s.pool.Exec(ctx, `UPDATE outbox SET last_error = $3, next_attempt = $4
			WHERE seq = $1 AND state = 'pending' AND attempts = $2`, seq, attempt, errText, next.UTC())
	}
	if err != nil {
		return err
	}
	if tag.RowsAffected() == 0 {
		return s.eventExists(ctx, seq)
	}
	return nil
}

// DeadLetters lists dead-lettered events in outbox order, optionally of
// one tenant, after seq after: at most limit, and whether more follow.
func (s *Store) DeadLetters(ctx context.Context, tenant string, after uint64, limit int) ([]store.DeadLetter, bool, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+eventCols+`, done_at FROM outbox
		WHERE state = 'dead' AND seq > $1 AND ($2 = '' OR tenant = $2) ORDER BY seq LIMIT $3`, after, tenant, limit+1)
	if err != nil {
		return nil, false, err
	}
	defer rows.Close()
	var out []store.DeadLetter
	for rows.Next() {
		var deadAt *time.Time
		e, err := scanEvent(rows, &deadAt)
		if err != nil {
			return nil, false, err
		}
		if len(out) == limit {
			return out, true, nil
		}
		dl := store.DeadLetter{Event: e}
		if deadAt != nil {
			dl.DeadAt = deadAt.UTC()
		}
		out = append(out, dl)
	}
	return out, false, rows.Err()
}

// OutboxEvent returns one outbox event by sequence number.
func (s *Store) OutboxEvent(ctx context.Context, seq uint64) (*store.Event, error) {
	e, err := scanEvent(s.pool.QueryRow(ctx, "SELECT "+eventCols+" FROM outbox WHERE seq = $1", seq))
	if err != nil {
		return nil, fmt.Errorf("event %d: %w", seq, notFound(err))
	}
	return e, nil
}

// Redeliver puts dead-lettered events back in the queue with a fresh
// attempt budget, due at now: those of seqs (one that is not dead fails
// the whole call with ErrNotDead or ErrNotFound) or, without seqs, every
// dead event (of tenant when set).
func (s *Store) Redeliver(ctx context.Context, tenant string, seqs []uint64, now time.Time) ([]*store.Event, error) {
	var out []*store.Event
	err := s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		out = nil
		if len(seqs) == 0 {
			evs, err := collectEvents(tx.Query(ctx, `UPDATE outbox SET state = 'pending', attempts = 0, next_attempt = $2, done_at = NULL
				WHERE state = 'dead' AND ($1 = '' OR tenant = $1) RETURNING `+eventCols, tenant, now.UTC()))
			slices.SortFunc(evs, func(a, b *store.Event) int { return cmp.Compare(a.Seq, b.Seq) })
			out = evs
			return err
		}
		for _, seq := range seqs {
			e, err := scanEvent(tx.QueryRow(ctx, "SELECT "+eventCols+" FROM outbox WHERE seq = $1 FOR UPDATE", seq))
			if errors.Is(err, pgx.ErrNoRows) || (err == nil && tenant != "" && e.Tenant != tenant) {
				return fmt.Errorf("event %d: %w", seq, store.ErrNotFound)
			}
			if err != nil {
				return err
			}
			if e.State != store.EventDead {
				return fmt.Errorf("%s is %s: %w", e.ID, e.State, store.ErrNotDead)
			}
			if _, err := tx.Exec(ctx, "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt = $2, done_at = NULL WHERE seq = $1", seq, now.UTC()); err != nil {
				return err
			}
			e.State, e.Attempts, e.NextAttempt = store.EventPending, 0, now.UTC()
			out = append(out, e)
		}
		return nil
	})
	return out, err
}

// OutboxStats counts pending and dead events.
func (s *Store) OutboxStats(ctx context.Context) (store.OutboxStats, error) {
	var st store.OutboxStats
	var oldest *time.Time
	err := s.pool.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM outbox WHERE state = 'pending'),
		(SELECT min(created) FROM outbox WHERE state = 'pending'),
		(SELECT count(*) FROM outbox WHERE state = 'dead')`).Scan(&st.Pending, &oldest, &st.Dead)
	if oldest != nil {
		st.OldestPending = oldest.UTC()
	}
	return st, err
}

// PruneEvents deletes events delivered before deliveredBefore and dead
// letters given up before deadBefore, at most limit per call.
func (s *Store) PruneEvents(ctx context.Context, deliveredBefore, deadBefore time.Time, limit int) (int, error) {
	if limit <= 0 {
		return 0, nil
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM outbox WHERE seq IN (
		(SELECT seq FROM outbox WHERE state = 'delivered' AND done_at < $1 ORDER BY done_at LIMIT $3)
		UNION ALL
		(SELECT seq FROM outbox WHERE state = 'dead' AND done_at < $2 ORDER BY seq LIMIT $3)
		LIMIT $3)`, deliveredBefore.UTC(), deadBefore.UTC(), limit)
	if err != nil {
		return 0, err
	}
	return int(tag.RowsAffected()), nil
}

// Events lists outbox events in order, optionally only those in state.
func (s *Store) Events(ctx context.Context, state string) ([]*store.Event, error) {
	return collectEvents(s.pool.Query(ctx, "SELECT "+eventCols+" FROM outbox WHERE ($1 = '' OR state = $1) ORDER BY seq", state))
}
