package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"syncrelay/internal/pgtest"
	"syncrelay/store"
)

// node is one store on a shared database whose statements are counted.
type node struct {
	*Store
	mu   sync.Mutex
	sqls []string
}

// openNodes opens n stores on one fresh database with a cache TTL far
// longer than any test: whatever they see of each other's changes, they
// see through LISTEN/NOTIFY.
func openNodes(t *testing.T, n int) []*node {
	t.Helper()
	return openNodesOn(t, pgtest.DSN(t), n, 0)
}

// openNodesOn is openNodes on the database at dsn, with the stores reading
// key_log every catchUp (keyCatchUp when 0).
func openNodesOn(t *testing.T, dsn string, n int, catchUp time.Duration) []*node {
	t.Helper()
	var out []*node
	for i := range n {
		nd := &node{}
		s, err := Open(context.Background(), dsn, Options{Node: fmt.Sprintf("node%d", i), CacheTTL: time.Hour,
			trace: nd.trace, catchUp: catchUp})
		if err != nil {
			t.Fatal(err)
		}
		nd.Store = s
		t.Cleanup(func() { s.Close() })
		waitReady(t, s)
		out = append(out, nd)
	}
	return out
}

func waitReady(t *testing.T, s *Store) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !s.cache.ready.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the cache listener is not ready after 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// within polls cond until it holds or d has passed.
func within(t *testing.T, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		ok, got := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v (last: %s)", what, d, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// countKey marks the context of the calls counted measures.
type countKey struct{}

// trace counts the statements sent under a counted call's context, not
// the node's background work (counter flushes, the key_log catch-up,
// the listener), which may run at any moment of the window.
func (n *node) trace(ctx context.Context, sql string) {
	if ctx.Value(countKey{}) != n {
		return
	}
	n.mu.Lock()
	n.sqls = append(n.sqls, sql)
	n.mu.Unlock()
}

// counted runs fn with a marked context and returns how many statements
// it sent, with their text.
func (n *node) counted(fn func(ctx context.Context)) (int, []string) {
	n.mu.Lock()
	n.sqls = nil
	n.mu.Unlock()
	fn(context.WithValue(context.Background(), countKey{}, n))
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.sqls), n.sqls
}

// TestCachesFollowOtherNodes: node B caches tenants, inbound addresses and
// users (found or not) for an hour, yet sees node A's changes within a
// second: the tables' triggers NOTIFY every node.
func TestCachesFollowOtherNodes(t *testing.T) {
	// Not parallel: it counts statements its cache saves, and the schemas
	// of pgtest.DSN share one database, so one NOTIFY channel: another
	// test's notices would empty the cache.
	nodes := openNodes(t, 2)
	a, b := nodes[0], nodes[1]
	ctx := context.Background()
	const addr = "late-x@relay.test"

	// B learns that nothing is there, and caches it.
	if _, ok, err := b.InboundTenant(ctx, addr); ok || err != nil {
		t.Fatalf("before: %v %v", ok, err)
	}
	if _, err := b.Tenant(ctx, "late"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Tenant before: %v", err)
	}
	if q, sqls := b.counted(func(ctx context.Context) { b.InboundTenant(ctx, addr) }); q != 0 {
		t.Errorf("a repeated unknown address cost %d statements, want 0 (cached): %q", q, sqls)
	}

	if err := a.CreateTenant(ctx, &store.Tenant{ID: "late", InboundAddress: addr, DKIMPolicy: store.PolicyRequire}); err != nil {
		t.Fatal(err)
	}
	within(t, time.Second, "tenant created on A accepted on B", func() (bool, string) {
		id, ok, err := b.InboundTenant(ctx, addr)
		return ok && id == "late", fmt.Sprint(id, ok, err)
	})
	within(t, time.Second, "tenant created on A read on B", func() (bool, string) {
		ten, err := b.Tenant(ctx, "late")
		return err == nil, fmt.Sprint(ten, err)
	})
	// Cached now: the next read costs nothing, and a change on A shows.
	if q, sqls := b.counted(func(ctx context.Context) { b.Tenant(ctx, "late") }); q != 0 {
		t.Errorf("a repeated tenant read cost %d statements, want 0: %q", q, sqls)
	}
	if _, err := a.UpdateTenant(ctx, "late", func(t *store.Tenant) error { t.DKIMPolicy = store.PolicyQuarantine; return nil }); err != nil {
		t.Fatal(err)
	}
	within(t, time.Second, "tenant updated on A read on B", func() (bool, string) {
		ten, err := b.Tenant(ctx, "late")
		return err == nil && ten.DKIMPolicy == store.PolicyQuarantine, fmt.Sprint(ten, err)
	})

	// Users: From of every kept message is looked up.
	if _, err := b.UserByEmail(ctx, "late", "Ann@late.test"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("user before: %v", err)
	}
	if err := a.CreateUser(ctx, &store.User{Tenant: "late", ID: "ann", Email: "ann@late.test", Role: store.RoleTeamMember}); err != nil {
		t.Fatal(err)
	}
	within(t, time.Second, "user created on A found on B", func() (bool, string) {
		u, err := b.UserByEmail(ctx, "late", "ANN@late.test")
		return err == nil && u.ID == "ann" && u.Tenant == "late", fmt.Sprint(u, err)
	})
}

// TestUnknownIDsCostNoQuery: Message-IDs and duplicate keys no node has
// stored are answered from the node's filter, without a statement; known
// ones are found, on the committing node at once and on another within a
// second.
func TestUnknownIDsCostNoQuery(t *testing.T) {
	nodes := openNodes(t, 2)
	a, b := nodes[0], nodes[1]
	ctx := context.Background()
	th, out := fixture(t, a.Store)

	var refs []store.Ref
	var err error
	unknown := []string{"lunch-1@elsewhere.test", "lunch-2@elsewhere.test"}
	for _, n := range nodes {
		if q, sqls := n.counted(func(ctx context.Context) { refs, err = n.LookupMsgIDs(ctx, "acme", unknown) }); q != 0 || err != nil || len(refs) != 0 {
			t.Errorf("%s: LookupMsgIDs(unknown) = %v %v with %d statements, want none and 0: %q", n.node, refs, err, q, sqls)
		}
		if q, sqls := n.counted(func(ctx context.Context) { _, _, err = n.LookupCopy(ctx, "acme", th.ID, "new@cand.test", "") }); q != 0 || err != nil {
			t.Errorf("%s: LookupCopy(unknown) cost %d statements (%v), want 0: %q", n.node, q, err, sqls)
		}
	}
	// The issued id was stored before B started listening... and after.
	within(t, time.Second, "issued id on B", func() (bool, string) {
		refs, err := b.LookupMsgIDs(ctx, "acme", []string{out.InternetMessageID})
		return err == nil && len(refs) == 1 && refs[0].Message == out.ID, fmt.Sprint(refs, err)
	})

	for i, n := range []*node{a, b, a} {
		id := fmt.Sprintf("reply%d@cand.test", i)
		in := &store.Incoming{Message: store.Message{Tenant: "acme", Thread: th.ID, Direction: store.Inbound,
			InternetMessageID: id, From: "carl@cand.test"}, Raw: raw("Hello"), Mailbox: "rita@acme.test"}
		res, err := n.CommitInbound(ctx, in)
		if err != nil || res.Decision != store.Stored {
			t.Fatalf("commit %d: %+v %v", i, res, err)
		}
		// The committing node finds it at once: it noted the keys before
		// committing, it does not wait for its own notice.
		refs, err := n.LookupMsgIDs(ctx, "acme", []string{"x@y.test", id})
		if err != nil || len(refs) != 1 || refs[0] != res.Ref {
			t.Fatalf("%s right after its commit: %v %v", n.node, refs, err)
		}
		if ref, dup, err := n.LookupCopy(ctx, "acme", th.ID, id, ""); err != nil || !dup || ref != res.Ref {
			t.Fatalf("%s LookupCopy right after its commit: %v %v %v", n.node, ref, dup, err)
		}
		other := nodes[(i+1)%2]
		if n == b {
			other = a
		}
		within(t, time.Second, "the other node finds "+id, func() (bool, string) {
			refs, err := other.LookupMsgIDs(ctx, "acme", []string{id})
			return err == nil && len(refs) == 1 && refs[0] == res.Ref, fmt.Sprint(refs, err)
		})
	}
	// A different tenant's ids are not this tenant's.
	if q, sqls := b.counted(func(ctx context.Context) { refs, err = b.LookupMsgIDs(ctx, "other", []string{"reply0@cand.test"}) }); q != 0 || len(refs) != 0 {
		t.Errorf("another tenant's id: %v with %d statements: %q", refs, q, sqls)
	}
}

// TestListenerReconnects: the listener's backend is terminated; the node
// answers from the database meanwhile, reconnects by itself, and then
// hears of changes again (tenants and keys).
func TestListenerReconnects(t *testing.T) {
	nodes := openNodes(t, 2)
	a, b := nodes[0], nodes[1]
	ctx := context.Background()
	th, _ := fixture(t, a.Store)

	var killed int
	if err := a.pool.QueryRow(ctx, `WITH l AS MATERIALIZED (SELECT pid FROM pg_stat_activity WHERE application_name = $1)
		SELECT pid FROM l WHERE pg_terminate_backend(pid)`, "syncrelay-listener node1").Scan(&killed); err != nil {
		t.Fatalf("terminate B's listener: %v", err)
	}
	// Whatever B answers meanwhile is right (from the database).
	const addr = "after-kill@relay.test"
	if _, ok, err := b.InboundTenant(ctx, addr); ok || err != nil {
		t.Fatalf("before: %v %v", ok, err)
	}
	// pg_terminate_backend only signals: until the killed backend has gone
	// and B has noticed, the old listener still shows and B is still ready.
	// Wait for a listener backend other than the killed one.
	within(t, 5*time.Second, "B's listener back", func() (bool, string) {
		var n, fresh int
		a.pool.QueryRow(ctx, "SELECT count(*), count(*) FILTER (WHERE pid <> $2) FROM pg_stat_activity WHERE application_name = $1",
			"syncrelay-listener node1", killed).Scan(&n, &fresh)
		return n == 1 && fresh == 1 && b.cache.ready.Load(), fmt.Sprintf("%d backends (%d new), ready %v", n, fresh, b.cache.ready.Load())
	})
	// Cached again (unknown), then created on A: B hears of it.
	if _, ok, err := b.InboundTenant(ctx, addr); ok || err != nil {
		t.Fatalf("after reconnect: %v %v", ok, err)
	}
	if q, sqls := b.counted(func(ctx context.Context) { b.InboundTenant(ctx, addr) }); q != 0 {
		t.Errorf("after reconnect an unknown address cost %d statements, want 0 (cached): %q", q, sqls)
	}
	if err := a.CreateTenant(ctx, &store.Tenant{ID: "after", InboundAddress: addr}); err != nil {
		t.Fatal(err)
	}
	within(t, time.Second, "tenant created on A after B's reconnect", func() (bool, string) {
		id, ok, err := b.InboundTenant(ctx, addr)
		return ok && id == "after", fmt.Sprint(id, ok, err)
	})
	// Keys committed on A after the reconnect reach B's filter.
	in := &store.Incoming{Message: store.Message{Tenant: "acme", Thread: th.ID, Direction: store.Inbound,
		InternetMessageID: "late-reply@cand.test", From: "carl@cand.test"}, Raw: raw("Hi"), Mailbox: "rita@acme.test"}
	res, err := a.CommitInbound(ctx, in)
	if err != nil {
		t.Fatal(err)
	}
	within(t, time.Second, "key committed on A after B's reconnect", func() (bool, string) {
		refs, err := b.LookupMsgIDs(ctx, "acme", []string{"late-reply@cand.test"})
		return err == nil && len(refs) == 1 && refs[0] == res.Ref, fmt.Sprint(refs, err)
	})
	if q, sqls := b.counted(func(ctx context.Context) { b.LookupMsgIDs(ctx, "acme", []string{"nothing@x.test"}) }); q != 0 {
		t.Errorf("unknown id after reconnect cost %d statements: %q", q, sqls)
	}
}

// TestFilterGrows: a filter past its size is rebuilt larger, and keeps
// every key.
func TestFilterGrows(t *testing.T) {
	f := newKeyFilter(10)
	var keys []string
	for i := range minFilterCap + 10 {
		k := fmt.Sprintf("id%d@x", i)
		keys = append(keys, k)
		f.add("t", k)
	}
	if !f.full() {
		t.Error("not full past its capacity")
	}
	for _, k := range keys {
		if !f.mayContain("t", k) {
			t.Fatalf("lost %s", k)
		}
	}
	fp := 0
	for i := range 100000 {
		if f.mayContain("t", "other"+strings.Repeat("x", i%7)+fmt.Sprint(i)) {
			fp++
		}
	}
	if fp > 200 {
		t.Errorf("%d false positives in 100000 at capacity, want < 0.2%%", fp)
	}
}

// TestKeyPayloads: keys of any bytes survive the notice's encoding, and
// the payloads stay under PostgreSQL's limit.
func TestKeyPayloads(t *testing.T) {
	tests := []struct {
		name string
		keys []tenantKey
		want int // payloads
	}{
		{"one", []tenantKey{{"acme", "a@b"}}, 1},
		{"separators in ids", []tenantKey{{"ac,me", "1,2,x\t\n@b"}, {"", "k"}}, 1},
		{"many", func() (ks []tenantKey) {
			for i := range 400 {
				ks = append(ks, tenantKey{"acme", fmt.Sprintf("<%d.%s@mail.example>", i, strings.Repeat("z", 40))})
			}
			return
		}(), 4},
		{"too long", []tenantKey{{"acme", strings.Repeat("x", 8000)}, {"acme", "short@x"}}, 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ps := keyPayloads(tc.keys)
			if len(ps) != tc.want {
				t.Errorf("%d payloads, want %d", len(ps), tc.want)
			}
			var got []tenantKey
			rebuild := false
			for _, p := range ps {
				if len(p) > maxPayload {
					t.Errorf("payload of %d bytes", len(p))
				}
				if p == "r" {
					rebuild = true
					continue
				}
				if !parseKeys(p[1:], func(tn, k string) { got = append(got, tenantKey{tn, k}) }) {
					t.Errorf("payload %.40q does not parse", p)
				}
			}
			var want []tenantKey
			for _, k := range tc.keys {
				if len(k.key) < maxPayload-10 {
					want = append(want, k)
				}
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("decoded %v, want %v", got, want)
			}
			if rebuild != (tc.name == "too long") {
				t.Errorf("rebuild = %v", rebuild)
			}
		})
	}
	if parseKeys("3,4,ab", func(string, string) {}) {
		t.Error("a truncated entry parsed")
	}
}

// TestCacheTTLWithoutNotice: a change no notice announces (the trigger
// disabled, as if the notice were lost) is served stale from the cache,
// and shows on the other node once the TTL has passed.
func TestCacheTTLWithoutNotice(t *testing.T) {
	// Parallel, so on a database of its own (DSN's schemas share one
	// database, so one NOTIFY channel: another test's notices would empty
	// B's cache or make it rebuild).
	t.Parallel()
	dsn := pgtest.DSNFrom(t, "migrated", migrated)
	ctx := context.Background()
	const ttl = 1500 * time.Millisecond
	var nodes []*Store
	for i := range 2 {
		s, err := Open(ctx, dsn, Options{Node: fmt.Sprintf("node%d", i), CacheTTL: ttl})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		waitReady(t, s)
		nodes = append(nodes, s)
	}
	a, b := nodes[0], nodes[1]
	if _, err := a.pool.Exec(ctx, "ALTER TABLE tenants DISABLE TRIGGER tenants_notify"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before the database is recycled
		if _, err := a.pool.Exec(context.Background(), "ALTER TABLE tenants ENABLE TRIGGER tenants_notify"); err != nil {
			t.Error(err)
		}
	})
	if err := a.CreateTenant(ctx, &store.Tenant{ID: "quiet", InboundAddress: "quiet@relay.test", Name: "Before"}); err != nil {
		t.Fatal(err)
	}
	cached := time.Now()
	if ten, err := b.Tenant(ctx, "quiet"); err != nil || ten.Name != "Before" {
		t.Fatalf("B first read: %v %v", ten, err)
	}
	if _, err := a.UpdateTenant(ctx, "quiet", func(t *store.Tenant) error { t.Name = "After"; return nil }); err != nil {
		t.Fatal(err)
	}
	ten, err := b.Tenant(ctx, "quiet")
	if err != nil {
		t.Fatal(err)
	}
	if ten.Name != "Before" && time.Since(cached) < ttl {
		t.Errorf("B saw the unannounced change at once (%q): nothing was cached", ten.Name)
	}
	// A deadline of its own, not a multiple of the short TTL: a loaded
	// machine may take a while to poll.
	within(t, 6*time.Second, "unannounced change on B after the TTL", func() (bool, string) {
		ten, err := b.Tenant(ctx, "quiet")
		return err == nil && ten.Name == "After", fmt.Sprint(ten, err)
	})
}

// TestLostNoticeCaughtUp: keys committed with their key_log row but whose
// notice never went out (the committing node died between its COMMIT and
// the notice) reach the other node's filter by the key_log catch-up within
// a few keyCatchUp; also a key whose transaction was already open during
// an earlier catch-up read (its xid in that read's xip list).
func TestLostNoticeCaughtUp(t *testing.T) {
	t.Parallel() // on a database of its own (see TestCacheTTLWithoutNotice); it waits for catch-up reads
	// Catch-up reads at a test's pace (they are what is tested, not their
	// production interval); the deadline below stays 4 production ones.
	const catchUp = 250 * time.Millisecond
	nodes := openNodesOn(t, pgtest.DSNFrom(t, "migrated", migrated), 2, catchUp)
	a, b := nodes[0], nodes[1]
	ctx := context.Background()
	th, _ := fixture(t, a.Store)

	// commitSilently inserts id as a commit does, without the notice.
	commitSilently := func(tx pgx.Tx, id string, msg int64) {
		t.Helper()
		if _, err := tx.Exec(ctx, "INSERT INTO msgids (tenant, msgid, thread, message) VALUES ('acme', $1, $2, $3)", id, th.ID, msg); err != nil {
			t.Fatal(err)
		}
		if _, err := tx.Exec(ctx, keyLogSQL, keyPayloads([]tenantKey{{"acme", id}})); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	// A transaction with an xid, open across B's catch-up reads.
	early, err := a.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Rollback(ctx)
	if _, err := early.Exec(ctx, "SELECT pg_current_xact_id()"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * catchUp)
	tx, err := a.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	commitSilently(tx, "lost-1@cand.test", 999001)
	time.Sleep(2 * catchUp)
	commitSilently(early, "lost-2@cand.test", 999002)

	for _, id := range []string{"lost-1@cand.test", "lost-2@cand.test"} {
		within(t, 4*keyCatchUp, "B finds "+id+" without its notice", func() (bool, string) {
			refs, err := b.LookupMsgIDs(ctx, "acme", []string{id})
			return err == nil && len(refs) == 1, fmt.Sprint(refs, err)
		})
	}
}

// TestNoticeFailsAfterCommit: when the notices sent after a group commit
// fail, the commit is still reported (its messages are stored: a retry
// or an error would answer 451 for stored mail), and the other node gets
// the keys from key_log.
func TestNoticeFailsAfterCommit(t *testing.T) {
	// Not parallel: it changes afterCommitNotifySQL, which every store in
	// the package reads (sequential tests end before parallel ones start).
	nodes := openNodes(t, 2)
	a, b := nodes[0], nodes[1]
	ctx := context.Background()
	th, _ := fixture(t, a.Store)

	// Fails when run (a payload past 8000 bytes), not when prepared.
	afterCommitNotifySQL = "SELECT pg_notify('" + notifyChannel + "', $1 || repeat('x', 8000))"
	defer func() { afterCommitNotifySQL = notifySQL }()
	id := "notice-fails@cand.test"
	copyOf := func() *store.Incoming {
		return &store.Incoming{Message: store.Message{Tenant: "acme", Thread: th.ID, Direction: store.Inbound,
			InternetMessageID: id, From: "carl@cand.test"}, Raw: raw("Hello"), Mailbox: "rita@acme.test"}
	}
	res, err := a.CommitInbound(ctx, copyOf())
	if err != nil || res.Decision != store.Stored {
		t.Fatalf("commit whose notice fails: %+v %v, want stored", res, err)
	}
	afterCommitNotifySQL = notifySQL
	// The same copy again is a duplicate of it: it was stored once.
	if res2, err := a.CommitInbound(ctx, copyOf()); err != nil || res2.Decision != store.Duplicate || res2.Ref != res.Ref {
		t.Fatalf("the copy again: %+v %v, want a duplicate of %v", res2, err, res.Ref)
	}
	within(t, 4*keyCatchUp, "B finds "+id+" without its notice", func() (bool, string) {
		refs, err := b.LookupMsgIDs(ctx, "acme", []string{id})
		return err == nil && len(refs) == 1 && refs[0] == res.Ref, fmt.Sprint(refs, err)
	})
}
