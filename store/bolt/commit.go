package bolt

import (
	"context"
	"errors"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Group commit: sessions that commit at the same time share one fsynced
// bbolt transaction (store/groupcommit gathers the batches: whatever queued
// up while the previous transaction was syncing).
//
// A request's function runs inside the shared transaction and may run more
// than once: if one function fails, the transaction is rolled back, that
// request gets its error and the rest are rerun in a fresh transaction. So
// functions must only touch the transaction and their own result variables,
// assigning (not appending) results.

const maxBatch = 256

type commitReq struct {
	fn  func(tx *bolt.Tx) error
	err chan error
}

type errRequest struct {
	i   int
	err error
}

func (e *errRequest) Error() string { return e.err.Error() }

// group runs fn in a shared, fsynced transaction and returns once that
// transaction is durable (or failed).
func (s *Store) group(ctx context.Context, fn func(tx *bolt.Tx) error) error {
	if s.commits == nil {
		return errors.New("store: opened read-only")
	}
	r := &commitReq{fn: fn, err: make(chan error, 1)}
	if err := s.commits.Submit(ctx, r); err != nil {
		return err
	}
	// Once queued, wait for the outcome even if ctx ends: the caller must
	// know whether its data is committed.
	return <-r.err
}

func (s *Store) runBatch(batch []*commitReq) {
	// The segment bytes these records refer to were written before their
	// requests were queued: one flush makes them all durable before any
	// record that points at them is.
	if err := s.segs.flush(); err != nil {
		for _, r := range batch {
			r.err <- err
		}
		return
	}
	for len(batch) > 0 {
		err := s.db.Update(func(tx *bolt.Tx) error {
			for i, r := range batch {
				if err := r.fn(tx); err != nil {
					return &errRequest{i: i, err: err}
				}
			}
			return nil
		})
		var re *errRequest
		if errors.As(err, &re) {
			batch[re.i].err <- re.err
			batch = append(batch[:re.i:re.i], batch[re.i+1:]...)
			continue
		}
		for _, r := range batch {
			r.err <- err
		}
		return
	}
}

// counterBuf accumulates decision counters in memory; they are flushed to
// bbolt every 10 s and at Close. Writing a counter per discarded message
// would cost an fsync per message on the discard path, and losing up to 10 s
// of counts in a crash only affects statistics.
type counterBuf struct {
	mu sync.Mutex
	m  map[string]uint64
	// last is the latest forwarded-message time per tenant.
	last map[string]time.Time
}

func newCounterBuf() *counterBuf {
	return &counterBuf{m: map[string]uint64{}, last: map[string]time.Time{}}
}
