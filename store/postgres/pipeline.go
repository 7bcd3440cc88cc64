package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"

	"syncrelay/store"
)

// Pipelined requests: a request that knows its statements in advance, step
// by step, queues them in a pgx.Batch shared with the other requests of its
// commit batch, so that a step of the whole batch costs one round trip
// instead of one per statement per message. Statements run in queue order
// in one transaction, so a request's later statements see its earlier
// ones and those of the requests queued before it.

// batchOp is one request's state machine. next queues the statements of
// its next step (their callbacks record the results it needs) and reports
// whether it queued any; false means the request is done.
type batchOp interface {
	next(p *pipe) bool
}

// lastStepper is a batchOp that can tell that the step it just queued is
// its last: when every request's is, COMMIT goes in the same round trip.
type lastStepper interface {
	last() bool
}

// pipe queues statements on behalf of one request, so that an error is
// attributed to it (the transaction is then rolled back and the others
// rerun, as for any failing request).
type pipe struct {
	b     *pgx.Batch
	owner int
	// dups holds the messages that duplicates of this batch changed, so
	// that two copies of one message in a batch both add their mailbox.
	dups map[uint64]*store.Message
	// noCommit: a request failed on this side (fail); COMMIT must wait.
	noCommit bool
	// keys collects the keys the batch inserts, announced in its commit.
	keys *[]tenantKey
}

// note adds a key the batch is about to insert to this node's filter and
// to the batch's notice.
func (p *pipe) note(s *Store, tenant, key string) {
	s.noteKey(tenant, key)
	*p.keys = append(*p.keys, tenantKey{tenant, key})
}

// row queues a statement returning one row, handed to fn.
func (p *pipe) row(fn func(pgx.Row) error, sql string, args ...any) {
	owner := p.owner
	p.b.Queue(sql, args...).Fn = func(br pgx.BatchResults) error {
		if err := fn(br.QueryRow()); err != nil {
			return &errRequest{i: owner, err: err}
		}
		return nil
	}
}

// fail fails the request with err (a statement's place is taken so that
// the error surfaces in order). The round trip then carries no COMMIT: the
// server does not know of this error.
func (p *pipe) fail(err error) {
	p.noCommit = true
	p.row(func(pgx.Row) error { return err }, "SELECT 1")
}

// exec queues a statement whose result is only success or failure.
func (p *pipe) exec(sql string, args ...any) {
	owner := p.owner
	p.b.Queue(sql, args...).Fn = func(br pgx.BatchResults) error {
		if _, err := br.Exec(); err != nil {
			return &errRequest{i: owner, err: err}
		}
		return nil
	}
}

// runPipeline runs the ops (nil entries are requests already run) step by
// step, one round trip per step for all of them. It logs the keys they
// insert in tx (key_log) and sets payloads to their notices, which the
// caller sends once tx is committed (notifyAfter).
func runPipeline(ctx context.Context, tx pgx.Tx, ops []batchOp, payloads *[]string) error {
	dups := map[uint64]*store.Message{}
	var keys []tenantKey
	for {
		p := &pipe{b: &pgx.Batch{}, dups: dups, keys: &keys}
		for i, op := range ops {
			if op == nil {
				continue
			}
			p.owner = i
			if !op.next(p) {
				ops[i] = nil
			}
		}
		if p.b.Len() == 0 {
			*payloads = keyPayloads(keys)
			if len(*payloads) > 0 {
				if _, err := tx.Exec(ctx, keyLogSQL, *payloads); err != nil {
					return err
				}
			}
			return nil
		}
		if err := tx.SendBatch(ctx, p.b).Close(); err != nil {
			return err
		}
	}
}

// runTx runs a batch of only pipelined requests in one transaction with
// BEGIN sent in the first step's round trip and COMMIT in the last one's
// (when every request knows its last step; else on its own): a batch of
// new messages costs two round trips, not four. The batch's notices follow
// its COMMIT in that last round trip; when the commit fails, the server
// skips them with it.
func (s *Store) runTx(ctx context.Context, ops []batchOp) (err error) {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	open := false
	defer func() {
		if err != nil && open {
			// The failed statement aborted the transaction; the rest of
			// the pipeline, COMMIT included, was skipped.
			if _, rerr := conn.Exec(context.WithoutCancel(ctx), "ROLLBACK"); rerr != nil {
				conn.Conn().Close(ctx) // unknown state: do not reuse it
			}
		}
	}()
	dups := map[uint64]*store.Message{}
	var keys []tenantKey
	committed := false
	for {
		b := &pgx.Batch{}
		if !open {
			b.Queue("BEGIN")
		}
		p := &pipe{b: b, dups: dups, keys: &keys}
		queued, last := false, true
		for i, op := range ops {
			if op == nil {
				continue
			}
			p.owner = i
			if !op.next(p) {
				ops[i] = nil
				continue
			}
			queued = true
			if ls, ok := op.(lastStepper); !ok || !ls.last() {
				last = false
			}
		}
		if p.noCommit {
			last = false
		}
		if last {
			pls := keyPayloads(keys)
			if len(pls) > 0 {
				b.Queue(keyLogSQL, pls)
			}
			b.Queue("COMMIT").Fn = func(br pgx.BatchResults) error {
				_, err := br.Exec()
				committed = err == nil
				return err
			}
			// The notices go in a transaction of their own after the
			// commit, in the same round trip (see queueNotices).
			queueNotices(b, pls)
		}
		open = true
		if err := conn.SendBatch(ctx, b).Close(); err != nil {
			if committed {
				// Only the notices failed: the batch is committed and
				// its requests must hear so. The other nodes read its
				// keys from key_log within keyCatchUp.
				s.logger.Warn("store: key notice not sent; other nodes read the keys from key_log within a second", "err", err)
				if _, rerr := conn.Exec(context.WithoutCancel(ctx), "ROLLBACK"); rerr != nil {
					conn.Conn().Close(ctx)
				}
				open = false
				return nil
			}
			return err
		}
		if last {
			open = false
			return nil
		}
		if !queued {
			// Nothing was queued but BEGIN and COMMIT: cannot happen (a
			// queued-nothing round ends with last), kept for safety.
			return nil
		}
	}
}
