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

// pipe queues statements on behalf of one request, so that an error is
// attributed to it (the transaction is then rolled back and the others
// rerun, as for any failing request).
type pipe struct {
	b     *pgx.Batch
	owner int
	// dups holds the messages that duplicates of this batch changed, so
	// that two copies of one message in a batch both add their mailbox.
	dups map[uint64]*store.Message
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
// step, one round trip per step for all of them.
func runPipeline(ctx context.Context, tx pgx.Tx, ops []batchOp) error {
	dups := map[uint64]*store.Message{}
	for {
		p := &pipe{b: &pgx.Batch{}, dups: dups}
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
			return nil
		}
		if err := tx.SendBatch(ctx, p.b).Close(); err != nil {
			return err
		}
	}
}
