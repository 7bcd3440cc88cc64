package postgres

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"syncrelay/internal/pgtest"
	"syncrelay/internal/testenv"
	"syncrelay/store"
)

func TestMain(m *testing.M) {
	// The tests that wait (cache TTL, catch-up reads, a held answer) run
	// in parallel with the conformance suite, which computes; go's default
	// -parallel (GOMAXPROCS) would let two sleepers hold both slots.
	testenv.DefaultParallel(4)
	os.Exit(pgtest.Main(m))
}

// open opens a store on a fresh database, a copy of a migrated one (the
// migrations are tested on empty databases by TestMigrationsConcurrent and
// TestQuarantineExpiry); nodes > 1 opens more stores on the same
// database, as several syncrelay nodes would.
func open(t *testing.T, nodes int) []*Store {
	t.Helper()
	dsn := pgtest.DSNFrom(t, "migrated", migrated)
	var out []*Store
	for i := range nodes {
		s, err := Open(context.Background(), dsn, Options{Node: fmt.Sprintf("node%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		out = append(out, s)
	}
	return out
}

// fixture creates a tenant, a user, a candidate and one outbound thread.
func fixture(t *testing.T, s *Store) (*store.Thread, *store.Message) {
	t.Helper()
	ctx := context.Background()
	if err := s.CreateTenant(ctx, &store.Tenant{ID: "acme", InboundAddress: "Acme-X@relay.test", Domains: []string{"acme.test"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateUser(ctx, &store.User{Tenant: "acme", ID: "u1", Email: "Rita@acme.test", Role: store.RoleTeamMember}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateCandidate(ctx, &store.Candidate{Tenant: "acme", ID: "c1", Emails: []string{"carl@cand.test"}}); err != nil {
		t.Fatal(err)
	}
	th := &store.Thread{Tenant: "acme", Candidate: "c1", Subject: "Interview"}
	m := &store.Message{SentBy: "u1", To: []string{"carl@cand.test"}, Status: "sending"}
	mint := func(thread, msg uint64) (string, string) {
		return fmt.Sprintf("sr.%d.%d@acme.test", thread, msg), fmt.Sprintf("AQG5%08x", thread)
	}
	if err := s.CreateOutbound(ctx, th, m, mint); err != nil {
		t.Fatal(err)
	}
	return th, m
}

func raw(s string) *store.Raw {
	return &store.Raw{Head: []byte("X-Head: 1\r\n"), Body: strings.NewReader(s), Size: int64(len(s))}
}

func TestPeopleAndTenants(t *testing.T) {
	s := open(t, 1)[0]
	ctx := context.Background()
	fixture(t, s)
	tests := []struct {
		name string
		err  error
		want error
	}{
		{"tenant id taken", s.CreateTenant(ctx, &store.Tenant{ID: "acme", InboundAddress: "other@relay.test"}), store.ErrExists},
		{"inbound taken", s.CreateTenant(ctx, &store.Tenant{ID: "b", InboundAddress: "acme-x@RELAY.test"}), store.ErrExists},
		{"user email taken", s.CreateUser(ctx, &store.User{Tenant: "acme", ID: "u2", Email: "rita@ACME.test"}), store.ErrExists},
		{"user of no tenant", s.CreateUser(ctx, &store.User{Tenant: "nope", ID: "u2", Email: "x@y"}), store.ErrNotFound},
		{"candidate email taken", s.CreateCandidate(ctx, &store.Candidate{Tenant: "acme", ID: "c2", Emails: []string{"CARL@cand.test"}}), store.ErrExists},
		{"candidate id taken", s.CreateCandidate(ctx, &store.Candidate{Tenant: "acme", ID: "c1"}), store.ErrExists},
	}
	for _, tc := range tests {
		if !errors.Is(tc.err, tc.want) {
			t.Errorf("%s: err = %v, want %v", tc.name, tc.err, tc.want)
		}
	}
	if u, err := s.UserByEmail(ctx, "acme", "RITA@acme.test"); err != nil || u.ID != "u1" || u.Tenant != "acme" {
		t.Errorf("UserByEmail = %+v, %v", u, err)
	}
	if id, ok, err := s.InboundTenant(ctx, "ACME-x@relay.test"); err != nil || !ok || id != "acme" {
		t.Errorf("InboundTenant = %q %v %v", id, ok, err)
	}
	if _, ok, _ := s.InboundTenant(ctx, "nobody@relay.test"); ok {
		t.Error("unknown address resolved")
	}
	if _, err := s.Candidate(ctx, "acme", "c2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("candidate c2 after a refused create: %v", err)
	}
}

func TestCommitInboundAndRaw(t *testing.T) {
	s := open(t, 1)[0]
	ctx := context.Background()
	th, out := fixture(t, s)
	ref, ok, err := s.LookupMsgID(ctx, "acme", out.InternetMessageID)
	if err != nil || !ok || ref.Message != out.ID {
		t.Fatalf("LookupMsgID(issued) = %v %v %v", ref, ok, err)
	}
	in := &store.Incoming{Message: store.Message{Tenant: "acme", Thread: th.ID, Direction: store.Inbound,
		InternetMessageID: "reply1@cand.test", From: "carl@cand.test"}, Raw: raw("Hello"), Mailbox: "Rita@acme.test",
		Event: map[string]any{"direction": "inbound"}}
	res, err := s.CommitInbound(ctx, in)
	if err != nil || res.Decision != store.Stored {
		t.Fatalf("commit = %+v, %v", res, err)
	}
	m, err := s.Message(ctx, "acme", res.Ref.Message)
	if err != nil {
		t.Fatal(err)
	}
	// The thread's activity is its newest message's arrival.
	if got, err := s.Thread(ctx, "acme", th.ID); err != nil || !got.LastActivity.Equal(m.Received) {
		t.Errorf("thread LastActivity = %v (%v), want the reply's arrival %v", got.LastActivity, err, m.Received)
	}
	f, err := s.OpenRaw(ctx, m.Raw)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(f)
	f.Close()
	if string(b) != "X-Head: 1\r\nHello" || f.Size() != int64(len(b)) || m.Size != int64(len(b)) {
		t.Errorf("raw = %q (size %d, record %d)", b, f.Size(), m.Size)
	}
	// A second copy through another mailbox is a duplicate that adds it.
	in2 := *in
	in2.Raw, in2.Mailbox = raw("Hello"), "boss@acme.test"
	res2, err := s.CommitInbound(ctx, &in2)
	if err != nil || res2.Decision != store.Duplicate || res2.Ref != res.Ref {
		t.Fatalf("second copy = %+v, %v", res2, err)
	}
	m, _ = s.Message(ctx, "acme", res.Ref.Message)
	if strings.Join(m.Mailboxes, ",") != "rita@acme.test,boss@acme.test" {
		t.Errorf("mailboxes = %v", m.Mailboxes)
	}
	evs, err := s.Events(ctx, store.EventPending)
	if err != nil || len(evs) != 1 || evs[0].Type != "message.received" {
		t.Fatalf("events = %v, %v", evs, err)
	}
	// Removal frees the bytes and keeps a tombstone a later copy does not revive.
	if err := s.RemoveMessage(ctx, "acme", res.Ref.Message); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenRaw(ctx, m.Raw); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("raw after removal: %v", err)
	}
	in3 := *in
	in3.Raw = raw("Hello")
	res3, err := s.CommitInbound(ctx, &in3)
	if err != nil || res3.Decision != store.Duplicate || !res3.Removed {
		t.Errorf("copy after removal = %+v, %v", res3, err)
	}
	page, more, err := s.ThreadMessagesPage(ctx, "acme", th.ID, 0, 10)
	if err != nil || more || len(page) != 1 || page[0].ID != out.ID {
		t.Errorf("page = %d messages, more %v, %v", len(page), more, err)
	}
}

// TestGroupCommitFailureIsolated: a request that fails (its thread does
// not exist) fails alone; the others queued with it are stored.
func TestGroupCommitFailureIsolated(t *testing.T) {
	s := open(t, 1)[0]
	ctx := context.Background()
	th, _ := fixture(t, s)
	const n = 40
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			thread := th.ID
			if i%5 == 0 {
				thread = 999999
			}
			_, errs[i] = s.CommitInbound(ctx, &store.Incoming{Message: store.Message{Tenant: "acme", Thread: thread,
				Direction: store.Inbound, InternetMessageID: fmt.Sprintf("m%d@x.test", i)}, Raw: raw("body")})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if (i%5 == 0) != (err != nil) {
			t.Errorf("message %d: err = %v", i, err)
		}
		if i%5 == 0 && !errors.Is(err, store.ErrNotFound) {
			t.Errorf("message %d: err = %v, want ErrNotFound", i, err)
		}
	}
	msgs, _ := s.ThreadMessages(ctx, "acme", th.ID)
	if len(msgs) != 1+n-n/5 {
		t.Errorf("%d messages on the thread, want %d", len(msgs), 1+n-n/5)
	}
}

// TestSameCopyOnTwoNodes: copies of the same messages committed at once
// through two nodes are each stored once.
func TestSameCopyOnTwoNodes(t *testing.T) {
	nodes := open(t, 2)
	ctx := context.Background()
	th, _ := fixture(t, nodes[0])
	const n = 30
	var wg sync.WaitGroup
	var mu sync.Mutex
	stored := map[string]int{}
	for _, s := range nodes {
		for i := range n {
			for _, via := range []string{"a", "b"} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					id := fmt.Sprintf("m%d@x.test", i)
					res, err := s.CommitInbound(ctx, &store.Incoming{Message: store.Message{Tenant: "acme", Thread: th.ID,
						Direction: store.Inbound, InternetMessageID: id}, Raw: raw("body " + id), Mailbox: via + "@acme.test"})
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					if res.Decision == store.Stored {
						stored[id]++
					}
					mu.Unlock()
				}()
			}
		}
	}
	wg.Wait()
	for i := range n {
		if id := fmt.Sprintf("m%d@x.test", i); stored[id] != 1 {
			t.Errorf("%s stored %d times", id, stored[id])
		}
	}
	msgs, _ := nodes[1].ThreadMessages(ctx, "acme", th.ID)
	if len(msgs) != 1+n {
		t.Errorf("%d messages, want %d", len(msgs), 1+n)
	}
}

func TestCrossNodeState(t *testing.T) {
	nodes := open(t, 2)
	a, b := nodes[0], nodes[1]
	ctx := context.Background()
	// A tenant created on a is known on b at once, also after b was asked.
	if _, ok, _ := b.InboundTenant(ctx, "new@relay.test"); ok {
		t.Fatal("unknown address resolved")
	}
	if err := a.CreateTenant(ctx, &store.Tenant{ID: "n", InboundAddress: "new@relay.test"}); err != nil {
		t.Fatal(err)
	}
	if id, ok, err := b.InboundTenant(ctx, "new@relay.test"); !ok || id != "n" || err != nil {
		t.Errorf("node b: InboundTenant = %q %v %v", id, ok, err)
	}
	// OAuth state is single use across nodes.
	if err := a.PutKV(ctx, "oauth_state/x", "v", time.Minute); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var taken, missing sync.Map
	for i, s := range []*Store{a, b, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var v string
			if err := s.TakeKV(ctx, "oauth_state/x", &v); err == nil {
				taken.Store(i, v)
			} else if errors.Is(err, store.ErrNotFound) {
				missing.Store(i, true)
			} else {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	n := 0
	taken.Range(func(_, _ any) bool { n++; return true })
	if n != 1 {
		t.Errorf("state taken %d times", n)
	}
	// Idempotency keys: first wins, an expired one can be claimed again.
	if err := a.CreateKV(ctx, "idem/k", 1, time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := b.CreateKV(ctx, "idem/k", 2, time.Hour); !errors.Is(err, store.ErrExists) {
		t.Errorf("second CreateKV: %v", err)
	}
	// Counters of both nodes are summed.
	a.Count("n", "stored", "")
	b.Count("n", "stored", "")
	b.Count("n", "discarded", "no_match")
	if err := a.FlushCounters(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.FlushCounters(ctx); err != nil {
		t.Fatal(err)
	}
	c, last, err := a.Counts(ctx, "n", time.Now().Add(-time.Hour))
	if err != nil || c["stored/"] != 2 || c["discarded/no_match"] != 1 || last.IsZero() {
		t.Errorf("counts = %v, last %v, %v", c, last, err)
	}
}

// TestOutboxClaimOnce: two nodes claiming at once never get the same event
// in the same lease, and an outcome of an older attempt is ignored.
func TestOutboxClaimOnce(t *testing.T) {
	nodes := open(t, 2)
	ctx := context.Background()
	const n = 50
	for i := range n {
		if err := nodes[i%2].Enqueue(ctx, "acme", "test", map[string]any{"i": i}); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	var mu sync.Mutex
	seen := map[uint64]int{}
	var wg sync.WaitGroup
	for _, s := range nodes {
		for range 3 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					evs, err := s.ClaimEvents(ctx, now, 7, time.Minute)
					if err != nil {
						t.Error(err)
						return
					}
					if len(evs) == 0 {
						return
					}
					mu.Lock()
					for _, e := range evs {
						seen[e.Seq]++
					}
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if len(seen) != n {
		t.Errorf("%d events claimed, want %d", len(seen), n)
	}
	for seq, c := range seen {
		if c != 1 {
			t.Errorf("event %d claimed %d times", seq, c)
		}
	}
	// Lease over: claimed again (attempt 2); attempt 1's failure is void.
	evs, err := nodes[0].ClaimEvents(ctx, now.Add(2*time.Minute), 1, time.Minute)
	if err != nil || len(evs) != 1 || evs[0].Attempts != 2 {
		t.Fatalf("reclaim = %v, %v", evs, err)
	}
	e := evs[0]
	if err := nodes[1].EventFailed(ctx, e.Seq, 1, now, "old", now, true); err != nil {
		t.Fatal(err)
	}
	if got, _ := nodes[1].OutboxEvent(ctx, e.Seq); got.State != store.EventPending {
		t.Errorf("stale outcome applied: %s", got.State)
	}
	if err := nodes[1].EventFailed(ctx, e.Seq, 2, now, "boom", now, true); err != nil {
		t.Fatal(err)
	}
	dead, more, err := nodes[0].DeadLetters(ctx, "", 0, 10)
	if err != nil || more || len(dead) != 1 || dead[0].Event.LastError != "boom" {
		t.Fatalf("dead letters = %v %v %v", dead, more, err)
	}
	back, err := nodes[0].Redeliver(ctx, "", []uint64{e.Seq}, now)
	if err != nil || len(back) != 1 || back[0].Attempts != 0 {
		t.Fatalf("redeliver = %v, %v", back, err)
	}
	if _, err := nodes[0].Redeliver(ctx, "", []uint64{e.Seq}, now); !errors.Is(err, store.ErrNotDead) {
		t.Errorf("redeliver a pending event: %v", err)
	}
	if err := nodes[0].EventDelivered(ctx, e.Seq, now.Add(-48*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n, err := nodes[0].PruneEvents(ctx, now.Add(-24*time.Hour), now, 100); err != nil || n != 1 {
		t.Errorf("pruned %d, %v", n, err)
	}
	st, err := nodes[1].OutboxStats(ctx)
	if err != nil || st.Pending != n-1 || st.Dead != 0 {
		t.Errorf("stats = %+v, %v", st, err)
	}
}

func TestGrantsAndDelegations(t *testing.T) {
	s := open(t, 1)[0]
	ctx := context.Background()
	fixture(t, s)
	if err := s.CreateUser(ctx, &store.User{Tenant: "acme", ID: "u2", Email: "b@acme.test"}); err != nil {
		t.Fatal(err)
	}
	g := &store.Grant{Tenant: "acme", User: "u1", Provider: "google", Sealed: []byte("x")}
	if err := s.PutGrant(ctx, g); err != nil || g.Version != 1 || g.Status != store.GrantActive {
		t.Fatalf("PutGrant = %+v, %v", g, err)
	}
	if _, err := s.UpdateGrantToken(ctx, "acme", "u1", 1, []byte("y")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateGrantToken(ctx, "acme", "u1", 1, []byte("z")); !errors.Is(err, store.ErrStale) {
		t.Errorf("stale refresh: %v", err)
	}
	if ok, err := s.MarkGrantBroken(ctx, "acme", "u1", 2, "invalid_grant"); !ok || err != nil {
		t.Errorf("MarkGrantBroken = %v, %v", ok, err)
	}
	if ok, _ := s.MarkGrantBroken(ctx, "acme", "u1", 2, "again"); ok {
		t.Error("broken twice")
	}
	d := &store.Delegation{Tenant: "acme", Requester: "u1", Grantor: "u2"}
	if err := s.CreateDelegation(ctx, d, "u1"); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateDelegation(ctx, &store.Delegation{Tenant: "acme", Requester: "u1", Grantor: "u2"}, "u1"); !errors.Is(err, store.ErrExists) {
		t.Errorf("second live delegation: %v", err)
	}
	if _, err := s.TransitionDelegation(ctx, "acme", d.ID, "u2", store.DelegationDeclined, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := s.TransitionDelegation(ctx, "acme", d.ID, "u2", store.DelegationActive, nil); !errors.Is(err, store.ErrTransition) {
		t.Errorf("declined -> active: %v", err)
	}
	if _, err := s.OpenDelegation(ctx, "acme", "u1", "u2"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("open after decline: %v", err)
	}
	if err := s.CreateDelegation(ctx, &store.Delegation{Tenant: "acme", Requester: "u1", Grantor: "u2"}, "u1"); err != nil {
		t.Errorf("new delegation after decline: %v", err)
	}
}

func TestQuarantineExpiry(t *testing.T) {
	now := time.Now()
	dsn := pgtest.DSN(t)
	s, err := Open(context.Background(), dsn, Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	q := &store.Quarantined{Tenant: "acme", Reason: "dkim_fail"}
	if err := s.Quarantine(ctx, q, raw("secret body"), time.Hour); err != nil {
		t.Fatal(err)
	}
	f, err := s.OpenRaw(ctx, q.Raw)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	io.Copy(&buf, f)
	if !strings.HasSuffix(buf.String(), "secret body") {
		t.Errorf("raw = %q", buf.String())
	}
	now = now.Add(2 * time.Hour)
	if n, err := s.ExpireQuarantine(ctx); n != 1 || err != nil {
		t.Errorf("expired %d, %v", n, err)
	}
	if _, err := s.OpenRaw(ctx, q.Raw); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("raw after expiry: %v", err)
	}
}

// TestRawCompressed (migration 0006): a raw message that compresses is
// stored lz4-compressed in its raw_blobs row, one that does not is stored
// as it is, and both read back byte for byte.
func TestRawCompressed(t *testing.T) {
	s := open(t, 1)[0]
	ctx := context.Background()
	var lz4 bool
	if err := s.pool.QueryRow(ctx, "SELECT 'lz4' = ANY (enumvals) FROM pg_settings WHERE name = 'default_toast_compression'").Scan(&lz4); err != nil || !lz4 {
		t.Skipf("the server has no lz4 (%v): 0006 keeps raw bytes uncompressed", err)
	}
	reply, err := os.ReadFile("../../testdata/corpus/02-outlook-desktop-reply.eml")
	if err != nil {
		t.Fatal(err)
	}
	noise := make([]byte, 5000)
	crand.Read(noise)
	for _, tc := range []struct {
		name     string
		body     string
		compress bool
	}{{"corpus reply", string(reply), true}, {"random bytes", string(noise), false}} {
		q := &store.Quarantined{Tenant: "acme", Reason: "dkim_fail"}
		if err := s.Quarantine(ctx, q, raw(tc.body), time.Hour); err != nil {
			t.Fatal(err)
		}
		id, _ := parseLoc(q.Raw)
		var method *string
		var stored, length int
		if err := s.pool.QueryRow(ctx, "SELECT pg_column_compression(bytes), pg_column_size(bytes), length(bytes) FROM raw_blobs WHERE id = $1", id).Scan(&method, &stored, &length); err != nil {
			t.Fatal(err)
		}
		if got := method != nil && *method == "lz4"; got != tc.compress {
			t.Errorf("%s: %d bytes stored as %d, compression %v; want lz4 %v", tc.name, length, stored, method, tc.compress)
		}
		f, err := s.OpenRaw(ctx, q.Raw)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(f)
		if want := "X-Head: 1\r\n" + tc.body; string(got) != want {
			t.Errorf("%s: read back %d bytes, want the %d stored", tc.name, len(got), len(want))
		}
	}
}

// TestMigrationsConcurrent: nodes starting together apply the schema once.
func TestMigrationsConcurrent(t *testing.T) {
	dsn := pgtest.DSN(t)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(context.Background(), dsn, Options{})
			if err != nil {
				t.Error(err)
				return
			}
			s.Close()
		}()
	}
	wg.Wait()
	s := open1(t, dsn)
	v, err := s.DatabaseSchemaVersion(context.Background())
	if err != nil || v != SchemaVersion() {
		t.Errorf("schema version %d, %v; want %d", v, err, SchemaVersion())
	}
}

func open1(t *testing.T, dsn string) *Store {
	s, err := Open(context.Background(), dsn, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestClaimEventsCanceledInFlight: a claim whose context ends while its
// answer is on the way (a node told to stop mid-claim, or a slow, loaded
// node reading it late) must not leave events claimed behind the caller's
// back. Either the claim returns them (to be delivered before the node
// stops) or they stay claimable at once; the lease is for nodes that die,
// not for ones that stop.
//
// The store talks to PostgreSQL through a loopback proxy that can hold
// the server's answers: the claim commits at the server, its answer is
// held, the context is canceled, and the answer released after.
func TestClaimEventsCanceledInFlight(t *testing.T) {
	t.Parallel() // its own database and proxy; it mostly waits
	dsn := pgtest.DSN(t)
	ctx := context.Background()
	px := startHoldProxy(t, dsn)
	s, err := Open(ctx, px.dsn, Options{Node: "stopping"})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	direct, err := Open(ctx, dsn, Options{Node: "observer"})
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()

	defer px.hold.Store(false) // before the stores close, on any failure

	now := time.Now()
	// Prime the connection with the claim statement (nothing is due yet),
	// so that under hold only the claim's execution is in flight.
	if evs, err := s.ClaimEvents(ctx, now.Add(-time.Hour), 10, time.Hour); err != nil || len(evs) != 0 {
		t.Fatalf("priming claim = %v, %v", evs, err)
	}
	if err := s.Enqueue(ctx, "acme", "message.received", map[string]any{"i": 1}); err != nil {
		t.Fatal(err)
	}
	evs, err := direct.Events(ctx, "")
	if err != nil || len(evs) != 1 {
		t.Fatalf("outbox = %v, %v", evs, err)
	}
	seq := evs[0].Seq

	px.hold.Store(true)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		evs []*store.Event
		err error
	}
	res := make(chan result, 1)
	go func() {
		evs, err := s.ClaimEvents(cctx, now.Add(time.Second), 10, time.Hour)
		res <- result{evs, err}
	}()
	// Wait until the claim is committed at the server (its answer held).
	deadline := time.Now().Add(10 * time.Second)
	for {
		e, err := direct.OutboxEvent(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if e.Attempts == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the claim never reached the server")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	var r result
	select {
	case r = <-res: // gave up while the answer was held
		px.hold.Store(false)
	case <-time.After(time.Second): // still waiting for its answer
		px.hold.Store(false)
		r = <-res
	}
	t.Logf("canceled claim: %d events, err %v", len(r.evs), r.err)

	again, err := direct.ClaimEvents(ctx, now.Add(2*time.Second), 10, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.evs)+len(again) != 1 {
		e, _ := direct.OutboxEvent(ctx, seq)
		t.Fatalf("canceled claim returned %d events (err %v), %d claimable after it; %s is %s, attempt %d, next attempt in %v: claimed by nobody until its lease ends",
			len(r.evs), r.err, len(again), e.ID, e.State, e.Attempts, time.Until(e.NextAttempt).Round(time.Second))
	}
}

// holdProxy forwards loopback TCP to PostgreSQL; while hold is set, the
// server's bytes wait in the proxy (an answer in flight, a slow reader).
type holdProxy struct {
	dsn  string
	hold atomic.Bool
}

func startHoldProxy(t *testing.T, dsn string) *holdProxy {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	target := u.Host
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u.Host = ln.Addr().String()
	p := &holdProxy{dsn: u.String()}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			srv, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(srv, c); srv.Close() }()
			go func() {
				defer wg.Done()
				defer c.Close()
				buf := make([]byte, 32<<10)
				for {
					n, err := srv.Read(buf)
					for n > 0 && p.hold.Load() {
						time.Sleep(time.Millisecond)
					}
					if n > 0 {
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return p
}
