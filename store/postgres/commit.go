package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Group commit: writes queued while the previous transaction was
// committing share one transaction, so one WAL flush (and, with a
// synchronous standby, one replica round trip) covers the batch. The loop
// never waits to fill a batch.
//
// A request's function may run more than once: when one fails, the
// transaction is rolled back, that request gets its error and the others
// are rerun; on a deadlock or serialization failure the whole batch is
// rerun. Requests are sorted by key first, so that two nodes committing
// copies of the same messages take row locks in the same order.

const (
	maxBatch     = 256
	batchTimeout = 30 * time.Second
	maxRetries   = 8
)

type commitReq struct {
	key string
	fn  func(ctx context.Context, tx pgx.Tx) error
	// op, when set instead of fn, makes the request's pipelined form: the
	// statements of every such request of a batch go to the server in one
	// round trip per step (see pipeline.go). It returns a fresh state
	// for each attempt.
	op  func() batchOp
	err chan error
}

// group runs fn in a shared transaction and returns once it is committed
// (or failed). key orders the request within its batch.
func (s *Store) group(ctx context.Context, key string, fn func(ctx context.Context, tx pgx.Tx) error) error {
	return s.queue(ctx, &commitReq{key: key, fn: fn, err: make(chan error, 1)})
}

// queue hands r to the commit loop and waits for its outcome.
func (s *Store) queue(ctx context.Context, r *commitReq) error {
	if err := s.commits.Submit(ctx, r); err != nil {
		return err
	}
	// Once queued, wait for the outcome even if ctx ends: the caller must
	// know whether its data is committed.
	return <-r.err
}

// tick flushes the buffered counters and prunes key_log (every 10 s
// while idle).
func (s *Store) tick() {
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	if err := s.flushCounters(ctx); err != nil {
		s.logger.Warn("store: flush counters", "err", err)
	}
	if err := s.pruneKeyLog(ctx); err != nil {
		s.logger.Warn("store: prune key_log", "err", err)
	}
}

type errRequest struct {
	i   int
	err error
}

func (e *errRequest) Error() string { return e.err.Error() }
func (e *errRequest) Unwrap() error { return e.err }

// commitsInFlight is how many batches a node commits at once, each on its
// own connection (groupcommit.RunN): 1 unless SYNCRELAY_PG_COMMITS sets it
// (1 to 8). With more than one, a message arriving during a commit starts
// at once, but each batch is smaller: on a shared disk every batch costs a
// WAL flush, and two nodes at 2 each stored 16 % less than at 1 (four
// alternating pairs, bench/RESULTS.md, 2026-12-07 05:27) with one node
// unchanged. Batches are sorted by key, so two of them claim keys in the
// same order; a deadlock is retried like any other.
func commitsInFlight() int {
	if n, err := strconv.Atoi(os.Getenv("SYNCRELAY_PG_COMMITS")); err == nil && n >= 1 && n <= 8 {
		return n
	}
	return 1
}

func (s *Store) runBatch(batch []*commitReq) {
	slices.SortStableFunc(batch, func(a, b *commitReq) int { return strings.Compare(a.key, b.key) })
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	retries := 0
	for len(batch) > 0 {
		err := s.attempt(ctx, batch)
		if retryable(err) && retries < maxRetries {
			retries++
			time.Sleep(time.Duration(retries) * 5 * time.Millisecond)
			continue
		}
		var re *errRequest
		if errors.As(err, &re) && !retryable(err) {
			batch[re.i].err <- re.err
			batch = append(batch[:re.i:re.i], batch[re.i+1:]...)
			continue
		}
		if err != nil {
			err = fmt.Errorf("postgres: commit: %w", err)
		}
		for _, r := range batch {
			r.err <- err
		}
		return
	}
}

// attempt runs the batch once in one transaction.
func (s *Store) attempt(ctx context.Context, batch []*commitReq) error {
	pipelined := true
	for _, r := range batch {
		pipelined = pipelined && r.op != nil
	}
	if pipelined {
		ops := make([]batchOp, len(batch))
		for i, r := range batch {
			ops[i] = r.op()
		}
		return s.runTx(ctx, ops)
	}
	var payloads []string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		ops := make([]batchOp, len(batch))
		for i, r := range batch {
			if r.op != nil {
				ops[i] = r.op()
				continue
			}
			if err := r.fn(ctx, tx); err != nil {
				return &errRequest{i: i, err: err}
			}
		}
		return runPipeline(ctx, tx, ops, &payloads)
	})
	if err == nil {
		s.notifyAfter(ctx, payloads)
	}
	return err
}
