package storetest

import (
	"bytes"
	"errors"
	"fmt"
	"slices"
	"time"

	"syncrelay/store"
)

var maintenanceTests = []test{
	{"CompactKeepsLiveBytes", testCompactKeepsLive},
	{"CollectOrphansKeepsCommitted", testCollectOrphansKeepsCommitted},
	{"Backup", testBackupSmoke},
}

// testCompactKeepsLive: compaction frees removed bytes and nothing else:
// every live message (small or large, inbound or quarantined) still reads
// back exactly, through its record's current locator.
func testCompactKeepsLive(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	want := map[uint64][]byte{}
	var removed []string
	for i := range 12 {
		size := 700 + 300*i
		if i == 5 {
			size = 1<<20 + 5
		}
		head, body := fmt.Sprintf("N: %d\r\n", i), pattern(size, fmt.Sprintf("c%02d", i))
		res := e.commit(reply(th.ID, fmt.Sprintf("c%02d@cand.test", i), "", rawOf(head, body)))
		if i%3 == 0 {
			removed = append(removed, e.message(tenantID, res.Ref.Message).Raw)
			e.must(e.b.RemoveMessage(e.ctx, tenantID, res.Ref.Message), "RemoveMessage")
			continue
		}
		want[res.Ref.Message] = []byte(head + body)
	}
	for range 2 { // a second pass finds nothing more to do and breaks nothing
		if _, err := e.b.Compact(e.ctx); err != nil {
			e.fatalf("Compact: %v", err)
		}
		for id, b := range want {
			e.mustRaw(e.b, e.message(tenantID, id).Raw, b)
		}
		for _, loc := range removed {
			if _, err := e.readRaw(e.b, loc); !errors.Is(err, store.ErrNotFound) {
				e.fatalf("removed bytes %s readable after Compact: %v", loc, err)
			}
		}
	}
	// The store takes new mail after compacting.
	res := e.commit(reply(th.ID, "after@cand.test", "", rawOf("", "after compaction\r\n")))
	e.mustRaw(e.b, e.message(tenantID, res.Ref.Message).Raw, []byte("after compaction\r\n"))
}

// testCollectOrphansKeepsCommitted: collecting orphans (bytes a crash left
// without a record) never touches committed bytes.
func testCollectOrphansKeepsCommitted(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	small := e.commit(reply(th.ID, "s@cand.test", "", rawOf("", "small\r\n")))
	large := e.commit(reply(th.ID, "l@cand.test", "", rawOf("", pattern(1<<20+100, "large"))))
	q := &store.Quarantined{Tenant: tenantID, Reason: "dkim_fail"}
	e.must(e.b.Quarantine(e.ctx, q, rawOf("", pattern(1<<20+100, "quarantined")), time.Hour), "Quarantine")
	if n, err := e.b.CollectOrphans(e.ctx); err != nil || n != 0 {
		e.fatalf("CollectOrphans on a clean store = %d %v, want 0", n, err)
	}
	e.mustRaw(e.b, e.message(tenantID, small.Ref.Message).Raw, []byte("small\r\n"))
	e.mustRaw(e.b, e.message(tenantID, large.Ref.Message).Raw, []byte(pattern(1<<20+100, "large")))
	e.mustRaw(e.b, q.Raw, []byte(pattern(1<<20+100, "quarantined")))
}

// testBackupSmoke: Backup writes a non-empty archive and describes it.
// (The archive format and restore are the backend's own: the bbolt
// package tests restore; PostgreSQL's backup is pg_dump, and its Backup
// reports errors.ErrUnsupported.)
func testBackupSmoke(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	e.commit(reply(th.ID, "r1@cand.test", "", rawOf("", "backed up\r\n")))
	var buf bytes.Buffer
	m, err := e.b.Backup(e.ctx, &buf)
	if errors.Is(err, errors.ErrUnsupported) {
		e.t.Skip("the backend has no Backup")
	}
	e.must(err, "Backup")
	if m == nil || buf.Len() == 0 {
		e.fatalf("Backup = manifest %+v, %d bytes", m, buf.Len())
	}
	if m.Tenants != 1 || m.Messages != 2 || m.CreatedAt.IsZero() || m.Format == 0 {
		e.fatalf("manifest = %+v, want 1 tenant and 2 messages", m)
	}
	// The store is still usable.
	e.commit(reply(th.ID, "r2@cand.test", "", rawOf("", "after the backup\r\n")))
}

var durabilityTests = []test{
	{"ReopenKeepsEverything", testReopenKeepsEverything},
	{"CountersFlushedAtClose", testCountersFlushedAtClose},
	{"LeaseSurvivesReopen", testLeaseSurvivesReopen},
	{"CrashKeepsCommitted", testCrashKeepsCommitted},
	{"ClosedRefusesWork", testClosedRefusesWork},
}

// testReopenKeepsEverything: what was committed before Close is there
// after reopening, bytes included, and the store goes on from there.
func testReopenKeepsEverything(e *env) {
	e.seed()
	th, sent := e.send(tenantID, "c-1", 0)
	body := pattern(5000, "durable")
	res := e.commit(reply(th.ID, "r1@cand.test", "rec@acme.test", rawOf("H: 1\r\n", body)))
	big := pattern(1<<20+10, "durable-large")
	resBig := e.commit(reply(th.ID, "r2@cand.test", "", rawOf("", big)))
	e.must(e.b.PutKV(e.ctx, "k/1", "v", time.Hour), "PutKV")
	e.must(e.b.PutGrant(e.ctx, &store.Grant{Tenant: tenantID, User: "u-rec", Provider: "google", Sealed: []byte("s")}), "PutGrant")
	removed := e.commit(reply(th.ID, "gone@cand.test", "", rawOf("", "removed\r\n")))
	e.must(e.b.RemoveMessage(e.ctx, tenantID, removed.Ref.Message), "RemoveMessage")

	e.reopen()
	if id, ok, _ := e.b.InboundTenant(e.ctx, inboundAt); !ok || id != tenantID {
		e.fatalf("tenant's address lost: %q %v", id, ok)
	}
	if u, err := e.b.UserByEmail(e.ctx, tenantID, "rec@acme.test"); err != nil || u.ID != "u-rec" {
		e.fatalf("user lost: %v %v", u, err)
	}
	if ref, ok, _ := e.b.LookupMsgID(e.ctx, tenantID, sent.InternetMessageID); !ok || ref.Message != sent.ID {
		e.fatalf("issued Message-ID lost")
	}
	if id, ok, _ := e.b.ThreadByConvIndex(e.ctx, tenantID, th.ConvIndex); !ok || id != th.ID {
		e.fatalf("conversation index lost")
	}
	e.mustRaw(e.b, e.message(tenantID, res.Ref.Message).Raw, []byte("H: 1\r\n"+body))
	e.mustRaw(e.b, e.message(tenantID, resBig.Ref.Message).Raw, []byte(big))
	var v string
	if err := e.b.GetKV(e.ctx, "k/1", &v); err != nil || v != "v" {
		e.fatalf("kv lost: %q %v", v, err)
	}
	if g, err := e.b.Grant(e.ctx, tenantID, "u-rec"); err != nil || g.Version != 1 {
		e.fatalf("grant lost: %+v %v", g, err)
	}
	if evs := e.events("message.received"); len(evs) != 3 {
		e.fatalf("%d message.received events after reopening, want 3", len(evs))
	}
	// Duplicates and removals are remembered.
	if again := e.commit(reply(th.ID, "r1@cand.test", "", nil)); again.Decision != store.Duplicate || again.Ref != res.Ref {
		e.fatalf("copy after reopening = %+v", again)
	}
	if again := e.commit(reply(th.ID, "gone@cand.test", "", rawOf("", "removed\r\n"))); !again.Removed {
		e.fatalf("removed message came back after reopening: %+v", again)
	}
	// New ids do not reuse old ones.
	next := e.commit(reply(th.ID, "r3@cand.test", "", rawOf("", "new\r\n")))
	if next.Ref.Message == res.Ref.Message || next.Ref.Message == resBig.Ref.Message || next.Ref.Message == removed.Ref.Message || next.Ref.Message == sent.ID {
		e.fatalf("a message id was reused after reopening: %d", next.Ref.Message)
	}
	e.mustRaw(e.b, e.message(tenantID, next.Ref.Message).Raw, []byte("new\r\n"))
}

// testCountersFlushedAtClose: Close flushes buffered counters.
func testCountersFlushedAtClose(e *env) {
	e.b.Count(tenantID, "discarded", "no_match")
	e.b.Count(tenantID, "discarded", "no_match")
	e.b.CountAuth(tenantID, true, false)
	e.reopen()
	c, last, err := e.b.Counts(e.ctx, tenantID, e.now().Add(-time.Hour))
	e.must(err, "Counts")
	if c["discarded/no_match"] != 2 || last.IsZero() {
		e.fatalf("counters after Close and reopen = %v (last %v)", c, last)
	}
}

// testLeaseSurvivesReopen: an event claimed before a restart stays leased
// and then comes back (nothing is delivered twice within a lease, nothing
// is lost).
func testLeaseSurvivesReopen(e *env) {
	e.enqueue(tenantID, "message.received", 1)
	now := e.now()
	if evs, _ := e.b.ClaimEvents(e.ctx, now, 10, time.Minute); len(evs) != 1 {
		e.fatalf("claim = %v", evs)
	}
	e.reopen()
	if evs, _ := e.b.ClaimEvents(e.ctx, now.Add(30*time.Second), 10, time.Minute); len(evs) != 0 {
		e.fatalf("claimed inside its lease after reopening: %v", seqsOf(evs))
	}
	evs, _ := e.b.ClaimEvents(e.ctx, now.Add(2*time.Minute), 10, time.Minute)
	if len(evs) != 1 || evs[0].Attempts != 2 {
		e.fatalf("after the lease = %+v", evs)
	}
}

// testCrashKeepsCommitted: once CommitInbound returned nil the message is
// durable: after a crash its record is there and its bytes hash to what
// was written (the kill -9 test of the binary is in test/crash).
func testCrashKeepsCommitted(e *env) {
	if e.inst.Crash == nil && e.inst.Reopen == nil {
		e.t.Skip("the backend can neither crash nor reopen")
	}
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	const n = 20
	res := make([]store.CommitResult, n)
	errs := make([]error, n)
	body := func(i int) string {
		if i == 7 {
			return pattern(1<<20+7, "crash-large")
		}
		return pattern(500+i*211, fmt.Sprintf("crash%02d", i))
	}
	parallel(n, func(i int) {
		res[i], errs[i] = e.b.CommitInbound(e.ctx, reply(th.ID, fmt.Sprintf("k%02d@cand.test", i), "", rawOf("H: 1\r\n", body(i))))
	})
	for i, err := range errs {
		e.must(err, fmt.Sprintf("commit %d", i))
	}
	if e.inst.Crash != nil {
		e.crash()
	} else {
		e.reopen()
	}
	for i := range n {
		m := e.message(tenantID, res[i].Ref.Message)
		if m.InternetMessageID != fmt.Sprintf("k%02d@cand.test", i) {
			e.fatalf("message %d after the crash = %+v", i, m)
		}
		e.mustRaw(e.b, m.Raw, []byte("H: 1\r\n"+body(i)))
	}
	if msgs, _ := e.b.ThreadMessages(e.ctx, tenantID, th.ID); len(msgs) != n+1 {
		e.fatalf("thread has %d messages after the crash, want %d", len(msgs), n+1)
	}
	// The store goes on: later commits are durable too.
	after := e.commit(reply(th.ID, "after@cand.test", "", rawOf("", "after the crash\r\n")))
	e.mustRaw(e.b, e.message(tenantID, after.Ref.Message).Raw, []byte("after the crash\r\n"))
}

// testClosedRefusesWork: after Close, operations fail promptly (nothing
// hangs), and a commit says ErrClosed, so the SMTP session answers 4xx
// and the sender retries.
func testClosedRefusesWork(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	e.close()
	for i := range 20 {
		e.within(5*time.Second, "CommitInbound after Close", func() {
			_, err := e.b.CommitInbound(e.ctx, reply(th.ID, fmt.Sprintf("late%d@cand.test", i), "", rawOf("", "late\r\n")))
			if !errors.Is(err, store.ErrClosed) {
				e.t.Errorf("CommitInbound after Close = %v, want ErrClosed", err)
			}
		})
		e.within(5*time.Second, "Enqueue after Close", func() {
			if err := e.b.Enqueue(e.ctx, tenantID, "x", nil); !errors.Is(err, store.ErrClosed) {
				e.t.Errorf("Enqueue after Close = %v, want ErrClosed", err)
			}
		})
	}
	e.within(5*time.Second, "other operations after Close", func() {
		for _, c := range []struct {
			name string
			err  error
		}{
			{"CreateTenant", e.b.CreateTenant(e.ctx, &store.Tenant{ID: "late", InboundAddress: "late-1@relay.test"})},
			{"PutKV", e.b.PutKV(e.ctx, "k", 1, 0)},
			{"RemoveMessage", e.b.RemoveMessage(e.ctx, tenantID, 1)},
		} {
			if c.err == nil {
				e.t.Errorf("%s after Close succeeded", c.name)
			}
		}
		if _, err := e.b.Tenant(e.ctx, tenantID); err == nil {
			e.t.Errorf("Tenant after Close succeeded")
		}
	})
}

var multiNodeTests = []test{
	{"TenantVisibleOnPeer", testPeerTenant},
	{"SameCopyOnTwoNodes", testPeerSameCopy},
	{"SingleUseAcrossNodes", testPeerSingleUse},
}

// testPeerTenant: a tenant created on one node is accepted on every node
// within a second, even by a node that looked its address up before
// (SPEC §11).
func testPeerTenant(e *env) {
	p := e.peer()
	const addr = "late-0123456789abcdef@relay.test"
	if _, ok, err := p.InboundTenant(e.ctx, addr); ok || err != nil {
		e.fatalf("peer before the tenant exists: %v %v", ok, err)
	}
	e.mkTenant("late", addr)
	deadline := time.Now().Add(time.Second)
	for {
		id, ok, err := p.InboundTenant(e.ctx, addr)
		if err == nil && ok && id == "late" {
			return
		}
		if time.Now().After(deadline) {
			e.fatalf("peer still answers %q %v %v a second after CreateTenant", id, ok, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testPeerSameCopy: the same forwarded copy reaching two nodes at once is
// stored once (SPEC §11).
func testPeerSameCopy(e *env) {
	p := e.peer()
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	nodes := []Backend{e.b, p}
	const n = 8
	res := make([]store.CommitResult, n)
	errs := make([]error, n)
	parallel(n, func(i int) {
		res[i], errs[i] = nodes[i%2].CommitInbound(e.ctx, reply(th.ID, "both@cand.test", fmt.Sprintf("b%d@acme.test", i), rawOf("", "copy\r\n")))
	})
	stored := 0
	for i := range n {
		e.must(errs[i], fmt.Sprintf("commit %d", i))
		if res[i].Ref != res[0].Ref {
			e.fatalf("commit %d: ref %+v, commit 0: %+v", i, res[i].Ref, res[0].Ref)
		}
		if res[i].Decision == store.Stored {
			stored++
		}
	}
	if stored != 1 {
		e.fatalf("%d of %d copies stored across two nodes, want 1", stored, n)
	}
	m, err := p.Message(e.ctx, tenantID, res[0].Ref.Message)
	e.must(err, "Message on the peer")
	if len(m.Mailboxes) != n {
		e.fatalf("mailboxes = %v, want %d", m.Mailboxes, n)
	}
	e.mustRaw(p, m.Raw, []byte("copy\r\n"))
}

// testPeerSingleUse: OAuth state taken on one node is gone on the other;
// an idempotency key claimed on one is taken on the other.
func testPeerSingleUse(e *env) {
	p := e.peer()
	e.must(e.b.CreateKV(e.ctx, "oauth_state/x", "v", time.Hour), "CreateKV")
	var v string
	e.must(p.TakeKV(e.ctx, "oauth_state/x", &v), "TakeKV on the peer")
	if err := e.b.TakeKV(e.ctx, "oauth_state/x", &v); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("second TakeKV on the first node = %v, want ErrNotFound", err)
	}
	e.must(p.CreateKV(e.ctx, "idem/acme/k", "x", time.Hour), "CreateKV on the peer")
	if err := e.b.CreateKV(e.ctx, "idem/acme/k", "y", time.Hour); !errors.Is(err, store.ErrExists) {
		e.fatalf("CreateKV of a key claimed on the peer = %v, want ErrExists", err)
	}
	nodes := []Backend{e.b, p}
	var got [][]uint64
	e.enqueue(tenantID, "message.received", 10)
	for _, nd := range nodes {
		evs, err := nd.ClaimEvents(e.ctx, e.now().Add(time.Second), 10, time.Hour)
		e.must(err, "ClaimEvents")
		got = append(got, seqsOf(evs))
	}
	if len(got[0]) != 10 || len(got[1]) != 0 || slices.ContainsFunc(got[1], func(s uint64) bool { return slices.Contains(got[0], s) }) {
		e.fatalf("claims on two nodes: %v and %v", got[0], got[1])
	}
}
