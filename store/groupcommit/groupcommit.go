// Package groupcommit gathers the requests that many goroutines queue into
// batches for the one goroutine that commits them, as both store backends
// do: the committer never waits to fill a batch, it takes whatever queued
// up while the previous batch was committing, so an idle store commits at
// once and a busy one shares each flush among many requests.
package groupcommit

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"syncrelay/store"
)

// Queue is the hand-over between submitters and the committer.
type Queue[R any] struct {
	// mu is held shared while a request is being queued; Close takes it,
	// so that once closed no request can be queued that the committer
	// would never see (a select on a stop channel could pick the send
	// after Close and wait forever).
	mu     sync.RWMutex
	closed bool
	ch     chan R
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once

	batches, requests, busyNS atomic.Int64
}

// Stats are a queue's counts since it was made: the batches committed, the
// requests they carried and the time spent committing them (batches
// committing at once add up). requests/batches is the mean batch size.
type Stats = store.CommitStats

// Stats returns the counts so far.
func (q *Queue[R]) Stats() Stats {
	return Stats{Batches: q.batches.Load(), Requests: q.requests.Load(), Busy: time.Duration(q.busyNS.Load())}
}

// run commits one batch and counts it.
func (q *Queue[R]) run(commit func([]R), batch []R) {
	t := time.Now()
	commit(batch)
	q.busyNS.Add(int64(time.Since(t)))
	q.batches.Add(1)
	q.requests.Add(int64(len(batch)))
}

// New returns a queue holding up to capacity waiting requests.
func New[R any](capacity int) *Queue[R] {
	return &Queue[R]{ch: make(chan R, capacity), stop: make(chan struct{}), done: make(chan struct{})}
}

// Submit queues r. It fails with store.ErrClosed after Close, or with
// ctx's error when ctx ends before r could be queued; once queued, r is
// committed (or failed) by Run.
func (q *Queue[R]) Submit(ctx context.Context, r R) error {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if q.closed {
		return store.ErrClosed
	}
	select {
	case q.ch <- r:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Run commits batches of at most max requests until Close, calling tick
// every interval while idle (the stores flush their buffered counters).
// Before it returns, every request queued before Close is committed.
func (q *Queue[R]) Run(max int, every time.Duration, tick func(), commit func([]R)) {
	defer close(q.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case first := <-q.ch:
			q.run(commit, q.fill(first, max))
		case <-t.C:
			tick()
		case <-q.stop:
			// No request can be queued any more (Close holds mu): commit
			// what is there and stop.
			for {
				select {
				case first := <-q.ch:
					q.run(commit, q.fill(first, max))
				default:
					return
				}
			}
		}
	}
}

// RunN is Run with up to n batches committing at once, each in its own
// goroutine. A slot is taken before a batch is gathered, so a batch holds
// everything queued while every slot was busy (with n = 1, the batches of
// Run). For a backend whose commit is mostly waiting (round trips to a
// database server), a request that arrives while one batch commits starts
// in the next slot instead of waiting for it.
func (q *Queue[R]) RunN(max, n int, every time.Duration, tick func(), commit func([]R)) {
	slots := make(chan struct{}, n)
	var running sync.WaitGroup
	start := func(batch []R) {
		running.Add(1)
		go func() {
			defer func() { <-slots; running.Done() }()
			q.run(commit, batch)
		}()
	}
	defer close(q.done)
	defer running.Wait()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		slots <- struct{}{}
		select {
		case first := <-q.ch:
			start(q.fill(first, max))
		case <-t.C:
			<-slots
			tick()
		case <-q.stop:
			<-slots
			for {
				select {
				case first := <-q.ch:
					slots <- struct{}{}
					start(q.fill(first, max))
				default:
					return
				}
			}
		}
	}
}

// fill returns first and whatever else is queued, at most max in all.
func (q *Queue[R]) fill(first R, max int) []R {
	batch := []R{first}
	for len(batch) < max {
		select {
		case r := <-q.ch:
			batch = append(batch, r)
		default:
			return batch
		}
	}
	return batch
}

// Close refuses new requests and waits until Run has committed the queued
// ones and returned. Run must be running. It is safe to call more than once.
func (q *Queue[R]) Close() {
	q.once.Do(func() {
		q.mu.Lock()
		q.closed = true
		q.mu.Unlock()
		close(q.stop)
	})
	<-q.done
}
