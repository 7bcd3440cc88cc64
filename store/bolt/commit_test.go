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

// TestNextBatchFlushesWhileCommitSyncs: a request that arrives while a
// batch's bbolt Commit is syncing has its segment bytes flushed meanwhile
// (the two overlap), and its record is still committed only after that
// flush ends: while the flush is held, no record of it is visible and its
// commit does not return; a failed flush fails it and commits none of it.
func TestNextBatchFlushesWhileCommitSyncs(t *testing.T) {
	s, _ := openTest(t)
	seed(t, s)
	th, _ := newThread(t, s)
	ctx := context.Background()

	var holdCommit, holdFlush atomic.Bool
	commitHeld, flushHeld := make(chan struct{}, 1), make(chan struct{}, 1)
	releaseCommit, releaseFlush := make(chan struct{}), make(chan error)
	// On failure, let what is held go, so that Close (an earlier cleanup)
	// does not wait for it forever.
	t.Cleanup(func() { close(releaseCommit); close(releaseFlush) })
	s.txCommit = func(tx *bolt.Tx) error {
		if holdCommit.Swap(false) {
			commitHeld <- struct{}{}
			<-releaseCommit
		}
		return tx.Commit()
	}
	s.segs.syncFile = func(f *os.File) error {
		if holdFlush.Swap(false) {
			flushHeld <- struct{}{}
			if err := <-releaseFlush; err != nil {
				return err
			}
		}
		return fdatasync(f)
	}
	commit := func(marker string) chan error {
		done := make(chan error, 1)
		go func() {
			body := "Subject: hello\r\n\r\nbody " + marker + "\r\n"
			res, err := s.CommitInbound(ctx, &Incoming{Message: Message{Tenant: "acme", Thread: th.ID, Direction: Inbound,
				InternetMessageID: marker + "@cand.test"}, Raw: testRaw("", body)})
			if err == nil && res.Decision != Stored {
				err = fmt.Errorf("decision %s", res.Decision)
			}
			done <- err
		}()
		return done
	}
	visible := func(marker string) bool {
		_, ok, err := s.LookupMsgID(ctx, "acme", marker+"@cand.test")
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	returned := func(done chan error) bool {
		select {
		case err := <-done:
			done <- err
			return true
		default:
			return false
		}
	}
	wait := func(ch chan struct{}, what string) {
		t.Helper()
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: not in 10 s", what)
		}
	}

	for round, flushErr := range []error{nil, errors.New("disk on fire")} {
		first, second := fmt.Sprintf("first%d", round), fmt.Sprintf("second%d", round)
		holdCommit.Store(true)
		firstDone := commit(first)
		wait(commitHeld, "the first batch's Commit")
		holdFlush.Store(true)
		secondDone := commit(second)
		wait(flushHeld, "the second message's segment flush while the first batch's Commit syncs")
		releaseCommit <- struct{}{}
		if err := <-firstDone; err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond) // time enough to build and commit, were it not held
		if returned(secondDone) || visible(second) {
			t.Fatalf("round %d: the second record was committed before its segment flush ended", round)
		}
		releaseFlush <- flushErr
		err := <-secondDone
		switch {
		case flushErr == nil && err != nil:
			t.Fatal(err)
		case flushErr == nil && !visible(second):
			t.Fatal("second record not committed after its flush")
		case flushErr != nil && (err == nil || !strings.Contains(err.Error(), flushErr.Error())):
			t.Fatalf("commit after a failed flush: %v, want the flush error", err)
		case flushErr != nil && visible(second):
			t.Fatal("record committed although its segment flush failed")
		}
	}
}
