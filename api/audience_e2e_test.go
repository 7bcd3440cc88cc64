package api_test

// Issue 11 items 1 and 6 over the real pipeline (SMTP -> router -> store ->
// HTTP API): who sees a secret thread, per-thread duplicates, References
// read in full, and content-digest duplicates for mail without a usable
// Message-ID.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"syncrelay/store"
	"syncrelay/token"
)

// audience is a tenant with a thread A (started by u-rec, with the
// candidate's reply <r1@cand.test> on it) and a thread B (started by
// u-hm), both sent through syncrelay; u-out is an ordinary team member on
// neither.
type audience struct {
	*e2e
	inbound      string
	a, b         store.Thread
	sentA, sentB string // their sent Message-IDs, with <>
}

func startAudience(t *testing.T) *audience {
	t.Helper()
	e := startE2E(t)
	code, ten := e.apiCall("POST", "/v1/tenants", "", `{"id":"acme","name":"Acme","domains":["acme.test"],"provider":"google"}`)
	if code != 201 {
		t.Fatalf("tenant %d %v", code, ten)
	}
	for _, u := range []string{"rec", "hm", "out"} {
		if code, _ := e.apiCall("POST", "/v1/tenants/acme/users", "", fmt.Sprintf(`{"id":"u-%s","email":"%s@acme.test","name":"%s","role":"team_member"}`, u, u, u)); code != 201 {
			t.Fatal("user", code)
		}
	}
	if code, _ := e.apiCall("POST", "/v1/tenants/acme/candidates", "", `{"id":"c-1","name":"Carl","emails":["carl@cand.test"]}`); code != 201 {
		t.Fatal("candidate")
	}
	au := &audience{e2e: e, inbound: ten["inbound_address"].(string)}
	au.a, au.sentA = au.sendThread("u-rec", "Interview")
	au.b, au.sentB = au.sendThread("u-hm", "Offer")
	reply := e.sign(crlf(`From: Carl <carl@cand.test>
To: rec@acme.test
Subject: Re: Interview
Date: Mon, 02 Jun 2025 10:00:00 +0000
Message-ID: <r1@cand.test>
In-Reply-To: ` + au.sentA + `
References: ` + au.sentA + `
Content-Type: text/plain; charset=utf-8

Thursday works for me.
`))
	if got := e.deliver(au.inbound, reply); got != "OK: stored" {
		t.Fatalf("candidate's reply on A: %q", got)
	}
	return au
}

// sendThread records a message sent through syncrelay on a new thread, as
// the outbound sender does.
func (au *audience) sendThread(user, subject string) (store.Thread, string) {
	au.t.Helper()
	th := store.Thread{Tenant: "acme", Candidate: "c-1", Subject: subject, CreatedBy: user}
	m := store.Message{From: strings.TrimPrefix(user, "u-") + "@acme.test", To: []string{"carl@cand.test"}, Subject: subject, SentBy: user, Status: "sent"}
	var id string
	if err := au.st.CreateOutbound(context.Background(), &th, &m, func(tid, mid uint64) (string, string) {
		id = au.keys.MessageID(token.ID{Tenant: "acme", Thread: tid, Message: mid})
		return strings.Trim(id, "<>"), ""
	}); err != nil {
		au.t.Fatal(err)
	}
	return th, id
}

// sees reports whether user finds thread th on the timeline and may GET it.
func (au *audience) sees(user string, th store.Thread) bool {
	au.t.Helper()
	code, tl := au.apiCall("GET", "/v1/tenants/acme/candidates/c-1/threads", user, "")
	if code != 200 {
		au.t.Fatalf("timeline for %s: %d %v", user, code, tl)
	}
	listed := false
	for _, x := range tl["threads"].([]any) {
		listed = listed || x.(map[string]any)["id"] == store.ThreadRef(th.ID)
	}
	code, _ = au.apiCall("GET", "/v1/tenants/acme/threads/"+store.ThreadRef(th.ID), user, "")
	if listed != (code == 200) {
		au.t.Fatalf("%s: %s listed=%v but GET answers %d", user, store.ThreadRef(th.ID), listed, code)
	}
	return listed
}

func (au *audience) makeSecret(user string, th store.Thread) {
	au.t.Helper()
	if code, body := au.apiCall("PATCH", "/v1/tenants/acme/threads/"+store.ThreadRef(th.ID), user, `{"secret":true}`); code != 200 || body["secret"] != true {
		au.t.Fatalf("make secret: %d %v", code, body)
	}
}

// messages lists a thread's messages from the store, removed ones included.
func (au *audience) messages(th store.Thread) []*store.Message {
	au.t.Helper()
	msgs, err := au.st.ThreadMessages(context.Background(), "acme", th.ID)
	if err != nil {
		au.t.Fatal(err)
	}
	return msgs
}

func crlf(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")
}

// A tenant user who saw a public thread reuses one of its Message-IDs on
// his own DKIM-valid mail replying to another thread, after the first was
// made secret: the copy is a new message of the other thread, never a
// duplicate that touches the secret one, and he does not see it again.
func TestE2EReusedMessageIDDoesNotWidenSecretThread(t *testing.T) {
	t.Parallel()
	au := startAudience(t)
	if !au.sees("u-out", au.a) {
		t.Fatal("u-out does not see the public thread A")
	}
	before := au.messages(au.a)
	au.makeSecret("u-rec", au.a)
	if au.sees("u-out", au.a) {
		t.Fatal("u-out sees the secret thread before anything happened")
	}

	attack := "Delivered-To: out@acme.test\r\nX-Original-To: out@acme.test\r\n" + au.signAcme(crlf(`From: Out <out@acme.test>
To: carl@cand.test
Subject: Re: Offer
Date: Mon, 02 Jun 2025 11:00:00 +0000
Message-ID: <r1@cand.test>
In-Reply-To: `+au.sentB+`
References: `+au.sentB+`
Content-Type: text/plain; charset=utf-8

Hello again.
`))
	if got := au.deliver(au.inbound, attack); got != "OK: stored" {
		t.Fatalf("a copy matching thread B is not a duplicate of A's message: %q", got)
	}
	if au.sees("u-out", au.a) {
		t.Fatal("reusing a Message-ID of the secret thread made it visible to u-out")
	}
	after := au.messages(au.a)
	if len(after) != len(before) {
		t.Fatalf("thread A has %d messages, had %d", len(after), len(before))
	}
	for i := range before {
		if !slices.Equal(after[i].Mailboxes, before[i].Mailboxes) || !slices.Equal(after[i].LearnedIDs, before[i].LearnedIDs) {
			t.Fatalf("A's message %d changed by a copy matching B: mailboxes %v -> %v, learned %v -> %v",
				after[i].ID, before[i].Mailboxes, after[i].Mailboxes, before[i].LearnedIDs, after[i].LearnedIDs)
		}
	}
	if n := len(au.messages(au.b)); n != 2 {
		t.Fatalf("thread B has %d messages, want the sent one and u-out's", n)
	}
	// Duplicates are per thread: the same copy again is a duplicate on B.
	if got := au.deliver(au.inbound, attack); got != "OK: duplicate" {
		t.Fatalf("redelivered copy on B: %q", got)
	}
	if n := len(au.messages(au.b)); n != 2 {
		t.Fatalf("thread B has %d messages after a redelivery", n)
	}
	// The Message-ID still leads to thread A (matching rule 2): the copy on
	// B did not take over the index.
	follow := au.sign(crlf(`From: Carl <carl@cand.test>
To: rec@acme.test
Subject: Re: Interview
Date: Mon, 02 Jun 2025 12:00:00 +0000
Message-ID: <r2@cand.test>
In-Reply-To: <r1@cand.test>
Content-Type: text/plain; charset=utf-8

One more thing.
`))
	if got := au.deliver(au.inbound, follow); got != "OK: stored" {
		t.Fatalf("reply to r1: %q", got)
	}
	if n := len(au.messages(au.a)); n != len(before)+1 {
		t.Fatalf("a reply referencing r1 did not land on thread A (A has %d messages)", n)
	}
}

// Audience comes only from syncrelay's records: headers of the candidate's
// mail (X-Original-To, Delivered-To, To, Cc) and an unauthenticated From
// add nobody; a user's own mail with an aligned DKIM pass does.
func TestE2ESecretThreadAudienceFromOwnRecordsOnly(t *testing.T) {
	t.Parallel()
	au := startAudience(t)
	au.makeSecret("u-rec", au.a)

	named := "X-Original-To: out@acme.test\r\nDelivered-To: out@acme.test\r\n" + au.sign(crlf(`From: Carl <carl@cand.test>
To: out@acme.test
Cc: out@acme.test
Subject: Re: Interview
Date: Mon, 02 Jun 2025 11:00:00 +0000
Message-ID: <r2@cand.test>
In-Reply-To: `+au.sentA+`
References: `+au.sentA+`
Content-Type: text/plain; charset=utf-8

Adding your colleague.
`))
	if got := au.deliver(au.inbound, named); got != "OK: stored" {
		t.Fatalf("candidate's mail naming u-out: %q", got)
	}
	if au.sees("u-out", au.a) {
		t.Fatal("the candidate's X-Original-To/Delivered-To/To/Cc made u-out a participant")
	}

	// With dkim_policy=off a forged From of a tenant user is stored, but
	// unauthenticated mail never makes its From a participant.
	if code, body := au.apiCall("PATCH", "/v1/tenants/acme", "", `{"dkim_policy":"off"}`); code != 200 {
		t.Fatalf("dkim_policy off: %d %v", code, body)
	}
	forged := crlf(`From: Out <out@acme.test>
To: carl@cand.test
Subject: Re: Interview
Date: Mon, 02 Jun 2025 12:00:00 +0000
Message-ID: <forged@acme.test>
In-Reply-To: ` + au.sentA + `
References: ` + au.sentA + `
Content-Type: text/plain; charset=utf-8

Not really from Out.
`)
	if got := au.deliver(au.inbound, forged); got != "OK: stored" {
		t.Fatalf("unsigned mail under dkim_policy=off: %q", got)
	}
	if au.sees("u-out", au.a) {
		t.Fatal("an unauthenticated From made u-out a participant")
	}

	// Under dkim_policy=require, u-hm replies from his own mailbox with an
	// aligned DKIM pass: he took part in the thread and sees it.
	if code, body := au.apiCall("PATCH", "/v1/tenants/acme", "", `{"dkim_policy":"require"}`); code != 200 {
		t.Fatalf("dkim_policy require: %d %v", code, body)
	}
	if au.sees("u-hm", au.a) {
		t.Fatal("u-hm sees the secret thread before writing on it")
	}
	own := au.signAcme(crlf(`From: Hank <hm@acme.test>
To: carl@cand.test
Subject: Re: Interview
Date: Mon, 02 Jun 2025 13:00:00 +0000
Message-ID: <hm1@acme.test>
In-Reply-To: <r2@cand.test>
References: ` + au.sentA + ` <r2@cand.test>
Content-Type: text/plain; charset=utf-8

Happy to join.
`))
	if got := au.deliver(au.inbound, own); got != "OK: stored" {
		t.Fatalf("u-hm's own mail: %q", got)
	}
	if !au.sees("u-hm", au.a) {
		t.Fatal("u-hm wrote on the thread with an aligned DKIM pass but does not see it")
	}
	if au.sees("u-out", au.a) {
		t.Fatal("u-out sees the secret thread")
	}
}

// A valid token after the 1,000th References entry (the newest ids are at
// the end) still matches.
func TestE2EReferencesReadInFull(t *testing.T) {
	t.Parallel()
	au := startAudience(t)
	var refs strings.Builder
	for i := 0; i < 1500; i++ {
		fmt.Fprintf(&refs, " <old%d@elsewhere.test>\r\n", i)
	}
	reply := au.sign(crlf(`From: Carl <carl@cand.test>
To: hm@acme.test
Subject: Re: Offer
Date: Mon, 02 Jun 2025 11:00:00 +0000
Message-ID: <long-refs@cand.test>
References:` + refs.String() + ` ` + au.sentB + `
Content-Type: text/plain; charset=utf-8

Long thread.
`))
	if got := au.deliver(au.inbound, reply); got != "OK: stored" {
		t.Fatalf("token after 1,500 References entries: %q", got)
	}
	if n := len(au.messages(au.b)); n != 2 {
		t.Fatalf("thread B has %d messages", n)
	}
}

// Mail without a Message-ID, or with one over 998 characters, is stored
// once however often it is redelivered: the duplicate key is a digest of
// its content.
func TestE2ENoMessageIDDeduplicatedByContent(t *testing.T) {
	t.Parallel()
	au := startAudience(t)
	long := "<" + strings.Repeat("x", 600) + "\r\n " + strings.Repeat("y", 600) + "@cand.test>"
	for _, c := range []struct{ name, msgid string }{
		{"no Message-ID", ""},
		{"Message-ID over 998 characters", "Message-ID: " + long + "\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := len(au.messages(au.b))
			raw := crlf(`From: Carl <carl@cand.test>
To: hm@acme.test
Subject: Re: Offer
Date: Mon, 02 Jun 2025 11:00:00 +0000
` + c.msgid + `In-Reply-To: ` + au.sentB + `
Content-Type: text/plain; charset=utf-8

` + c.name + `.
`)
			reply := au.sign(raw)
			if got := au.deliver(au.inbound, reply); got != "OK: stored" {
				t.Fatalf("first copy: %q", got)
			}
			if got := au.deliver(au.inbound, reply); got != "OK: duplicate" {
				t.Fatalf("redelivered copy: %q", got)
			}
			if n := len(au.messages(au.b)); n != before+1 {
				t.Fatalf("thread B has %d messages, want %d", n, before+1)
			}
			// Other content is another message.
			other := au.sign(strings.Replace(raw, c.name+".", c.name+", again.", 1))
			if got := au.deliver(au.inbound, other); got != "OK: stored" {
				t.Fatalf("different content: %q", got)
			}
		})
	}
}
