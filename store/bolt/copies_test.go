package bolt

import (
	"context"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// Who took part in a thread comes only from syncrelay's records (SPEC §3
// "Who sees a secret thread").
func TestThreadInvolvesOwnRecordsOnly(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name        string
		m           Message
		user, email string
		want        bool
	}{
		{"sent it through syncrelay", Message{SentBy: "u-a"}, "u-a", "a@acme.test", true},
		{"had it sent for them", Message{SentBy: "u-a", SendFor: "u-b"}, "u-b", "b@acme.test", true},
		{"To of mail sent through syncrelay", Message{SentBy: "u-a", To: []string{"B@acme.test"}}, "u-b", "b@acme.test", true},
		{"Cc of mail sent through syncrelay", Message{SentBy: "u-a", Cc: []string{"b@acme.test"}}, "u-b", "b@acme.test", true},
		{"own mail with an aligned DKIM pass", Message{Direction: Outbound, From: "b@acme.test", AuthAligned: true}, "u-b", "b@acme.test", true},
		{"own mail without an aligned pass", Message{Direction: Outbound, From: "b@acme.test"}, "u-b", "b@acme.test", false},
		{"To of inbound mail", Message{From: "carl@cand.test", To: []string{"b@acme.test"}, AuthAligned: true}, "u-b", "b@acme.test", false},
		{"Cc of inbound mail", Message{From: "carl@cand.test", Cc: []string{"b@acme.test"}, AuthAligned: true}, "u-b", "b@acme.test", false},
		{"mailbox of a forwarded copy", Message{From: "carl@cand.test", Mailboxes: []string{"b@acme.test"}, AuthAligned: true}, "u-b", "b@acme.test", false},
		{"To of a user's own mail", Message{From: "a@acme.test", To: []string{"b@acme.test"}, AuthAligned: true}, "u-b", "b@acme.test", false},
		{"someone else", Message{SentBy: "u-a", To: []string{"carl@cand.test"}}, "u-b", "b@acme.test", false},
		{"nobody", Message{SentBy: "u-a"}, "", "", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := c.m.Involves(c.user, c.email); got != c.want {
				t.Fatalf("Involves = %v, want %v", got, c.want)
			}
		})
	}
}

// commitCopy commits an inbound copy on thread th and fails the test on error.
func commitCopy(t *testing.T, s *Store, th uint64, msgid, digest, mailbox string) CommitResult {
	t.Helper()
	res, err := s.CommitInbound(context.Background(), &Incoming{Message: Message{Tenant: "acme", Thread: th, Direction: Inbound,
		InternetMessageID: msgid, From: "carl@cand.test"}, Digest: digest, Mailbox: mailbox})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// Duplicates are per thread: a copy that matches another thread is a new
// message there and never changes the first thread's message, which keeps
// the Message-ID for matching.
func TestDuplicatesPerThread(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	seed(t, s)
	ctx := context.Background()
	a, _ := newThread(t, s)
	b, _ := newThread(t, s)

	first := commitCopy(t, s, a.ID, "r1@cand.test", "", "rec@acme.test")
	onB := commitCopy(t, s, b.ID, "r1@cand.test", "", "out@acme.test")
	if onB.Decision != Stored || onB.Ref.Thread != b.ID || onB.Ref == first.Ref {
		t.Fatalf("copy on another thread = %+v, want a new message on %d", onB, b.ID)
	}
	m, _ := s.Message(ctx, "acme", first.Ref.Message)
	if len(m.Mailboxes) != 1 || m.Mailboxes[0] != "rec@acme.test" {
		t.Fatalf("A's message changed by a copy on B: mailboxes %v", m.Mailboxes)
	}
	if ref, ok, _ := s.LookupMsgID(ctx, "acme", "r1@cand.test"); !ok || ref != first.Ref {
		t.Fatalf("Message-ID index now points at %v, want the first holder %v", ref, first.Ref)
	}
	for _, c := range []struct {
		th   uint64
		want Ref
	}{{a.ID, first.Ref}, {b.ID, onB.Ref}} {
		if ref, ok, _ := s.LookupCopy(ctx, "acme", c.th, "r1@cand.test", ""); !ok || ref != c.want {
			t.Errorf("LookupCopy on %d = %v %v, want %v", c.th, ref, ok, c.want)
		}
		if res := commitCopy(t, s, c.th, "r1@cand.test", "", ""); res.Decision != Duplicate || res.Ref != c.want {
			t.Errorf("redelivery on %d = %+v, want a duplicate of %v", c.th, res, c.want)
		}
	}
	// A removed message stays removed on its thread only.
	if err := s.RemoveMessage(ctx, "acme", first.Ref.Message); err != nil {
		t.Fatal(err)
	}
	if res := commitCopy(t, s, a.ID, "r1@cand.test", "", ""); res.Decision != Duplicate || !res.Removed {
		t.Fatalf("copy after removal = %+v", res)
	}
}

// Mail without a usable Message-ID is de-duplicated by its content digest,
// per thread; the synthetic id it is given never matches anything.
func TestDuplicatesByDigest(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	seed(t, s)
	ctx := context.Background()
	a, _ := newThread(t, s)
	b, _ := newThread(t, s)

	first := commitCopy(t, s, a.ID, "", "d1", "")
	for _, c := range []struct {
		name     string
		th       uint64
		digest   string
		wantDup  bool
		wantSame bool
	}{
		{"redelivery", a.ID, "d1", true, true},
		{"other content", a.ID, "d2", false, false},
		{"same content on another thread", b.ID, "d1", false, false},
		{"no digest: cannot be de-duplicated", a.ID, "", false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			res := commitCopy(t, s, c.th, "", c.digest, "")
			if (res.Decision == Duplicate) != c.wantDup || (res.Ref == first.Ref) != c.wantSame {
				t.Fatalf("commit = %+v (first %v)", res, first.Ref)
			}
		})
	}
	m, _ := s.Message(ctx, "acme", first.Ref.Message)
	if _, ok, _ := s.LookupMsgID(ctx, "acme", m.InternetMessageID); ok || m.InternetMessageID == "" {
		t.Fatalf("synthetic Message-ID %q matches", m.InternetMessageID)
	}
}

// A sent copy teaches its provider-assigned id, but never one that another
// message already holds.
func TestLearnNeverTakesAnIDOver(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	seed(t, s)
	ctx := context.Background()
	a, sentA := newThread(t, s)
	b, _ := newThread(t, s)
	onB := commitCopy(t, s, b.ID, "r1@cand.test", "", "")

	for _, id := range []string{"r1@cand.test", "fresh@mail.gmail.com"} {
		res, err := s.CommitInbound(ctx, &Incoming{Message: Message{Tenant: "acme", InternetMessageID: id}, Learn: &Ref{Thread: a.ID, Message: sentA.ID}})
		if err != nil || res.Decision != Duplicate {
			t.Fatalf("learn %s = %+v %v", id, res, err)
		}
	}
	m, _ := s.Message(ctx, "acme", sentA.ID)
	if len(m.LearnedIDs) != 1 || m.LearnedIDs[0] != "fresh@mail.gmail.com" {
		t.Fatalf("learned ids %v, want only the fresh one", m.LearnedIDs)
	}
	if ref, _, _ := s.LookupMsgID(ctx, "acme", "r1@cand.test"); ref != onB.Ref {
		t.Fatalf("r1 now points at %v, want %v", ref, onB.Ref)
	}
	if ref, ok, _ := s.LookupCopy(ctx, "acme", a.ID, "fresh@mail.gmail.com", ""); !ok || ref.Message != sentA.ID {
		t.Fatalf("learned id not a duplicate key on its thread: %v %v", ref, ok)
	}
}

// A store written before duplicates were per thread has only the
// tenant-wide index: a copy on the same thread is still a duplicate, a copy
// on another thread is not.
func TestDuplicatesInOlderStores(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	seed(t, s)
	a, _ := newThread(t, s)
	b, _ := newThread(t, s)
	first := commitCopy(t, s, a.ID, "old@cand.test", "", "")
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bMsgID).Delete(copyKey("acme", a.ID, "old@cand.test"))
	}); err != nil {
		t.Fatal(err)
	}
	if res := commitCopy(t, s, a.ID, "old@cand.test", "", ""); res.Decision != Duplicate || res.Ref != first.Ref {
		t.Fatalf("copy on the same thread = %+v", res)
	}
	if res := commitCopy(t, s, b.ID, "old@cand.test", "", ""); res.Decision != Stored {
		t.Fatalf("copy on another thread = %+v", res)
	}
}
