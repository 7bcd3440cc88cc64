package bolt

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestSegmentBatchesStartOnAPage: after a batch's flush the next append
// starts on a fresh page (the flushed partial page is not written again),
// the gap counts as live once records pass it (so compaction does not
// copy an intact segment), and a removed message's bytes are still found
// dead and freed.
func TestSegmentBatchesStartOnAPage(t *testing.T) {
	t.Parallel()
	s, threads := benchStore(t)
	defer s.Close()
	ctx := context.Background()
	commit := func(i int) *Message {
		t.Helper()
		body := strings.Repeat("y", 1000+i) + "\r\n"
		res, err := s.CommitInbound(ctx, &Incoming{
			Message: Message{Tenant: "acme", Thread: threads[i%len(threads)], Direction: Inbound,
				InternetMessageID: fmt.Sprintf("pad%d@cand.test", i), From: "carl@cand.test"},
			Raw: &Raw{Body: strings.NewReader(body), Size: int64(len(body))},
		})
		if err != nil {
			t.Fatal(err)
		}
		m, err := s.Message(ctx, "acme", res.Ref.Message)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	var locs []segLocation
	var msgs []*Message
	for i := range 4 { // one at a time: each its own batch
		m := commit(i)
		l, ok := parseSegLoc(m.Raw)
		if !ok {
			t.Fatalf("locator %q", m.Raw)
		}
		locs, msgs = append(locs, l), append(msgs, m)
	}
	for _, l := range locs[1:] {
		if l.seg == locs[0].seg && l.off%pageAlign != 0 {
			t.Errorf("append after a flush at offset %d, not on a page", l.off)
		}
	}
	st, _ := s.segStat(locs[0].seg)
	if st.live != st.end {
		t.Errorf("segment of intact records: live %d, end %d: the gaps read as dead bytes", st.live, st.end)
	}
	if err := s.RemoveMessage(ctx, "acme", msgs[1].ID); err != nil {
		t.Fatal(err)
	}
	st, _ = s.segStat(locs[0].seg)
	if st.end-st.live != locs[1].n {
		t.Errorf("after removing a record of %d bytes: live %d, end %d", locs[1].n, st.live, st.end)
	}
	s.grace = 0
	cs, err := s.Compact(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cs.Segments != 1 || cs.FreedBytes != locs[1].n {
		t.Errorf("compaction %+v, want one segment and %d bytes freed", cs, locs[1].n)
	}
	for _, m := range []*Message{msgs[0], msgs[2], msgs[3]} {
		got, err := s.Message(ctx, "acme", m.ID)
		if err != nil {
			t.Fatal(err)
		}
		f, err := s.OpenRaw(ctx, got.Raw)
		if err != nil {
			t.Fatalf("message %d after compaction: %v", m.ID, err)
		}
		f.Close()
	}
}

// TestRotateWhileBatchCommits: a session that starts a new segment (rotate
// registers it in its own bbolt transaction, holding the segment log's
// lock) while a batch is being committed must not deadlock with the
// commit loop, which holds bbolt's writer lock while it waits for the
// segment flush and counts alignment gaps.
func TestRotateWhileBatchCommits(t *testing.T) {
	t.Parallel()
	s, threads := benchStore(t)
	// No deferred Close: after a deadlock it would never return, and the
	// panic below would never be reported.
	commit := benchCommit(s, threads)
	for round := range 3 {
		s.segs.seal() // the next append starts a segment
		release, held := make(chan struct{}), make(chan struct{})
		heldDone := make(chan error, 1)
		go func() {
			heldDone <- s.group(context.Background(), func(*bolt.Tx) error { close(held); <-release; return nil })
		}()
		<-held
		done := make(chan error, 1)
		go func() { done <- commit(int64(round)) }()
		time.Sleep(50 * time.Millisecond) // the append is in rotate, waiting for the writer lock
		close(release)
		for _, ch := range []chan error{heldDone, done} {
			select {
			case err := <-ch:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(20 * time.Second):
				// Not t.Fatal: a test that waits for its goroutines
				// would wait for the stuck commit loop forever.
				panic(fmt.Sprintf("round %d: deadlock: a commit did not end in 20 s", round))
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestRotateWhileFlushFails: a batch's segment flush that fails while a
// session waits in rotate (holding the segment log's lock, waiting for
// bbolt's writer lock, which the batch holds until its flush ends) must
// fail that batch, not deadlock: the flush stops appends to the failed
// file without the segment log's lock.
func TestRotateWhileFlushFails(t *testing.T) {
	t.Parallel()
	s, threads := benchStore(t)
	// No deferred Close: after a deadlock it would never return.
	commit := benchCommit(s, threads)
	held, release := failNextFlush(s)
	failed := make(chan error, 1)
	go func() { failed <- commit(0) }()
	<-held
	s.segs.seal() // the next append starts a segment
	done := make(chan error, 1)
	go func() { done <- commit(1) }()
	time.Sleep(50 * time.Millisecond) // the append is in rotate, waiting for the writer lock
	close(release)
	for i, ch := range []chan error{failed, done} {
		select {
		case err := <-ch:
			if (i == 0) != (err != nil) {
				t.Fatalf("commit %d: %v", i, err)
			}
		case <-time.After(20 * time.Second):
			panic(fmt.Sprintf("deadlock: commit %d did not end in 20 s", i))
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestNoCommitAfterFailedFlush: bytes appended to a segment whose flush
// then fails are never committed by a later batch, even when that batch's
// own flush succeeds (the failed fdatasync may have dropped them); the
// next message goes to a new segment and commits.
func TestNoCommitAfterFailedFlush(t *testing.T) {
	t.Parallel()
	s, threads := benchStore(t)
	defer s.Close()
	commit := benchCommit(s, threads)
	held, release := failNextFlush(s)
	first := make(chan error, 1)
	go func() { first <- commit(0) }()
	<-held
	// The second message's bytes go into the same segment while the
	// first batch's flush is under way; its record waits for the next batch.
	second := make(chan error, 1)
	go func() { second <- commit(1) }()
	waitFor(t, "the second message's bytes appended", func() bool {
		s.segs.dmu.Lock()
		defer s.segs.dmu.Unlock()
		return len(s.segs.dirty) > 0
	})
	close(release)
	if err := <-first; err == nil {
		t.Fatal("the batch whose flush failed was committed")
	}
	if err := <-second; !errors.Is(err, errSegmentSyncFailed) {
		t.Fatalf("a message whose bytes were in the failed segment: %v, want errSegmentSyncFailed", err)
	}
	if err := commit(2); err != nil {
		t.Fatalf("the next message (a new segment): %v", err)
	}
	for i, want := range []bool{false, false, true} {
		refs, err := s.LookupMsgIDs(context.Background(), "acme", []string{fmt.Sprintf("bench%d@cand.test", i)})
		if err != nil || (len(refs) == 1) != want {
			t.Errorf("message %d stored: %v (%v), want %v", i, refs, err, want)
		}
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// failNextFlush makes s's next segment flush wait, once held is closed,
// until release is closed, and then fail; later flushes are real.
func failNextFlush(s *Store) (held, release chan struct{}) {
	held, release = make(chan struct{}), make(chan struct{})
	var hold atomic.Bool
	hold.Store(true)
	s.segs.syncFile = func(f *os.File) error {
		if hold.Swap(false) {
			close(held)
			<-release
			return errors.New("disk on fire")
		}
		return fdatasync(f)
	}
	return held, release
}
