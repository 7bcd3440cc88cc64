package bolt

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// tailFixture is a store with a few threads and the ids each should list.
type tailFixture struct {
	t       *testing.T
	s       *Store
	dir     string
	clockMu sync.Mutex
	clock   time.Time
	threads []uint64
	want    map[uint64][]uint64 // thread -> ids, oldest first
	removed map[uint64]bool
	newest  map[uint64]time.Time // thread -> newest message's arrival
	n       int
}

func openTail(t *testing.T, dir string, mergeAt int, now func() time.Time) *Store {
	t.Helper()
	s, err := Open(dir, Options{LockTimeout: 2 * time.Second, TailMerge: mergeAt, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func newTailFixture(t *testing.T, mergeAt, threads int) *tailFixture {
	f := &tailFixture{t: t, dir: t.TempDir(), clock: time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC),
		want: map[uint64][]uint64{}, removed: map[uint64]bool{}, newest: map[uint64]time.Time{}}
	f.s = openTail(t, f.dir, mergeAt, f.now)
	t.Cleanup(func() { f.s.Close() })
	seed(t, f.s)
	for range threads {
		th, m := newThread(t, f.s)
		f.threads = append(f.threads, th.ID)
		f.want[th.ID] = []uint64{m.ID}
		f.newest[th.ID] = m.Received
	}
	return f
}

func (f *tailFixture) now() time.Time {
	f.clockMu.Lock()
	defer f.clockMu.Unlock()
	f.clock = f.clock.Add(time.Second)
	return f.clock
}

// commit stores an inbound message on the i-th thread (round robin).
func (f *tailFixture) commit() uint64 {
	f.t.Helper()
	th := f.threads[f.n%len(f.threads)]
	f.n++
	res, err := f.s.CommitInbound(context.Background(), &Incoming{
		Message: Message{Tenant: "acme", Thread: th, Direction: Inbound, InternetMessageID: fmt.Sprintf("in%d@cand.test", f.n),
			From: "carl@cand.test", AuthAligned: f.n == 3, Subject: "Re: Hello"},
		Raw: &Raw{Head: []byte("X: y\r\n"), Body: strings.NewReader("hi\r\n"), Size: 4},
	})
	if err != nil || res.Decision != Stored {
		f.t.Fatalf("commit %d: %+v %v", f.n, res, err)
	}
	f.want[th] = append(f.want[th], res.Ref.Message)
	m, err := f.s.Message(context.Background(), "acme", res.Ref.Message)
	if err != nil {
		f.t.Fatal(err)
	}
	f.newest[th] = m.Received
	return res.Ref.Message
}

// check reads every thread every way the store reads one.
func (f *tailFixture) check(when string) {
	f.t.Helper()
	ctx := context.Background()
	for _, th := range f.threads {
		msgs, err := f.s.ThreadMessages(ctx, "acme", th)
		if err != nil {
			f.t.Fatalf("%s: thread %d: %v", when, th, err)
		}
		var got []uint64
		for _, m := range msgs {
			got = append(got, m.ID)
		}
		if !slices.Equal(got, f.want[th]) {
			f.t.Fatalf("%s: thread %d lists %v, want %v", when, th, got, f.want[th])
		}
		var onProfile []uint64
		for _, id := range f.want[th] {
			if !f.removed[id] {
				onProfile = append(onProfile, id)
			}
		}
		var paged []uint64
		after := uint64(0)
		for {
			page, more, err := f.s.ThreadMessagesPage(ctx, "acme", th, after, 2)
			if err != nil {
				f.t.Fatalf("%s: page: %v", when, err)
			}
			for _, m := range page {
				paged = append(paged, m.ID)
				after = m.ID
			}
			if !more {
				break
			}
		}
		if !slices.Equal(paged, onProfile) {
			f.t.Fatalf("%s: thread %d pages %v, want %v", when, th, paged, onProfile)
		}
		got1, err := f.s.Thread(ctx, "acme", th)
		if err != nil || !got1.LastActivity.Equal(f.newest[th]) {
			f.t.Fatalf("%s: thread %d last activity %v (%v), want %v", when, th, got1.LastActivity, err, f.newest[th])
		}
	}
	threads, err := f.s.CandidateThreads(ctx, "acme", "c-1")
	if err != nil || len(threads) != len(f.threads) {
		f.t.Fatalf("%s: candidate threads %d %v", when, len(threads), err)
	}
	for _, th := range threads {
		if !th.LastActivity.Equal(f.newest[th.ID]) {
			f.t.Fatalf("%s: candidate thread %d last activity %v, want %v", when, th.ID, th.LastActivity, f.newest[th.ID])
		}
	}
	if f.n >= 3 {
		// The third message came from carl, DKIM-aligned: he took part.
		th := f.threads[2%len(f.threads)]
		ok, err := f.s.ThreadInvolves(ctx, "acme", th, "", "carl@cand.test")
		if err != nil || !ok {
			f.t.Fatalf("%s: ThreadInvolves(carl) on thread %d = %v %v", when, th, ok, err)
		}
	}
}

func (f *tailFixture) indexed() (inThreadMsg int, mark, seq uint64) {
	f.t.Helper()
	if err := f.s.db.View(func(tx *bolt.Tx) error {
		inThreadMsg = tx.Bucket(bThreadMsg).Stats().KeyN
		mark, seq = mergedMark(tx), tx.Bucket(bMessages).Sequence()
		return nil
	}); err != nil {
		f.t.Fatal(err)
	}
	return
}

// TestThreadTail: a thread lists its messages in order whether they are
// in the tail, in thread_msg, or both, across merges, a reopen (the tail
// rebuilt from the messages bucket) and a removal.
func TestThreadTail(t *testing.T) {
	t.Parallel()
	for _, mergeAt := range []int{1, 3, 1000} {
		t.Run(fmt.Sprint("merge at ", mergeAt), func(t *testing.T) {
			f := newTailFixture(t, mergeAt, 3)
			f.check("start")
			for i := range 20 {
				id := f.commit()
				if i == 7 {
					if err := f.s.RemoveMessage(context.Background(), "acme", id); err != nil {
						t.Fatal(err)
					}
					f.removed[id] = true
				}
				f.check(fmt.Sprintf("after message %d", i))
			}
			// Merges run behind the commits: give the last ones time to
			// land before the Close (under load they can lag; Close
			// does not wait for a merge that has not started).
			for deadline := time.Now().Add(10 * time.Second); mergeAt < 1000 && time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				if in, mark, seq := f.indexed(); in >= 20 && mark >= seq-uint64(mergeAt) {
					break
				}
			}
			f.s.Close()
			f.s = openTail(t, f.dir, 1000, f.now)
			f.check("reopened")
			if n := f.s.tail.len(); mergeAt == 1000 && n != 23 {
				t.Errorf("tail rebuilt with %d entries, want 23 (3 outbound + 20 inbound)", n)
			}
			in, mark, seq := f.indexed()
			if mergeAt < 1000 && (in < 20 || mark < seq-uint64(mergeAt)) {
				t.Errorf("merging at %d: %d keys in thread_msg, mark %d of %d", mergeAt, in, mark, seq)
			}
			if err := f.s.mergeNow(context.Background()); err != nil {
				t.Fatal(err)
			}
			f.check("merged")
			if in, mark, seq := f.indexed(); in != 23 || mark != seq || f.s.tail.len() != 0 {
				t.Errorf("after merging all: %d keys in thread_msg, mark %d of %d, tail %d", in, mark, seq, f.s.tail.len())
			}
			f.commit()
			f.check("one more")
		})
	}
}

// TestThreadTailReadsDuringMerges: readers racing writers and merges never
// miss a message that was acknowledged before the read began, nor see one
// twice or out of order.
func TestThreadTailReadsDuringMerges(t *testing.T) {
	t.Parallel()
	f := newTailFixture(t, 2, 3)
	var mu sync.Mutex
	acked := map[uint64][]uint64{}
	for th, ids := range f.want {
		acked[th] = slices.Clone(ids)
	}
	ctx := context.Background()
	var writers, readers sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 16)
	for w := range 4 {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for i := range 60 {
				th := f.threads[(w+i)%len(f.threads)]
				res, err := f.s.CommitInbound(ctx, &Incoming{
					Message: Message{Tenant: "acme", Thread: th, Direction: Inbound, InternetMessageID: fmt.Sprintf("w%d.%d@cand.test", w, i), From: "carl@cand.test"},
					Raw:     &Raw{Head: []byte("X: y\r\n"), Body: strings.NewReader("hi\r\n"), Size: 4},
				})
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				acked[th] = append(acked[th], res.Ref.Message)
				mu.Unlock()
			}
		}()
	}
	reads := 0
	for r := range 2 {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				th := f.threads[(r+i)%len(f.threads)]
				mu.Lock()
				before := slices.Clone(acked[th])
				reads++
				mu.Unlock()
				msgs, err := f.s.ThreadMessages(ctx, "acme", th)
				if err != nil {
					errs <- err
					return
				}
				got := map[uint64]bool{}
				for j, m := range msgs {
					if got[m.ID] || (j > 0 && m.ID <= msgs[j-1].ID) {
						errs <- fmt.Errorf("thread %d: %d twice or out of order in %d messages", th, m.ID, len(msgs))
						return
					}
					got[m.ID] = true
				}
				for _, id := range before {
					if !got[id] {
						errs <- fmt.Errorf("thread %d: acknowledged message %d missing (%d listed)", th, id, len(msgs))
						return
					}
				}
			}
		}()
	}
	writers.Wait()
	close(stop)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if in, mark, seq := f.indexed(); in < 20 || mark == 0 {
		t.Errorf("merges did not run: %d keys in thread_msg, mark %d of %d", in, mark, seq)
	}
	t.Logf("%d reads", reads)
	f.want = acked
	for th := range f.want {
		slices.Sort(f.want[th])
	}
	f.newest = nil
}

// TestSchema3StoreRaisedThreadIndex: a store written before the tail
// existed (every message in thread_msg, no mark) is raised to schema 4
// with its mark at its last message, lists its threads as before, and
// indexes new messages in the tail.
func TestSchema3StoreRaisedThreadIndex(t *testing.T) {
	t.Parallel()
	f := newTailFixture(t, 1000, 2)
	for range 6 {
		f.commit()
	}
	if err := f.s.mergeNow(context.Background()); err != nil {
		t.Fatal(err)
	}
	// What a schema-3 binary left: every message in thread_msg, no mark.
	if err := f.s.db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket(bMeta).Delete(keyMerged); err != nil {
			return err
		}
		return tx.Bucket(bMeta).Put(keySchema, putU64(3))
	}); err != nil {
		t.Fatal(err)
	}
	f.s.Close()
	f.s = openTail(t, f.dir, 1000, f.now)
	if err := f.s.db.View(func(tx *bolt.Tx) error {
		if v := getU64(tx.Bucket(bMeta).Get(keySchema)); v != SchemaVersion {
			t.Errorf("schema %d after Open, want %d", v, SchemaVersion)
		}
		if v := tx.Bucket(bMeta).Get(keyMerged); getU64(v) != tx.Bucket(bMessages).Sequence() {
			t.Errorf("mark %x, want the last message %d", v, tx.Bucket(bMessages).Sequence())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n := f.s.tail.len(); n != 0 {
		t.Errorf("tail of a raised store holds %d", n)
	}
	f.check("raised")
	f.commit()
	f.check("new message")
	f.s.Close()
	f.s = openTail(t, f.dir, 1000, f.now)
	f.check("reopened")
}

// TestThreadTailMergeOvertakesRead: a read whose transaction predates a
// merge that has already dropped the merged entries from the tail is told
// to run again (errTailMoved) instead of missing them: they are in neither
// its thread_msg nor the tail any more.
func TestThreadTailMergeOvertakesRead(t *testing.T) {
	t.Parallel()
	f := newTailFixture(t, 1000, 1)
	for range 3 {
		f.commit()
	}
	tx, err := f.s.db.Begin(false)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	ids, err := f.s.threadIDs(tx, "acme", f.threads[0])
	if err != nil || !slices.Equal(ids, f.want[f.threads[0]]) {
		t.Fatalf("before the merge: %v %v, want %v", ids, err, f.want[f.threads[0]])
	}
	merged := make(chan error, 1)
	go func() { merged <- f.s.mergeNow(context.Background()) }()
	select {
	case err := <-merged:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("merge blocked by the open read transaction")
	}
	if ids, err := f.s.threadIDs(tx, "acme", f.threads[0]); !errors.Is(err, errTailMoved) {
		t.Fatalf("old transaction after the merge: %v %v, want errTailMoved", ids, err)
	}
	var th Thread
	if err := f.s.getThread(tx, "acme", f.threads[0], &th); !errors.Is(err, errTailMoved) {
		t.Fatalf("getThread in the old transaction after the merge: %v, want errTailMoved", err)
	}
	tx.Rollback()
	f.check("after the merge")
}

// TestThreadTailStopsAtClose: a tail that fills after Close starts no
// merge (one would fail on the closed queue, and the next would start at
// once, for as long as the process lives).
func TestThreadTailStopsAtClose(t *testing.T) {
	t.Parallel()
	f := newTailFixture(t, 1000, 1)
	f.s.Close()
	f.s.tail.mu.Lock()
	f.s.tail.mergeAt = 1
	f.s.tail.mu.Unlock()
	f.s.tail.add("acme", f.threads[0], 1<<40)
	f.s.tail.mu.Lock()
	merging := f.s.tail.merging
	f.s.tail.mu.Unlock()
	if merging {
		t.Fatal("a merge started after Close")
	}
}
