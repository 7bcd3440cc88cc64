package storetest

import (
	"errors"
	"slices"
	"strings"
	"time"

	"syncrelay/store"
)

var threadTests = []test{
	{"CreateOutboundNewThread", testOutboundNewThread},
	{"CreateOutboundExistingThread", testOutboundExistingThread},
	{"CreateOutboundMissingThread", testOutboundMissingThread},
	{"IssuedIDsAreTenantScoped", testIssuedIDsTenantScoped},
	{"UpdateThread", testUpdateThread},
	{"CandidateThreadsNewestFirst", testCandidateThreads},
	{"PagingSkipsRemoved", testThreadPaging},
	{"ThreadInvolves", testThreadInvolves},
	{"ThreadInvolvesOwnRecordsOnly", testThreadInvolvesOwnRecordsOnly},
	{"UpdateMessage", testUpdateMessage},
	{"LatestIssuedMessageID", testLatestIssued},
	{"FailStaleSends", testFailStaleSends},
}

func testOutboundNewThread(e *env) {
	e.seed()
	var minted [][2]uint64
	th := store.Thread{Tenant: tenantID, Candidate: "c-1", Subject: "Interview", CreatedBy: "u-rec"}
	m := store.Message{From: "rec@acme.test", To: []string{"carl@cand.test"}, Subject: "Interview",
		SentBy: "u-rec", SendFor: "u-boss", Status: "sending"}
	err := e.b.CreateOutbound(e.ctx, &th, &m, func(thread, msg uint64) (string, string) {
		minted = append(minted, [2]uint64{thread, msg})
		// Mixed case: the store keeps Message-IDs lowercased.
		return strings.ToUpper(mintID(thread, msg)), mintConv(thread)
	})
	e.must(err, "CreateOutbound")
	if th.ID == 0 || m.ID == 0 || th.Created.IsZero() {
		e.fatalf("ids not allocated: thread %+v message %+v", th, m)
	}
	// mint is called with the ids the store allocated (maybe more than
	// once: callbacks may be retried).
	if len(minted) == 0 || minted[len(minted)-1] != [2]uint64{th.ID, m.ID} {
		e.fatalf("mint called with %v, want (%d, %d)", minted, th.ID, m.ID)
	}
	if m.Thread != th.ID || m.Tenant != tenantID || m.Candidate != "c-1" || m.Direction != store.Outbound ||
		m.InternetMessageID != mintID(th.ID, m.ID) || m.Received.IsZero() {
		e.fatalf("message = %+v", m)
	}
	if th.ConvIndex != mintConv(th.ID) || !slices.Contains(th.Participants, "u-rec") || !slices.Contains(th.Participants, "u-boss") {
		e.fatalf("thread = %+v (conv index, participants sender and Send For grantor)", th)
	}

	// Committed before the provider is called, so a reply that arrives
	// first matches: the issued Message-ID and conversation are indexed.
	ref, ok, err := e.b.LookupMsgID(e.ctx, tenantID, m.InternetMessageID)
	if err != nil || !ok || ref != (store.Ref{Thread: th.ID, Message: m.ID}) {
		e.fatalf("LookupMsgID(issued) = %+v %v %v", ref, ok, err)
	}
	if id, ok, err := e.b.ThreadByConvIndex(e.ctx, tenantID, th.ConvIndex); err != nil || !ok || id != th.ID {
		e.fatalf("ThreadByConvIndex = %d %v %v", id, ok, err)
	}
	got, err := e.b.Thread(e.ctx, tenantID, th.ID)
	e.must(err, "Thread")
	if got.Candidate != "c-1" || got.Subject != "Interview" || got.CreatedBy != "u-rec" || got.ConvIndex != th.ConvIndex {
		e.fatalf("Thread = %+v", got)
	}
	rm := e.message(tenantID, m.ID)
	if rm.Status != "sending" || rm.SentBy != "u-rec" || rm.SendFor != "u-boss" || !slices.Equal(rm.To, m.To) {
		e.fatalf("Message = %+v", rm)
	}
}

func testOutboundExistingThread(e *env) {
	e.seed()
	th, first := e.send(tenantID, "c-1", 0)
	th2 := store.Thread{Tenant: tenantID, ID: th.ID}
	m2 := store.Message{From: "boss@acme.test", SentBy: "u-boss", Status: "sending"}
	e.must(e.b.CreateOutbound(e.ctx, &th2, &m2, mint), "CreateOutbound on an existing thread")
	if th2.ID != th.ID || m2.Thread != th.ID || m2.Candidate != "c-1" || m2.ID == first.ID {
		e.fatalf("second message %+v on thread %+v", m2, th2)
	}
	if th2.ConvIndex != th.ConvIndex || th2.Subject != "Interview" || th2.CreatedBy != "u-rec" {
		e.fatalf("thread changed by a second message: %+v", th2)
	}
	if !slices.Contains(th2.Participants, "u-rec") || !slices.Contains(th2.Participants, "u-boss") {
		e.fatalf("participants = %v", th2.Participants)
	}
	if id, ok, _ := e.b.ThreadByConvIndex(e.ctx, tenantID, th.ConvIndex); !ok || id != th.ID {
		e.fatalf("conversation lost by a second message: %d %v", id, ok)
	}
	for _, m := range []store.Message{first, m2} {
		if ref, ok, _ := e.b.LookupMsgID(e.ctx, tenantID, m.InternetMessageID); !ok || ref.Message != m.ID {
			e.fatalf("LookupMsgID(%s) = %+v %v", m.InternetMessageID, ref, ok)
		}
	}
	msgs, err := e.b.ThreadMessages(e.ctx, tenantID, th.ID)
	e.must(err, "ThreadMessages")
	if len(msgs) != 2 || msgs[0].ID != first.ID || msgs[1].ID != m2.ID {
		e.fatalf("ThreadMessages = %+v, want both, oldest first", msgs)
	}
	// A mint without a conversation header issues none.
	th3 := store.Thread{Tenant: tenantID, Candidate: "c-2"}
	m3 := store.Message{SentBy: "u-rec"}
	e.must(e.b.CreateOutbound(e.ctx, &th3, &m3, func(thread, msg uint64) (string, string) { return mintID(thread, msg), "" }), "CreateOutbound")
	if th3.ConvIndex != "" {
		e.fatalf("ConvIndex = %q, want none", th3.ConvIndex)
	}
}

func testOutboundMissingThread(e *env) {
	e.seed()
	th := store.Thread{Tenant: tenantID, ID: 987654}
	m := store.Message{SentBy: "u-rec"}
	if err := e.b.CreateOutbound(e.ctx, &th, &m, mint); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("CreateOutbound on a missing thread = %v, want ErrNotFound", err)
	}
	if _, ok, _ := e.b.LookupMsgID(e.ctx, tenantID, mintID(987654, 1)); ok {
		e.fatalf("a refused message was indexed")
	}
}

// testIssuedIDsTenantScoped: a token or conversation only counts for the
// tenant that issued it (SPEC §3).
func testIssuedIDsTenantScoped(e *env) {
	e.seed()
	e.mkTenant("beta", "beta-8899aabbccddeeff@relay.test")
	th, m := e.send(tenantID, "c-1", 0)
	if _, ok, _ := e.b.LookupMsgID(e.ctx, "beta", m.InternetMessageID); ok {
		e.fatalf("another tenant's issued Message-ID resolves")
	}
	if _, ok, _ := e.b.ThreadByConvIndex(e.ctx, "beta", th.ConvIndex); ok {
		e.fatalf("another tenant's conversation resolves")
	}
	if _, err := e.b.Thread(e.ctx, "beta", th.ID); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("Thread under another tenant = %v, want ErrNotFound", err)
	}
	if _, err := e.b.Message(e.ctx, "beta", m.ID); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("Message under another tenant = %v, want ErrNotFound", err)
	}
	if msgs, err := e.b.ThreadMessages(e.ctx, "beta", th.ID); err != nil || len(msgs) != 0 {
		e.fatalf("ThreadMessages under another tenant = %v %v", msgs, err)
	}
	if ths, err := e.b.CandidateThreads(e.ctx, "beta", "c-1"); err != nil || len(ths) != 0 {
		e.fatalf("CandidateThreads under another tenant = %v %v", ths, err)
	}
}

func testUpdateThread(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	got, err := e.b.UpdateThread(e.ctx, tenantID, th.ID, func(t *store.Thread) error {
		t.Secret, t.SecretBy = true, "u-rec"
		return nil
	})
	e.must(err, "UpdateThread")
	if !got.Secret || got.SecretBy != "u-rec" || got.ID != th.ID {
		e.fatalf("UpdateThread = %+v", got)
	}
	if re, _ := e.b.Thread(e.ctx, tenantID, th.ID); re == nil || !re.Secret {
		e.fatalf("secret flag not stored: %+v", re)
	}
	boom := errors.New("boom")
	if _, err := e.b.UpdateThread(e.ctx, tenantID, th.ID, func(t *store.Thread) error { t.Secret = false; return boom }); !errors.Is(err, boom) {
		e.fatalf("UpdateThread with failing fn = %v", err)
	}
	if re, _ := e.b.Thread(e.ctx, tenantID, th.ID); !re.Secret {
		e.fatalf("a failed update was stored")
	}
	if _, err := e.b.UpdateThread(e.ctx, tenantID, 987654, func(*store.Thread) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("UpdateThread(missing) = %v, want ErrNotFound", err)
	}
}

func testCandidateThreads(e *env) {
	e.seed()
	old, _ := e.send(tenantID, "c-1", 0)
	e.advance(time.Millisecond)
	newer, _ := e.send(tenantID, "c-1", 0)
	e.send(tenantID, "c-2", 0)
	e.advance(time.Millisecond)
	// Activity (a reply) moves the old thread to the front.
	e.commit(reply(old.ID, "r1@cand.test", "", rawOf("", "hi\r\n")))
	ths, err := e.b.CandidateThreads(e.ctx, tenantID, "c-1")
	e.must(err, "CandidateThreads")
	if len(ths) != 2 || ths[0].ID != old.ID || ths[1].ID != newer.ID {
		e.fatalf("CandidateThreads = %+v, want [%d %d] (latest activity first)", ths, old.ID, newer.ID)
	}
	if ths, _ := e.b.CandidateThreads(e.ctx, tenantID, "c-9"); len(ths) != 0 {
		e.fatalf("threads of an unknown candidate: %+v", ths)
	}
}

func testThreadPaging(e *env) {
	e.seed()
	th, sent := e.send(tenantID, "c-1", 0)
	var ids []uint64
	for _, id := range []string{"ra", "rb", "rc", "rd", "re"} {
		ids = append(ids, e.commit(reply(th.ID, id+"@cand.test", "", nil)).Ref.Message)
	}
	e.must(e.b.RemoveMessage(e.ctx, tenantID, ids[1]), "RemoveMessage")
	p1, more, err := e.b.ThreadMessagesPage(e.ctx, tenantID, th.ID, 0, 3)
	e.must(err, "ThreadMessagesPage")
	if !more || len(p1) != 3 || p1[0].ID != sent.ID || p1[1].ID != ids[0] || p1[2].ID != ids[2] {
		e.fatalf("page 1 = %v more=%v, want [%d %d %d] and more (removed skipped)", msgIDs(p1), more, sent.ID, ids[0], ids[2])
	}
	p2, more, err := e.b.ThreadMessagesPage(e.ctx, tenantID, th.ID, p1[2].ID, 3)
	e.must(err, "ThreadMessagesPage")
	if more || len(p2) != 2 || p2[0].ID != ids[3] || p2[1].ID != ids[4] {
		e.fatalf("page 2 = %v more=%v, want [%d %d]", msgIDs(p2), more, ids[3], ids[4])
	}
	// An exact fit has no more.
	if p, more, _ := e.b.ThreadMessagesPage(e.ctx, tenantID, th.ID, 0, 5); len(p) != 5 || more {
		e.fatalf("exact page = %v more=%v", msgIDs(p), more)
	}
	// ThreadMessages keeps removed messages (tombstones), oldest first.
	all, err := e.b.ThreadMessages(e.ctx, tenantID, th.ID)
	e.must(err, "ThreadMessages")
	if len(all) != 6 || !all[2].Removed {
		e.fatalf("ThreadMessages = %v, want 6 with the removed one", msgIDs(all))
	}
}

func msgIDs(ms []*store.Message) []uint64 {
	var out []uint64
	for _, m := range ms {
		out = append(out, m.ID)
	}
	return out
}

// testThreadInvolves: a participant of a thread (SPEC §3, who sees a
// secret thread) is a user who sent a message on it through syncrelay, had
// one sent for them (Send For), or was a To/Cc recipient of one sent
// through syncrelay.
func testThreadInvolves(e *env) {
	e.seed()
	th := store.Thread{Tenant: tenantID, Candidate: "c-1", CreatedBy: "u-rec"}
	m := store.Message{From: "boss@acme.test", To: []string{"carl@cand.test"}, Cc: []string{"HM@Acme.test"},
		SentBy: "u-rec", SendFor: "u-boss", Status: "sent"}
	e.must(e.b.CreateOutbound(e.ctx, &th, &m, mint), "CreateOutbound")
	other, _ := e.send(tenantID, "c-2", 0)
	for _, c := range []struct {
		user, email string
		want        bool
	}{
		{"u-rec", "", true},            // sent it
		{"u-boss", "", true},           // it was sent for them
		{"u-hm", "hm@acme.test", true}, // Cc, case-insensitive
		{"u-hm", "", false},            // an address is needed to match To/Cc
		{"u-x", "x@acme.test", false},
		{"", "", false},
	} {
		got, err := e.b.ThreadInvolves(e.ctx, tenantID, th.ID, c.user, c.email)
		if err != nil || got != c.want {
			e.fatalf("ThreadInvolves(%q, %q) = %v %v, want %v", c.user, c.email, got, err, c.want)
		}
	}
	if got, _ := e.b.ThreadInvolves(e.ctx, tenantID, other.ID, "u-boss", "hm@acme.test"); got {
		e.fatalf("involvement leaks across threads")
	}
}

// testThreadInvolvesOwnRecordsOnly: what a sender controls never makes
// anyone a participant (SPEC §3): the To/Cc of inbound mail, the mailbox
// a copy came through (X-Original-To, Delivered-To), a From without an
// aligned DKIM pass.
func testThreadInvolvesOwnRecordsOnly(e *env) {
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	in := reply(th.ID, "r1@cand.test", "HM@acme.test", nil)
	in.Message.To = []string{"rec@acme.test", "boss@acme.test"}
	in.Message.Cc = []string{"cc@acme.test"}
	e.commit(in)
	spoof := reply(th.ID, "r2@cand.test", "", nil)
	spoof.Message.From, spoof.Message.Direction = "mallory@acme.test", store.Outbound
	e.commit(spoof)
	for _, c := range []struct{ user, email string }{
		{"u-boss", "boss@acme.test"},
		{"u-cc", "cc@acme.test"},
		{"u-hm", "hm@acme.test"},
		{"u-mallory", "mallory@acme.test"},
	} {
		if got, err := e.b.ThreadInvolves(e.ctx, tenantID, th.ID, c.user, c.email); err != nil || got {
			e.fatalf("ThreadInvolves(%q, %q) = %v %v, want false", c.user, c.email, got, err)
		}
	}
}

func testUpdateMessage(e *env) {
	e.seed()
	th, m := e.send(tenantID, "c-1", 0)
	got, err := e.b.UpdateMessage(e.ctx, tenantID, m.ID, nil, func(m *store.Message) error {
		m.Status = "sent"
		return nil
	})
	e.must(err, "UpdateMessage")
	if got.Status != "sent" || got.Thread != th.ID || got.Raw != "" {
		e.fatalf("UpdateMessage = %+v", got)
	}

	// With raw: the sent bytes become the message's raw copy, in the
	// same commit.
	first := "Message-ID: <" + m.InternetMessageID + ">\r\n\r\n" + pattern(3000, "first")
	got, err = e.b.UpdateMessage(e.ctx, tenantID, m.ID, rawOf("", first), func(m *store.Message) error { return nil })
	e.must(err, "UpdateMessage with raw")
	if got.Raw == "" || got.Size != int64(len(first)) {
		e.fatalf("raw not attached: %+v", got)
	}
	e.mustRaw(e.b, got.Raw, []byte(first))

	// A second raw replaces the first; the first is freed by compaction.
	old := got.Raw
	second := "X-Resent: 1\r\n" + pattern(5000, "second")
	got, err = e.b.UpdateMessage(e.ctx, tenantID, m.ID, rawOf("X-Head: h\r\n", second), func(m *store.Message) error { return nil })
	e.must(err, "UpdateMessage with a new raw")
	if got.Raw == old || got.Size != int64(len("X-Head: h\r\n")+len(second)) {
		e.fatalf("raw not replaced: %+v", got)
	}
	e.mustRaw(e.b, got.Raw, []byte("X-Head: h\r\n"+second))
	if _, err := e.b.Compact(e.ctx); err != nil {
		e.fatalf("Compact: %v", err)
	}
	if _, err := e.readRaw(e.b, old); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("replaced raw still readable after Compact: %v", err)
	}
	cur := e.message(tenantID, m.ID)
	e.mustRaw(e.b, cur.Raw, []byte("X-Head: h\r\n"+second))

	// A failing fn changes nothing, raw included.
	boom := errors.New("boom")
	_, err = e.b.UpdateMessage(e.ctx, tenantID, m.ID, rawOf("", "lost"), func(m *store.Message) error { m.Status = "x"; return boom })
	if !errors.Is(err, boom) {
		e.fatalf("UpdateMessage with failing fn = %v", err)
	}
	after := e.message(tenantID, m.ID)
	if after.Status != "sent" || after.Raw != cur.Raw {
		e.fatalf("a failed update was stored: %+v", after)
	}
	e.mustRaw(e.b, after.Raw, []byte("X-Head: h\r\n"+second))
	if _, err := e.b.UpdateMessage(e.ctx, tenantID, 987654, nil, func(*store.Message) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("UpdateMessage(missing) = %v, want ErrNotFound", err)
	}
}

func testLatestIssued(e *env) {
	if _, ok, err := e.b.LatestIssuedMessageID(e.ctx); ok || err != nil {
		e.fatalf("empty store: ok=%v err=%v", ok, err)
	}
	e.seed()
	th, _ := e.send(tenantID, "c-1", 0)
	_, last := e.send(tenantID, "c-1", th.ID)
	e.commit(reply(th.ID, "r1@cand.test", "", nil)) // received mail is not issued
	id, ok, err := e.b.LatestIssuedMessageID(e.ctx)
	if err != nil || !ok || id != last.InternetMessageID {
		e.fatalf("LatestIssuedMessageID = %q %v %v, want %q", id, ok, err, last.InternetMessageID)
	}
}

// testFailStaleSends: a message left "sending" by a process that stopped
// during the provider call is marked failed once older than the cutoff.
func testFailStaleSends(e *env) {
	e.seed()
	_, old := e.send(tenantID, "c-1", 0)
	_, sent := e.send(tenantID, "c-1", 0)
	_, err := e.b.UpdateMessage(e.ctx, tenantID, sent.ID, nil, func(m *store.Message) error { m.Status = "sent"; return nil })
	e.must(err, "UpdateMessage")
	e.advance(2 * time.Hour)
	_, fresh := e.send(tenantID, "c-2", 0)
	n, err := e.b.FailStaleSends(e.ctx, e.now().Add(-time.Hour), "interrupted")
	if err != nil || n != 1 {
		e.fatalf("FailStaleSends = %d %v, want 1", n, err)
	}
	if m := e.message(tenantID, old.ID); m.Status != "failed" || m.Error != "interrupted" {
		e.fatalf("stale send = %+v", m)
	}
	if m := e.message(tenantID, fresh.ID); m.Status != "sending" {
		e.fatalf("fresh send = %+v", m)
	}
	if m := e.message(tenantID, sent.ID); m.Status != "sent" {
		e.fatalf("sent message = %+v", m)
	}
	if n, _ := e.b.FailStaleSends(e.ctx, e.now().Add(-time.Hour), "interrupted"); n != 0 {
		e.fatalf("second FailStaleSends = %d, want 0", n)
	}
}
