package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"syncrelay/store"
	"syncrelay/token"
)

func reply(from, msgid, refs string, extra string) string {
	return fmt.Sprintf("From: Carl <%s>\nTo: rec@acme.test\nSubject: Re: Interview\nDate: Mon, 23 Nov 2026 10:00:00 +0000\n"+
		"Message-ID: <%s>\nIn-Reply-To: %s\nReferences: %s\n%sMIME-Version: 1.0\nContent-Type: text/plain\n\nThanks, Tuesday works.\n",
		from, msgid, refs, refs, extra)
}

func TestReplyStoredThenDuplicate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	th, sent := e.sent("acme", "c-1", "u-rec", 0)
	raw := e.sign("cand.test", reply("carl@cand.test", "r1@cand.test", "<"+sent.InternetMessageID+">", ""))

	out := e.route("acme", raw)
	if out.Decision != Stored || out.Code != 250 || out.MatchedBy != ByToken || out.Direction != store.Inbound ||
		out.Thread != store.ThreadRef(th.ID) || out.Candidate != "c-1" {
		t.Fatalf("outcome %+v", out)
	}
	if len(out.DKIM) != 1 || out.DKIM[0].Result != "pass" || out.DKIM[0].Domain != "cand.test" {
		t.Fatalf("dkim %+v", out.DKIM)
	}
	msgs, _ := e.st.ThreadMessages(context.Background(), "acme", th.ID)
	if len(msgs) != 2 || msgs[1].InternetMessageID != "r1@cand.test" || msgs[1].Raw == "" {
		t.Fatalf("thread messages %+v", msgs)
	}
	f, err := e.st.OpenRaw(context.Background(), msgs[1].Raw)
	must(t, err)
	stored, _ := io.ReadAll(f)
	f.Close()
	if !strings.HasPrefix(string(stored), "Authentication-Results: relay.test;") || !strings.Contains(string(stored), "dkim=pass") {
		t.Fatalf("stored copy lacks our Authentication-Results: %.200q", stored)
	}
	evs, _ := e.st.Events(context.Background(), "")
	if len(evs) != 1 || evs[0].Type != "message.received" {
		t.Fatalf("events %+v", evs)
	}
	if users := fmt.Sprint(evs[0].Data.(map[string]any)["notify_users"]); users != "[u-rec]" {
		t.Fatalf("notify_users %s", users)
	}

	again := e.route("acme", raw)
	if again.Decision != Duplicate || again.Code != 250 {
		t.Fatalf("second copy %+v", again)
	}
	if evs, _ := e.st.Events(context.Background(), ""); len(evs) != 1 {
		t.Fatalf("duplicate raised an event")
	}
}

func TestDefaultDeny(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	_, sent := e.sent("acme", "c-1", "u-rec", 0)
	_, betaSent := e.sent("beta", "c-b", "u-b", 0)
	tok, _ := e.kr.ParseMessageID(sent.InternetMessageID)
	forged := strings.Replace(sent.InternetMessageID, e.kr.Mint(tok), e.kr.Mint(tok)[:len(e.kr.Mint(tok))-2]+"aa", 1)
	otherKey, _ := token.New([]byte(strings.Repeat("k", 32)), testHost)
	otherKeyID := strings.Trim(otherKey.MessageID(tok), "<>")

	cases := map[string]string{
		"unrelated":        "From: friend@cand.test\nTo: rec@acme.test\nSubject: lunch?\nMessage-ID: <p1@cand.test>\n\nhi\n",
		"subject only":     "From: carl@cand.test\nTo: rec@acme.test\nSubject: Re: Interview\nMessage-ID: <p2@cand.test>\n\nhi\n",
		"forged token":     reply("carl@cand.test", "f1@cand.test", "<"+forged+">", ""),
		"wrong key":        reply("carl@cand.test", "f2@cand.test", "<"+otherKeyID+">", ""),
		"other tenant":     reply("bea@cand.test", "f3@cand.test", "<"+betaSent.InternetMessageID+">", ""),
		"header from user": "From: carl@cand.test\nX-Syncrelay-Thread: " + e.kr.Mint(tok) + "\nMessage-ID: <f4@cand.test>\n\nx\n",
		"junk references":  reply("carl@cand.test", "f5@cand.test", "<<<>>> sr.@@ <a@> garbage (comment", ""),
	}
	for name, raw := range cases {
		t.Run(name, func(t *testing.T) {
			out := e.route("acme", e.sign("cand.test", raw))
			if out.Decision != Discarded || out.Code != 250 || out.Thread != "" {
				t.Fatalf("outcome %+v", out)
			}
		})
	}
	// Rule 3 only counts for mail from a tenant user, and only this tenant's token.
	out := e.route("beta", e.sign("cand.test", reply("carl@cand.test", "f6@cand.test", "<"+sent.InternetMessageID+">", "")))
	if out.Decision != Discarded {
		t.Fatalf("acme token accepted for beta: %+v", out)
	}
}

func TestDiscardLeavesNoTrace(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	e.sent("acme", "c-1", "u-rec", 0)
	const marker = "ZEBRA-MARKER-7731"
	raw := "From: " + marker + "@private.test\nTo: rec@acme.test\nSubject: " + marker + " salary\nMessage-ID: <" + marker + "@private.test>\n\nbody " + marker + "\n"
	out := e.route("acme", e.sign("cand.test", raw))
	if out.Decision != Discarded {
		t.Fatalf("outcome %+v", out)
	}
	e.st.Close() // flush everything to disk before grepping
	if strings.Contains(e.logbuf.String(), marker) || strings.Contains(strings.ToLower(e.logbuf.String()), strings.ToLower(marker)) {
		t.Fatalf("log mentions discarded mail: %s", e.logbuf)
	}
	if !strings.Contains(e.logbuf.String(), "msgid_hash=") {
		t.Fatalf("discard not logged with a hash: %s", e.logbuf)
	}
	err := filepath.WalkDir(e.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.Contains(strings.ToLower(string(b)), strings.ToLower(marker)) {
			t.Errorf("%s contains the discarded message's marker", p)
		}
		return nil
	})
	must(t, err)
}

func TestDKIMPolicy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	_, sent := e.sent("acme", "c-1", "u-rec", 0)
	ref := "<" + sent.InternetMessageID + ">"
	ctx := context.Background()

	unsigned := reply("carl@cand.test", "u1@cand.test", ref, "")
	out := e.route("acme", unsigned)
	if out.Decision != Rejected || out.Code != 550 || out.Enhanced != [3]int{5, 7, 1} || !strings.Contains(out.Text, "DKIM") {
		t.Fatalf("unsigned under require: %+v", out)
	}
	// Signed by an unaligned domain.
	out = e.route("acme", e.sign("mailer.test", reply("carl@cand.test", "u2@cand.test", ref, "")))
	if out.Decision != Rejected {
		t.Fatalf("unaligned signature accepted: %+v", out)
	}
	// Tampered after signing.
	signed := e.sign("cand.test", reply("carl@cand.test", "u3@cand.test", ref, ""))
	out = e.route("acme", strings.Replace(signed, "Tuesday", "Friday", 1))
	if out.Decision != Rejected || out.DKIM[0].Result != "fail" {
		t.Fatalf("tampered body: %+v", out)
	}

	_, err := e.st.UpdateTenant(ctx, "acme", func(t *store.Tenant) error { t.DKIMPolicy = store.PolicyQuarantine; return nil })
	must(t, err)
	out = e.route("acme", unsigned)
	if out.Decision != Quarantined || out.Code != 250 {
		t.Fatalf("quarantine: %+v", out)
	}
	q, _ := e.st.QuarantinedMessages(ctx, "acme")
	msgs, _ := e.st.ThreadMessages(ctx, "acme", 1)
	if len(q) != 1 || len(msgs) != 1 {
		t.Fatalf("quarantined %d, on thread %d (want 1 aside, none on the profile)", len(q), len(msgs))
	}

	_, err = e.st.UpdateTenant(ctx, "acme", func(t *store.Tenant) error { t.DKIMPolicy = store.PolicyOff; return nil })
	must(t, err)
	if out = e.route("acme", unsigned); out.Decision != Stored {
		t.Fatalf("policy off: %+v", out)
	}
}

func TestDNSTemporaryFailureIsTempfail(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	_, sent := e.sent("acme", "c-1", "u-rec", 0)
	raw := e.sign("cand.test", reply("carl@cand.test", "t1@cand.test", "<"+sent.InternetMessageID+">", ""))
	e.dns.SetServfail("s1._domainkey.cand.test")
	out := e.route("acme", raw)
	if out.Decision != Tempfail || out.Code != 451 || out.Enhanced != [3]int{4, 4, 3} {
		t.Fatalf("servfail: %+v", out)
	}
	msgs, _ := e.st.ThreadMessages(context.Background(), "acme", 1)
	if len(msgs) != 1 {
		t.Fatal("tempfailed message was stored")
	}
}

func TestSentCopyLearnsRewrittenID(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	th, sent := e.sent("acme", "c-1", "u-rec", 0)
	tok := e.kr.Mint(token.ID{Tenant: "acme", Thread: th.ID, Message: sent.ID})
	// Gmail's sent copy: Message-ID replaced, our X-Syncrelay-Thread kept.
	copyRaw := "From: Rita <rec@acme.test>\nTo: carl@cand.test\nSubject: Interview\nMessage-ID: <CAF=gmail123@mail.gmail.com>\nX-Syncrelay-Thread: " + tok + "\n\nHello Carl\n"
	out := e.route("acme", e.sign("acme.test", copyRaw))
	if out.Decision != Duplicate || out.Reason != "sent_copy" || out.MatchedBy != ByThreadToken || out.Direction != store.Outbound {
		t.Fatalf("sent copy: %+v", out)
	}
	// The candidate's client only references the provider's ID.
	r := e.sign("cand.test", reply("carl@cand.test", "r9@cand.test", "<CAF=gmail123@MAIL.GMAIL.COM>", ""))
	out = e.route("acme", r)
	if out.Decision != Stored || out.MatchedBy != ByLearnedID || out.Thread != store.ThreadRef(th.ID) {
		t.Fatalf("reply to learned id: %+v", out)
	}
	msgs, _ := e.st.ThreadMessages(context.Background(), "acme", th.ID)
	if len(msgs) != 2 {
		t.Fatalf("want the sent message and the reply, got %d", len(msgs))
	}
}

func TestThreadIndexOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "microsoft")
	th, _ := e.sent("acme", "c-1", "u-rec", 0)
	ti := e.kr.ThreadIndex("acme", th.ID, time.Date(2026, 11, 23, 10, 0, 0, 0, time.UTC), 1)
	raw := "From: carl@cand.test\nTo: rec@acme.test\nSubject: RE: Interview\nMessage-ID: <ol1@cand.test>\nThread-Topic: Interview\nThread-Index: " + ti + "\n\nok\n"
	out := e.route("acme", e.sign("cand.test", raw))
	if out.Decision != Stored || out.MatchedBy != ByThreadIndex {
		t.Fatalf("thread-index reply: %+v", out)
	}
}

func TestAutoReplyNoNotification(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	_, sent := e.sent("acme", "c-1", "u-rec", 0)
	raw := e.sign("cand.test", reply("carl@cand.test", "ooo@cand.test", "<"+sent.InternetMessageID+">", "Auto-Submitted: auto-replied\n"))
	out := e.route("acme", raw)
	if out.Decision != Stored || !out.AutoReply {
		t.Fatalf("auto reply: %+v", out)
	}
	evs, _ := e.st.Events(context.Background(), "")
	if users := fmt.Sprint(evs[0].Data.(map[string]any)["notify_users"]); users != "[]" {
		t.Fatalf("auto-reply notifies %s", users)
	}
}

func TestBounceMarksSentMessage(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	_, sent := e.sent("acme", "c-1", "u-rec", 0)
	dsn := "From: Mail Delivery Subsystem <mailer-daemon@mailer.test>\nTo: rec@acme.test\nSubject: Delivery Status Notification (Failure)\n" +
		"Message-ID: <dsn1@mailer.test>\nIn-Reply-To: <" + sent.InternetMessageID + ">\nAuto-Submitted: auto-replied\nMIME-Version: 1.0\nContent-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\n\n" +
		"--b1\nContent-Type: text/plain\n\nYour message wasn't delivered.\n\n" +
		"--b1\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mailer.test\n\nFinal-Recipient: rfc822; carl@cand.test\nAction: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 5.1.1 user unknown\n\n" +
		"--b1\nContent-Type: text/rfc822-headers\n\nFrom: rec@acme.test\nTo: carl@cand.test\nSubject: Interview\nMessage-ID: <" + sent.InternetMessageID + ">\n\n--b1--\n"
	// Signed by the DSN's own From domain (aligned).
	out := e.route("acme", e.sign("mailer.test", dsn))
	if out.Decision != Stored || out.Reason != "bounce" || out.MatchedBy != ByDSN {
		t.Fatalf("dsn: %+v", out)
	}
	m, _ := e.st.Message(context.Background(), "acme", sent.ID)
	if !m.Bounced || m.BounceStatus != "5.1.1" || !strings.Contains(m.BounceDiagnostic, "user unknown") {
		t.Fatalf("sent message not marked: %+v", m)
	}
	evs, _ := e.st.Events(context.Background(), "")
	if len(evs) != 1 || evs[0].Type != "message.bounced" {
		t.Fatalf("events %+v", evs)
	}
	// The forwarder retries: the same DSN again is a duplicate, no event.
	again := e.route("acme", e.sign("mailer.test", dsn))
	if again.Decision != Duplicate || again.Reason != "bounce" {
		t.Fatalf("redelivered dsn: %+v", again)
	}
	if evs, _ := e.st.Events(context.Background(), ""); len(evs) != 1 {
		t.Fatalf("redelivered dsn raised another event")
	}
	// A delay notice about our message is neither a bounce nor kept.
	delay := strings.NewReplacer("Action: failed", "Action: delayed", "Status: 5.1.1", "Status: 4.4.7", "dsn1@", "dsn2@").Replace(dsn)
	if out := e.route("acme", e.sign("mailer.test", delay)); out.Decision != Discarded || out.Reason != "delivery_report" {
		t.Fatalf("delay dsn: %+v", out)
	}
}

func TestHeaderLimits(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	e.r.MaxHeaderBytes = 1024
	big := "From: a@cand.test\nX-Pad: " + strings.Repeat("x", 990) + "\nX-Pad2: " + strings.Repeat("y", 200) + "\n\nbody\n"
	out := e.route("acme", big)
	if out.Decision != Rejected || out.Code != 552 || out.Enhanced != [3]int{5, 3, 4} {
		t.Fatalf("oversized header: %+v", out)
	}
}

func TestMIMEDepthLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	_, sent := e.sent("acme", "c-1", "u-rec", 0)
	var b strings.Builder
	for i := range 25 {
		fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"b%d\"\n\n--b%d\n", i, i)
	}
	b.WriteString("Content-Type: text/plain\n\nx\n")
	for i := 24; i >= 0; i-- {
		fmt.Fprintf(&b, "--b%d--\n", i)
	}
	raw := "From: carl@cand.test\nMessage-ID: <deep@cand.test>\nReferences: <" + sent.InternetMessageID + ">\nMIME-Version: 1.0\n" + b.String()
	out := e.route("acme", e.sign("cand.test", raw))
	if out.Decision != Rejected || out.Reason != "mime_too_deep" {
		t.Fatalf("deep MIME: %+v", out)
	}
}

// faultStore injects storage failures into the real store.
type faultStore struct {
	store.Store
	failPut, failCommit bool
}

var errDisk = errors.New("injected: no space left on device")

func (f *faultStore) CommitInbound(ctx context.Context, in *store.Incoming) (store.CommitResult, error) {
	if f.failPut && in.Raw != nil {
		return store.CommitResult{}, errDisk
	}
	if f.failCommit {
		return store.CommitResult{}, errDisk
	}
	return f.Store.CommitInbound(ctx, in)
}

func TestStorageFaultsAreTempfail(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	th, sent := e.sent("acme", "c-1", "u-rec", 0)
	fs := &faultStore{Store: e.st}
	e.r.Store = fs
	raw := e.sign("cand.test", reply("carl@cand.test", "ft@cand.test", "<"+sent.InternetMessageID+">", ""))
	for _, c := range []struct{ put, commit bool }{{true, false}, {false, true}} {
		fs.failPut, fs.failCommit = c.put, c.commit
		out, err := e.routeIn(context.Background(), Input{Tenant: "acme", Body: memBody(crlf(raw))})
		if !errors.Is(err, errDisk) || out.Decision != Tempfail || out.Code != 451 || out.Enhanced[0] != 4 {
			t.Fatalf("fault %+v: outcome %+v err %v", c, out, err)
		}
		if strings.Contains(out.Text, "space") {
			t.Fatal("internal error text in the reply")
		}
	}
	// Once the fault clears, the same message is stored.
	fs.failPut, fs.failCommit = false, false
	if out := e.route("acme", raw); out.Decision != Stored {
		t.Fatalf("after fault: %+v", out)
	}
	msgs, _ := e.st.ThreadMessages(context.Background(), "acme", th.ID)
	if len(msgs) != 2 {
		t.Fatalf("thread has %d messages", len(msgs))
	}
}
