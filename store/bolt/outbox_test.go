package bolt

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"
)

func mustEnqueue(t *testing.T, s *Store, tenant, typ string, data any) {
	t.Helper()
	if err := s.Enqueue(context.Background(), tenant, typ, data); err != nil {
		t.Fatal(err)
	}
}

func TestOutboxClaimDeliverRetryDead(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	ctx := context.Background()
	now := time.Now().UTC()

	// Nothing to do: no write, no events.
	if evs, err := s.ClaimEvents(ctx, now, 10, time.Minute); err != nil || len(evs) != 0 {
		t.Fatalf("empty claim = %v %v", evs, err)
	}
	mustEnqueue(t, s, "acme", "message.received", map[string]any{"big": uint64(1) << 60, "b": "x"})
	mustEnqueue(t, s, "acme", "message.bounced", map[string]any{"message_id": "m-2"})
	mustEnqueue(t, s, "beta", "message.received", map[string]any{"message_id": "m-3"})

	st, err := s.OutboxStats(ctx)
	if err != nil || st.Pending != 3 || st.Dead != 0 || st.OldestPending.IsZero() {
		t.Fatalf("stats before indexing = %+v %v", st, err)
	}

	evs, err := s.ClaimEvents(ctx, now.Add(time.Second), 2, time.Minute)
	if err != nil || len(evs) != 2 {
		t.Fatalf("claim = %v %v", evs, err)
	}
	if evs[0].ID != "evt-1" || evs[0].Attempts != 1 || evs[0].State != EventPending {
		t.Fatalf("claimed %+v", evs[0])
	}
	// Data round-trips verbatim (a 2^60 integer is not turned into a float).
	raw, _ := json.Marshal(evs[0].Data)
	if string(raw) != `{"b":"x","big":1152921504606846976}` {
		t.Fatalf("data = %s", raw)
	}
	// Claimed events are leased: not claimable again before the lease ends.
	more, _ := s.ClaimEvents(ctx, now.Add(2*time.Second), 10, time.Minute)
	if len(more) != 1 || more[0].ID != "evt-3" {
		t.Fatalf("second claim = %+v", more)
	}
	// After the lease, an unacknowledged event comes back (at least once).
	again, _ := s.ClaimEvents(ctx, now.Add(2*time.Minute), 10, time.Minute)
	if len(again) != 3 || again[0].Attempts != 2 {
		t.Fatalf("after lease = %+v", again)
	}

	if err := s.EventDelivered(ctx, 1, now); err != nil {
		t.Fatal(err)
	}
	// A stale failure (older attempt) does not undo anything.
	if err := s.EventFailed(ctx, 2, 1, now, "stale", now, true); err != nil {
		t.Fatal(err)
	}
	if err := s.EventFailed(ctx, 2, 2, now, "HTTP 500", now.Add(time.Hour), false); err != nil {
		t.Fatal(err)
	}
	if err := s.EventFailed(ctx, 3, 2, now, "HTTP 410", time.Time{}, true); err != nil {
		t.Fatal(err)
	}
	e2, _ := s.OutboxEvent(ctx, 2)
	if e2.State != EventPending || e2.LastError != "HTTP 500" || !e2.NextAttempt.Equal(now.Add(time.Hour)) {
		t.Fatalf("retry state %+v", e2)
	}
	if evs, _ := s.ClaimEvents(ctx, now.Add(59*time.Minute), 10, time.Minute); len(evs) != 0 {
		t.Fatalf("claimed before its backoff: %+v", evs)
	}
	st, _ = s.OutboxStats(ctx)
	if st.Pending != 1 || st.Dead != 1 {
		t.Fatalf("stats = %+v", st)
	}

	dl, more2, err := s.DeadLetters(ctx, "", 0, 10)
	if err != nil || more2 || len(dl) != 1 || dl[0].Event.ID != "evt-3" || dl[0].Event.LastError != "HTTP 410" || dl[0].DeadAt.IsZero() {
		t.Fatalf("dead letters = %+v %v %v", dl, more2, err)
	}
	if dl, _, _ := s.DeadLetters(ctx, "acme", 0, 10); len(dl) != 0 {
		t.Fatalf("tenant filter leaks: %+v", dl)
	}
	// Redelivery: not-dead events are refused, another tenant's are not found.
	if _, err := s.Redeliver(ctx, "", []uint64{2}, now); !errors.Is(err, ErrNotDead) {
		t.Fatalf("redeliver pending = %v", err)
	}
	if _, err := s.Redeliver(ctx, "acme", []uint64{3}, now); !errors.Is(err, ErrNotFound) {
		t.Fatalf("redeliver other tenant's = %v", err)
	}
	re, err := s.Redeliver(ctx, "beta", []uint64{3}, now)
	if err != nil || len(re) != 1 || re[0].Attempts != 0 || re[0].State != EventPending {
		t.Fatalf("redeliver = %+v %v", re, err)
	}
	evs, _ = s.ClaimEvents(ctx, now.Add(time.Second), 10, time.Minute)
	if len(evs) != 1 || evs[0].ID != "evt-3" || evs[0].Attempts != 1 {
		t.Fatalf("claim after redeliver = %+v", evs)
	}
	if err := s.EventDelivered(ctx, 3, now.Add(time.Second)); err != nil {
		t.Fatal(err)
	}

	// Pruning removes old delivered events only.
	n, err := s.PruneEvents(ctx, now.Add(500*time.Millisecond), now.Add(-time.Hour), 100)
	if err != nil || n != 1 {
		t.Fatalf("prune = %d %v", n, err)
	}
	if _, err := s.OutboxEvent(ctx, 1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("pruned event still there: %v", err)
	}
	if _, err := s.OutboxEvent(ctx, 3); err != nil {
		t.Fatalf("recent delivered event pruned: %v", err)
	}
}

func TestOutboxRedeliverAllAndPruneDead(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	ctx := context.Background()
	now := time.Now().UTC()
	for i := 0; i < 3; i++ {
		mustEnqueue(t, s, []string{"acme", "beta", "acme"}[i], "grant.broken", map[string]any{"i": i})
	}
	now = time.Now().UTC()
	evs, _ := s.ClaimEvents(ctx, now, 10, time.Minute)
	for _, e := range evs {
		if err := s.EventFailed(ctx, e.Seq, e.Attempts, now, "down", time.Time{}, true); err != nil {
			t.Fatal(err)
		}
	}
	dl, more, _ := s.DeadLetters(ctx, "", 0, 2)
	if len(dl) != 2 || !more {
		t.Fatalf("page 1 = %d %v", len(dl), more)
	}
	dl2, more, _ := s.DeadLetters(ctx, "", dl[1].Event.Seq, 2)
	if len(dl2) != 1 || more || dl2[0].Event.Seq != 3 {
		t.Fatalf("page 2 = %+v %v", dl2, more)
	}
	re, err := s.Redeliver(ctx, "acme", nil, now)
	if err != nil || len(re) != 2 {
		t.Fatalf("redeliver tenant = %+v %v", re, err)
	}
	if st, _ := s.OutboxStats(ctx); st.Pending != 2 || st.Dead != 1 {
		t.Fatalf("stats = %+v", st)
	}
	if n, _ := s.PruneEvents(ctx, now, now.Add(time.Second), 100); n != 1 {
		t.Fatalf("dead prune = %d", n)
	}
	if st, _ := s.OutboxStats(ctx); st.Dead != 0 {
		t.Fatalf("stats after prune = %+v", st)
	}
}

func TestOutboxSurvivesReopen(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now().UTC()
	mustEnqueue(t, s, "acme", "message.received", map[string]any{"x": 1})
	now = time.Now().UTC()
	if evs, _ := s.ClaimEvents(ctx, now, 10, time.Minute); len(evs) != 1 {
		t.Fatal("claim")
	}
	// Crash before the outcome is recorded.
	s.Close()
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if evs, _ := s.ClaimEvents(ctx, now.Add(30*time.Second), 10, time.Minute); len(evs) != 0 {
		t.Fatal("claimed inside its lease after restart")
	}
	evs, _ := s.ClaimEvents(ctx, now.Add(2*time.Minute), 10, time.Minute)
	if len(evs) != 1 || evs[0].Attempts != 2 {
		t.Fatalf("event lost across restart: %+v", evs)
	}
}

func TestTimelinePagingAndInvolvement(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	seed(t, s)
	ctx := context.Background()
	th, sent := newThread(t, s)
	var ids []uint64
	for i := 0; i < 5; i++ {
		res, err := s.CommitInbound(ctx, &Incoming{Message: Message{Tenant: "acme", Thread: th.ID, Direction: Inbound,
			InternetMessageID: "r" + string(rune('a'+i)) + "@cand.test", From: "carl@cand.test",
			To: []string{"rec@acme.test"}, Cc: []string{"Boss@Acme.test"}}})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, res.Ref.Message)
	}
	if err := s.RemoveMessage(ctx, "acme", ids[1]); err != nil {
		t.Fatal(err)
	}
	p1, more, err := s.ThreadMessagesPage(ctx, "acme", th.ID, 0, 3)
	if err != nil || !more || len(p1) != 3 || p1[0].ID != sent.ID || p1[1].ID != ids[0] || p1[2].ID != ids[2] {
		t.Fatalf("page 1 = %v %v %v", p1, more, err)
	}
	p2, more, _ := s.ThreadMessagesPage(ctx, "acme", th.ID, p1[2].ID, 3)
	if more || len(p2) != 2 || p2[1].ID != ids[4] {
		t.Fatalf("page 2 = %v %v", p2, more)
	}
	if p, _, _ := s.ThreadMessagesPage(ctx, "beta", th.ID, 0, 3); len(p) != 0 {
		t.Fatal("another tenant's thread readable")
	}
	for _, c := range []struct {
		user, email string
		want        bool
	}{
		{"u-rec", "", true},                 // SentBy
		{"u-boss", "boss@acme.test", false}, // only in the Cc of inbound mail
		{"u-x", "x@acme.test", false},
		{"", "", false},
	} {
		got, err := s.ThreadInvolves(ctx, "acme", th.ID, c.user, c.email)
		if err != nil || got != c.want {
			t.Errorf("involves(%q,%q) = %v %v", c.user, c.email, got, err)
		}
	}
}
