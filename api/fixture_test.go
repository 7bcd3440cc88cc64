package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"syncrelay/internal/testenv"
	"syncrelay/store"
	"syncrelay/store/bolt"
)

// call sends a request as actor ("" for no X-Acting-User) and returns the
// status, headers and raw body.
func call(t *testing.T, hs *httptest.Server, method, path, actor, body string) (int, http.Header, []byte) {
	t.Helper()
	return testenv.Do(t, hs.URL, testToken, actor, method, path, body)
}

// callJSON is call decoding a JSON object body.
func callJSON(t *testing.T, hs *httptest.Server, method, path, actor, body string) (int, map[string]any) {
	t.Helper()
	code, h, raw := call(t, hs, method, path, actor, body)
	var m map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("%s %s: not JSON (%d, %s): %q", method, path, code, h.Get("Content-Type"), raw)
		}
	}
	if code >= 400 && h.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("%s %s: error %d is not problem JSON (%s)", method, path, code, h.Get("Content-Type"))
	}
	return code, m
}

// world is a tenant with users in every role a visibility rule names.
type world struct {
	t   *testing.T
	hs  *httptest.Server
	srv *Server
	st  *bolt.Store
}

// Users of acme (all team members unless noted).
const (
	uRequester = "u-req"     // starts the Send For thread
	uGrantor   = "u-grantor" // the thread is sent as them
	uCc        = "u-cc"      // only appears in the Cc of the message sent through syncrelay
	uNamed     = "u-named"   // only in the To of the candidate's reply: not a participant
	uMaker     = "u-maker"   // not a participant; makes the thread secret
	uOutsider  = "u-out"
	uLimited   = "u-limited" // limited_team_member, not a participant
	uAdmin     = "u-admin"
	uSuper     = "u-super"
)

func newWorld(t *testing.T) *world {
	t.Helper()
	hs, srv, st := newTestServer(t)
	w := &world{t: t, hs: hs, srv: srv, st: st}
	ctx := context.Background()
	for _, ten := range []store.Tenant{
		{ID: "acme", Name: "Acme", Domains: []string{"acme.test"}, Provider: "google", InboundAddress: "acme-x@relay.test", DKIMPolicy: "require"},
		{ID: "beta", Name: "Beta", Domains: []string{"beta.test"}, Provider: "microsoft", InboundAddress: "beta-x@relay.test", DKIMPolicy: "require"},
	} {
		must(t, st.CreateTenant(ctx, &ten))
	}
	for id, role := range map[string]string{uRequester: "team_member", uGrantor: "team_member", uCc: "team_member", uNamed: "team_member", uMaker: "team_member",
		uOutsider: "team_member", uLimited: "limited_team_member", uAdmin: "admin", uSuper: "super_admin"} {
		must(t, st.CreateUser(ctx, &store.User{Tenant: "acme", ID: id, Email: strings.TrimPrefix(id, "u-") + "@acme.test", Role: role}))
	}
	must(t, st.CreateUser(ctx, &store.User{Tenant: "beta", ID: "u-b", Email: "b@beta.test", Role: "super_admin"}))
	must(t, st.CreateCandidate(ctx, &store.Candidate{Tenant: "acme", ID: "c-1", Name: "Carl", Emails: []string{"carl@cand.test"}}))
	must(t, st.CreateCandidate(ctx, &store.Candidate{Tenant: "beta", ID: "c-1", Name: "Other Carl", Emails: []string{"carl@cand.test"}}))
	return w
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// send records an outbound message as the sender (issue 4) would: on a new
// thread when th is 0.
func (w *world) send(tenant, cand string, th uint64, sentBy, sendFor, subject string) (store.Thread, store.Message) {
	w.t.Helper()
	from := sentBy
	if sendFor != "" {
		from = sendFor
	}
	thread := store.Thread{ID: th, Tenant: tenant, Candidate: cand, Subject: subject, CreatedBy: sentBy}
	raw := crlf(fmt.Sprintf("From: %s@%s.test\nTo: carl@cand.test\nSubject: %s\nContent-Type: text/plain; charset=utf-8\n\nHello Carl, about %s.\n",
		strings.TrimPrefix(from, "u-"), tenant, subject, subject))
	msg := store.Message{From: strings.TrimPrefix(from, "u-") + "@" + tenant + ".test", To: []string{"carl@cand.test"}, Subject: subject,
		SentBy: sentBy, SendFor: sendFor, Status: "sent", Date: time.Now().UTC().Truncate(time.Second)}
	must(w.t, w.st.CreateOutbound(context.Background(), &thread, &msg, func(t, m uint64) (string, string) {
		return fmt.Sprintf("sr.%s.%d.%d@relay.test", tenant, t, m), ""
	}))
	m, err := w.st.UpdateMessage(context.Background(), tenant, msg.ID, &store.Raw{Body: strings.NewReader(raw), Size: int64(len(raw))},
		func(*store.Message) error { return nil })
	must(w.t, err)
	return thread, *m
}

// reply commits an inbound message on a thread with the given raw body.
func (w *world) reply(tenant string, th uint64, msgid, from string, to, cc []string, raw string) store.CommitResult {
	w.t.Helper()
	body := crlf(raw)
	res, err := w.st.CommitInbound(context.Background(), &store.Incoming{
		Raw: &store.Raw{Head: []byte("Authentication-Results: relay.test; dkim=pass\r\n"), Body: strings.NewReader(body), Size: int64(len(body))},
		Message: store.Message{Tenant: tenant, Thread: th, Direction: store.Inbound, InternetMessageID: msgid, From: from, To: to, Cc: cc,
			Subject: "Re: hello", DKIM: []store.AuthResult{{Domain: "cand.test", Result: "pass"}}},
		Mailbox: "grantor@acme.test",
		Event:   map[string]any{"direction": "inbound", "auto_reply": false, "notify_users": []string{}},
	})
	must(w.t, err)
	return res
}

func crlf(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")
}

// threadIDs lists the thread ids of a timeline response.
func threadIDs(body map[string]any) []string {
	var ids []string
	for _, th := range body["threads"].([]any) {
		ids = append(ids, th.(map[string]any)["id"].(string))
	}
	return ids
}

func newReq(method, url, actor string) (*http.Request, error) {
	r, err := http.NewRequest(method, url, nil)
	if err != nil {
		return nil, err
	}
	r.Header.Set("Authorization", "Bearer "+testToken)
	if actor != "" {
		r.Header.Set("X-Acting-User", actor)
	}
	return r, nil
}

func doReq(t *testing.T, r *http.Request) (int, map[string][]string, []byte) {
	t.Helper()
	resp, err := http.DefaultClient.Do(r)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, raw
}

func callNoAuth(t *testing.T, w *world, method, path string) (int, map[string][]string, []byte) {
	t.Helper()
	r, _ := http.NewRequest(method, w.hs.URL+path, nil)
	r.Header.Set("X-Acting-User", uAdmin)
	return doReq(t, r)
}
