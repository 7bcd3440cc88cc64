package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Webhook outbox delivery.
//
// enqueue (threads.go) appends an Event to the outbox bucket in the same
// transaction as its cause. The operations here move events through
//
//	pending --(2xx)--> delivered --(retention)--> pruned
//	   \--(max attempts)--> dead --(redeliver)--> pending
//	                         \--(dead retention)--> pruned
//
// bOutboxIdx holds the indexes that keep the deliverer's queries
// proportional to the work to do, not to the outbox's history:
//
//	'm' "indexed"         -> u64 next outbox seq not yet indexed
//	'p' seq               -> u64 next attempt (unix ns): the pending set, oldest first
//	'd' at seq            -> "": pending events by next attempt
//	'x' seq               -> u64 dead-lettered at (unix ns)
//	'v' at seq            -> "": delivered events by delivery time (for pruning)
//
// New events are indexed by the next write of the deliverer (indexNew), so
// enqueue stays a single Put and every producer of events, present or
// future, is covered without knowing about these indexes.

var bOutboxIdx = []byte("outbox_index")

var keyIndexed = []byte("mindexed")

func idxP(seq uint64) []byte { return append([]byte{'p'}, putU64(seq)...) }
func idxX(seq uint64) []byte { return append([]byte{'x'}, putU64(seq)...) }
func idxTime(kind byte, at int64, seq uint64) []byte {
	b := append([]byte{kind}, putU64(uint64(max(at, 0)))...)
	return append(b, putU64(seq)...)
}

// eventRec is Event as stored, with Data kept verbatim so that rewriting an
// event never changes its payload (numbers stay numbers, key order stays).
type eventRec struct {
	ID          string          `json:"id"`
	Seq         uint64          `json:"seq"`
	Type        string          `json:"type"`
	Created     time.Time       `json:"created_at"`
	Tenant      string          `json:"tenant"`
	Data        json.RawMessage `json:"data"`
	Attempts    int             `json:"attempts"`
	NextAttempt time.Time       `json:"next_attempt"`
	State       string          `json:"state"`
	LastError   string          `json:"last_error,omitempty"`
}

func (r *eventRec) event() *Event {
	e := &Event{ID: r.ID, Seq: r.Seq, Type: r.Type, Created: r.Created, Tenant: r.Tenant,
		Attempts: r.Attempts, NextAttempt: r.NextAttempt, State: r.State, LastError: r.LastError}
	if len(r.Data) > 0 {
		e.Data = json.RawMessage(bytes.Clone(r.Data))
	}
	return e
}

func getEvent(ob *bolt.Bucket, seq uint64) (*eventRec, error) {
	v := ob.Get(putU64(seq))
	if v == nil {
		return nil, fmt.Errorf("event %d: %w", seq, ErrNotFound)
	}
	var r eventRec
	if err := decodeEvent(v, &r); err != nil {
		return nil, fmt.Errorf("event %d: %w", seq, err)
	}
	return &r, nil
}

// indexNew adds outbox events appended since the last call to the pending
// indexes.
func indexNew(ob, idx *bolt.Bucket) error {
	next := getU64(idx.Get(keyIndexed))
	if next == 0 {
		next = 1
	}
	start := next
	type pend struct {
		seq uint64
		at  int64
	}
	var found []pend
	c := ob.Cursor()
	for k, v := c.Seek(putU64(next)); k != nil; k, v = c.Next() {
		seq := getU64(k)
		if seq == 0 {
			continue
		}
		var r eventRec
		if err := decodeEvent(v, &r); err != nil {
			return fmt.Errorf("event %d: %w", seq, err)
		}
		if r.State == EventPending || r.State == "" {
			found = append(found, pend{seq, r.NextAttempt.UnixNano()})
		}
		next = seq + 1
	}
	if next == start {
		return nil
	}
	for _, p := range found {
		if err := idx.Put(idxP(p.seq), putU64(uint64(max(p.at, 0)))); err != nil {
			return err
		}
		if err := idx.Put(idxTime('d', p.at, p.seq), nil); err != nil {
			return err
		}
	}
	return idx.Put(keyIndexed, putU64(next))
}

// hasUnindexed reports whether events were enqueued since the last indexNew.
func hasUnindexed(ob, idx *bolt.Bucket) bool {
	next := max(getU64(idx.Get(keyIndexed)), 1)
	k, _ := ob.Cursor().Seek(putU64(next))
	return k != nil
}

// setPending moves a pending event's due time in the indexes.
func setPending(idx *bolt.Bucket, seq uint64, at time.Time) error {
	if old := idx.Get(idxP(seq)); old != nil {
		if err := idx.Delete(idxTime('d', int64(getU64(old)), seq)); err != nil {
			return err
		}
	}
	ns := at.UnixNano()
	if err := idx.Put(idxP(seq), putU64(uint64(max(ns, 0)))); err != nil {
		return err
	}
	return idx.Put(idxTime('d', ns, seq), nil)
}

// clearPending removes an event from the pending indexes.
func clearPending(idx *bolt.Bucket, seq uint64) error {
	if old := idx.Get(idxP(seq)); old != nil {
		if err := idx.Delete(idxTime('d', int64(getU64(old)), seq)); err != nil {
			return err
		}
	}
	return idx.Delete(idxP(seq))
}

// ClaimEvents takes up to limit pending events due at now for delivery: each
// one's attempt count is raised and its next attempt moved to now+lease, in
// one durable transaction, before it is returned. An event whose delivery
// outcome is never recorded (a crash mid-delivery) is therefore retried once
// the lease ends: delivery is at least once. When nothing is due it returns
// without writing.
func (s *Store) ClaimEvents(ctx context.Context, now time.Time, limit int, lease time.Duration) ([]*Event, error) {
	if limit <= 0 {
		return nil, nil
	}
	due := false
	err := s.db.View(func(tx *bolt.Tx) error {
		idx := tx.Bucket(bOutboxIdx)
		if hasUnindexed(tx.Bucket(bOutbox), idx) {
			due = true
			return nil
		}
		k, _ := idx.Cursor().Seek([]byte{'d'})
		due = k != nil && k[0] == 'd' && len(k) == 17 && int64(getU64(k[1:9])) <= now.UnixNano()
		return nil
	})
	if err != nil || !due {
		return nil, err
	}
	var out []*Event
	err = s.group(ctx, func(tx *bolt.Tx) error {
		ob, idx := tx.Bucket(bOutbox), tx.Bucket(bOutboxIdx)
		if err := indexNew(ob, idx); err != nil {
			return err
		}
		var seqs []uint64
		c := idx.Cursor()
		for k, _ := c.Seek([]byte{'d'}); k != nil && k[0] == 'd' && len(seqs) < limit; k, _ = c.Next() {
			if len(k) != 17 || int64(getU64(k[1:9])) > now.UnixNano() {
				break
			}
			seqs = append(seqs, getU64(k[9:]))
		}
		claimed := make([]*Event, 0, len(seqs))
		for _, seq := range seqs {
			r, err := getEvent(ob, seq)
			if errors.Is(err, ErrNotFound) {
				if err := clearPending(idx, seq); err != nil {
					return err
				}
				continue
			}
			if err != nil {
				return err
			}
			if r.State != EventPending && r.State != "" {
				if err := clearPending(idx, seq); err != nil {
					return err
				}
				continue
			}
			r.State = EventPending
			r.Attempts++
			r.NextAttempt = now.Add(lease).UTC()
			if err := putEvent(ob, seq, r); err != nil {
				return err
			}
			if err := setPending(idx, seq, r.NextAttempt); err != nil {
				return err
			}
			claimed = append(claimed, r.event())
		}
		out = claimed
		return nil
	})
	return out, err
}

// EventDelivered records a successful delivery of event seq.
func (s *Store) EventDelivered(ctx context.Context, seq uint64, at time.Time) error {
	return s.group(ctx, func(tx *bolt.Tx) error {
		ob, idx := tx.Bucket(bOutbox), tx.Bucket(bOutboxIdx)
		r, err := getEvent(ob, seq)
		if err != nil {
			return err
		}
		if r.State == EventDelivered {
			return nil
		}
		if r.State == EventDead {
			if err := idx.Delete(idxX(seq)); err != nil {
				return err
			}
		}
		r.State, r.LastError, r.NextAttempt = EventDelivered, "", time.Time{}
		if err := clearPending(idx, seq); err != nil {
			return err
		}
		if err := idx.Put(idxTime('v', at.UnixNano(), seq), nil); err != nil {
			return err
		}
		return putEvent(ob, seq, r)
	})
}

// EventFailed records a failed delivery attempt of event seq: the event is
// retried at next, or dead-lettered when dead is set. attempt is the
// attempt count ClaimEvents returned; an outcome for an older attempt (the
// lease ran out and the event was claimed again) is ignored.
func (s *Store) EventFailed(ctx context.Context, seq uint64, attempt int, at time.Time, errText string, next time.Time, dead bool) error {
	return s.group(ctx, func(tx *bolt.Tx) error {
		ob, idx := tx.Bucket(bOutbox), tx.Bucket(bOutboxIdx)
		r, err := getEvent(ob, seq)
		if err != nil {
			return err
		}
		if r.State != EventPending || r.Attempts != attempt {
			return nil
		}
		r.LastError = errText
		if dead {
			r.State, r.NextAttempt = EventDead, time.Time{}
			if err := clearPending(idx, seq); err != nil {
				return err
			}
			if err := idx.Put(idxX(seq), putU64(uint64(at.UnixNano()))); err != nil {
				return err
			}
		} else {
			r.NextAttempt = next.UTC()
			if err := setPending(idx, seq, r.NextAttempt); err != nil {
				return err
			}
		}
		return putEvent(ob, seq, r)
	})
}

// DeadLetters lists dead-lettered events in outbox order, optionally of one
// tenant only, starting after seq after. It returns at most limit events
// and whether more follow.
func (s *Store) DeadLetters(ctx context.Context, tenant string, after uint64, limit int) ([]DeadLetter, bool, error) {
	var out []DeadLetter
	more := false
	err := s.db.View(func(tx *bolt.Tx) error {
		ob, idx := tx.Bucket(bOutbox), tx.Bucket(bOutboxIdx)
		c := idx.Cursor()
		for k, v := c.Seek(idxX(after + 1)); k != nil && k[0] == 'x'; k, v = c.Next() {
			seq := getU64(k[1:])
			r, err := getEvent(ob, seq)
			if errors.Is(err, ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			if tenant != "" && r.Tenant != tenant {
				continue
			}
			if len(out) == limit {
				more = true
				return nil
			}
			out = append(out, DeadLetter{Event: r.event(), DeadAt: time.Unix(0, int64(getU64(v))).UTC()})
		}
		return nil
	})
	return out, more, err
}

// OutboxEvent returns one outbox event by sequence number.
func (s *Store) OutboxEvent(ctx context.Context, seq uint64) (*Event, error) {
	var out *Event
	err := s.db.View(func(tx *bolt.Tx) error {
		r, err := getEvent(tx.Bucket(bOutbox), seq)
		if err != nil {
			return err
		}
		out = r.event()
		return nil
	})
	return out, err
}

// Redeliver puts dead-lettered events back in the queue with a fresh
// attempt budget, due at now. With seqs it takes those events (one that is
// not dead fails the whole call with ErrNotDead or ErrNotFound); without, every dead
// event, or every dead event of tenant when tenant is set. It returns the
// events requeued.
func (s *Store) Redeliver(ctx context.Context, tenant string, seqs []uint64, now time.Time) ([]*Event, error) {
	var out []*Event
	err := s.group(ctx, func(tx *bolt.Tx) error {
		ob, idx := tx.Bucket(bOutbox), tx.Bucket(bOutboxIdx)
		todo := seqs
		if len(seqs) == 0 {
			todo = nil
			c := idx.Cursor()
			for k, _ := c.Seek([]byte{'x'}); k != nil && k[0] == 'x'; k, _ = c.Next() {
				todo = append(todo, getU64(k[1:]))
			}
		}
		requeued := make([]*Event, 0, len(todo))
		for _, seq := range todo {
			r, err := getEvent(ob, seq)
			if err != nil {
				if len(seqs) == 0 && errors.Is(err, ErrNotFound) {
					if err := idx.Delete(idxX(seq)); err != nil {
						return err
					}
					continue
				}
				return err
			}
			if tenant != "" && r.Tenant != tenant {
				if len(seqs) > 0 {
					return fmt.Errorf("event %d: %w", seq, ErrNotFound)
				}
				continue
			}
			if r.State != EventDead {
				return fmt.Errorf("%s is %s: %w", r.ID, r.State, ErrNotDead)
			}
			r.State, r.Attempts, r.NextAttempt = EventPending, 0, now.UTC()
			if err := idx.Delete(idxX(seq)); err != nil {
				return err
			}
			if err := setPending(idx, seq, r.NextAttempt); err != nil {
				return err
			}
			if err := putEvent(ob, seq, r); err != nil {
				return err
			}
			requeued = append(requeued, r.event())
		}
		out = requeued
		return nil
	})
	return out, err
}

// OutboxStats counts pending and dead events.
func (s *Store) OutboxStats(ctx context.Context) (OutboxStats, error) {
	var st OutboxStats
	err := s.db.View(func(tx *bolt.Tx) error {
		ob, idx := tx.Bucket(bOutbox), tx.Bucket(bOutboxIdx)
		c := idx.Cursor()
		first := uint64(0)
		for k, _ := c.Seek([]byte{'p'}); k != nil && k[0] == 'p'; k, _ = c.Next() {
			if first == 0 {
				first = getU64(k[1:])
			}
			st.Pending++
		}
		for k, _ := c.Seek([]byte{'x'}); k != nil && k[0] == 'x'; k, _ = c.Next() {
			st.Dead++
		}
		if first != 0 {
			if r, err := getEvent(ob, first); err == nil {
				st.OldestPending = r.Created
			}
		}
		// Events not indexed yet are pending too.
		next := max(getU64(idx.Get(keyIndexed)), 1)
		oc := ob.Cursor()
		for k, v := oc.Seek(putU64(next)); k != nil; k, v = oc.Next() {
			var r eventRec
			if err := decodeEvent(v, &r); err != nil {
				return err
			}
			if r.State != EventPending && r.State != "" {
				continue
			}
			st.Pending++
			if st.OldestPending.IsZero() || r.Created.Before(st.OldestPending) {
				st.OldestPending = r.Created
			}
		}
		return nil
	})
	return st, err
}

// PruneEvents deletes events delivered before deliveredBefore and dead
// letters given up before deadBefore, at most limit of them per call; it
// returns how many it deleted.
func (s *Store) PruneEvents(ctx context.Context, deliveredBefore, deadBefore time.Time, limit int) (int, error) {
	n := 0
	err := s.group(ctx, func(tx *bolt.Tx) error {
		ob, idx := tx.Bucket(bOutbox), tx.Bucket(bOutboxIdx)
		type victim struct {
			idxKey []byte
			seq    uint64
		}
		var vs []victim
		c := idx.Cursor()
		for k, _ := c.Seek([]byte{'v'}); k != nil && k[0] == 'v' && len(vs) < limit; k, _ = c.Next() {
			if len(k) != 17 || int64(getU64(k[1:9])) >= deliveredBefore.UnixNano() {
				break
			}
			vs = append(vs, victim{bytes.Clone(k), getU64(k[9:])})
		}
		for k, v := c.Seek([]byte{'x'}); k != nil && k[0] == 'x' && len(vs) < limit; k, v = c.Next() {
			if int64(getU64(v)) < deadBefore.UnixNano() {
				vs = append(vs, victim{bytes.Clone(k), getU64(k[1:])})
			}
		}
		for _, v := range vs {
			if err := idx.Delete(v.idxKey); err != nil {
				return err
			}
			if err := ob.Delete(putU64(v.seq)); err != nil {
				return err
			}
		}
		n = len(vs)
		return nil
	})
	return n, err
}
