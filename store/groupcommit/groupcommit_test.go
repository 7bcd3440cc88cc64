package groupcommit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"syncrelay/store"
)

// TestSubmitAroundClose: submitters racing Close either get ErrClosed or
// have their request committed; none waits forever, and Close returns only
// after every queued request was committed.
func TestSubmitAroundClose(t *testing.T) {
	runners := map[string]func(q *Queue[int], commit func([]int)){
		"Run":     func(q *Queue[int], commit func([]int)) { q.Run(8, time.Hour, func() {}, commit) },
		"RunN(3)": func(q *Queue[int], commit func([]int)) { q.RunN(8, 3, time.Hour, func() {}, commit) },
	}
	for name, run := range runners {
		t.Run(name, func(t *testing.T) { submitAroundClose(t, run) })
	}
}

func submitAroundClose(t *testing.T, run func(q *Queue[int], commit func([]int))) {
	for round := range 200 {
		q := New[int](4)
		var committed atomic.Int64
		go run(q, func(b []int) { committed.Add(int64(len(b))) })
		var queued atomic.Int64
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				switch err := q.Submit(context.Background(), 1); {
				case err == nil:
					queued.Add(1)
				case !errors.Is(err, store.ErrClosed):
					t.Errorf("Submit: %v", err)
				}
			}()
		}
		q.Close()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: a submitter still waits after Close", round)
		}
		if c, n := committed.Load(), queued.Load(); c != n {
			t.Fatalf("round %d: %d requests queued, %d committed", round, n, c)
		}
	}
}

// TestBatches: requests queued while a batch commits form the next batch,
// up to max.
func TestBatches(t *testing.T) {
	q := New[int](100)
	release, started := make(chan struct{}), make(chan struct{})
	var mu sync.Mutex
	var sizes []int
	go q.Run(10, time.Hour, func() {}, func(b []int) {
		mu.Lock()
		sizes = append(sizes, len(b))
		first := len(sizes) == 1
		mu.Unlock()
		if first {
			close(started)
			<-release // hold the first batch while 25 more queue up
		}
	})
	if err := q.Submit(context.Background(), 0); err != nil {
		t.Fatal(err)
	}
	<-started
	for i := range 25 {
		if err := q.Submit(context.Background(), i); err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	q.Close()
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for _, n := range sizes {
		if n > 10 {
			t.Fatalf("batch of %d, max 10: %v", n, sizes)
		}
		total += n
	}
	if total != 26 || len(sizes) != 4 || sizes[0] != 1 || sizes[1] != 10 || sizes[2] != 10 {
		t.Fatalf("batches %v", sizes)
	}
}

// TestSubmitContext: a full queue and an ended context give the context's
// error, not a hang.
func TestSubmitContext(t *testing.T) {
	q := New[int](1)
	if err := q.Submit(context.Background(), 1); err != nil { // fills it; nothing runs
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if err := q.Submit(ctx, 2); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Submit on a full queue: %v", err)
	}
	go q.Run(8, time.Hour, func() {}, func([]int) {})
	q.Close()
	if err := q.Submit(context.Background(), 3); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("Submit after Close: %v", err)
	}
}

// TestRunNOverlaps: RunN commits up to n batches at once and never more;
// Close returns only after every running batch has returned.
func TestRunNOverlaps(t *testing.T) {
	for _, n := range []int{1, 2, 3} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			q := New[int](64)
			var now, peak, done atomic.Int64
			release := make(chan struct{})
			go q.RunN(1, n, time.Hour, func() {}, func(b []int) {
				c := now.Add(1)
				for {
					p := peak.Load()
					if c <= p || peak.CompareAndSwap(p, c) {
						break
					}
				}
				<-release
				now.Add(-1)
				done.Add(int64(len(b)))
			})
			for i := range 2 * n {
				if err := q.Submit(context.Background(), i); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.Now().Add(5 * time.Second)
			for now.Load() < int64(n) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			time.Sleep(20 * time.Millisecond) // a batch past the limit would start now
			if p := peak.Load(); p != int64(n) {
				t.Errorf("%d batches at once, want %d", p, n)
			}
			close(release)
			q.Close()
			if d := done.Load(); d != int64(2*n) {
				t.Errorf("Close returned with %d of %d committed", d, 2*n)
			}
		})
	}
}

// TestStats: Stats counts every batch, the requests in it and the time
// its commit took, with one committer (Run) and several (RunN).
func TestStats(t *testing.T) {
	runners := map[string]func(q *Queue[int], commit func([]int)){
		"Run":     func(q *Queue[int], commit func([]int)) { q.Run(4, time.Hour, func() {}, commit) },
		"RunN(2)": func(q *Queue[int], commit func([]int)) { q.RunN(4, 2, time.Hour, func() {}, commit) },
	}
	for name, run := range runners {
		t.Run(name, func(t *testing.T) {
			q := New[int](16)
			var mu sync.Mutex
			var sizes []int
			go run(q, func(b []int) {
				time.Sleep(2 * time.Millisecond)
				mu.Lock()
				sizes = append(sizes, len(b))
				mu.Unlock()
			})
			var wg sync.WaitGroup
			for range 10 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := q.Submit(context.Background(), 1); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			q.Close()
			st := q.Stats()
			mu.Lock()
			defer mu.Unlock()
			if st.Batches != int64(len(sizes)) || st.Requests != 10 {
				t.Fatalf("Stats %+v; committed %d batches %v", st, len(sizes), sizes)
			}
			if min := time.Duration(len(sizes)) * 2 * time.Millisecond; st.Busy < min {
				t.Fatalf("Busy %v, want at least %v for %d batches of 2 ms", st.Busy, min, len(sizes))
			}
		})
	}
}
