package outbound_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"net/http"
	"net/mail"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"syncrelay/oauth"
	"syncrelay/outbound"
	"syncrelay/outbound/providertest"
	"syncrelay/store"
	"syncrelay/store/bolt"
	"syncrelay/token"
)

type env struct {
	t      *testing.T
	st     *bolt.Store
	stub   *providertest.Stub
	om     *oauth.Manager
	kr     *token.Keyring
	svc    *outbound.Service
	mu     sync.Mutex
	sleeps []time.Duration
}

func newEnv(t *testing.T, provider string, tweak func(*outbound.Options)) *env {
	t.Helper()
	e := &env{t: t, stub: providertest.Start(t, provider)}
	st, err := bolt.Open(t.TempDir(), bolt.Options{})
	must(t, err)
	t.Cleanup(func() { st.Close() })
	e.st = st
	pc := oauth.ProviderConfig{ClientID: providertest.ClientID, ClientSecret: providertest.ClientSecret,
		RedirectURL: "http://127.0.0.1:1/cb", AuthURL: e.stub.AuthURL(), TokenURL: e.stub.TokenURL()}
	oo := oauth.Options{Store: st, GrantKey: bytes.Repeat([]byte{1}, 32), StateKey: bytes.Repeat([]byte{2}, 32)}
	if provider == "google" {
		oo.Google = pc
	} else {
		oo.Microsoft = pc
	}
	e.om, err = oauth.New(oo)
	must(t, err)
	e.kr, err = token.New(bytes.Repeat([]byte{3}, 32), "relay.test")
	must(t, err)
	o := outbound.Options{Store: st, Tokens: e.om, Keys: e.kr,
		Providers: map[string]outbound.Provider{
			"google":    &outbound.Gmail{BaseURL: e.stub.APIBase()},
			"microsoft": &outbound.Graph{BaseURL: e.stub.APIBase()},
		},
		Category: "Recruiting", MaxRetries: 3, RetryBaseDelay: time.Second, MaxRetryDelay: time.Minute,
		Sleep: func(ctx context.Context, d time.Duration) error {
			e.mu.Lock()
			e.sleeps = append(e.sleeps, d)
			e.mu.Unlock()
			return nil
		},
	}
	if tweak != nil {
		tweak(&o)
	}
	e.svc, err = outbound.New(o)
	must(t, err)
	ctx := context.Background()
	must(t, st.CreateTenant(ctx, &store.Tenant{ID: "acme", Domains: []string{"acme.test"}, Provider: provider, InboundAddress: "acme-x@relay.test"}))
	for _, u := range []store.User{
		{Tenant: "acme", ID: "u-rec", Email: "rec@acme.test", Name: "Rita", Role: store.RoleTeamMember},
		{Tenant: "acme", ID: "u-hm", Email: "hm@acme.test", Name: "Hugo", Role: store.RoleLimitedTeamMember},
	} {
		must(t, st.CreateUser(ctx, &u))
	}
	must(t, st.CreateCandidate(ctx, &store.Candidate{Tenant: "acme", ID: "c-1", Name: "Carl", Emails: []string{"carl@cand.test"}}))
	return e
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (e *env) connect(user string) {
	e.t.Helper()
	ctx := context.Background()
	au, err := e.om.AuthCodeURL(ctx, e.stub.Provider, "acme", user)
	must(e.t, err)
	cb, _ := url.Parse(e.stub.Authorize(e.t, au))
	_, err = e.om.Complete(ctx, e.stub.Provider, cb.Query().Get("state"), cb.Query().Get("code"))
	must(e.t, err)
}

func (e *env) send(r outbound.Request) (*outbound.Result, error) {
	if r.Tenant == "" {
		r.Tenant = "acme"
	}
	if r.ActingUser == "" {
		r.ActingUser = "u-rec"
	}
	if r.Candidate == "" {
		r.Candidate = "c-1"
	}
	if r.Text == "" {
		r.Text = "Hello"
	}
	return e.svc.Send(context.Background(), r)
}

func lastSent(t *testing.T, s *providertest.Stub) *mail.Message {
	t.Helper()
	sent := s.Sent()
	if len(sent) == 0 {
		t.Fatal("nothing sent")
	}
	m, err := mail.ReadMessage(bytes.NewReader(sent[len(sent)-1]))
	must(t, err)
	return m
}

func TestSendRecordsBeforeProviderCall(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google", nil)
	e.connect("u-rec")
	res, err := e.send(outbound.Request{Subject: "Interview"})
	must(t, err)
	if res.Status != outbound.StatusSent || res.Error != "" || !strings.HasPrefix(res.InternetMessageID, "sr.") {
		t.Fatalf("%+v", res)
	}
	m := lastSent(t, e.stub)
	id, ok := e.kr.ParseMessageID(m.Header.Get("Message-Id"))
	if !ok || id.Tenant != "acme" || store.MessageRef(id.Message) != res.MessageID || store.ThreadRef(id.Thread) != res.ThreadID {
		t.Fatalf("Message-ID %q does not carry the ids of %+v", m.Header.Get("Message-Id"), res)
	}
	if tok, ok := e.kr.Parse(m.Header.Get("X-Syncrelay-Thread")); !ok || tok != id {
		t.Fatalf("X-Syncrelay-Thread %q", m.Header.Get("X-Syncrelay-Thread"))
	}
	if m.Header.Get("To") != `"Carl" <carl@cand.test>` || m.Header.Get("From") != `"Rita" <rec@acme.test>` {
		t.Fatalf("To %q From %q", m.Header.Get("To"), m.Header.Get("From"))
	}
	if m.Header.Get("Thread-Index") != "" || m.Header.Get("Keywords") != "" {
		t.Fatal("Outlook headers on a Google tenant's mail")
	}
	msg, err := e.st.Message(context.Background(), "acme", id.Message)
	must(t, err)
	if msg.Status != "sent" || msg.SentBy != "u-rec" || msg.Raw == "" || msg.Direction != store.Outbound ||
		msg.InternetMessageID != res.InternetMessageID || msg.From != "rec@acme.test" {
		t.Fatalf("stored %+v", msg)
	}
	f, err := e.st.OpenRaw(context.Background(), msg.Raw)
	must(t, err)
	defer f.Close()
	var stored bytes.Buffer
	_, _ = stored.ReadFrom(f)
	if !bytes.Equal(stored.Bytes(), e.stub.Sent()[0]) {
		t.Fatal("stored raw differs from what was sent")
	}
}

func TestMicrosoftHeadersAndReplyThreading(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "microsoft", nil)
	e.connect("u-rec")
	ctx := context.Background()
	first, err := e.send(outbound.Request{Subject: "Interview"})
	must(t, err)
	m1 := lastSent(t, e.stub)
	if m1.Header.Get("Keywords") != "Recruiting" || m1.Header.Get("Thread-Topic") != "Interview" {
		t.Fatalf("Keywords %q Thread-Topic %q", m1.Header.Get("Keywords"), m1.Header.Get("Thread-Topic"))
	}
	conv, ok := token.ParseThreadIndex(m1.Header.Get("Thread-Index"))
	if !ok {
		t.Fatalf("Thread-Index %q", m1.Header.Get("Thread-Index"))
	}
	thID, _ := store.ParseRef("th-", first.ThreadID)
	if want := e.kr.ConversationIndex("acme", thID); conv != want {
		t.Fatal("Thread-Index conversation header is not the thread's")
	}
	if got, ok, _ := e.st.ThreadByConvIndex(ctx, "acme", hex.EncodeToString(conv[:])); !ok || got != thID {
		t.Fatal("conversation index not registered for rule 4")
	}
	// The candidate replies (stored inbound), then the user replies to it.
	th, _ := e.st.Thread(ctx, "acme", thID)
	_, err = e.st.CommitInbound(ctx, &store.Incoming{Message: store.Message{Tenant: "acme", Thread: th.ID, Direction: store.Inbound,
		InternetMessageID: "reply-1@cand.test", From: "carl@cand.test", Subject: "RE: Interview"}})
	must(t, err)
	ref, _, _ := e.st.LookupMsgID(ctx, "acme", "reply-1@cand.test")
	second, err := e.send(outbound.Request{ReplyTo: store.MessageRef(ref.Message), Text: "Thanks"})
	must(t, err)
	if second.ThreadID != first.ThreadID {
		t.Fatalf("reply on thread %s, want %s", second.ThreadID, first.ThreadID)
	}
	m2 := lastSent(t, e.stub)
	if m2.Header.Get("In-Reply-To") != "<reply-1@cand.test>" ||
		m2.Header.Get("References") != "<"+first.InternetMessageID+"> <reply-1@cand.test>" {
		t.Fatalf("In-Reply-To %q References %q", m2.Header.Get("In-Reply-To"), m2.Header.Get("References"))
	}
	if s := m2.Header.Get("Subject"); s != "RE: Interview" {
		t.Fatalf("reply subject %q", s)
	}
	c2, _ := token.ParseThreadIndex(m2.Header.Get("Thread-Index"))
	if c2 != conv || len(m2.Header.Get("Thread-Index")) <= len(m1.Header.Get("Thread-Index")) {
		t.Fatal("reply Thread-Index lacks the thread header or its child blocks")
	}
	if e.stub.Requests()[0].ContentType != "text/plain" {
		t.Fatal("Graph MIME send must be text/plain")
	}
}

func TestRetriesHonourRetryAfter(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google", nil)
	e.connect("u-rec")
	e.stub.FailSend(providertest.Failure{Status: 429, RetryAfter: "20"}, providertest.Failure{Status: 503})
	res, err := e.send(outbound.Request{Subject: "x"})
	must(t, err)
	if res.Status != "sent" || len(e.stub.Requests()) != 3 {
		t.Fatalf("%+v after %d calls", res, len(e.stub.Requests()))
	}
	if len(e.sleeps) != 2 || e.sleeps[0] < 20*time.Second || e.sleeps[1] > 2*time.Second || e.sleeps[1] < time.Second {
		t.Fatalf("sleeps %v: want >= Retry-After 20s, then ~1-2s", e.sleeps)
	}
}

func TestRetriesBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "microsoft", nil)
	e.connect("u-rec")
	for range 4 {
		e.stub.FailSend(providertest.Failure{Status: 503})
	}
	res, err := e.send(outbound.Request{Subject: "x"})
	must(t, err)
	if res.Status != "failed" || len(e.stub.Requests()) != 4 || !strings.Contains(res.Error, "503") || !strings.Contains(res.Error, "gave up after 4") {
		t.Fatalf("%+v after %d calls", res, len(e.stub.Requests()))
	}
	id, _ := store.ParseRef("m-", res.MessageID)
	msg, _ := e.st.Message(context.Background(), "acme", id)
	if msg.Status != "failed" || msg.Error != res.Error {
		t.Fatalf("stored %q %q", msg.Status, msg.Error)
	}
}

func TestRetryAfterTooLongFails(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "microsoft", nil)
	e.connect("u-rec")
	e.stub.FailSend(providertest.Failure{Status: 429, RetryAfter: "3600"})
	res, err := e.send(outbound.Request{Subject: "x"})
	must(t, err)
	if res.Status != "failed" || !strings.Contains(res.Error, "retry after 1h0m0s") || len(e.sleeps) != 0 {
		t.Fatalf("%+v sleeps %v", res, e.sleeps)
	}
}

func TestPermanentErrorNotRetried(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google", nil)
	e.connect("u-rec")
	e.stub.FailSend(providertest.Failure{Status: 400})
	res, err := e.send(outbound.Request{Subject: "x"})
	must(t, err)
	if res.Status != "failed" || len(e.stub.Requests()) != 1 || !strings.Contains(res.Error, "invalidArgument") {
		t.Fatalf("%+v", res)
	}
}

func TestUnauthorizedRefreshesOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "microsoft", nil)
	e.connect("u-rec")
	e.stub.ExpireAccessTokens() // the provider no longer accepts the stored token
	res, err := e.send(outbound.Request{Subject: "x"})
	must(t, err)
	reqs := e.stub.Requests()
	if res.Status != "sent" || len(reqs) != 2 || reqs[0].Status != 401 || reqs[0].AccessToken == reqs[1].AccessToken {
		t.Fatalf("%+v %+v", res, reqs)
	}
	if e.stub.TokenCalls("refresh_token") != 1 {
		t.Fatal("no refresh after 401")
	}
}

func TestInvalidGrantFailsSendAndBreaksGrant(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google", nil)
	e.connect("u-rec")
	e.stub.RevokeAll()
	res, err := e.send(outbound.Request{Subject: "x"})
	must(t, err)
	if res.Status != "failed" || !strings.Contains(res.Error, "reconnect") || len(e.sleeps) != 0 {
		t.Fatalf("%+v sleeps %v", res, e.sleeps)
	}
	if e.stub.TokenCalls("refresh_token") != 1 {
		t.Fatalf("invalid_grant retried: %d", e.stub.TokenCalls("refresh_token"))
	}
	g, _ := e.st.Grant(context.Background(), "acme", "u-rec")
	if g.Status != store.GrantBroken {
		t.Fatal("grant not broken")
	}
	_, err = e.send(outbound.Request{Subject: "y"})
	var rf *outbound.Refusal
	if !errors.As(err, &rf) || rf.Status != http.StatusConflict || rf.Type != "grant-broken" {
		t.Fatalf("send with a broken grant: %v", err)
	}
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google", nil)
	e.connect("u-rec")
	ctx := context.Background()
	cases := []struct {
		name   string
		req    outbound.Request
		status int
		typ    string
	}{
		{"no grant", outbound.Request{ActingUser: "u-hm", Subject: "x"}, 409, "grant-missing"},
		{"unknown actor", outbound.Request{ActingUser: "ghost", Subject: "x"}, 403, "unknown-acting-user"},
		{"unknown candidate", outbound.Request{Candidate: "c-9", Subject: "x"}, 404, "not-found"},
		{"no delegation", outbound.Request{SendFor: "u-hm", Subject: "x"}, 403, "send-for-not-allowed"},
		{"automation", outbound.Request{SendFor: "u-hm", Subject: "x", Kind: "automation"}, 422, "send-for-automation"},
		{"unknown grantor", outbound.Request{SendFor: "ghost", Subject: "x"}, 404, "not-found"},
		{"bad reply", outbound.Request{ReplyTo: "m-999"}, 404, "not-found"},
	}
	for _, c := range cases {
		_, err := e.send(c.req)
		var rf *outbound.Refusal
		if !errors.As(err, &rf) || rf.Status != c.status || rf.Type != c.typ {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	d := &store.Delegation{Tenant: "acme", Requester: "u-rec", Grantor: "u-hm"}
	must(t, e.st.CreateDelegation(ctx, d, "u-rec"))
	_, err := e.send(outbound.Request{SendFor: "u-hm", Subject: "x"})
	var rf *outbound.Refusal
	if !errors.As(err, &rf) || rf.Status != 403 || !strings.Contains(rf.Detail, "requested") {
		t.Fatalf("requested delegation: %v", err)
	}
	if len(e.stub.Requests()) != 0 {
		t.Fatal("a refused send reached the provider")
	}
	if ths, _ := e.st.CandidateThreads(ctx, "acme", "c-1"); len(ths) != 0 {
		t.Fatal("a refused send was recorded")
	}
}

func TestSendForUsesGrantorsGrant(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google", nil)
	e.connect("u-hm")
	ctx := context.Background()
	d := &store.Delegation{Tenant: "acme", Requester: "u-rec", Grantor: "u-hm"}
	must(t, e.st.CreateDelegation(ctx, d, "u-rec"))
	_, err := e.st.TransitionDelegation(ctx, "acme", d.ID, "u-hm", store.DelegationActive, nil)
	must(t, err)
	res, err := e.send(outbound.Request{SendFor: "u-hm", Subject: "x", Kind: outbound.KindNurture})
	must(t, err)
	if res.Status != "sent" {
		t.Fatalf("%+v", res)
	}
	m := lastSent(t, e.stub)
	if m.Header.Get("From") != `"Hugo" <hm@acme.test>` {
		t.Fatalf("From %q", m.Header.Get("From"))
	}
	hmTok, _ := e.om.Token(ctx, "acme", "u-hm")
	if e.stub.Requests()[0].AccessToken != hmTok.AccessToken {
		t.Fatal("not sent with the grantor's token")
	}
	id, _ := store.ParseRef("m-", res.MessageID)
	msg, _ := e.st.Message(ctx, "acme", id)
	thID, _ := store.ParseRef("th-", res.ThreadID)
	th, _ := e.st.Thread(ctx, "acme", thID)
	if msg.SentBy != "u-rec" || msg.SendFor != "u-hm" || th.CreatedBy != "u-rec" ||
		!strings.Contains(strings.Join(th.Participants, ","), "u-hm") {
		t.Fatalf("message %+v thread %+v", msg, th)
	}
}

func TestSenderRateLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "google", func(o *outbound.Options) {
		o.SenderRatePerMinute, o.SenderBurst, o.MaxRateWait = 6, 2, 15*time.Second
	})
	e.connect("u-rec")
	for i := range 3 {
		if _, err := e.send(outbound.Request{Subject: "x"}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	// Two go at once (burst), the third waits for its 10 s slot.
	if len(e.sleeps) != 3 || e.sleeps[0] != 0 || e.sleeps[1] != 0 || e.sleeps[2] < 9*time.Second || e.sleeps[2] > 10*time.Second {
		t.Fatalf("pacing sleeps %v", e.sleeps)
	}
	// The fourth would wait 20 s > MaxRateWait: refused with Retry-After.
	_, err := e.send(outbound.Request{Subject: "x"})
	var rf *outbound.Refusal
	if !errors.As(err, &rf) || rf.Status != 429 || rf.RetryAfter < 15*time.Second {
		t.Fatalf("over the limit: %v", err)
	}
	// Another sender has its own budget.
	e.connect("u-hm")
	if _, err := e.send(outbound.Request{ActingUser: "u-hm", Subject: "x"}); err != nil {
		t.Fatalf("other sender: %v", err)
	}
}
