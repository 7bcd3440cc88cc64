package bolt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func openTest(t *testing.T) (*Store, string) {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir, Options{LockTimeout: 200 * time.Millisecond, CompactNow: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, dir
}

func seed(t *testing.T, s *Store) {
	t.Helper()
	ctx := context.Background()
	if err := s.CreateTenant(ctx, &Tenant{ID: "acme", Domains: []string{"acme.test"}, Provider: "google",
		InboundAddress: "acme-xyz@relay.test", DKIMPolicy: PolicyRequire}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateUser(ctx, &User{Tenant: "acme", ID: "u-rec", Email: "Rec@Acme.test", Role: RoleTeamMember}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateCandidate(ctx, &Candidate{Tenant: "acme", ID: "c-1", Emails: []string{"carl@cand.test"}}); err != nil {
		t.Fatal(err)
	}
}

func newThread(t *testing.T, s *Store) (Thread, Message) {
	t.Helper()
	th := Thread{Tenant: "acme", Candidate: "c-1", Subject: "Hello", CreatedBy: "u-rec"}
	m := Message{From: "rec@acme.test", Subject: "Hello", SentBy: "u-rec", Status: "sending"}
	err := s.CreateOutbound(context.Background(), &th, &m, func(thread, msg uint64) (string, string) {
		return fmt.Sprintf("sr.t%dm%d@relay.test", thread, msg), fmt.Sprintf("%044x", thread)
	})
	if err != nil {
		t.Fatal(err)
	}
	return th, m
}

func TestLockedByAnotherProcess(t *testing.T) {
	t.Parallel()
	_, dir := openTest(t)
	_, err := Open(dir, Options{LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: got %v, want ErrLocked", err)
	}
	if !strings.Contains(err.Error(), "locked by another syncrelay") {
		t.Fatalf("message does not say what happened: %v", err)
	}
}

func TestSchemaNewerRefused(t *testing.T) {
	t.Parallel()
	s, dir := openTest(t)
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bMeta).Put(keySchema, putU64(SchemaVersion+1))
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(dir, Options{}); err == nil || !strings.Contains(err.Error(), "newer") {
		t.Fatalf("got %v, want a schema-too-new error", err)
	}
}

func TestTenantsUsersCandidates(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	seed(t, s)
	ctx := context.Background()
	if id, ok, _ := s.InboundTenant(ctx, "ACME-XYZ@relay.test"); !ok || id != "acme" {
		t.Fatalf("InboundTenant = %q %v", id, ok)
	}
	if _, ok, _ := s.InboundTenant(ctx, "acme@relay.test"); ok {
		t.Fatal("a guessed address resolved")
	}
	if err := s.CreateTenant(ctx, &Tenant{ID: "acme", InboundAddress: "other@x"}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate tenant: %v", err)
	}
	if err := s.CreateUser(ctx, &User{Tenant: "acme", ID: "u-2", Email: "rec@acme.test"}); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate email: %v", err)
	}
	if err := s.CreateUser(ctx, &User{Tenant: "nope", ID: "u-2", Email: "x@y"}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("user of missing tenant: %v", err)
	}
	u, err := s.UserByEmail(ctx, "acme", "REC@acme.TEST")
	if err != nil || u.ID != "u-rec" {
		t.Fatalf("UserByEmail = %v %v", u, err)
	}
	if _, err := s.UserByEmail(ctx, "other", "rec@acme.test"); !errors.Is(err, ErrNotFound) {
		t.Fatal("user visible from another tenant")
	}
	cs, err := s.Candidates(ctx, "acme")
	if err != nil || len(cs) != 1 || cs[0].ID != "c-1" {
		t.Fatalf("Candidates = %v %v", cs, err)
	}
}

func TestCommitStoredDuplicateRemoved(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	seed(t, s)
	ctx := context.Background()
	th, sent := newThread(t, s)

	ref, ok, _ := s.LookupMsgID(ctx, "acme", sent.InternetMessageID)
	if !ok || ref.Thread != th.ID || ref.Message != sent.ID {
		t.Fatalf("issued id not indexed: %v %v", ref, ok)
	}
	if id, ok, _ := s.ThreadByConvIndex(ctx, "acme", th.ConvIndex); !ok || id != th.ID {
		t.Fatal("conversation index not indexed")
	}

	in := &Incoming{Message: Message{Tenant: "acme", Thread: th.ID, InternetMessageID: "reply1@cand.test",
		Direction: Inbound}, Raw: testRaw("X: 1\r\n", "body\r\n"), Mailbox: "rec@acme.test", Event: map[string]any{"direction": "inbound"}}
	r1, err := s.CommitInbound(ctx, in)
	if err != nil || r1.Decision != Stored {
		t.Fatalf("first commit = %+v %v", r1, err)
	}
	in.Mailbox = "hm@acme.test"
	in.Raw = testRaw("X: 1\r\n", "body\r\n")
	r2, err := s.CommitInbound(ctx, in)
	if err != nil || r2.Decision != Duplicate || r2.Ref != r1.Ref {
		t.Fatalf("second commit = %+v %v", r2, err)
	}
	m, _ := s.Message(ctx, "acme", r1.Ref.Message)
	sum := m.Raw
	if len(m.Mailboxes) != 2 {
		t.Fatalf("mailboxes = %v", m.Mailboxes)
	}
	evs, _ := s.Events(ctx, "pending")
	if len(evs) != 1 || evs[0].Type != "message.received" {
		t.Fatalf("events = %+v (duplicate must not raise an event)", evs)
	}

	if err := s.RemoveMessage(ctx, "acme", r1.Ref.Message); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Compact(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenRaw(context.Background(), sum); !errors.Is(err, ErrNotFound) {
		t.Fatalf("raw bytes survived removal and compaction: %v", err)
	}
	in.Raw = testRaw("X: 1\r\n", "body\r\n")
	r3, err := s.CommitInbound(ctx, in)
	if err != nil || r3.Decision != Duplicate || !r3.Removed {
		t.Fatalf("copy after removal = %+v %v", r3, err)
	}
	m, _ = s.Message(ctx, "acme", r1.Ref.Message)
	if !m.Removed {
		t.Fatal("removed message came back")
	}
	// Same Message-ID under another tenant is a different message.
	if _, ok, _ := s.LookupMsgID(ctx, "other", "reply1@cand.test"); ok {
		t.Fatal("msgid index leaks across tenants")
	}
}

func TestLearnSentCopyID(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	seed(t, s)
	ctx := context.Background()
	th, sent := newThread(t, s)
	res, err := s.CommitInbound(ctx, &Incoming{Message: Message{Tenant: "acme", InternetMessageID: "cafe@mail.gmail.com"},
		Learn: &Ref{Thread: th.ID, Message: sent.ID}, Mailbox: "rec@acme.test"})
	if err != nil || res.Decision != Duplicate {
		t.Fatalf("learn = %+v %v", res, err)
	}
	ref, ok, _ := s.LookupMsgID(ctx, "acme", "cafe@mail.gmail.com")
	if !ok || ref.Message != sent.ID {
		t.Fatalf("learned id not indexed: %v", ref)
	}
	msgs, _ := s.ThreadMessages(ctx, "acme", th.ID)
	if len(msgs) != 1 {
		t.Fatalf("sent copy stored as a second message: %d", len(msgs))
	}
}

func TestGroupCommitConcurrent(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	seed(t, s)
	th, _ := newThread(t, s)
	ctx := context.Background()
	const n = 200
	var wg sync.WaitGroup
	ids := make([]uint64, n)
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			in := &Incoming{Message: Message{Tenant: "acme", Thread: th.ID, InternetMessageID: fmt.Sprintf("r%d@cand.test", i)}}
			if i%10 == 0 {
				in.Message.Thread = 9999 // missing thread: must fail alone
			}
			r, err := s.CommitInbound(ctx, in)
			ids[i], errs[i] = r.Ref.Message, err
		}()
	}
	wg.Wait()
	seen := map[uint64]bool{}
	for i := range n {
		if i%10 == 0 {
			if !errors.Is(errs[i], ErrNotFound) {
				t.Fatalf("request %d: got %v, want not found", i, errs[i])
			}
			continue
		}
		if errs[i] != nil || seen[ids[i]] {
			t.Fatalf("request %d: id %d err %v", i, ids[i], errs[i])
		}
		seen[ids[i]] = true
	}
	msgs, _ := s.ThreadMessages(ctx, "acme", th.ID)
	if len(msgs) != 1+n-n/10 {
		t.Fatalf("thread has %d messages, want %d", len(msgs), 1+n-n/10)
	}
}

func TestRawDurableAndOrphans(t *testing.T) {
	t.Parallel()
	s, dir := openTest(t)
	seed(t, s)
	th, _ := newThread(t, s)
	ctx := context.Background()
	big := strings.Repeat("large message line\r\n", largeMessage/20+10)
	res, err := s.CommitInbound(ctx, &Incoming{Message: Message{Tenant: "acme", Thread: th.ID, InternetMessageID: "k@x"},
		Raw: testRaw("A: b\r\n", big)})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := s.Message(ctx, "acme", res.Ref.Message)
	if !strings.HasPrefix(m.Raw, "f:") || m.Size != int64(6+len(big)) {
		t.Fatalf("large message stored as %q, %d bytes", m.Raw, m.Size)
	}
	// A large file written but never committed (a crash in between), and
	// a temp file: both are collected, the committed file is not.
	orphan := filepath.Join(dir, "raw", "big", strings.Repeat("a", 64)+"-0123456789abcdef")
	os.WriteFile(orphan, []byte("orphan"), 0o600)
	os.WriteFile(filepath.Join(dir, "raw", "tmp", "big-123"), []byte("partial"), 0o600)
	n, err := s.CollectOrphans(ctx)
	if err != nil || n != 1 {
		t.Fatalf("CollectOrphans = %d %v", n, err)
	}
	if _, err := os.Stat(orphan); !os.IsNotExist(err) {
		t.Fatal("orphan not collected")
	}
	f, err := s.OpenRaw(ctx, m.Raw)
	if err != nil {
		t.Fatal("referenced file collected:", err)
	}
	b, _ := io.ReadAll(f)
	f.Close()
	if string(b) != "A: b\r\n"+big {
		t.Fatalf("raw = %.40q", b)
	}
	if _, err := os.Stat(filepath.Join(dir, "raw", "tmp", "big-123")); !os.IsNotExist(err) {
		t.Fatal("temp file not collected")
	}
}

func TestPersistsAcrossReopenAndBackup(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	seed(t, s)
	th, sent := newThread(t, s)
	s.Count("acme", "discarded", "no_match")
	s.Close()

	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Thread(context.Background(), "acme", th.ID); err != nil {
		t.Fatal(err)
	}
	counts, _, _ := s.Counts(context.Background(), "acme", time.Now().Add(-time.Hour))
	if counts["discarded/no_match"] != 1 {
		t.Fatalf("counter lost at close: %v", counts)
	}
	// A dry run sees the data; what it writes vanishes.
	s2, err := s.DryRun(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s2.LookupMsgID(context.Background(), "acme", sent.InternetMessageID); !ok {
		t.Fatal("dry run misses the index")
	}
	if err := s2.CreateCandidate(context.Background(), &Candidate{Tenant: "acme", ID: "c-dry", Emails: []string{"dry@cand.test"}}); err != nil {
		t.Fatal(err)
	}
	s2.Close()
	if _, err := s.Candidate(context.Background(), "acme", "c-dry"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a dry run's write reached the store: %v", err)
	}
}

func TestParseRef(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in   string
		want uint64
		ok   bool
	}{{"m-1", 1, true}, {"m-0", 0, false}, {"m-", 0, false}, {"th-3", 0, false}, {"m-12a", 0, false}, {"m-999999999999999999999", 0, false}} {
		got, ok := ParseRef("m-", c.in)
		if got != c.want || ok != c.ok {
			t.Errorf("ParseRef(%q) = %d %v", c.in, got, ok)
		}
	}
}

// TestInboundCache: an address asked about before its tenant exists
// resolves as soon as the tenant is created, and answers stay right under
// concurrent lookups and creations.
func TestInboundCache(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	ctx := context.Background()
	const addr = "late-abc@relay.test"
	for range 2 { // the second answer comes from the cache
		if _, ok, err := s.InboundTenant(ctx, addr); ok || err != nil {
			t.Fatalf("before the tenant exists: ok=%v err=%v", ok, err)
		}
	}
	if err := s.CreateTenant(ctx, &Tenant{ID: "late", InboundAddress: addr}); err != nil {
		t.Fatal(err)
	}
	if id, ok, _ := s.InboundTenant(ctx, strings.ToUpper(addr)); !ok || id != "late" {
		t.Fatalf("after CreateTenant: %q %v", id, ok)
	}

	var wg sync.WaitGroup
	for i := range 20 {
		a := fmt.Sprintf("t%d-x@relay.test", i)
		wg.Add(2)
		go func() {
			defer wg.Done()
			for range 50 {
				s.InboundTenant(ctx, a)
			}
		}()
		go func() {
			defer wg.Done()
			if err := s.CreateTenant(ctx, &Tenant{ID: fmt.Sprintf("t%d", i), InboundAddress: a}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for i := range 20 {
		if id, ok, _ := s.InboundTenant(ctx, fmt.Sprintf("t%d-x@relay.test", i)); !ok || id != fmt.Sprintf("t%d", i) {
			t.Errorf("tenant t%d: InboundTenant = %q %v after both finished", i, id, ok)
		}
	}
}

// TestConvIndexEveryIssuedHeader: a thread whose Thread-Index header was
// issued before the fixed prefix gets the new header on its next send;
// replies carrying either header find the thread.
func TestConvIndexEveryIssuedHeader(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	seed(t, s)
	ctx := context.Background()
	th, _ := newThread(t, s)
	old := th.ConvIndex
	fresh := fmt.Sprintf("0101b94b29dc%032x", th.ID)
	m := Message{From: "rec@acme.test", Subject: "Re: Hello", SentBy: "u-rec", Status: "sending"}
	if err := s.CreateOutbound(ctx, &th, &m, func(thread, msg uint64) (string, string) {
		return fmt.Sprintf("sr.t%dm%d@relay.test", thread, msg), fresh
	}); err != nil {
		t.Fatal(err)
	}
	for _, conv := range []string{old, fresh} {
		if id, ok, err := s.ThreadByConvIndex(ctx, "acme", conv); err != nil || !ok || id != th.ID {
			t.Errorf("ThreadByConvIndex(%s) = %d, %v, %v; want thread %d", conv, id, ok, err, th.ID)
		}
	}
	if th.ConvIndex != fresh {
		t.Errorf("thread's ConvIndex = %s, want the latest issued %s", th.ConvIndex, fresh)
	}
}

// testRaw is a Raw of head and body.
func testRaw(head, body string) *Raw {
	return &Raw{Head: []byte(head), Body: strings.NewReader(body), Size: int64(len(body))}
}

// TestLastActivityFromMessages: an inbound commit does not rewrite the
// thread record, yet the thread's LastActivity (and so the timeline's
// order) follows its newest message.
func TestLastActivityFromMessages(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	s, err := Open(t.TempDir(), Options{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	seed(t, s)
	ctx := context.Background()
	older, _ := newThread(t, s)
	now = now.Add(time.Hour)
	newer, _ := newThread(t, s)
	now = now.Add(time.Hour)
	if _, err := s.CommitInbound(ctx, &Incoming{Message: Message{Tenant: "acme", Thread: older.ID, Direction: Inbound,
		InternetMessageID: "late@cand.test"}, Raw: testRaw("", "x\r\n")}); err != nil {
		t.Fatal(err)
	}
	th, err := s.Thread(ctx, "acme", older.ID)
	if err != nil || !th.LastActivity.Equal(now) {
		t.Fatalf("LastActivity = %v %v, want %v", th.LastActivity, err, now)
	}
	ths, err := s.CandidateThreads(ctx, "acme", "c-1")
	if err != nil || len(ths) != 2 || ths[0].ID != older.ID || ths[1].ID != newer.ID {
		t.Fatalf("timeline order after a reply on the older thread: %v", err)
	}
}
