package storetest

import (
	"errors"
	"fmt"
	"slices"
	"time"

	"syncrelay/store"
)

var inboundTests = []test{
	{"CommitStored", testCommitStored},
	{"CommitMissingThread", testCommitMissingThread},
	{"DuplicateAddsMailbox", testDuplicateAddsMailbox},
	{"RemovedStaysRemoved", testRemovedStaysRemoved},
	{"SameIDOtherThread", testSameIDOtherThread},
	{"SameIDOtherTenant", testSameIDOtherTenant},
	{"NoMessageID", testNoMessageID},
	{"LearnSentCopyID", testLearnSentCopyID},
	{"ConcurrentIdenticalCommits", testConcurrentIdentical},
	{"ConcurrentDistinctCommits", testConcurrentDistinct},
	{"MarkBounced", testMarkBounced},
}

func testCommitStored(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	before, _ := e.b.Thread(e.ctx, tenantID, th.ID)
	e.advance(time.Millisecond)
	head, body := "Authentication-Results: relay.test; dkim=pass\r\n", "Subject: Re: Interview\r\n\r\nYes!\r\n"
	in := reply(th.ID, "r1@cand.test", "Rec@Acme.test", rawOf(head, body))
	in.Message.AutoReply = true
	in.Message.DKIM = []store.AuthResult{{Domain: "cand.test", Result: "pass"}}
	res := e.commit(in)
	if res.Decision != store.Stored || res.Ref.Thread != th.ID || res.Ref.Message == 0 || res.Removed {
		e.fatalf("CommitInbound = %+v", res)
	}
	m := e.message(tenantID, res.Ref.Message)
	// The store fills in the candidate (from the thread), the receipt
	// time, the raw copy and the mailbox (lowercased).
	if m.Thread != th.ID || m.Candidate != "c-1" || m.Direction != store.Inbound || m.InternetMessageID != "r1@cand.test" ||
		m.From != "carl@cand.test" || !m.AutoReply || m.MatchedBy != "token" || len(m.DKIM) != 1 || m.Received.IsZero() ||
		!slices.Equal(m.Mailboxes, []string{"rec@acme.test"}) || m.Size != int64(len(head)+len(body)) || m.Raw == "" {
		e.fatalf("stored message = %+v", m)
	}
	e.mustRaw(e.b, m.Raw, []byte(head+body))
	if ref, ok, _ := e.b.LookupMsgID(e.ctx, tenantID, "r1@cand.test"); !ok || ref != res.Ref {
		e.fatalf("received Message-ID not indexed: %+v %v", ref, ok)
	}
	if after, _ := e.b.Thread(e.ctx, tenantID, th.ID); !after.LastActivity.After(before.LastActivity) {
		e.fatalf("thread activity not moved: %v -> %v", before.LastActivity, after.LastActivity)
	}
	// message.received is enqueued in the same commit, with the ids.
	evs := e.events("message.received")
	if len(evs) != 1 || evs[0].Tenant != tenantID || evs[0].State != store.EventPending {
		e.fatalf("message.received events = %+v", evs)
	}
	d := e.eventData(evs[0])
	if d["message_id"] != store.MessageRef(m.ID) || d["thread_id"] != store.ThreadRef(th.ID) || d["candidate"] != "c-1" ||
		d["direction"] != store.Inbound || d["auto_reply"] != false {
		e.fatalf("message.received data = %v", d)
	}
}

func testCommitMissingThread(e *env) {
	e.seed()
	e.mkTenant("beta", "beta-8899aabbccddeeff@relay.test")
	e.mkCandidate("beta", "c-b", "b@cand.test")
	bth, _ := e.send("beta", "c-b", 0) // a thread of another tenant
	for _, thread := range []uint64{987654, bth.ID} {
		in := reply(thread, fmt.Sprintf("lost%d@cand.test", thread), "", rawOf("", "x\r\n"))
		if _, err := e.b.CommitInbound(e.ctx, in); !errors.Is(err, store.ErrNotFound) {
			e.fatalf("commit to thread %d = %v, want ErrNotFound", thread, err)
		}
		if _, ok, _ := e.b.LookupMsgID(e.ctx, tenantID, in.Message.InternetMessageID); ok {
			e.fatalf("a failed commit was indexed")
		}
	}
	if evs := e.events("message.received"); len(evs) != 0 {
		e.fatalf("a failed commit raised events: %+v", evs)
	}
}

// testDuplicateAddsMailbox: the same Message-ID on the same thread is
// stored once; later copies only add the mailbox they came through and
// raise no second event (SPEC §3).
func testDuplicateAddsMailbox(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	first := e.commit(reply(th.ID, "r1@cand.test", "rec@acme.test", rawOf("", "original\r\n")))
	for _, c := range []struct {
		mailbox string
		raw     *store.Raw
	}{
		{"hm@acme.test", rawOf("", "a different copy\r\n")},
		{"HM@Acme.test", nil}, // same mailbox, other case: not added twice
		{"", nil},
	} {
		res := e.commit(reply(th.ID, "r1@cand.test", c.mailbox, c.raw))
		if res.Decision != store.Duplicate || res.Ref != first.Ref || res.Removed {
			e.fatalf("copy via %q = %+v, want a duplicate of %+v", c.mailbox, res, first.Ref)
		}
	}
	m := e.message(tenantID, first.Ref.Message)
	if !slices.Equal(m.Mailboxes, []string{"rec@acme.test", "hm@acme.test"}) {
		e.fatalf("mailboxes = %v", m.Mailboxes)
	}
	e.mustRaw(e.b, m.Raw, []byte("original\r\n")) // the first copy's bytes stay
	if msgs, _ := e.b.ThreadMessages(e.ctx, tenantID, th.ID); len(msgs) != 2 {
		e.fatalf("thread has %d messages, want 2", len(msgs))
	}
	if evs := e.events("message.received"); len(evs) != 1 {
		e.fatalf("%d message.received events, want 1", len(evs))
	}
}

// testRemovedStaysRemoved: a message removed from the profile stays
// removed when another copy arrives, and its bytes are gone after the
// next compaction.
func testRemovedStaysRemoved(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	keep := e.commit(reply(th.ID, "keep@cand.test", "", rawOf("H: 1\r\n", pattern(2000, "keep"))))
	res := e.commit(reply(th.ID, "r1@cand.test", "rec@acme.test", rawOf("H: 1\r\n", pattern(2000, "secret"))))
	loc := e.message(tenantID, res.Ref.Message).Raw
	e.must(e.b.RemoveMessage(e.ctx, tenantID, res.Ref.Message), "RemoveMessage")
	m := e.message(tenantID, res.Ref.Message)
	if !m.Removed || m.RemovedAt.IsZero() || m.Raw != "" {
		e.fatalf("removed message = %+v (a tombstone without raw bytes)", m)
	}
	if _, err := e.b.Compact(e.ctx); err != nil {
		e.fatalf("Compact: %v", err)
	}
	if _, err := e.readRaw(e.b, loc); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("removed message's bytes readable after Compact: %v", err)
	}
	// Compaction moved or kept the live message's bytes intact.
	e.mustRaw(e.b, e.message(tenantID, keep.Ref.Message).Raw, []byte("H: 1\r\n"+pattern(2000, "keep")))

	again := e.commit(reply(th.ID, "r1@cand.test", "hm@acme.test", rawOf("H: 1\r\n", pattern(2000, "secret"))))
	if again.Decision != store.Duplicate || !again.Removed || again.Ref != res.Ref {
		e.fatalf("copy after removal = %+v, want a removed duplicate", again)
	}
	m = e.message(tenantID, res.Ref.Message)
	if !m.Removed || m.Raw != "" {
		e.fatalf("a later copy brought the message back: %+v", m)
	}
	page, _, _ := e.b.ThreadMessagesPage(e.ctx, tenantID, th.ID, 0, 10)
	if slices.Contains(msgIDs(page), res.Ref.Message) {
		e.fatalf("removed message on the profile")
	}
	if err := e.b.RemoveMessage(e.ctx, tenantID, 987654); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("RemoveMessage(missing) = %v, want ErrNotFound", err)
	}
}

// testSameIDOtherThread: a copy that matches a different thread is not a
// duplicate of a message on another thread, and never changes that
// message (SPEC §3): a reused Message-ID must not add a mailbox (and so
// an audience member) to another, maybe secret, thread.
func testSameIDOtherThread(e *env) {
	e.seed()
	secret, _ := e.send(tenantID, "c-1", 0)
	other, _ := e.send(tenantID, "c-1", 0)
	first := e.commit(reply(secret.ID, "reused@cand.test", "rec@acme.test", rawOf("", "on the secret thread\r\n")))
	res := e.commit(reply(other.ID, "reused@cand.test", "boss@acme.test", rawOf("", "on another thread\r\n")))
	if res.Ref.Thread != other.ID || res.Decision != store.Stored {
		e.fatalf("copy on another thread = %+v, want stored on thread %d", res, other.ID)
	}
	m := e.message(tenantID, first.Ref.Message)
	if !slices.Equal(m.Mailboxes, []string{"rec@acme.test"}) {
		e.fatalf("the other thread's copy changed the first message: mailboxes %v", m.Mailboxes)
	}
	if in, _ := e.b.ThreadInvolves(e.ctx, tenantID, secret.ID, "u-boss", "boss@acme.test"); in {
		e.fatalf("a reused Message-ID added a user to another thread")
	}
}

func testSameIDOtherTenant(e *env) {
	e.seed()
	e.mkTenant("beta", "beta-8899aabbccddeeff@relay.test")
	e.mkCandidate("beta", "c-1", "carl@cand.test")
	th, _ := e.send(tenantID, "c-1", 0)
	bth, _ := e.send("beta", "c-1", 0)
	a := e.commit(reply(th.ID, "same@cand.test", "", rawOf("", "a\r\n")))
	in := reply(bth.ID, "same@cand.test", "", rawOf("", "b\r\n"))
	in.Message.Tenant = "beta"
	b := e.commit(in)
	if a.Decision != store.Stored || b.Decision != store.Stored || b.Ref.Thread != bth.ID {
		e.fatalf("same Message-ID in two tenants: %+v %+v, want both stored", a, b)
	}
	ra, _, _ := e.b.LookupMsgID(e.ctx, tenantID, "same@cand.test")
	rb, _, _ := e.b.LookupMsgID(e.ctx, "beta", "same@cand.test")
	if ra != a.Ref || rb != b.Ref {
		e.fatalf("LookupMsgID: acme %+v beta %+v", ra, rb)
	}
}

// testNoMessageID: mail without a Message-ID (the router found none it
// could use) is still stored, each copy on its own.
func testNoMessageID(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	a := e.commit(reply(th.ID, "", "", rawOf("", "one\r\n")))
	b := e.commit(reply(th.ID, "", "", rawOf("", "two\r\n")))
	if a.Decision != store.Stored || b.Decision != store.Stored || a.Ref == b.Ref {
		e.fatalf("commits without Message-ID = %+v %+v", a, b)
	}
	e.mustRaw(e.b, e.message(tenantID, b.Ref.Message).Raw, []byte("two\r\n"))
	if _, ok, _ := e.b.LookupMsgID(e.ctx, tenantID, ""); ok {
		e.fatalf("the empty Message-ID resolves")
	}
}

// testLearnSentCopyID: a user's forwarded sent copy teaches the
// provider-assigned Message-ID of a message syncrelay sent; nothing new is
// stored (SPEC §3, rule 2).
func testLearnSentCopyID(e *env) {
	e.seed()
	th, sent := e.send(tenantID, "c-1", 0)
	learn := func(id, mailbox string) store.CommitResult {
		e.t.Helper()
		return e.commit(&store.Incoming{Message: store.Message{Tenant: tenantID, InternetMessageID: id},
			Learn: &store.Ref{Thread: th.ID, Message: sent.ID}, Mailbox: mailbox})
	}
	res := learn("cafe@mail.gmail.com", "Rec@acme.test")
	if res.Decision != store.Duplicate || res.Ref != (store.Ref{Thread: th.ID, Message: sent.ID}) {
		e.fatalf("learn = %+v", res)
	}
	learn("cafe@mail.gmail.com", "rec@acme.test") // a second copy learns nothing new
	learn(sent.InternetMessageID, "")             // nor does the issued id itself
	ref, ok, err := e.b.LookupMsgID(e.ctx, tenantID, "cafe@mail.gmail.com")
	if err != nil || !ok || ref != res.Ref {
		e.fatalf("learned id: %+v %v %v", ref, ok, err)
	}
	m := e.message(tenantID, sent.ID)
	if !slices.Equal(m.LearnedIDs, []string{"cafe@mail.gmail.com"}) || !slices.Equal(m.Mailboxes, []string{"rec@acme.test"}) {
		e.fatalf("sent message after learning: learned %v mailboxes %v", m.LearnedIDs, m.Mailboxes)
	}
	if msgs, _ := e.b.ThreadMessages(e.ctx, tenantID, th.ID); len(msgs) != 1 {
		e.fatalf("a sent copy was stored as a message: %d messages", len(msgs))
	}
	if evs := e.events("message.received"); len(evs) != 0 {
		e.fatalf("a sent copy raised message.received")
	}
	_, err = e.b.CommitInbound(e.ctx, &store.Incoming{Message: store.Message{Tenant: tenantID, InternetMessageID: "x@y"},
		Learn: &store.Ref{Thread: th.ID, Message: 987654}})
	if !errors.Is(err, store.ErrNotFound) {
		e.fatalf("learning for a missing message = %v, want ErrNotFound", err)
	}
}

// testConcurrentIdenticalCommits: copies of one message reaching the store
// at once (several forwarders, several nodes) are stored once.
func testConcurrentIdentical(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	const n = 16
	body := pattern(4096, "same")
	res := make([]store.CommitResult, n)
	errs := make([]error, n)
	parallel(n, func(i int) {
		in := reply(th.ID, "dup@cand.test", fmt.Sprintf("box%02d@acme.test", i), rawOf("", body))
		res[i], errs[i] = e.b.CommitInbound(e.ctx, in)
	})
	stored := 0
	for i := range n {
		if errs[i] != nil {
			e.fatalf("commit %d: %v", i, errs[i])
		}
		if res[i].Ref != res[0].Ref {
			e.fatalf("commit %d: ref %+v, commit 0: %+v", i, res[i].Ref, res[0].Ref)
		}
		if res[i].Decision == store.Stored {
			stored++
		} else if res[i].Decision != store.Duplicate {
			e.fatalf("commit %d: decision %q", i, res[i].Decision)
		}
	}
	if stored != 1 {
		e.fatalf("%d of %d identical commits stored, want exactly 1", stored, n)
	}
	m := e.message(tenantID, res[0].Ref.Message)
	if len(m.Mailboxes) != n {
		e.fatalf("mailboxes = %v, want all %d", m.Mailboxes, n)
	}
	e.mustRaw(e.b, m.Raw, []byte(body))
	if msgs, _ := e.b.ThreadMessages(e.ctx, tenantID, th.ID); len(msgs) != 2 {
		e.fatalf("thread has %d messages, want 2", len(msgs))
	}
	if evs := e.events("message.received"); len(evs) != 1 {
		e.fatalf("%d message.received events, want 1", len(evs))
	}
}

// testConcurrentDistinct: concurrent commits (one group commit) each get
// their own message and bytes, and one failing request fails alone.
func testConcurrentDistinct(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	const n = 24
	res := make([]store.CommitResult, n)
	errs := make([]error, n)
	body := func(i int) string { return pattern(1000+i*97, fmt.Sprintf("msg%02d", i)) }
	parallel(n, func(i int) {
		thread := th.ID
		if i%8 == 3 {
			thread = 987654 // fails alone
		}
		res[i], errs[i] = e.b.CommitInbound(e.ctx, reply(thread, fmt.Sprintf("m%02d@cand.test", i), "", rawOf("", body(i))))
	})
	seen := map[uint64]bool{}
	for i := range n {
		if i%8 == 3 {
			if !errors.Is(errs[i], store.ErrNotFound) {
				e.fatalf("commit %d to a missing thread = %v, want ErrNotFound", i, errs[i])
			}
			continue
		}
		if errs[i] != nil || res[i].Decision != store.Stored || seen[res[i].Ref.Message] {
			e.fatalf("commit %d = %+v %v", i, res[i], errs[i])
		}
		seen[res[i].Ref.Message] = true
		e.mustRaw(e.b, e.message(tenantID, res[i].Ref.Message).Raw, []byte(body(i)))
	}
}

// testMarkBounced: a DSN marks the sent message bounced and raises one
// message.bounced event; a redelivered DSN (same status) raises none.
func testMarkBounced(e *env) {
	e.seed()
	th, sent := e.send(tenantID, "c-1", 0)
	already, err := e.b.MarkBounced(e.ctx, tenantID, sent.ID, "5.1.1", "user unknown")
	if err != nil || already {
		e.fatalf("MarkBounced = %v %v", already, err)
	}
	m := e.message(tenantID, sent.ID)
	if !m.Bounced || m.BounceStatus != "5.1.1" || m.BounceDiagnostic != "user unknown" {
		e.fatalf("bounced message = %+v", m)
	}
	if already, err := e.b.MarkBounced(e.ctx, tenantID, sent.ID, "5.1.1", "user unknown"); err != nil || !already {
		e.fatalf("second MarkBounced = %v %v, want already", already, err)
	}
	evs := e.events("message.bounced")
	if len(evs) != 1 {
		e.fatalf("%d message.bounced events, want 1", len(evs))
	}
	d := e.eventData(evs[0])
	if d["message_id"] != store.MessageRef(sent.ID) || d["thread_id"] != store.ThreadRef(th.ID) || d["candidate"] != "c-1" ||
		d["status"] != "5.1.1" || d["diagnostic"] != "user unknown" {
		e.fatalf("message.bounced data = %v", d)
	}
	if _, err := e.b.MarkBounced(e.ctx, tenantID, 987654, "5.1.1", ""); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("MarkBounced(missing) = %v, want ErrNotFound", err)
	}
}
