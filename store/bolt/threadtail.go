package bolt

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The thread index's tail.
//
// thread_msg (tenant/thread/msg) gives every thread its own leaves, so
// indexing each new message there dirtied a page of its own in every
// batch: 1.3 pages per message (TestPageAccounting), about a quarter of
// the bytes written per stored message. New messages are instead indexed
// in memory, in the tail, and moved into thread_msg in bulk once the tail
// holds TailMerge of them: a thread's new entries then share its leaf, and
// the leaves of a merge are written once per merge instead of once per
// batch.
//
// The messages bucket is the tail's durable copy: every message whose id
// is above the merge mark (meta "thread_msg_merged", raised in the merge's
// own transaction) is in the tail, and Open rebuilds the tail from the
// messages above the mark. Ids come from the messages bucket's sequence,
// so the tail's ids are all above the mark and above every id in
// thread_msg: a thread's messages, in id order, are its thread_msg entries
// followed by its tail entries.
//
// Every transaction that adds a message or merges runs in the group commit
// (s.group), whose transactions commit one after another in one goroutine
// and run their OnCommit handlers before the next one begins; so the tail
// never misses a committed message with an id below one it holds, and a
// merge takes exactly the messages committed before it.

var keyMerged = []byte("thread_msg_merged")

// defaultTailMerge is Options.TailMerge's default: the tail holds up to
// 8,192 entries (well under a megabyte, and read back at Open from as
// many message records), and each merge takes a quarter of them.
const defaultTailMerge = 8192

// errTailMoved is returned by a read that found entries its transaction
// needs already merged away from the tail by a merge newer than the
// transaction; the read runs again in a new transaction.
var errTailMoved = errors.New("store: thread index tail merged during the read")

type tailKey struct {
	tenant string
	thread uint64
}

type threadTail struct {
	mu      sync.RWMutex
	ids     map[tailKey][]uint64 // ascending
	n       int
	dropped uint64 // entries with ids up to here may be gone: merged
	mergeAt int
	merging bool
	onMerge func() // runs a merge (set by start; nil: none, a read-only store)
}

func newThreadTail(mergeAt int) *threadTail {
	if mergeAt <= 0 {
		mergeAt = defaultTailMerge
	}
	return &threadTail{ids: map[tailKey][]uint64{}, mergeAt: mergeAt}
}

// add records a committed message. It starts a merge when the tail is full.
func (t *threadTail) add(tenant string, thread, id uint64) {
	k := tailKey{tenant, thread}
	t.mu.Lock()
	l := t.ids[k]
	if i, found := slices.BinarySearch(l, id); !found {
		t.ids[k] = slices.Insert(l, i, id)
		t.n++
	}
	var merge func()
	if t.n >= t.mergeAt && !t.merging && t.onMerge != nil {
		t.merging, merge = true, t.onMerge
	}
	t.mu.Unlock()
	if merge != nil {
		go merge()
	}
}

// after returns thread's tail ids above mark, ascending. It fails with
// errTailMoved when a merge to above mark has dropped entries: the
// caller's transaction, whose mark this is, predates that merge.
func (t *threadTail) after(tenant string, thread, mark uint64) ([]uint64, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.dropped > mark {
		return nil, errTailMoved
	}
	l := t.ids[tailKey{tenant, thread}]
	i, _ := slices.BinarySearch(l, mark+1)
	if i == len(l) {
		return nil, nil
	}
	return slices.Clone(l[i:]), nil
}

// upTo returns every entry with an id up to mark (for a merge).
func (t *threadTail) upTo(mark uint64) map[tailKey][]uint64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	out := make(map[tailKey][]uint64, len(t.ids))
	for k, l := range t.ids {
		i, found := slices.BinarySearch(l, mark)
		if found {
			i++
		}
		if i > 0 {
			out[k] = slices.Clone(l[:i])
		}
	}
	return out
}

// newestAfter returns thread's highest tail id above mark for which has
// is true (0: none), or errTailMoved as after does.
func (t *threadTail) newestAfter(tenant string, thread, mark uint64, has func(uint64) bool) (uint64, error) {
	t.mu.RLock()
	defer t.mu.RUnlock()
	if t.dropped > mark {
		return 0, errTailMoved
	}
	l := t.ids[tailKey{tenant, thread}]
	for i := len(l) - 1; i >= 0 && l[i] > mark; i-- {
		if has(l[i]) {
			return l[i], nil
		}
	}
	return 0, nil
}

// cut is the id up to which a merge of the tail's n oldest entries goes
// (n <= 0: all of them); 0 when the tail is empty.
func (t *threadTail) cut(n int) uint64 {
	t.mu.RLock()
	defer t.mu.RUnlock()
	all := make([]uint64, 0, t.n)
	for _, l := range t.ids {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return 0
	}
	slices.Sort(all)
	if n <= 0 || n > len(all) {
		n = len(all)
	}
	return all[n-1]
}

// drop forgets the entries merged into thread_msg, up to mark.
func (t *threadTail) drop(mark uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k, l := range t.ids {
		i, found := slices.BinarySearch(l, mark)
		if found {
			i++
		}
		if i == 0 {
			continue
		}
		t.n -= i
		if i == len(l) {
			delete(t.ids, k)
		} else {
			t.ids[k] = slices.Delete(l, 0, i)
		}
	}
	if mark > t.dropped {
		t.dropped = mark
	}
}

func (t *threadTail) len() int {
	t.mu.RLock()
	defer t.mu.RUnlock()
	return t.n
}

// start lets the tail merge itself from now on with merge, at once if the
// tail Open rebuilt is already full.
func (t *threadTail) start(merge func()) {
	t.mu.Lock()
	t.onMerge = merge
	t.mu.Unlock()
	t.mergeDone()
}

// stop lets no merge start any more (Close): a merge submitted to a
// closed queue fails, and mergeDone would otherwise start the next one at
// once, for as long as the process lives.
func (t *threadTail) stop() {
	t.mu.Lock()
	t.onMerge = nil
	t.mu.Unlock()
}

func (t *threadTail) mergeDone() {
	t.mu.Lock()
	t.merging = false
	var merge func()
	if t.n >= t.mergeAt && t.onMerge != nil {
		t.merging, merge = true, t.onMerge
	}
	t.mu.Unlock()
	if merge != nil {
		go merge()
	}
}

// mergedMark is the id up to which tx's thread_msg holds every message. A
// store written before the tail existed has no mark: all of its messages
// are in thread_msg.
func mergedMark(tx *bolt.Tx) uint64 {
	if v := tx.Bucket(bMeta).Get(keyMerged); len(v) == 8 {
		return getU64(v)
	}
	return tx.Bucket(bMessages).Sequence()
}

// indexInThread puts a new message into its thread's index: the tail, once
// tx commits.
func (s *Store) indexInThread(tx *bolt.Tx, m *Message) {
	tenant, thread, id := m.Tenant, m.Thread, m.ID
	tx.OnCommit(func() { s.tail.add(tenant, thread, id) })
}

// threadIDs returns thread's message ids in tx, oldest first: its
// thread_msg entries and then its tail entries. A tail entry tx does not
// hold (a message committed after tx began) is left out. It fails with
// errTailMoved (see viewThreads).
func (s *Store) threadIDs(tx *bolt.Tx, tenant string, thread uint64) ([]uint64, error) {
	tail, err := s.tailIDs(tx, tenant, thread)
	if err != nil {
		return nil, err
	}
	var ids []uint64
	prefix := keyU64(tenant, thread)
	if err := forPrefix(tx.Bucket(bThreadMsg), prefix, func(k, _ []byte) error {
		if len(k) == len(prefix)+8 {
			ids = append(ids, getU64(k[len(prefix):]))
		}
		return nil
	}); err != nil {
		return nil, err
	}
	// In order: thread_msg's ids are at most the mark, the tail's above it.
	return append(ids, tail...), nil
}

// tailIDs returns the ids of thread's messages in tx that are not in tx's
// thread_msg, ascending.
func (s *Store) tailIDs(tx *bolt.Tx, tenant string, thread uint64) ([]uint64, error) {
	ids, err := s.tail.after(tenant, thread, mergedMark(tx))
	if err != nil || len(ids) == 0 {
		return nil, err
	}
	// A message committed after tx began is in the tail but not in tx.
	mb := tx.Bucket(bMessages)
	kept := ids[:0]
	for _, id := range ids {
		if mb.Get(keyU64(tenant, id)) != nil {
			kept = append(kept, id)
		}
	}
	return kept, nil
}

// viewThreads runs fn in a read transaction, again in a new one when a
// merge overtook it (errTailMoved): merges are seconds apart, so a second
// run does not meet another one.
func (s *Store) viewThreads(fn func(tx *bolt.Tx) error) error {
	for {
		err := s.db.View(fn)
		if !errors.Is(err, errTailMoved) {
			return err
		}
	}
}

// mergeTail moves the tail's oldest entries into thread_msg in one
// group-commit request: a quarter of TailMerge, so that the batch the
// merge joins is held up by a millisecond or two (a whole 8,192 took 6 to
// 26 ms here), while the tail keeps enough of every thread's newest
// messages that a merge still writes several of them to each leaf.
func (s *Store) mergeTail() {
	defer s.tail.mergeDone()
	err := s.group(context.Background(), s.mergeFn(max(1, s.tail.mergeAt/4)))
	if err != nil && !errors.Is(err, ErrClosed) {
		// The tail stays (the messages bucket still has every entry);
		// the next merge is tried a second later, not in a tight loop
		// against a failing disk.
		s.log().Warn("store: thread index merge failed; retrying", "err", err, "tail", s.tail.len())
		time.Sleep(time.Second)
	}
}

// mergeFn returns the commit function of a merge of the tail's n oldest
// entries (n <= 0: all). Like every commit function it may run more than
// once; it writes the same entries each time.
func (s *Store) mergeFn(n int) func(tx *bolt.Tx) error {
	return func(tx *bolt.Tx) error { return s.merge(tx, n) }
}

func (s *Store) merge(tx *bolt.Tx, n int) error {
	mark := s.tail.cut(n)
	if mark <= mergedMark(tx) {
		return nil
	}
	b := tx.Bucket(bThreadMsg)
	entries := s.tail.upTo(mark)
	// In key order: each Put then lands at or after the previous one's
	// leaf, which bbolt's cursor finds warm.
	keys := slices.SortedFunc(maps.Keys(entries), func(a, b tailKey) int {
		if c := strings.Compare(a.tenant, b.tenant); c != 0 {
			return c
		}
		return cmp.Compare(a.thread, b.thread)
	})
	for _, k := range keys {
		prefix := keyU64(k.tenant, k.thread)
		for _, id := range entries[k] {
			if err := b.Put(append(slicesClone(prefix), putU64(id)...), nil); err != nil {
				return err
			}
		}
	}
	if err := tx.Bucket(bMeta).Put(keyMerged, putU64(mark)); err != nil {
		return err
	}
	tx.OnCommit(func() { s.tail.drop(mark) })
	return nil
}

// mergeNow moves the whole tail into thread_msg (tests).
func (s *Store) mergeNow(ctx context.Context) error {
	return s.group(ctx, s.mergeFn(0))
}

// loadTail rebuilds the tail from the messages above the merge mark.
func (s *Store) loadTail() error {
	return s.db.View(func(tx *bolt.Tx) error {
		mark := mergedMark(tx)
		if mark >= tx.Bucket(bMessages).Sequence() {
			return nil
		}
		mb := tx.Bucket(bMessages)
		c := mb.Cursor()
		return tx.Bucket(bTenants).ForEach(func(tenant, _ []byte) error {
			prefix := keyU64(string(tenant), 0)
			prefix = prefix[:len(prefix)-8]
			for k, _ := c.Seek(keyU64(string(tenant), mark+1)); k != nil && len(k) == len(prefix)+8 && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
				var m Message
				if err := getMessage(mb, k, &m); err != nil {
					return fmt.Errorf("message %x: %w", k, err)
				}
				s.tail.add(string(tenant), m.Thread, getU64(k[len(prefix):]))
			}
			return nil
		})
	})
}
