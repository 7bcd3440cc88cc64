package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"time"

	"syncrelay/store"
)

var outboxTests = []test{
	{"EnqueueClaimLease", testOutboxClaimLease},
	{"DeliverFailDeadRedeliver", testOutboxLifecycle},
	{"DeadLetterPagingAndRedeliverAll", testOutboxDeadPaging},
	{"Prune", testOutboxPrune},
	{"ConcurrentClaims", testOutboxConcurrentClaims},
	{"ClaimWithEndedContext", testOutboxClaimEndedContext},
}

// enqueue adds n events of tenant and returns them as the outbox lists
// them (the seqs are the backend's).
func (e *env) enqueue(tenant, typ string, n int) []*store.Event {
	e.t.Helper()
	before, err := e.b.Events(e.ctx, "")
	e.must(err, "Events")
	for i := range n {
		e.must(e.b.Enqueue(e.ctx, tenant, typ, map[string]any{"i": i}), "Enqueue")
	}
	all, err := e.b.Events(e.ctx, "")
	e.must(err, "Events")
	if len(all) != len(before)+n {
		e.fatalf("outbox holds %d events, want %d", len(all), len(before)+n)
	}
	return all[len(before):]
}

func seqsOf(evs []*store.Event) []uint64 {
	var out []uint64
	for _, ev := range evs {
		out = append(out, ev.Seq)
	}
	return out
}

// testOutboxClaimLease: a claimed event is leased: nobody claims it again
// until the lease ends; then it comes back with its attempt count raised
// (delivery is at least once).
func testOutboxClaimLease(e *env) {
	now := e.now()
	if evs, err := e.b.ClaimEvents(e.ctx, now, 10, time.Minute); err != nil || len(evs) != 0 {
		e.fatalf("claim from an empty outbox = %v %v", evs, err)
	}
	// The payload round-trips verbatim: a 2^60 integer stays an integer.
	e.must(e.b.Enqueue(e.ctx, tenantID, "message.received", map[string]any{"big": uint64(1) << 60, "b": "x"}), "Enqueue")
	evs := append([]*store.Event{}, e.enqueue(tenantID, "message.bounced", 1)...)
	evs = append(evs, e.enqueue("beta", "message.received", 1)...)
	all, _ := e.b.Events(e.ctx, store.EventPending)
	if len(all) != 3 || all[0].ID == "" || all[0].Created.IsZero() || all[0].Tenant != tenantID || all[0].Attempts != 0 {
		e.fatalf("pending events = %+v", all)
	}
	st, err := e.b.OutboxStats(e.ctx)
	if err != nil || st.Pending != 3 || st.Dead != 0 || !st.OldestPending.Equal(all[0].Created) {
		e.fatalf("OutboxStats = %+v %v", st, err)
	}

	c1, err := e.b.ClaimEvents(e.ctx, now.Add(time.Second), 2, time.Minute)
	e.must(err, "ClaimEvents")
	if !slices.Equal(seqsOf(c1), seqsOf(all[:2])) || c1[0].Attempts != 1 || c1[0].State != store.EventPending || c1[0].Type != "message.received" {
		e.fatalf("claim (limit 2) = %+v, want the 2 oldest", c1)
	}
	raw, _ := json.Marshal(c1[0].Data)
	if string(raw) != `{"b":"x","big":1152921504606846976}` {
		e.fatalf("payload = %s", raw)
	}
	c2, _ := e.b.ClaimEvents(e.ctx, now.Add(2*time.Second), 10, time.Minute)
	if !slices.Equal(seqsOf(c2), []uint64{evs[1].Seq}) {
		e.fatalf("second claim = %v, want only the unclaimed %d", seqsOf(c2), evs[1].Seq)
	}
	if c3, _ := e.b.ClaimEvents(e.ctx, now.Add(30*time.Second), 10, time.Minute); len(c3) != 0 {
		e.fatalf("claimed inside the lease: %v", seqsOf(c3))
	}
	again, _ := e.b.ClaimEvents(e.ctx, now.Add(2*time.Minute), 10, time.Minute)
	if len(again) != 3 || again[0].Attempts != 2 {
		e.fatalf("after the lease = %+v, want all 3 at attempt 2", again)
	}
	if st, _ := e.b.OutboxStats(e.ctx); st.Pending != 3 {
		e.fatalf("claimed events are still pending: %+v", st)
	}
	if _, err := e.b.OutboxEvent(e.ctx, 987654); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("OutboxEvent(missing) = %v, want ErrNotFound", err)
	}
}

func testOutboxLifecycle(e *env) {
	evs := e.enqueue(tenantID, "message.received", 2)
	evs = append(evs, e.enqueue("beta", "message.received", 1)...)
	now := e.now()
	a, b, c := evs[0].Seq, evs[1].Seq, evs[2].Seq
	claimed, _ := e.b.ClaimEvents(e.ctx, now.Add(time.Second), 10, time.Minute)
	if len(claimed) != 3 {
		e.fatalf("claim = %v", seqsOf(claimed))
	}
	e.must(e.b.EventDelivered(e.ctx, a, now.Add(time.Second)), "EventDelivered")
	if ev, _ := e.b.OutboxEvent(e.ctx, a); ev.State != store.EventDelivered {
		e.fatalf("delivered event = %+v", ev)
	}
	e.must(e.b.EventDelivered(e.ctx, a, now.Add(2*time.Second)), "EventDelivered twice") // a retried ack is harmless

	// An outcome for an older attempt (the lease ran out and the event was
	// claimed again) is ignored.
	e.must(e.b.EventFailed(e.ctx, b, 0, now, "stale", time.Time{}, true), "EventFailed(stale)")
	if ev, _ := e.b.OutboxEvent(e.ctx, b); ev.State != store.EventPending || ev.LastError != "" {
		e.fatalf("a stale outcome was applied: %+v", ev)
	}
	// A failure with a retry time: not claimable before it.
	e.must(e.b.EventFailed(e.ctx, b, 1, now, "HTTP 500", now.Add(time.Hour), false), "EventFailed(retry)")
	ev, _ := e.b.OutboxEvent(e.ctx, b)
	if ev.State != store.EventPending || ev.LastError != "HTTP 500" || !ev.NextAttempt.Equal(now.Add(time.Hour)) {
		e.fatalf("retrying event = %+v", ev)
	}
	// A dead failure: dead-lettered.
	e.must(e.b.EventFailed(e.ctx, c, 1, now.Add(3*time.Second), "HTTP 410", time.Time{}, true), "EventFailed(dead)")
	if evs, _ := e.b.ClaimEvents(e.ctx, now.Add(59*time.Minute), 10, time.Minute); len(evs) != 0 {
		e.fatalf("claimed before its retry time or dead: %v", seqsOf(evs))
	}
	st, _ := e.b.OutboxStats(e.ctx)
	if st.Pending != 1 || st.Dead != 1 {
		e.fatalf("OutboxStats = %+v, want 1 pending 1 dead", st)
	}
	if dead, _ := e.b.Events(e.ctx, store.EventDead); !slices.Equal(seqsOf(dead), []uint64{c}) {
		e.fatalf("Events(dead) = %v", seqsOf(dead))
	}
	dl, more, err := e.b.DeadLetters(e.ctx, "", 0, 10)
	if err != nil || more || len(dl) != 1 || dl[0].Event.Seq != c || dl[0].Event.LastError != "HTTP 410" || dl[0].DeadAt.IsZero() {
		e.fatalf("DeadLetters = %+v %v %v", dl, more, err)
	}
	if dl, _, _ := e.b.DeadLetters(e.ctx, tenantID, 0, 10); len(dl) != 0 {
		e.fatalf("DeadLetters(acme) shows beta's: %+v", dl)
	}

	// Redelivery: only dead events, only the tenant's own.
	if _, err := e.b.Redeliver(e.ctx, "", []uint64{b}, now); !errors.Is(err, store.ErrNotDead) {
		e.fatalf("Redeliver(pending) = %v, want ErrNotDead", err)
	}
	if _, err := e.b.Redeliver(e.ctx, tenantID, []uint64{c}, now); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("Redeliver(another tenant's) = %v, want ErrNotFound", err)
	}
	if _, err := e.b.Redeliver(e.ctx, "", []uint64{987654}, now); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("Redeliver(missing) = %v, want ErrNotFound", err)
	}
	re, err := e.b.Redeliver(e.ctx, "beta", []uint64{c}, now.Add(4*time.Second))
	if err != nil || len(re) != 1 || re[0].Seq != c || re[0].Attempts != 0 || re[0].State != store.EventPending {
		e.fatalf("Redeliver = %+v %v", re, err)
	}
	claimed, _ = e.b.ClaimEvents(e.ctx, now.Add(5*time.Second), 10, time.Minute)
	if !slices.Equal(seqsOf(claimed), []uint64{c}) || claimed[0].Attempts != 1 {
		e.fatalf("claim after Redeliver = %+v", claimed)
	}
	if st, _ := e.b.OutboxStats(e.ctx); st.Dead != 0 || st.Pending != 2 {
		e.fatalf("OutboxStats after Redeliver = %+v", st)
	}
}

func testOutboxDeadPaging(e *env) {
	tenants := []string{tenantID, "beta", tenantID}
	for _, tn := range tenants {
		e.enqueue(tn, "grant.broken", 1)
	}
	now := e.now()
	claimed, _ := e.b.ClaimEvents(e.ctx, now, 10, time.Minute)
	if len(claimed) != 3 {
		e.fatalf("claim = %v", seqsOf(claimed))
	}
	for _, ev := range claimed {
		e.must(e.b.EventFailed(e.ctx, ev.Seq, ev.Attempts, now, "down", time.Time{}, true), "EventFailed")
	}
	p1, more, err := e.b.DeadLetters(e.ctx, "", 0, 2)
	if err != nil || !more || !slices.Equal(seqsOf(deadEvents(p1)), seqsOf(claimed[:2])) {
		e.fatalf("page 1 = %v more=%v %v", seqsOf(deadEvents(p1)), more, err)
	}
	p2, more, _ := e.b.DeadLetters(e.ctx, "", p1[1].Event.Seq, 2)
	if more || !slices.Equal(seqsOf(deadEvents(p2)), seqsOf(claimed[2:])) {
		e.fatalf("page 2 = %v more=%v", seqsOf(deadEvents(p2)), more)
	}
	re, err := e.b.Redeliver(e.ctx, tenantID, nil, now)
	if err != nil || !slices.Equal(seqsOf(re), []uint64{claimed[0].Seq, claimed[2].Seq}) {
		e.fatalf("Redeliver(acme, all) = %v %v", seqsOf(re), err)
	}
	if st, _ := e.b.OutboxStats(e.ctx); st.Pending != 2 || st.Dead != 1 {
		e.fatalf("OutboxStats = %+v", st)
	}
	re, err = e.b.Redeliver(e.ctx, "", nil, now)
	if err != nil || !slices.Equal(seqsOf(re), []uint64{claimed[1].Seq}) {
		e.fatalf("Redeliver(all) = %v %v", seqsOf(re), err)
	}
}

func deadEvents(dl []store.DeadLetter) []*store.Event {
	var out []*store.Event
	for _, d := range dl {
		out = append(out, d.Event)
	}
	return out
}

// testOutboxPrune: delivered events older than deliveredBefore and dead
// letters given up before deadBefore are deleted, at most limit per call;
// pending events never are.
func testOutboxPrune(e *env) {
	evs := e.enqueue(tenantID, "message.received", 5)
	now := e.now()
	claimed, _ := e.b.ClaimEvents(e.ctx, now, 10, time.Minute)
	if len(claimed) != 5 {
		e.fatalf("claim = %v", seqsOf(claimed))
	}
	e.must(e.b.EventDelivered(e.ctx, evs[0].Seq, now), "EventDelivered")
	e.must(e.b.EventDelivered(e.ctx, evs[1].Seq, now), "EventDelivered")
	e.must(e.b.EventDelivered(e.ctx, evs[2].Seq, now.Add(time.Hour)), "EventDelivered")
	e.must(e.b.EventFailed(e.ctx, evs[3].Seq, 1, now, "gone", time.Time{}, true), "EventFailed")
	// evs[4] stays pending.

	if n, err := e.b.PruneEvents(e.ctx, now.Add(time.Minute), now.Add(-time.Minute), 1); err != nil || n != 1 {
		e.fatalf("PruneEvents(limit 1) = %d %v", n, err)
	}
	if n, err := e.b.PruneEvents(e.ctx, now.Add(time.Minute), now.Add(time.Minute), 100); err != nil || n != 2 {
		e.fatalf("PruneEvents = %d %v, want the other old delivered one and the dead one", n, err)
	}
	for i, want := range []bool{false, false, true, false, true} {
		_, err := e.b.OutboxEvent(e.ctx, evs[i].Seq)
		if want && err != nil || !want && !errors.Is(err, store.ErrNotFound) {
			e.fatalf("event %d after pruning: %v (kept: %v)", i, err, want)
		}
	}
	if st, _ := e.b.OutboxStats(e.ctx); st.Pending != 1 || st.Dead != 0 {
		e.fatalf("OutboxStats after pruning = %+v", st)
	}
}

// testOutboxConcurrentClaims: deliverers claiming at once (goroutines,
// nodes) never get the same event within its lease.
func testOutboxConcurrentClaims(e *env) {
	const events, claimers = 40, 6
	e.enqueue(tenantID, "message.received", events)
	now := e.now()
	var mu sync.Mutex
	got := map[uint64]int{}
	parallel(claimers, func(int) {
		for {
			evs, err := e.b.ClaimEvents(e.ctx, now.Add(time.Second), 3, time.Hour)
			if err != nil {
				e.t.Errorf("ClaimEvents: %v", err)
				return
			}
			if len(evs) == 0 {
				return
			}
			mu.Lock()
			for _, ev := range evs {
				got[ev.Seq]++
			}
			mu.Unlock()
		}
	})
	if len(got) != events {
		e.fatalf("%d distinct events claimed, want %d", len(got), events)
	}
	for seq, n := range got {
		if n != 1 {
			e.fatalf("event %d claimed %d times within its lease", seq, n)
		}
	}
}

// testOutboxClaimEndedContext: a claim made under a context that has
// ended (a node stopping) claims nothing, or returns what it claimed; it
// never leaves an event claimed by nobody until its lease ends. (The
// in-flight case, a context ending after the claim is sent, is
// backend-specific: store/postgres TestClaimEventsCanceledInFlight.)
func testOutboxClaimEndedContext(e *env) {
	evs := e.enqueue(tenantID, "message.received", 3)
	ctx, cancel := context.WithCancel(e.ctx)
	cancel()
	now := e.now().Add(time.Second)
	got, err := e.b.ClaimEvents(ctx, now, 10, time.Hour)
	if err != nil && len(got) != 0 {
		e.fatalf("claim under an ended context returned %d events and %v", len(got), err)
	}
	again, err := e.b.ClaimEvents(e.ctx, now, 10, time.Hour)
	e.must(err, "ClaimEvents")
	if n := len(got) + len(again); n != len(evs) {
		e.fatalf("claim under an ended context returned %d events, %d claimable after it, want %d in all", len(got), len(again), len(evs))
	}
}
