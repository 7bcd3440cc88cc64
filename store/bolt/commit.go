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

// runBatch commits a batch: its records in one bbolt transaction, after
// the segment bytes they refer to are durable. The segment's fdatasync runs
// while the transaction is being built (its requests' functions: record
// encoding, index puts), and only Commit waits for it: the building is off
// the critical path of every message in the batch.
func (s *Store) runBatch(batch []*commitReq) {
	// The segment bytes these records refer to were written before their
	// requests were queued: one flush makes them all durable before any
	// record that points at them is committed.
	flushed := make(chan error, 1)
	go func() { flushed <- s.segs.flush() }()
	var flushErr error
	waited := false
	waitFlush := func() error {
		if !waited {
			flushErr, waited = <-flushed, true
		}
		return flushErr
	}
	defer waitFlush() // every request failed: the flush still ends before the next batch's
	for len(batch) > 0 {
		failed, err := s.commitTx(batch, waitFlush)
		if failed >= 0 {
			batch[failed].err <- err
			batch = append(batch[:failed:failed], batch[failed+1:]...)
			continue
		}
		for _, r := range batch {
			r.err <- err
		}
		return
	}
}

// commitTx runs batch's functions in a new write transaction and commits
// it once ready() (the segment flush) returns nil. When a function fails
// it rolls back and returns that request's index and error; otherwise
// failed is -1 and err is the outcome of the whole batch.
func (s *Store) commitTx(batch []*commitReq, ready func() error) (failed int, err error) {
	tx, err := s.db.Begin(true)
	if err != nil {
		return -1, err
	}
	fillAppended(tx)
	// As bbolt's db.Update does: a panicking function must not leave the
	// writer lock held.
	defer func() {
		if tx.DB() != nil {
			_ = tx.Rollback()
		}
	}()
	for i, r := range batch {
		if err := r.fn(tx); err != nil {
			return i, err
		}
	}
	if err := ready(); err != nil {
		return -1, err
	}
	counted, err := s.countPads(tx)
	if err != nil {
		return -1, err
	}
	if err := tx.Commit(); err != nil {
		return -1, err
	}
	for id, pads := range counted {
		s.segs.padsCounted(id, pads)
	}
	return -1, nil
}

// countPads counts as live, in tx, the alignment gaps of the segment log
// that its committed records now reach past (segStat.live would otherwise
// call them dead bytes, and compaction would copy the whole segment to
// free them). It returns what it counted, to forget once tx is committed.
func (s *Store) countPads(tx *bolt.Tx) (map[uint64][]segPad, error) {
	var counted map[uint64][]segPad
	sb := tx.Bucket(bSegs)
	for _, id := range s.segs.paddedSegments() {
		st, ok := getSegStat(sb, id)
		if !ok {
			continue
		}
		pads := s.segs.padsBelow(id, st.end)
		if len(pads) == 0 {
			continue
		}
		for _, p := range pads {
			st.live += p.n
		}
		if err := putSegStat(sb, id, st); err != nil {
			return nil, err
		}
		if counted == nil {
			counted = map[uint64][]segPad{}
		}
		counted[id] = pads
	}
	return counted, nil
}

// appendedBuckets are keyed by a sequence (or by time), so every batch
// adds at their end. bbolt splits a node at FillPercent of a page (0.5 by
// default, right for random inserts): for appends that leaves every page
// behind the tail half empty and makes a batch write twice the pages its
// records need (TestPageAccounting: the messages bucket, 11.1 pages for 32
// records of about 600 bytes).
var appendedBuckets = [][]byte{bMessages, bOutbox, bSegRecs, bSentIdx}

// appendFill is the FillPercent of appendedBuckets: full pages, with room
// for a record that grows in place (a mailbox added, a removal) without
// an immediate split.
const appendFill = 0.9

// fillAppended sets appendFill on tx's handles of appendedBuckets (the
// setting lives on the handle, which tx.Bucket returns again for the rest
// of the transaction).
func fillAppended(tx *bolt.Tx) {
	for _, name := range appendedBuckets {
		if b := tx.Bucket(name); b != nil {
			b.FillPercent = appendFill
		}
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
