package storetest

import (
	"fmt"
	"time"

	"syncrelay/store"
)

var statsTests = []test{
	{"CountsAfterFlush", testCountsAfterFlush},
	{"TenantActivity", testTenantActivity},
	{"CommitStats", testCommitStats},
}

// testCommitStats: CommitStats counts the group commits of this process:
// concurrent inbound commits are carried by at least one batch and at
// most one each, and the time spent committing them grows.
func testCommitStats(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	before := e.b.CommitStats()
	const n = 8
	parallel(n, func(i int) {
		e.commit(reply(th.ID, fmt.Sprintf("stats%d@cand.test", i), "rec@acme.test", rawOf("", "Hi\r\n")))
	})
	after := e.b.CommitStats()
	batches, reqs := after.Batches-before.Batches, after.Requests-before.Requests
	if reqs < n || batches < 1 || batches > reqs || after.Busy <= before.Busy {
		e.fatalf("CommitStats moved from %+v to %+v over %d concurrent commits", before, after, n)
	}
}

// testCountsAfterFlush: Count and CountAuth may buffer; once
// FlushCounters returns, every reader sees the counts.
func testCountsAfterFlush(e *env) {
	since := e.now().Add(-time.Hour)
	if c, last, err := e.b.Counts(e.ctx, tenantID, since); err != nil || len(c) != 0 || !last.IsZero() {
		e.fatalf("fresh Counts = %v %v %v", c, last, err)
	}
	for range 3 {
		e.b.Count(tenantID, "discarded", "no_match")
	}
	e.b.Count(tenantID, "stored", "token")
	e.b.Count("beta", "discarded", "no_match")
	e.must(e.b.FlushCounters(e.ctx), "FlushCounters")
	c, last, err := e.b.Counts(e.ctx, tenantID, since)
	e.must(err, "Counts")
	if len(c) != 2 || c["discarded/no_match"] != 3 || c["stored/token"] != 1 {
		e.fatalf("Counts = %v", c)
	}
	if last.IsZero() {
		e.fatalf("Counts: no time of the last forwarded message")
	}
	// Later counts add to flushed ones.
	e.b.Count(tenantID, "discarded", "no_match")
	e.must(e.b.FlushCounters(e.ctx), "FlushCounters")
	e.must(e.b.FlushCounters(e.ctx), "FlushCounters with nothing buffered")
	if c, _, _ := e.b.Counts(e.ctx, tenantID, since); c["discarded/no_match"] != 4 {
		e.fatalf("Counts after a second flush = %v", c)
	}
	if c, _, _ := e.b.Counts(e.ctx, "beta", since); c["discarded/no_match"] != 1 || len(c) != 1 {
		e.fatalf("Counts(beta) = %v", c)
	}
	if c, _, _ := e.b.Counts(e.ctx, "gamma", since); len(c) != 0 {
		e.fatalf("Counts(gamma) = %v", c)
	}
}

// testTenantActivity: the forwarding health of a tenant: decision and
// authentication counters of the last hour and day (hour granularity),
// the last forwarded message, and the messages sent through the API.
func testTenantActivity(e *env) {
	e.needClock()
	e.seed()
	start := e.now()
	a, err := e.b.TenantActivity(e.ctx, tenantID, start, start.Add(-24*time.Hour))
	e.must(err, "TenantActivity")
	if !a.LastForwarded.IsZero() || a.LastDay.Total != 0 || a.Sent != 0 {
		e.fatalf("fresh tenant: %+v", a)
	}
	// Three hours before now: two discards and a send.
	e.b.Count(tenantID, "discarded", "no_match")
	e.b.Count(tenantID, "discarded", "no_match")
	_, early := e.send(tenantID, "c-1", 0)
	_, err = e.b.UpdateMessage(e.ctx, tenantID, early.ID, nil, func(m *store.Message) error { m.Status = "sent"; return nil })
	e.must(err, "UpdateMessage")
	e.must(e.b.FlushCounters(e.ctx), "FlushCounters")
	e.advance(3 * time.Hour)
	now := e.now()
	// Now: a stored reply with DKIM and ARC passing, one with neither,
	// and a DKIM rejection; a send that failed and one still sending.
	e.b.Count(tenantID, "stored", "token")
	e.b.CountAuth(tenantID, true, true)
	e.b.Count(tenantID, "stored", "learned_id")
	e.b.CountAuth(tenantID, false, false)
	e.b.Count(tenantID, "rejected", "dkim_fail")
	e.b.CountAuth(tenantID, false, false)
	_, failed := e.send(tenantID, "c-1", 0)
	_, err = e.b.UpdateMessage(e.ctx, tenantID, failed.ID, nil, func(m *store.Message) error { m.Status = "failed"; return nil })
	e.must(err, "UpdateMessage")
	_, sending := e.send(tenantID, "c-2", 0)
	e.b.Count("beta", "discarded", "no_match")
	e.must(e.b.FlushCounters(e.ctx), "FlushCounters")

	a, err = e.b.TenantActivity(e.ctx, tenantID, now, now.Add(-24*time.Hour))
	e.must(err, "TenantActivity")
	if !a.LastForwarded.Equal(now) {
		e.fatalf("LastForwarded = %v, want %v", a.LastForwarded, now)
	}
	d := a.LastDay
	if d.Total != 5 || d.Decisions["discarded"] != 2 || d.Decisions["stored"] != 2 || d.Decisions["rejected"] != 1 ||
		d.Reasons["stored/token"] != 1 || d.Reasons["discarded/no_match"] != 2 || len(d.Decisions) != 3 {
		e.fatalf("LastDay = %+v", d)
	}
	if d.AuthChecked != 3 || d.AuthDKIMPass != 1 || d.AuthARCPass != 1 || d.AuthPassed != 1 {
		e.fatalf("LastDay auth = %+v", d)
	}
	h := a.LastHour
	if h.Total != 3 || h.Decisions["discarded"] != 0 || h.AuthChecked != 3 || !h.Since.Equal(now.Add(-time.Hour).Truncate(time.Hour)) {
		e.fatalf("LastHour = %+v", h)
	}
	// Sent: not failed, recorded since sentSince ("sending" counts: the
	// provider was called).
	if a.Sent != 2 || !a.LastSent.Equal(e.message(tenantID, sending.ID).Received) {
		e.fatalf("Sent = %d, LastSent %v", a.Sent, a.LastSent)
	}
	if a, _ := e.b.TenantActivity(e.ctx, tenantID, now, now.Add(-time.Hour)); a.Sent != 1 {
		e.fatalf("Sent within the last hour = %d, want 1", a.Sent)
	}
	if b, _ := e.b.TenantActivity(e.ctx, "beta", now, now.Add(-24*time.Hour)); b.LastDay.Total != 1 || b.Sent != 0 {
		e.fatalf("beta's activity = %+v", b)
	}
}
