package api

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"

	"syncrelay/store"
)

const replyRaw = `From: Carl <carl@cand.test>
To: grantor@acme.test
Cc: Cc Person <cc@acme.test>
Subject: Re: Interview
Message-ID: <r1@cand.test>
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/html; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

<html><body><p>Merci, Ren=E9!</p><p>See my CV.</p></body></html>
--b
Content-Type: application/pdf
Content-Disposition: attachment; filename="cv.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--b--
`

// secretSetup builds the Send For thread (requester sends as grantor,
// cc'ing another user; the candidate replies to the grantor and to a user
// who was not on the sent message), made secret by a user who is not a
// participant, plus an ordinary thread.
func secretSetup(t *testing.T) (w *world, secret store.Thread, reply string, open store.Thread) {
	w = newWorld(t)
	secret, sent := w.send("acme", "c-1", 0, uRequester, uGrantor, "Interview")
	_, err := w.st.UpdateMessage(context.Background(), "acme", sent.ID, nil, func(m *store.Message) error {
		m.Cc = []string{"cc@acme.test"}
		return nil
	})
	must(t, err)
	res := w.reply("acme", secret.ID, "r1@cand.test", "carl@cand.test", []string{"grantor@acme.test", "named@acme.test"}, []string{"cc@acme.test"}, replyRaw)
	reply = store.MessageRef(res.Ref.Message)
	open, _ = w.send("acme", "c-1", 0, uAdmin, "", "Offer")
	code, body := callJSON(t, w.hs, "PATCH", "/v1/tenants/acme/threads/"+store.ThreadRef(secret.ID), uMaker, `{"secret":true}`)
	if code != 200 || body["secret"] != true || body["secret_by"] != uMaker {
		t.Fatalf("make secret: %d %v", code, body)
	}
	checkSchema(t, "Thread", body)
	return w, secret, reply, open
}

func TestVisibilityMatrix(t *testing.T) {
	t.Parallel()
	w, secret, reply, open := secretSetup(t)
	th := store.ThreadRef(secret.ID)
	cases := []struct {
		user, role string
		sees       bool
	}{
		{uMaker, "made it secret", true},
		{uRequester, "participant: Send For requester and thread creator", true},
		{uGrantor, "participant: Send For grantor", true},
		{uCc, "participant: in the Cc of a message sent through syncrelay", true},
		{uNamed, "named only by the candidate's mail", false},
		{uAdmin, "admin", true},
		{uSuper, "super_admin", true},
		{uOutsider, "outsider team_member", false},
		{uLimited, "outsider limited_team_member", false},
	}
	for _, c := range cases {
		t.Run(c.user, func(t *testing.T) {
			// list
			code, body := callJSON(t, w.hs, "GET", "/v1/tenants/acme/candidates/c-1/threads", c.user, "")
			if code != 200 {
				t.Fatalf("list: %d %v", code, body)
			}
			checkSchema(t, "Timeline", body)
			ids := threadIDs(body)
			if slices.Contains(ids, th) != c.sees {
				t.Fatalf("%s (%s): secret thread in list = %v, want %v", c.user, c.role, !c.sees, c.sees)
			}
			if !slices.Contains(ids, store.ThreadRef(open.ID)) {
				t.Fatalf("%s: ordinary thread missing", c.user)
			}
			want := 404
			if c.sees {
				want = 200
			}
			for _, p := range []string{
				"/v1/tenants/acme/messages/" + reply,
				"/v1/tenants/acme/messages/" + reply + "/raw",
				"/v1/tenants/acme/messages/" + reply + "/attachments/2",
				"/v1/tenants/acme/threads/" + th,
				"/v1/tenants/acme/threads/" + th + "/messages",
			} {
				code, h, raw := call(t, w.hs, "GET", p, c.user, "")
				if code != want {
					t.Fatalf("%s (%s): GET %s = %d, want %d", c.user, c.role, p, code, want)
				}
				if code == 404 && (h.Get("Content-Type") != "application/problem+json" || strings.Contains(string(raw), "secret")) {
					t.Fatalf("404 must be an ordinary problem that does not reveal the thread: %s", raw)
				}
			}
			// A user who cannot see the thread cannot change it either.
			if !c.sees {
				if code, _ := callJSON(t, w.hs, "PATCH", "/v1/tenants/acme/threads/"+th, c.user, `{"secret":false}`); code != 404 {
					t.Fatalf("PATCH by outsider = %d", code)
				}
				if code, _ := callJSON(t, w.hs, "DELETE", "/v1/tenants/acme/messages/"+reply, c.user, ""); code != 404 {
					t.Fatalf("DELETE by outsider = %d", code)
				}
			}
		})
	}
	// Once visible again, everyone sees it.
	if code, body := callJSON(t, w.hs, "PATCH", "/v1/tenants/acme/threads/"+th, uAdmin, `{"secret":false}`); code != 200 || body["secret"] != false || body["secret_by"] != nil {
		t.Fatalf("admin unhide: %d %v", code, body)
	}
	_, body := callJSON(t, w.hs, "GET", "/v1/tenants/acme/candidates/c-1/threads", uOutsider, "")
	if !slices.Contains(threadIDs(body), th) {
		t.Fatal("unhidden thread not visible to an outsider")
	}
}

func TestWhoMayToggleSecret(t *testing.T) {
	t.Parallel()
	w, secret, _, open := secretSetup(t)
	th := "/v1/tenants/acme/threads/" + store.ThreadRef(secret.ID)
	// A participant cannot undo another user's decision.
	if code, p := callJSON(t, w.hs, "PATCH", th, uGrantor, `{"secret":false}`); code != 403 || !strings.Contains(p["detail"].(string), "made this thread secret") {
		t.Fatalf("participant unhide: %d %v", code, p)
	}
	// Setting it secret again is a no-op that keeps the original maker.
	if code, b := callJSON(t, w.hs, "PATCH", th, uGrantor, `{"secret":true}`); code != 200 || b["secret_by"] != uMaker {
		t.Fatalf("re-secret: %d %v", code, b)
	}
	// The maker can.
	if code, b := callJSON(t, w.hs, "PATCH", th, uMaker, `{"secret":false}`); code != 200 || b["secret"] != false {
		t.Fatalf("maker unhide: %d %v", code, b)
	}
	// Anyone who sees a thread may make it secret, even a limited member.
	op := "/v1/tenants/acme/threads/" + store.ThreadRef(open.ID)
	if code, b := callJSON(t, w.hs, "PATCH", op, uLimited, `{"secret":true}`); code != 200 || b["secret_by"] != uLimited {
		t.Fatalf("limited makes secret: %d %v", code, b)
	}
	if code, _ := callJSON(t, w.hs, "GET", op, uLimited, ""); code != 200 {
		t.Fatal("maker lost sight of the thread")
	}
	if code, _ := callJSON(t, w.hs, "GET", op, uOutsider, ""); code != 404 {
		t.Fatal("outsider still sees it")
	}
	if code, _ := callJSON(t, w.hs, "GET", op, uAdmin, ""); code != 200 { // admin (also its creator)
		t.Fatal("admin lost sight")
	}
	// Request validation.
	for body, want := range map[string]string{`{}`: "secret: required", `{"secret":"yes"}`: "invalid", `{"secret":true,"x":1}`: `unknown field "x"`, ``: "empty"} {
		code, p := callJSON(t, w.hs, "PATCH", th, uMaker, body)
		if code != 400 || !strings.Contains(fmt.Sprint(p["detail"]), strings.TrimPrefix(want, "invalid")) {
			t.Errorf("PATCH %q = %d %v", body, code, p)
		}
	}
	if code, _ := callJSON(t, w.hs, "PATCH", "/v1/tenants/acme/threads/th-999", uAdmin, `{"secret":true}`); code != 404 {
		t.Fatal("unknown thread")
	}
	if code, _ := callJSON(t, w.hs, "PATCH", "/v1/tenants/acme/threads/nope", uAdmin, `{"secret":true}`); code != 404 {
		t.Fatal("malformed thread id")
	}
}

func TestTimelineShapeTextAndAttachments(t *testing.T) {
	t.Parallel()
	w, secret, reply, _ := secretSetup(t)
	code, body := callJSON(t, w.hs, "GET", "/v1/tenants/acme/candidates/c-1/threads", uGrantor, "")
	if code != 200 || body["next_cursor"] != nil {
		t.Fatalf("%d %v", code, body)
	}
	threads := body["threads"].([]any)
	// Newest activity first: the ordinary thread was created after the reply.
	if len(threads) != 2 || threads[1].(map[string]any)["id"] != store.ThreadRef(secret.ID) {
		t.Fatalf("order %v", threadIDs(body))
	}
	st := threads[1].(map[string]any)
	if st["subject"] != "Interview" || st["created_by"] != uRequester || st["secret"] != true {
		t.Fatalf("thread %v", st)
	}
	msgs := st["messages"].([]any)
	if len(msgs) != 2 {
		t.Fatalf("messages %v", msgs)
	}
	out, in := msgs[0].(map[string]any), msgs[1].(map[string]any) // oldest first
	if out["direction"] != "outbound" || out["sent_by"] != uRequester || out["send_for"] != uGrantor || out["text"] != "Hello Carl, about Interview." || out["status"] != "sent" {
		t.Fatalf("outbound %v", out)
	}
	if in["id"] != reply || in["direction"] != "inbound" || in["from"] != "carl@cand.test" || in["sent_by"] != nil ||
		in["auto_reply"] != false || in["bounced"] != false || in["bounce_status"] != nil {
		t.Fatalf("inbound %v", in)
	}
	if in["text"] != "Merci, René!\n\nSee my CV." {
		t.Fatalf("HTML-only text: %q", in["text"])
	}
	if cc := in["cc"].([]any); len(cc) != 1 || cc[0] != "cc@acme.test" {
		t.Fatalf("cc %v", cc)
	}
	if d := in["dkim"].([]any); len(d) != 1 || d[0].(map[string]any)["result"] != "pass" {
		t.Fatalf("dkim %v", d)
	}
	atts := in["attachments"].([]any)
	if len(atts) != 1 {
		t.Fatalf("attachments %v", atts)
	}
	a := atts[0].(map[string]any)
	if a["id"] != "2" || a["filename"] != "cv.pdf" || a["content_type"] != "application/pdf" || a["size"] != float64(9) ||
		a["url"] != "/v1/tenants/acme/messages/"+reply+"/attachments/2" {
		t.Fatalf("attachment %v", a)
	}

	// Attachment download.
	code, h, raw := call(t, w.hs, "GET", a["url"].(string), uGrantor, "")
	if code != 200 || string(raw) != "%PDF-1.4\n" || h.Get("Content-Type") != "application/pdf" ||
		!strings.HasPrefix(h.Get("Content-Disposition"), "attachment") || !strings.Contains(h.Get("Content-Disposition"), "cv.pdf") ||
		h.Get("X-Content-Type-Options") != "nosniff" {
		t.Fatalf("download %d %v %q", code, h, raw)
	}
	for _, part := range []string{"1", "3", "x"} { // the body part is not an attachment
		if code, _, _ := call(t, w.hs, "GET", "/v1/tenants/acme/messages/"+reply+"/attachments/"+part, uGrantor, ""); code != 404 {
			t.Errorf("attachment %s: %d", part, code)
		}
	}

	// Single message and raw.
	code, m := callJSON(t, w.hs, "GET", "/v1/tenants/acme/messages/"+reply, uGrantor, "")
	if code != 200 || m["text"] != in["text"] || m["thread_id"] != store.ThreadRef(secret.ID) {
		t.Fatalf("get message %d %v", code, m)
	}
	checkSchema(t, "Message", m)
	code, h, raw = call(t, w.hs, "GET", "/v1/tenants/acme/messages/"+reply+"/raw", uGrantor, "")
	if code != 200 || h.Get("Content-Type") != "message/rfc822" || !strings.HasPrefix(string(raw), "Authentication-Results: ") ||
		!strings.Contains(string(raw), "Message-ID: <r1@cand.test>\r\n") || h.Get("ETag") == "" {
		t.Fatalf("raw %d %v %q", code, h, raw[:min(len(raw), 80)])
	}
	// Range requests work on the raw file.
	req := "/v1/tenants/acme/messages/" + reply + "/raw"
	code, _, part := callRange(t, w, req, uGrantor, "bytes=0-9")
	if code != 206 || string(part) != "Authentica" {
		t.Fatalf("range %d %q", code, part)
	}
}

func callRange(t *testing.T, w *world, path, actor, rng string) (int, map[string][]string, []byte) {
	t.Helper()
	r, _ := newReq("GET", w.hs.URL+path, actor)
	r.Header.Set("Range", rng)
	return doReq(t, r)
}

func TestPagination(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	var ths []store.Thread
	for i := 0; i < 5; i++ {
		th, _ := w.send("acme", "c-1", 0, uRequester, "", fmt.Sprintf("S%d", i))
		ths = append(ths, th)
	}
	// A long thread: 4 replies on the first one (which also makes it the newest).
	for i := 0; i < 4; i++ {
		w.reply("acme", ths[0].ID, fmt.Sprintf("p%d@cand.test", i), "carl@cand.test", []string{"req@acme.test"}, nil,
			fmt.Sprintf("From: carl@cand.test\nSubject: r\n\nreply %d\n", i))
	}
	// Secret threads of others are skipped without breaking pages.
	if code, _ := callJSON(t, w.hs, "PATCH", "/v1/tenants/acme/threads/"+store.ThreadRef(ths[2].ID), uAdmin, `{"secret":true}`); code != 200 {
		t.Fatal("secret")
	}
	var seen []string
	cursor := ""
	pages := 0
	for {
		p := "/v1/tenants/acme/candidates/c-1/threads?limit=2&messages_limit=2"
		if cursor != "" {
			p += "&cursor=" + url.QueryEscape(cursor)
		}
		code, body := callJSON(t, w.hs, "GET", p, uOutsider, "")
		if code != 200 {
			t.Fatalf("page: %d %v", code, body)
		}
		checkSchema(t, "Timeline", body)
		pages++
		seen = append(seen, threadIDs(body)...)
		for _, th := range body["threads"].([]any) {
			tm := th.(map[string]any)
			if len(tm["messages"].([]any)) > 2 {
				t.Fatal("messages_limit ignored")
			}
			if tm["id"] == store.ThreadRef(ths[0].ID) {
				mc, _ := tm["messages_next_cursor"].(string)
				if mc == "" {
					t.Fatal("long thread has no messages_next_cursor")
				}
				// Continue the long thread.
				code, mp := callJSON(t, w.hs, "GET", "/v1/tenants/acme/threads/"+store.ThreadRef(ths[0].ID)+"/messages?limit=10&cursor="+url.QueryEscape(mc), uOutsider, "")
				checkSchema(t, "MessagePage", mp)
				rest := mp["messages"].([]any)
				if code != 200 || len(rest) != 3 || mp["next_cursor"] != nil || rest[2].(map[string]any)["text"] != "reply 3" {
					t.Fatalf("rest of thread: %d %v", code, mp)
				}
			} else if tm["messages_next_cursor"] != nil {
				t.Fatalf("short thread has a messages cursor: %v", tm)
			}
		}
		c, _ := body["next_cursor"].(string)
		if c == "" {
			break
		}
		cursor = c
		if pages > 10 {
			t.Fatal("pagination does not end")
		}
	}
	want := []string{store.ThreadRef(ths[0].ID), store.ThreadRef(ths[4].ID), store.ThreadRef(ths[3].ID), store.ThreadRef(ths[1].ID)}
	if !slices.Equal(seen, want) {
		t.Fatalf("paged threads %v, want %v (newest activity first, secret skipped, each once)", seen, want)
	}
	for _, bad := range []string{"?limit=0", "?limit=101", "?limit=x", "?cursor=zzz", "?messages_limit=501", "?cursor=" + encodeCursor("m1.5")} {
		if code, _ := callJSON(t, w.hs, "GET", "/v1/tenants/acme/candidates/c-1/threads"+bad, uOutsider, ""); code != 400 {
			t.Errorf("%s: %d", bad, code)
		}
	}
	if code, _ := callJSON(t, w.hs, "GET", "/v1/tenants/acme/threads/"+store.ThreadRef(ths[0].ID)+"/messages?cursor="+encodeCursor("t1.1.1"), uOutsider, ""); code != 400 {
		t.Error("thread cursor accepted for messages")
	}
}

func TestActingUserRequired(t *testing.T) {
	t.Parallel()
	w, secret, reply, _ := secretSetup(t)
	paths := []struct{ method, path, body string }{
		{"GET", "/v1/tenants/acme/candidates/c-1/threads", ""},
		{"GET", "/v1/tenants/acme/threads/" + store.ThreadRef(secret.ID), ""},
		{"GET", "/v1/tenants/acme/threads/" + store.ThreadRef(secret.ID) + "/messages", ""},
		{"PATCH", "/v1/tenants/acme/threads/" + store.ThreadRef(secret.ID), `{"secret":false}`},
		{"GET", "/v1/tenants/acme/messages/" + reply, ""},
		{"GET", "/v1/tenants/acme/messages/" + reply + "/raw", ""},
		{"GET", "/v1/tenants/acme/messages/" + reply + "/attachments/2", ""},
		{"DELETE", "/v1/tenants/acme/messages/" + reply, ""},
	}
	for _, p := range paths {
		if code, b := callJSON(t, w.hs, p.method, p.path, "", p.body); code != 400 || !strings.Contains(b["detail"].(string), "X-Acting-User") {
			t.Errorf("%s %s without actor: %d %v", p.method, p.path, code, b)
		}
		if code, b := callJSON(t, w.hs, p.method, p.path, "u-nobody", p.body); code != 403 || b["type"] != "https://syncrelay.dev/problems/unknown-acting-user" {
			t.Errorf("%s %s unknown actor: %d %v", p.method, p.path, code, b)
		}
		// A user of another tenant is not a user of this one, super admin or not.
		if code, _ := callJSON(t, w.hs, p.method, p.path, "u-b", p.body); code != 403 {
			t.Errorf("%s %s other tenant's user: %d", p.method, p.path, code)
		}
		// Without a token nothing else matters.
		code, _, _ := callNoAuth(t, w, p.method, p.path)
		if code != 401 {
			t.Errorf("%s %s without token: %d", p.method, p.path, code)
		}
	}
	if code, _ := callJSON(t, w.hs, "GET", "/v1/tenants/nope/candidates/c-1/threads", uAdmin, ""); code != 404 {
		t.Error("unknown tenant")
	}
	if code, _ := callJSON(t, w.hs, "GET", "/v1/tenants/acme/candidates/c-404/threads", uAdmin, ""); code != 404 {
		t.Error("unknown candidate")
	}
}

func TestTenantIsolation(t *testing.T) {
	t.Parallel()
	w, secret, reply, _ := secretSetup(t)
	// beta has its own c-1 and thread; acme's ids never resolve under beta.
	bth, bmsg := w.send("beta", "c-1", 0, "u-b", "", "Beta thread")
	_, body := callJSON(t, w.hs, "GET", "/v1/tenants/beta/candidates/c-1/threads", "u-b", "")
	if ids := threadIDs(body); len(ids) != 1 || ids[0] != store.ThreadRef(bth.ID) {
		t.Fatalf("beta timeline %v", ids)
	}
	for _, p := range []string{
		"/v1/tenants/beta/messages/" + reply,
		"/v1/tenants/beta/messages/" + reply + "/raw",
		"/v1/tenants/beta/messages/" + reply + "/attachments/2",
		"/v1/tenants/beta/threads/" + store.ThreadRef(secret.ID),
		"/v1/tenants/beta/threads/" + store.ThreadRef(secret.ID) + "/messages",
	} {
		if code, _, _ := call(t, w.hs, "GET", p, "u-b", ""); code != 404 {
			t.Errorf("GET %s as beta's super admin = %d", p, code)
		}
	}
	if code, _ := callJSON(t, w.hs, "DELETE", "/v1/tenants/beta/messages/"+reply, "u-b", ""); code != 404 {
		t.Error("cross-tenant delete")
	}
	if code, _ := callJSON(t, w.hs, "PATCH", "/v1/tenants/beta/threads/"+store.ThreadRef(secret.ID), "u-b", `{"secret":false}`); code != 404 {
		t.Error("cross-tenant patch")
	}
	// And acme's admin cannot read beta's message through acme's path.
	if code, _, _ := call(t, w.hs, "GET", "/v1/tenants/acme/messages/"+store.MessageRef(bmsg.ID), uAdmin, ""); code != 404 {
		t.Error("beta message readable under acme")
	}
	if m, _ := w.st.Message(context.Background(), "acme", mustRef(t, reply)); m.Removed {
		t.Fatal("cross-tenant delete removed the message")
	}
}

func mustRef(t *testing.T, ref string) uint64 {
	t.Helper()
	id, ok := store.ParseRef("m-", ref)
	if !ok {
		t.Fatalf("bad ref %q", ref)
	}
	return id
}

func TestRemoveMessage(t *testing.T) {
	t.Parallel()
	w, secret, reply, open := secretSetup(t)
	ctx := context.Background()
	m, _ := w.st.Message(ctx, "acme", mustRef(t, reply))
	sum := m.Raw
	// Visible but not a participant: may not remove.
	_, openMsg := w.send("acme", "c-1", open.ID, uAdmin, "", "Offer 2")
	if code, p := callJSON(t, w.hs, "DELETE", "/v1/tenants/acme/messages/"+store.MessageRef(openMsg.ID), uOutsider, ""); code != 403 {
		t.Fatalf("outsider delete: %d %v", code, p)
	}
	// A participant may.
	code, h, raw := call(t, w.hs, "DELETE", "/v1/tenants/acme/messages/"+reply, uCc, "")
	if code != 204 || len(raw) != 0 {
		t.Fatalf("delete %d %v %q", code, h, raw)
	}
	// Its bytes are freed by the next compaction.
	if _, err := w.st.Compact(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := w.st.OpenRaw(context.Background(), sum); err == nil {
		t.Fatal("raw bytes survived removal and compaction")
	}
	for _, p := range []string{"", "/raw", "/attachments/2"} {
		if code, _, _ := call(t, w.hs, "GET", "/v1/tenants/acme/messages/"+reply+p, uAdmin, ""); code != 404 {
			t.Fatalf("GET removed%s = %d", p, code)
		}
	}
	_, body := callJSON(t, w.hs, "GET", "/v1/tenants/acme/candidates/c-1/threads", uAdmin, "")
	for _, th := range body["threads"].([]any) {
		for _, m := range th.(map[string]any)["messages"].([]any) {
			if m.(map[string]any)["id"] == reply {
				t.Fatal("removed message still on the timeline")
			}
		}
	}
	// Idempotent.
	if code, _, _ := call(t, w.hs, "DELETE", "/v1/tenants/acme/messages/"+reply, uAdmin, ""); code != 204 {
		t.Fatalf("second delete %d", code)
	}
	// Redelivery of the same message does not bring it back.
	res := w.reply("acme", secret.ID, "r1@cand.test", "carl@cand.test", nil, nil, replyRaw)
	if res.Decision != store.Duplicate || !res.Removed {
		t.Fatalf("redelivered copy: %+v", res)
	}
	if code, _, _ := call(t, w.hs, "GET", "/v1/tenants/acme/messages/"+reply, uAdmin, ""); code != 404 {
		t.Fatal("removed message came back")
	}
	// Removing the last message of a thread takes the thread off the timeline.
	_, body = callJSON(t, w.hs, "GET", "/v1/tenants/acme/threads/"+store.ThreadRef(secret.ID), uAdmin, "")
	for _, m := range body["messages"].([]any) {
		if code, _, _ := call(t, w.hs, "DELETE", "/v1/tenants/acme/messages/"+m.(map[string]any)["id"].(string), uAdmin, ""); code != 204 {
			t.Fatal("delete")
		}
	}
	_, body = callJSON(t, w.hs, "GET", "/v1/tenants/acme/candidates/c-1/threads", uAdmin, "")
	if slices.Contains(threadIDs(body), store.ThreadRef(secret.ID)) {
		t.Fatal("emptied thread still listed")
	}
	for _, bad := range []string{"m-0", "m-x", "th-1", "m-99999"} {
		if code, _, _ := call(t, w.hs, "DELETE", "/v1/tenants/acme/messages/"+bad, uAdmin, ""); code != 404 {
			t.Errorf("DELETE %s = %d", bad, code)
		}
	}
}
