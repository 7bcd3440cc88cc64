package bolt

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func TestTenantActivity(t *testing.T) {
	t.Parallel()
	clock := &fakeClock{t: time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)}
	s, err := Open(t.TempDir(), Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	seed(t, s)
	ctx := context.Background()
	now := clock.Now()

	// Nothing yet.
	a, err := s.TenantActivity(ctx, "acme", now, now.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if !a.LastForwarded.IsZero() || a.LastDay.Total != 0 || a.Sent != 0 {
		t.Fatalf("fresh tenant: %+v", a)
	}

	// Three hours ago: two discards. Now: a stored reply with DKIM and
	// ARC passing, one with neither, and a DKIM rejection.
	clock.Set(now.Add(-3 * time.Hour))
	s.Count("acme", "discarded", "no_match")
	s.Count("acme", "discarded", "no_match")
	s.Count("other", "discarded", "no_match")
	if err := s.flushCounters(); err != nil { // some persisted, some still buffered
		t.Fatal(err)
	}
	clock.Set(now)
	s.Count("acme", "stored", "token")
	s.CountAuth("acme", true, true)
	s.Count("acme", "stored", "learned_id")
	s.CountAuth("acme", false, false)
	s.Count("acme", "rejected", "dkim_fail")
	s.CountAuth("acme", false, false)

	// Sent through the API: two sent, one failed, one old one (outside
	// the window), plus a forwarded outbound copy (no send status).
	mint := func(th, m uint64) (string, string) { return fmt.Sprintf("sr.x%d.%d@relay.test", th, m), "" }
	send := func(at time.Time, status string) {
		clock.Set(at)
		th := Thread{Tenant: "acme", Candidate: "c-1", CreatedBy: "u-rec"}
		m := Message{From: "rec@acme.test", SentBy: "u-rec", Status: status}
		if err := s.CreateOutbound(ctx, &th, &m, mint); err != nil {
			t.Fatal(err)
		}
	}
	send(now.Add(-30*time.Hour), "sent")
	send(now.Add(-2*time.Hour), "sent")
	send(now.Add(-90*time.Minute), "failed")
	send(now.Add(-time.Minute), "sent")
	clock.Set(now)

	a, err = s.TenantActivity(ctx, "acme", now, now.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if !a.LastForwarded.Equal(now) {
		t.Fatalf("last forwarded %v, want %v", a.LastForwarded, now)
	}
	d := a.LastDay
	if d.Total != 5 || d.Decisions["discarded"] != 2 || d.Decisions["stored"] != 2 || d.Decisions["rejected"] != 1 ||
		d.Reasons["stored/token"] != 1 || d.Reasons["discarded/no_match"] != 2 {
		t.Fatalf("last day %+v", d)
	}
	if d.AuthChecked != 3 || d.AuthDKIMPass != 1 || d.AuthARCPass != 1 || d.AuthPassed != 1 {
		t.Fatalf("auth %+v", d)
	}
	if _, ok := d.Decisions[authCounter]; ok {
		t.Fatal("the auth pseudo-decision leaked into decisions")
	}
	h := a.LastHour
	if h.Total != 3 || h.Decisions["discarded"] != 0 || !h.Since.Equal(time.Date(2025, 3, 10, 11, 0, 0, 0, time.UTC)) {
		t.Fatalf("last hour %+v", h)
	}
	if a.Sent != 2 || !a.LastSent.Equal(now.Add(-time.Minute)) {
		t.Fatalf("sent %d, last %v", a.Sent, a.LastSent)
	}

	// Another tenant's activity is its own.
	b, err := s.TenantActivity(ctx, "other", now, now.Add(-24*time.Hour))
	if err != nil || b.LastDay.Total != 1 || b.Sent != 0 {
		t.Fatalf("other: %+v %v", b, err)
	}
	// Counters survive a restart (flushed at Close).
	dir := s.Dir()
	s.Close()
	s2, err := Open(dir, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	a2, err := s2.TenantActivity(ctx, "acme", now, now.Add(-24*time.Hour))
	if err != nil || a2.LastDay.Total != 5 || a2.LastDay.AuthChecked != 3 || !a2.LastForwarded.Equal(now) {
		t.Fatalf("after restart: %+v %v", a2, err)
	}
}
