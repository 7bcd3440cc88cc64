package router

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"syncrelay/store"
)

func (e *env) messages(th uint64) []*store.Message {
	e.t.Helper()
	msgs, err := e.st.ThreadMessages(context.Background(), "acme", th)
	must(e.t, err)
	return msgs
}

// A copy whose Message-ID is already on another thread is a new message of
// the thread it matches: it never changes the first message, which keeps
// the id for matching rule 2. Later copies are duplicates on their thread.
func TestReusedMessageIDIsPerThread(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	a, sentA := e.sent("acme", "c-1", "u-rec", 0)
	b, sentB := e.sent("acme", "c-1", "u-hm", 0)
	if out := e.route("acme", e.sign("cand.test", reply("carl@cand.test", "r1@cand.test", "<"+sentA.InternetMessageID+">", ""))); out.Decision != Stored {
		t.Fatalf("reply on A: %+v", out)
	}
	before := e.messages(a.ID)

	reuse := "Delivered-To: hm@acme.test\n" + e.sign("acme.test", strings.Replace(
		reply("hm@acme.test", "r1@cand.test", "<"+sentB.InternetMessageID+">", ""), "From: Carl", "From: Hank", 1))
	for i, want := range []string{Stored, Duplicate} {
		out := e.route("acme", reuse)
		if out.Decision != want || out.Thread != store.ThreadRef(b.ID) {
			t.Fatalf("copy %d on B: %+v, want %s", i+1, out, want)
		}
	}
	if n := len(e.messages(b.ID)); n != 2 {
		t.Fatalf("B has %d messages", n)
	}
	after := e.messages(a.ID)
	if len(after) != len(before) || !slices.Equal(after[1].Mailboxes, before[1].Mailboxes) {
		t.Fatalf("A's reply changed: %v -> %v", before[1].Mailboxes, after[1].Mailboxes)
	}
	out := e.route("acme", e.sign("cand.test", reply("carl@cand.test", "r2@cand.test", "<r1@cand.test>", "")))
	if out.Decision != Stored || out.MatchedBy != ByLearnedID || out.Thread != store.ThreadRef(a.ID) {
		t.Fatalf("reply to r1: %+v, want it on A", out)
	}
}

// References is read in full: a token after thousands of other entries
// (the newest are at the end) matches.
func TestReferencesReadInFull(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	th, sent := e.sent("acme", "c-1", "u-rec", 0)
	for _, n := range []int{999, 1000, 5000} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			var refs strings.Builder
			for i := 0; i < n; i++ {
				fmt.Fprintf(&refs, "<old%d@elsewhere.test>\n ", i)
			}
			raw := fmt.Sprintf("From: carl@cand.test\nTo: rec@acme.test\nSubject: Re\nMessage-ID: <refs%d@cand.test>\nReferences: %s<%s>\n\nhi\n",
				n, refs.String(), sent.InternetMessageID)
			out := e.route("acme", e.sign("cand.test", raw))
			if out.Decision != Stored || out.MatchedBy != ByToken || out.Thread != store.ThreadRef(th.ID) {
				t.Fatalf("outcome %+v", out)
			}
		})
	}
}

// Mail without a usable Message-ID is de-duplicated by a digest of its
// content (no second message), and the id the store
// makes up for it never matches a reply.
func TestNoMessageIDDeduplicatedByContent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	th, sent := e.sent("acme", "c-1", "u-rec", 0)
	refs := "<" + sent.InternetMessageID + ">"
	long := strings.Repeat("x", 500) + "\n " + strings.Repeat("y", 500) + "@cand.test"
	for _, c := range []struct{ name, msgid string }{
		{"none", ""},
		{"over 998 characters", "Message-ID: <" + long + ">\n"},
		{"empty", "Message-ID: <>\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			raw := "From: carl@cand.test\nTo: rec@acme.test\nSubject: Re\n" + c.msgid + "In-Reply-To: " + refs + "\n\n" + c.name + "\n"
			msgs := len(e.messages(th.ID))
			signed := e.sign("cand.test", raw)
			if out := e.route("acme", signed); out.Decision != Stored {
				t.Fatalf("first copy %+v", out)
			}
			if out := e.route("acme", signed); out.Decision != Duplicate || out.Reason != "duplicate" {
				t.Fatalf("redelivery %+v", out)
			}
			if n := len(e.messages(th.ID)); n != msgs+1 {
				t.Fatalf("%d new messages, want 1", n-msgs)
			}
			if out := e.route("acme", e.sign("cand.test", raw+"PS\n")); out.Decision != Stored {
				t.Fatalf("other content %+v", out)
			}
		})
	}
	stored := e.messages(th.ID)[1]
	out := e.route("acme", e.sign("cand.test", reply("carl@cand.test", "guess@cand.test", "<"+stored.InternetMessageID+">", "")))
	if out.Decision != Discarded {
		t.Fatalf("References to the made-up id %s matched: %+v", stored.InternetMessageID, out)
	}
}

// The router records whether From was authenticated (an aligned pass, and
// a policy that asks for one): only then can it name a participant.
func TestAuthAlignedRecorded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google")
	_, sent := e.sent("acme", "c-1", "u-rec", 0)
	refs := "<" + sent.InternetMessageID + ">"
	ctx := context.Background()
	for i, c := range []struct {
		name, policy, signer, from string
		want                       bool
	}{
		{"aligned pass", store.PolicyRequire, "acme.test", "hm@acme.test", true},
		{"candidate's aligned pass", store.PolicyRequire, "cand.test", "carl@cand.test", true},
		{"unsigned under off", store.PolicyOff, "", "hm@acme.test", false},
		{"aligned pass under off", store.PolicyOff, "acme.test", "hm@acme.test", false},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.st.UpdateTenant(ctx, "acme", func(t *store.Tenant) error { t.DKIMPolicy = c.policy; return nil })
			must(t, err)
			raw := reply(c.from, fmt.Sprintf("auth%d@x.test", i), refs, "")
			if c.signer != "" {
				raw = e.sign(c.signer, raw)
			}
			out := e.route("acme", raw)
			if out.Decision != Stored {
				t.Fatalf("outcome %+v", out)
			}
			id, _ := store.ParseRef("m-", out.Message)
			m, err := e.st.Message(ctx, "acme", id)
			must(t, err)
			if m.AuthAligned != c.want {
				t.Fatalf("AuthAligned = %v, want %v", m.AuthAligned, c.want)
			}
		})
	}
}
