package router

import (
	"context"
	"strings"
	"testing"

	"syncrelay/mailhdr"
	"syncrelay/store"
)

// The phases of Route, each on its own: parse, matchThread, authenticate,
// commit.

func TestParse(t *testing.T) {
	t.Parallel()
	r := &Router{MaxHeaderBytes: 200}
	for _, tc := range []struct {
		name, raw     string
		refusal, from string
		msgID         string
	}{
		{"plain", "From: Carl <CARL@Cand.test>\r\nMessage-ID: <a1@cand.test>\r\n\r\nbody\r\n", "", "carl@cand.test", "<a1@cand.test>"},
		{"no From", "Subject: hi\r\n\r\nbody\r\n", "", "", ""},
		{"header over the limit", "From: a@cand.test\r\nX-Pad: " + strings.Repeat("x", 300) + "\r\n\r\nbody\r\n", "header_too_large", "", ""},
		{"malformed", "From a@cand.test\r\n\r\nbody\r\n", "malformed_header", "", ""},
	} {
		msg, refusal := r.parse(Input{Tenant: "acme", Body: memBody(tc.raw)})
		if refusal != tc.refusal {
			t.Errorf("%s: refusal %q, want %q", tc.name, refusal, tc.refusal)
			continue
		}
		if refusal != "" {
			continue
		}
		wantID, _ := mailhdr.NormalizeMsgID(tc.msgID)
		if msg.from != tc.from || msg.msgID != wantID || msg.tenant.ID != "acme" || msg.userKnown {
			t.Errorf("%s: parsed from %q msgid %q tenant %q userKnown %v", tc.name, msg.from, msg.msgID, msg.tenant.ID, msg.userKnown)
		}
	}
}

// parsed parses raw for tenant (CRLF), with the tenant's record read as
// Route reads it for a message of interest.
func (e *env) parsed(tenant, raw string) *parsed {
	e.t.Helper()
	msg, refusal := e.r.parse(Input{Tenant: tenant, Body: memBody(crlf(raw))})
	if refusal != "" {
		e.t.Fatalf("parse: %s", refusal)
	}
	return msg
}

func TestMatchThread(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	th, sent := e.sent("acme", "c-1", "u-rec", 0)
	ref := "<" + sent.InternetMessageID + ">"
	delay := "From: mailer-daemon@mailer.test\nMessage-ID: <d1@mailer.test>\nMIME-Version: 1.0\n" +
		"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b1\"\n\n" +
		"--b1\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mailer.test\n\nFinal-Recipient: rfc822; carl@cand.test\nAction: delayed\nStatus: 4.4.7\n\n" +
		"--b1\nContent-Type: text/rfc822-headers\n\nMessage-ID: " + ref + "\n\n--b1--\n"
	for _, tc := range []struct {
		name, tenant, raw string
		discard, by       string
		userRead          bool
	}{
		{"reply to our message", "acme", reply("carl@cand.test", "r1@cand.test", ref, ""), "", ByToken, false},
		{"unrelated", "acme", reply("carl@cand.test", "r2@cand.test", "<other@cand.test>", ""), "no_match", "", false},
		{"another tenant's token", "beta", reply("carl@cand.test", "r3@cand.test", ref, ""), "no_match", "", false},
		{"delay notice", "acme", delay, "delivery_report", "", false},
		{"X-Syncrelay-Thread reads the user", "acme",
			reply("rec@acme.test", "r4@acme.test", "<other@cand.test>", "X-Syncrelay-Thread: bogus\n"), "no_match", "", true},
	} {
		msg := e.parsed(tc.tenant, tc.raw)
		m, discard, err := e.r.matchThread(context.Background(), msg)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if discard != tc.discard || m.by != tc.by || m.ok != (tc.discard == "") {
			t.Errorf("%s: match %+v discard %q, want by %q discard %q", tc.name, m, discard, tc.by, tc.discard)
		}
		if m.ok && m.thread.ID != th.ID {
			t.Errorf("%s: thread %d, want %d", tc.name, m.thread.ID, th.ID)
		}
		if msg.userKnown != tc.userRead || (tc.userRead && (msg.fromUser == nil || msg.fromUser.ID != "u-rec")) {
			t.Errorf("%s: user read %v (%+v)", tc.name, msg.userKnown, msg.fromUser)
		}
	}
}

func TestAuthenticate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	ctx := context.Background()
	_, err := e.st.UpdateTenant(ctx, "beta", func(t *store.Tenant) error { t.DKIMPolicy = store.PolicyOff; return nil })
	must(t, err)
	candidate := reply("carl@cand.test", "a1@cand.test", "<x@y>", "")
	user := reply("rec@acme.test", "a2@acme.test", "<x@y>", "")
	for _, tc := range []struct {
		name, tenant, raw string
		pass              bool
		refusal, policy   string
	}{
		{"aligned signature", "acme", e.sign("cand.test", candidate), true, "", store.PolicyRequire},
		{"unsigned", "acme", candidate, false, "dkim_fail", store.PolicyRequire},
		{"another domain's signature", "acme", e.sign("mailer.test", candidate), false, "dkim_fail", store.PolicyRequire},
		{"the tenant's user, signed by an undeclared domain", "acme", e.sign("mailer.test", user), false, ReasonDKIMUnaligned, store.PolicyRequire},
		{"policy off", "beta", candidate, false, "", store.PolicyOff},
	} {
		msg := e.parsed(tc.tenant, tc.raw)
		msg.tenant, err = e.st.Tenant(ctx, tc.tenant)
		must(t, err)
		var out Outcome
		a, err := e.r.authenticate(ctx, msg, &out)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if a.pass != tc.pass || a.refusal != tc.refusal || a.policy != tc.policy || a.temporary {
			t.Errorf("%s: %+v", tc.name, a)
		}
		if tc.raw != candidate && tc.raw != user && len(out.DKIM) == 0 {
			t.Errorf("%s: no DKIM result recorded", tc.name)
		}
	}
}

func TestCommit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	ctx := context.Background()
	th, sent := e.sent("acme", "c-1", "u-rec", 0)
	raw := e.sign("cand.test", reply("carl@cand.test", "c1@cand.test", "<"+sent.InternetMessageID+">", ""))
	commit := func() Outcome {
		t.Helper()
		msg := e.parsed("acme", raw)
		m, discard, err := e.r.matchThread(ctx, msg)
		if err != nil || discard != "" {
			t.Fatalf("match: %q %v", discard, err)
		}
		msg.tenant, err = e.st.Tenant(ctx, "acme")
		must(t, err)
		out := Outcome{Thread: store.ThreadRef(m.thread.ID), MatchedBy: m.by}
		a, err := e.r.authenticate(ctx, msg, &out)
		must(t, err)
		must(t, e.r.commit(ctx, msg, m, a, &out))
		return out
	}
	for _, want := range []struct{ decision, reason string }{{Stored, ByToken}, {Duplicate, "duplicate"}} {
		out := commit()
		if out.Decision != want.decision || out.Reason != want.reason || out.Direction != store.Inbound || out.Message == "" {
			t.Errorf("commit: %+v, want %s/%s", out, want.decision, want.reason)
		}
		if len(out.Log) < 2 || out.Log[0] != "decision" || out.Log[1] != want.decision {
			t.Errorf("log %v", out.Log)
		}
	}
	if msgs, _ := e.st.ThreadMessages(ctx, "acme", th.ID); len(msgs) != 2 {
		t.Fatalf("thread holds %d messages, want the sent one and the reply", len(msgs))
	}
}
