package bolt

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

type kvClock struct{ t atomic.Int64 }

func (c *kvClock) now() time.Time      { return time.Unix(0, c.t.Load()) }
func (c *kvClock) add(d time.Duration) { c.t.Add(int64(d)) }
func newKVClock() *kvClock {
	c := &kvClock{}
	c.t.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return c
}
func openKVClock(t *testing.T) (*Store, *kvClock) {
	t.Helper()
	c := newKVClock()
	s, err := Open(t.TempDir(), Options{Now: c.now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, c
}

func TestKVLifecycle(t *testing.T) {
	t.Parallel()
	s, clk := openKVClock(t)
	ctx := context.Background()
	if err := s.CreateKV(ctx, "a/1", map[string]int{"v": 1}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateKV(ctx, "a/1", map[string]int{"v": 2}, time.Minute); !errors.Is(err, ErrExists) {
		t.Fatalf("second create: %v", err)
	}
	var v map[string]int
	if err := s.GetKV(ctx, "a/1", &v); err != nil || v["v"] != 1 {
		t.Fatalf("get: %v %v", v, err)
	}
	if err := s.PutKV(ctx, "a/1", map[string]int{"v": 3}, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.TakeKV(ctx, "a/1", &v); err != nil || v["v"] != 3 {
		t.Fatalf("take: %v %v", v, err)
	}
	if err := s.TakeKV(ctx, "a/1", &v); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second take: %v", err)
	}

	// Expiry: invisible, replaceable, purged.
	if err := s.CreateKV(ctx, "a/2", 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.PutKV(ctx, "a/3", 1, 0); err != nil { // no expiry
		t.Fatal(err)
	}
	clk.add(time.Minute)
	var n int
	if err := s.GetKV(ctx, "a/2", &n); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired get: %v", err)
	}
	if err := s.TakeKV(ctx, "a/2", &n); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired take: %v", err)
	}
	if err := s.CreateKV(ctx, "a/4", 1, time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateKV(ctx, "a/5", 1, time.Second); err != nil {
		t.Fatal(err)
	}
	clk.add(2 * time.Second)
	if got, err := s.PurgeExpiredKV(ctx); err != nil || got != 2 { // a/2 and a/5
		t.Fatalf("purge: %d %v", got, err)
	}
	if err := s.GetKV(ctx, "a/3", &n); err != nil {
		t.Fatalf("entry without expiry purged: %v", err)
	}
	if err := s.GetKV(ctx, "a/4", &n); err != nil {
		t.Fatalf("live entry purged: %v", err)
	}
	if err := s.DeleteKV(ctx, "a/4"); err != nil {
		t.Fatal(err)
	}
	if err := s.GetKV(ctx, "a/4", &n); !errors.Is(err, ErrNotFound) {
		t.Fatal("delete")
	}
	// Other kv users (last_seen counters) are untouched by purges.
	s.Count("acme", "stored", "token")
	if err := s.flushCounters(); err != nil {
		t.Fatal(err)
	}
	clk.add(48 * time.Hour)
	if _, err := s.PurgeExpiredKV(ctx); err != nil {
		t.Fatal(err)
	}
	if _, last, _ := s.Counts(ctx, "acme", time.Time{}); last.IsZero() {
		t.Fatal("purge removed a non-ttl kv entry")
	}
}

func TestTakeKVSingleUseUnderConcurrency(t *testing.T) {
	t.Parallel()
	s, _ := openKVClock(t)
	ctx := context.Background()
	if err := s.CreateKV(ctx, "state/x", "v", time.Minute); err != nil {
		t.Fatal(err)
	}
	var wins atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var v string
			if s.TakeKV(ctx, "state/x", &v) == nil {
				wins.Add(1)
			}
		}()
	}
	wg.Wait()
	if wins.Load() != 1 {
		t.Fatalf("%d takers got a single-use value", wins.Load())
	}
}

func TestReserveSlot(t *testing.T) {
	t.Parallel()
	s, clk := openKVClock(t)
	ctx := context.Background()
	res := func() (time.Duration, bool) {
		t.Helper()
		w, ok, err := s.ReserveSlot(ctx, "rate/u", 10*time.Second, 3, 15*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return w, ok
	}
	for i := range 3 { // the burst
		if w, ok := res(); !ok || w != 0 {
			t.Fatalf("burst %d: %s %v", i, w, ok)
		}
	}
	if w, ok := res(); !ok || w != 10*time.Second {
		t.Fatalf("4th: %s %v", w, ok)
	}
	if w, ok := res(); ok || w != 20*time.Second {
		t.Fatalf("5th beyond max wait: %s %v", w, ok)
	}
	clk.add(30 * time.Second) // the 4th was used at +10 s; 2 slots back by +30 s
	for i := range 2 {
		if w, ok := res(); !ok || w != 0 {
			t.Fatalf("after idle %d: %s %v", i, w, ok)
		}
	}
	if w, ok := res(); !ok || w != 10*time.Second {
		t.Fatalf("after idle, paced: %s %v", w, ok)
	}
	if _, ok, _ := s.ReserveSlot(ctx, "rate/other", 10*time.Second, 1, 0); !ok {
		t.Fatal("keys share a budget")
	}
}

func TestGrantLifecycle(t *testing.T) {
	t.Parallel()
	s, _ := openKVClock(t)
	seed(t, s)
	ctx := context.Background()
	if err := s.PutGrant(ctx, &Grant{Tenant: "acme", User: "ghost", Provider: "google", Sealed: []byte{1}}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("grant for an unknown user: %v", err)
	}
	g := &Grant{Tenant: "acme", User: "u-rec", Provider: "google", Sealed: []byte{1}}
	if err := s.PutGrant(ctx, g); err != nil || g.Version != 1 || g.Status != GrantActive {
		t.Fatalf("%+v %v", g, err)
	}
	if _, err := s.UpdateGrantToken(ctx, "acme", "u-rec", 1, []byte{2}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateGrantToken(ctx, "acme", "u-rec", 1, []byte{3}); !errors.Is(err, ErrStale) {
		t.Fatalf("stale update: %v", err)
	}
	if changed, err := s.MarkGrantBroken(ctx, "acme", "u-rec", 2, "invalid_grant"); !changed || err != nil {
		t.Fatalf("break: %v %v", changed, err)
	}
	if changed, _ := s.MarkGrantBroken(ctx, "acme", "u-rec", 3, "invalid_grant"); changed {
		t.Fatal("broken twice")
	}
	gs, err := s.Grants(ctx, "acme")
	if err != nil || len(gs) != 1 || gs[0].Status != GrantBroken || gs[0].Sealed != nil {
		t.Fatalf("grants %+v %v", gs, err)
	}
	evs, _ := s.Events(ctx, "")
	if len(evs) != 1 || evs[0].Type != "grant.broken" {
		t.Fatalf("events %+v", evs)
	}
	if _, err := s.UpdateGrantToken(ctx, "acme", "u-rec", 3, []byte{4}); !errors.Is(err, ErrStale) {
		t.Fatal("refresh saved on a broken grant")
	}
	if err := s.PutGrant(ctx, &Grant{Tenant: "acme", User: "u-rec", Provider: "google", Sealed: []byte{5}}); err != nil {
		t.Fatal(err)
	}
	g2, _ := s.Grant(ctx, "acme", "u-rec")
	if g2.Status != GrantActive || g2.BrokenReason != "" || g2.Version != 4 {
		t.Fatalf("reconnect %+v", g2)
	}
	if err := s.DeleteGrant(ctx, "acme", "u-rec"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Grant(ctx, "acme", "u-rec"); !errors.Is(err, ErrNotFound) {
		t.Fatal("delete")
	}
}

func TestFailStaleSends(t *testing.T) {
	t.Parallel()
	s, clk := openKVClock(t)
	seed(t, s)
	ctx := context.Background()
	_, old := newThread(t, s) // status sending
	clk.add(2 * time.Hour)
	_, fresh := newThread(t, s)
	n, err := s.FailStaleSends(ctx, clk.now().Add(-time.Hour), "interrupted")
	if err != nil || n != 1 {
		t.Fatalf("%d %v", n, err)
	}
	m, _ := s.Message(ctx, "acme", old.ID)
	f, _ := s.Message(ctx, "acme", fresh.ID)
	if m.Status != "failed" || m.Error != "interrupted" || f.Status != "sending" {
		t.Fatalf("old %q fresh %q", m.Status, f.Status)
	}
}
