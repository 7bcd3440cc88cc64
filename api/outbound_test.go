package api

import (
	"bytes"
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"syncrelay/dnsres"
	"syncrelay/internal/dkimtest"
	"syncrelay/internal/dnstest"
	"syncrelay/oauth"
	"syncrelay/outbound"
	"syncrelay/outbound/providertest"
	"syncrelay/router"
	"syncrelay/store"
	"syncrelay/store/bolt"
	"syncrelay/token"
	"syncrelay/trust"
)

// obEnv is a whole outbound setup over HTTP: the API with sending, OAuth and
// delegations, a bbolt store in a temp dir, and a local stub of the
// provider's OAuth and send endpoints.
type obEnv struct {
	t     *testing.T
	dir   string
	prov  string
	stub  *providertest.Stub
	st    *bolt.Store
	hs    *httptest.Server
	kr    *token.Keyring
	om    *oauth.Manager
	tweak func(*outbound.Options)
	// apiTweak, when set, adjusts the API's options (approval_test.go).
	apiTweak func(*Options, *outbound.Service)

	mu     sync.Mutex
	sleeps []time.Duration
	block  chan struct{} // when set, provider retry sleeps wait on it
}

var obSecret = bytes.Repeat([]byte{0x42}, 32)

func newObEnv(t *testing.T, provider string, tweak func(*outbound.Options)) *obEnv {
	t.Helper()
	e := &obEnv{t: t, dir: t.TempDir(), prov: provider, stub: providertest.Start(t, provider), tweak: tweak}
	e.start()
	return e
}

// start opens the store and serves the API; restart-safe.
func (e *obEnv) start() {
	t := e.t
	st, err := bolt.Open(e.dir, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.st = st
	var h http.Handler
	e.hs = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(func() { e.hs.Close(); st.Close() })
	e.kr, err = token.New(obSecret, "relay.test")
	if err != nil {
		t.Fatal(err)
	}
	pc := oauth.ProviderConfig{ClientID: providertest.ClientID, ClientSecret: providertest.ClientSecret,
		RedirectURL: e.hs.URL + "/oauth/" + e.prov + "/callback", AuthURL: e.stub.AuthURL(), TokenURL: e.stub.TokenURL()}
	oo := oauth.Options{Store: st, GrantKey: bytes.Repeat([]byte{7}, 32), StateKey: bytes.Repeat([]byte{8}, 32)}
	if e.prov == "google" {
		oo.Google = pc
	} else {
		oo.Microsoft = pc
	}
	if e.om, err = oauth.New(oo); err != nil {
		t.Fatal(err)
	}
	o := outbound.Options{Store: st, Tokens: e.om, Keys: e.kr,
		Providers: map[string]outbound.Provider{
			"google": &outbound.Gmail{BaseURL: e.stub.APIBase()}, "microsoft": &outbound.Graph{BaseURL: e.stub.APIBase()},
		},
		Category: "Recruiting", MaxRetries: 3, RetryBaseDelay: time.Millisecond, MaxRetryDelay: time.Minute,
		Sleep: func(ctx context.Context, d time.Duration) error {
			e.mu.Lock()
			e.sleeps = append(e.sleeps, d)
			block := e.block
			e.mu.Unlock()
			if block != nil && d > 0 {
				<-block
			}
			return nil
		},
	}
	if e.tweak != nil {
		e.tweak(&o)
	}
	svc, err := outbound.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ao := Options{Store: st, Tokens: []string{testToken}, Hostname: "relay.test",
		Outbound: OutboundOptions{Store: st, Sender: svc, OAuth: e.om}}
	if e.apiTweak != nil {
		e.apiTweak(&ao, svc)
	}
	h = New(ao)
}

// restart stops the server and store and starts them again on the same data.
func (e *obEnv) restart() {
	e.t.Helper()
	e.hs.Close()
	if err := e.st.Close(); err != nil {
		e.t.Fatal(err)
	}
	e.start()
}

type obResp struct {
	code int
	h    http.Header
	raw  []byte
	body map[string]any
}

func (r obResp) str(k string) string { s, _ := r.body[k].(string); return s }

// do sends a request with the test token (unless noAuth) and the acting user.
func (e *obEnv) do(method, path, actor, body string, hdr ...string) obResp {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.hs.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+testToken)
	if actor != "" {
		req.Header.Set("X-Acting-User", actor)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i+1] == "" {
			req.Header.Del(hdr[i])
		} else {
			req.Header.Set(hdr[i], hdr[i+1])
		}
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	out := obResp{code: resp.StatusCode, h: resp.Header, raw: raw}
	_ = json.Unmarshal(raw, &out.body)
	return out
}

func (e *obEnv) must(r obResp, code int) obResp {
	e.t.Helper()
	if r.code != code {
		e.t.Fatalf("status %d, want %d: %s", r.code, code, r.raw)
	}
	return r
}

// problem checks a problem document's status and type.
func (e *obEnv) problem(r obResp, code int, typ string) {
	e.t.Helper()
	if r.code != code || r.h.Get("Content-Type") != "application/problem+json" ||
		r.str("type") != "https://syncrelay.dev/problems/"+typ || r.str("detail") == "" {
		e.t.Fatalf("want %d %s problem, got %d %s %s", code, typ, r.code, r.h.Get("Content-Type"), r.raw)
	}
}

// seed creates the tenant, users and a candidate over the API.
func (e *obEnv) seed() {
	e.t.Helper()
	e.must(e.do("POST", "/v1/tenants", "", fmt.Sprintf(`{"id":"acme","name":"Acme","domains":["acme.test"],"provider":%q}`, e.prov)), 201)
	for _, u := range []string{
		`{"id":"u-rec","email":"rec@acme.test","name":"Rita","role":"team_member"}`,
		`{"id":"u-hm","email":"hm@acme.test","name":"Hugo","role":"limited_team_member"}`,
		`{"id":"u-adm","email":"adm@acme.test","name":"Ada","role":"admin"}`,
		`{"id":"u-other","email":"other@acme.test","name":"Otto","role":"team_member"}`,
	} {
		e.must(e.do("POST", "/v1/tenants/acme/users", "", u), 201)
	}
	e.must(e.do("POST", "/v1/tenants/acme/candidates", "", `{"id":"c-1","name":"Carl","emails":["carl@cand.test"]}`), 201)
}

// connect runs the consent flow over HTTP for user.
func (e *obEnv) connect(user string) {
	e.t.Helper()
	r := e.must(e.do("GET", "/oauth/"+e.prov+"/start?tenant=acme&user="+user, user, ""), 302)
	cb := e.stub.Authorize(e.t, r.h.Get("Location"))
	if !strings.HasPrefix(cb, e.hs.URL+"/oauth/"+e.prov+"/callback?") {
		e.t.Fatalf("provider redirected to %s", cb)
	}
	resp, err := http.Get(cb) // the browser: no bearer token
	if err != nil {
		e.t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(page), "connected") {
		e.t.Fatalf("callback %d: %s", resp.StatusCode, page)
	}
}

func (e *obEnv) sendJSON(actor, body string, hdr ...string) obResp {
	e.t.Helper()
	return e.do("POST", "/v1/tenants/acme/messages", actor, body, hdr...)
}

func (e *obEnv) events(typ string) []*store.Event {
	e.t.Helper()
	evs, err := e.st.Events(context.Background(), "")
	if err != nil {
		e.t.Fatal(err)
	}
	var out []*store.Event
	for _, ev := range evs {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

func (e *obEnv) lastSent() *mail.Message {
	e.t.Helper()
	sent := e.stub.Sent()
	if len(sent) == 0 {
		e.t.Fatal("nothing sent")
	}
	m, err := mail.ReadMessage(bytes.NewReader(sent[len(sent)-1]))
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

func assertSecretsAbsent(t *testing.T, dir string, secrets []string) {
	t.Helper()
	if len(secrets) == 0 {
		t.Fatal("no secrets to look for")
	}
	files := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		files++
		for _, s := range secrets {
			if bytes.Contains(data, []byte(s)) {
				t.Errorf("%s contains a provider token (%.6s...)", p, s)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files == 0 {
		t.Fatal("no files in the data dir")
	}
}

const send1 = `{"candidate":"c-1","subject":"Interview","text":"Hello Carl","kind":"one_off"}`

func TestOutboundConnectAndSend(t *testing.T) {
	t.Parallel()
	for _, prov := range []string{"google", "microsoft"} {
		t.Run(prov, func(t *testing.T) {
			e := newObEnv(t, prov, nil)
			e.seed()
			other := map[string]string{"google": "microsoft", "microsoft": "google"}[prov]

			// start: bearer auth, checks, 302 to the provider.
			req, _ := http.NewRequest("GET", e.hs.URL+"/oauth/"+prov+"/start?tenant=acme&user=u-rec", nil)
			if resp, _ := http.DefaultTransport.RoundTrip(req); resp.StatusCode != 401 {
				t.Fatalf("start without token: %d", resp.StatusCode)
			}
			e.problem(e.do("GET", "/oauth/"+other+"/start?tenant=acme&user=u-rec", "", ""), 503, "provider-not-configured")
			e.problem(e.do("GET", "/oauth/yahoo/start?tenant=acme&user=u-rec", "", ""), 404, "not-found")
			e.problem(e.do("GET", "/oauth/"+prov+"/start?tenant=acme&user=ghost", "", ""), 404, "not-found")
			e.problem(e.do("GET", "/oauth/"+prov+"/start?tenant=acme", "", ""), 400, "invalid")
			e.problem(e.do("GET", "/oauth/"+prov+"/start?tenant=acme&user=u-rec", "u-other", ""), 403, "forbidden")
			e.must(e.do("GET", "/oauth/"+prov+"/start?tenant=acme&user=u-rec", "u-adm", ""), 302)
			r := e.must(e.do("GET", "/oauth/"+prov+"/start?tenant=acme&user=u-rec", "", ""), 302)
			loc := r.h.Get("Location")
			if !strings.HasPrefix(loc, e.stub.AuthURL()+"?") || r.str("auth_url") != loc || r.h.Get("Cache-Control") != "no-store" {
				t.Fatalf("start: %s %s", loc, r.raw)
			}

			// The user is not connected yet: a send is refused, nothing recorded.
			e.problem(e.sendJSON("u-rec", send1), 409, "grant-missing")
			if u := e.must(e.do("GET", "/v1/tenants/acme/users/u-rec", "", ""), 200); u.body["grant"].(map[string]any)["status"] != "none" {
				t.Fatalf("grant before consent: %s", u.raw)
			}

			cb := e.stub.Authorize(t, loc)
			resp, err := http.Get(cb)
			if err != nil {
				t.Fatal(err)
			}
			page, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || !strings.Contains(string(page), "Mailbox connected") ||
				resp.Header.Get("Referrer-Policy") != "no-referrer" || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
				t.Fatalf("callback %d %v: %s", resp.StatusCode, resp.Header, page)
			}
			// The state is single use.
			resp, _ = http.Get(cb)
			page, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 400 || !strings.Contains(string(page), "already used") {
				t.Fatalf("replayed callback %d: %s", resp.StatusCode, page)
			}
			u := e.must(e.do("GET", "/v1/tenants/acme/users/u-rec", "", ""), 200)
			if g := u.body["grant"].(map[string]any); g["status"] != "active" || g["provider"] != prov {
				t.Fatalf("grant after consent: %s", u.raw)
			}
			list := e.must(e.do("GET", "/v1/tenants/acme/users", "", ""), 200)
			for _, x := range list.body["users"].([]any) {
				u := x.(map[string]any)
				want := map[bool]string{true: "active", false: "none"}[u["id"] == "u-rec"]
				if u["grant"].(map[string]any)["status"] != want {
					t.Fatalf("list grant status of %v", u)
				}
			}

			r = e.must(e.sendJSON("u-rec", send1), 201)
			if r.str("status") != "sent" || !strings.HasPrefix(r.str("message_id"), "m-") || !strings.HasPrefix(r.str("thread_id"), "th-") ||
				!strings.HasPrefix(r.str("internet_message_id"), "sr.") || r.body["error"] != nil {
				t.Fatalf("send: %s", r.raw)
			}
			m := e.lastSent()
			if m.Header.Get("Message-Id") != "<"+r.str("internet_message_id")+">" || m.Header.Get("From") != `"Rita" <rec@acme.test>` {
				t.Fatalf("sent headers %v", m.Header)
			}
			if (prov == "microsoft") != (m.Header.Get("Thread-Index") != "" && m.Header.Get("Keywords") == "Recruiting") {
				t.Fatalf("Outlook headers: %v", m.Header)
			}
			// Tokens never reach the disk in clear.
			assertSecretsAbsent(t, e.dir, e.stub.Issued())
		})
	}
}

func TestOutboundCallbackErrors(t *testing.T) {
	t.Parallel()
	e := newObEnv(t, "google", nil)
	e.seed()
	get := func(q string) (int, string) {
		resp, err := http.Get(e.hs.URL + "/oauth/google/callback?" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, page := get("code=x&state=forged.state"); code != 400 || !strings.Contains(page, "expired") {
		t.Fatalf("forged state: %d %s", code, page)
	}
	r := e.must(e.do("GET", "/oauth/google/start?tenant=acme&user=u-rec", "", ""), 302)
	state := strings.Split(strings.Split(r.h.Get("Location"), "state=")[1], "&")[0]
	if code, page := get("error=access_denied&state=" + state); code != 400 || !strings.Contains(page, "declined") {
		t.Fatalf("declined: %d %s", code, page)
	}
	if code, page := get("error=server_error&error_description=%3Cscript%3E&state=x"); code != 400 || strings.Contains(page, "<script>") {
		t.Fatalf("provider error not escaped: %d %s", code, page)
	}
	if code, _ := get("code=x&state=" + state); code != 400 {
		t.Fatalf("state of a declined consent reused: %d", code)
	}
}

func TestOutboundSendProblems(t *testing.T) {
	t.Parallel()
	e := newObEnv(t, "google", nil)
	e.seed()
	e.connect("u-rec")
	e.problem(e.sendJSON("", send1), 400, "acting-user-required")
	e.problem(e.sendJSON("ghost", send1), 403, "unknown-acting-user")
	e.problem(e.do("POST", "/v1/tenants/nope/messages", "u-rec", send1), 404, "not-found")
	e.problem(e.sendJSON("u-rec", `{"candidate":"c-1","subject":"x","text":"y","colour":"red"}`), 400, "invalid-json")
	e.problem(e.sendJSON("u-rec", `{"candidate":"c-1","subject":"x","text":"y","kind":"spam"}`), 400, "invalid")
	e.problem(e.sendJSON("u-rec", `{"candidate":"c-1","subject":"x","text":"y","to":["Carl <carl@cand.test>"]}`), 400, "invalid")
	e.problem(e.sendJSON("u-rec", `{"candidate":"c-9","subject":"x","text":"y"}`), 404, "not-found")
	e.problem(e.sendJSON("u-rec", `{"candidate":"c-1","text":"y","reply_to_message":"m-77"}`), 404, "not-found")
	if n := len(e.stub.Requests()); n != 0 {
		t.Fatalf("%d provider calls for refused sends", n)
	}
	// to/cc: explicit recipients instead of the candidate's first address.
	r := e.must(e.sendJSON("u-rec", `{"candidate":"c-1","subject":"x","text":"y","to":["carl.alt@cand.test"],"cc":["hm@acme.test"]}`), 201)
	m := e.lastSent()
	if m.Header.Get("To") != "<carl.alt@cand.test>" || m.Header.Get("Cc") != "<hm@acme.test>" || r.str("status") != "sent" {
		t.Fatalf("To %q Cc %q", m.Header.Get("To"), m.Header.Get("Cc"))
	}
}

func TestOutboundIdempotency(t *testing.T) {
	t.Parallel()
	e := newObEnv(t, "google", nil)
	e.seed()
	// A refused request (no grant yet) releases its key.
	e.problem(e.sendJSON("u-rec", send1, "Idempotency-Key", "k1"), 409, "grant-missing")
	e.connect("u-rec")
	a := e.must(e.sendJSON("u-rec", send1, "Idempotency-Key", "k1"), 201)
	b := e.must(e.sendJSON("u-rec", send1, "Idempotency-Key", "k1"), 201)
	if !bytes.Equal(a.raw, b.raw) || b.h.Get("Idempotent-Replayed") != "true" || a.h.Get("Idempotent-Replayed") != "" {
		t.Fatalf("replay differs:\n%s\n%s", a.raw, b.raw)
	}
	if n := len(e.stub.Requests()); n != 1 {
		t.Fatalf("%d provider calls for one idempotent send", n)
	}
	e.problem(e.sendJSON("u-rec", `{"candidate":"c-1","subject":"Other","text":"x"}`, "Idempotency-Key", "k1"), 422, "idempotency-key-reused")
	// Another acting user with the same key is another request.
	e.connect("u-hm")
	e.problem(e.sendJSON("u-hm", send1, "Idempotency-Key", "k1"), 422, "idempotency-key-reused")
	// Without a key every request sends.
	e.must(e.sendJSON("u-rec", send1), 201)
	e.must(e.sendJSON("u-rec", send1), 201)
	if n := len(e.stub.Requests()); n != 3 {
		t.Fatalf("%d provider calls", n)
	}
	// Survives a restart (the key is in the store, not in memory).
	e.restart()
	c := e.must(e.sendJSON("u-rec", send1, "Idempotency-Key", "k1"), 201)
	if !bytes.Equal(a.raw, c.raw) {
		t.Fatal("replay after restart differs")
	}
	// Bulk requests are idempotent as a whole.
	bulk := `{"messages":[` + send1 + `,` + send1 + `]}`
	x := e.must(e.do("POST", "/v1/tenants/acme/messages/bulk", "u-rec", bulk, "Idempotency-Key", "b1"), 201)
	y := e.must(e.do("POST", "/v1/tenants/acme/messages/bulk", "u-rec", bulk, "Idempotency-Key", "b1"), 201)
	if !bytes.Equal(x.raw, y.raw) || len(e.stub.Requests()) != 5 {
		t.Fatalf("bulk replay: %d provider calls", len(e.stub.Requests()))
	}
	e.problem(e.sendJSON("u-rec", send1, "Idempotency-Key", strings.Repeat("k", 300)), 400, "invalid")
}

func TestOutboundIdempotencyInProgress(t *testing.T) {
	t.Parallel()
	e := newObEnv(t, "google", nil)
	e.seed()
	e.connect("u-rec")
	e.mu.Lock()
	e.block = make(chan struct{})
	e.mu.Unlock()
	e.stub.FailSend(providertest.Failure{Status: 503})
	done := make(chan obResp)
	go func() { done <- e.sendJSON("u-rec", send1, "Idempotency-Key", "slow") }()
	deadline := time.Now().Add(5 * time.Second)
	for len(e.stub.Requests()) == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	e.problem(e.sendJSON("u-rec", send1, "Idempotency-Key", "slow"), 409, "idempotency-in-progress")
	close(e.block)
	first := <-done
	if first.code != 201 || first.str("status") != "sent" || len(e.stub.Requests()) != 2 {
		t.Fatalf("first: %s", first.raw)
	}
}

func TestOutboundBulk(t *testing.T) {
	t.Parallel()
	e := newObEnv(t, "microsoft", nil)
	e.seed()
	e.connect("u-rec")
	// A malformed item fails the whole request before anything is sent.
	e.problem(e.do("POST", "/v1/tenants/acme/messages/bulk", "u-rec",
		`{"messages":[`+send1+`,{"candidate":"c-1","subject":"x","text":"y","cc":["bad"]}]}`), 400, "invalid")
	e.problem(e.do("POST", "/v1/tenants/acme/messages/bulk", "u-rec", `{"messages":[]}`), 400, "invalid")
	if len(e.stub.Requests()) != 0 {
		t.Fatal("sent despite a malformed bulk request")
	}
	r := e.must(e.do("POST", "/v1/tenants/acme/messages/bulk", "u-rec", `{"messages":[
		{"candidate":"c-1","subject":"One","text":"1"},
		{"candidate":"c-1","subject":"Two","text":"2","send_for":"u-hm"},
		{"candidate":"c-1","subject":"Three","text":"3","kind":"bulk_archive"}]}`), 201)
	res := r.body["results"].([]any)
	if len(res) != 3 {
		t.Fatalf("results %s", r.raw)
	}
	r0, r1, r2 := res[0].(map[string]any), res[1].(map[string]any), res[2].(map[string]any)
	if r0["status"] != "sent" || r2["status"] != "sent" || r0["thread_id"] == r2["thread_id"] {
		t.Fatalf("results %s", r.raw)
	}
	if r1["status"] != "failed" || r1["message_id"] != "" || r1["problem"].(map[string]any)["status"] != float64(403) {
		t.Fatalf("refused item %v", r1)
	}
	if len(e.stub.Sent()) != 2 {
		t.Fatalf("%d sent", len(e.stub.Sent()))
	}
}

func TestOutboundSendForAndDelegations(t *testing.T) {
	t.Parallel()
	e := newObEnv(t, "google", nil)
	e.seed()
	e.connect("u-rec")
	e.connect("u-hm")
	sendFor := `{"candidate":"c-1","subject":"From Hugo","text":"Hi","send_for":"u-hm","kind":"one_off"}`
	e.problem(e.sendJSON("u-rec", sendFor), 403, "send-for-not-allowed")

	// Requests: validation and permissions.
	e.problem(e.do("POST", "/v1/tenants/acme/delegations", "u-rec", `{"requester":"u-rec","grantor":"u-rec"}`), 422, "self-delegation")
	e.problem(e.do("POST", "/v1/tenants/acme/delegations", "u-other", `{"requester":"u-rec","grantor":"u-hm"}`), 403, "forbidden")
	e.problem(e.do("POST", "/v1/tenants/acme/delegations", "u-rec", `{"requester":"u-rec","grantor":"ghost"}`), 404, "not-found")
	e.problem(e.do("POST", "/v1/tenants/acme/delegations", "u-rec", `{"requester":"u-rec"}`), 400, "invalid")
	// A user without at least limited_team_member cannot be asked.
	if err := e.st.CreateUser(context.Background(), &store.User{Tenant: "acme", ID: "u-guest", Email: "guest@acme.test", Role: "guest"}); err != nil {
		t.Fatal(err)
	}
	e.problem(e.do("POST", "/v1/tenants/acme/delegations", "u-rec", `{"requester":"u-rec","grantor":"u-guest"}`), 422, "grantor-role")

	d := e.must(e.do("POST", "/v1/tenants/acme/delegations", "u-rec", `{"requester":"u-rec","grantor":"u-hm"}`), 201)
	id := d.str("id")
	if d.str("status") != "requested" || d.str("requester") != "u-rec" || d.str("grantor") != "u-hm" || !strings.HasPrefix(id, "d-") {
		t.Fatalf("created %s", d.raw)
	}
	e.problem(e.do("POST", "/v1/tenants/acme/delegations", "", `{"requester":"u-rec","grantor":"u-hm"}`), 409, "exists")
	e.problem(e.sendJSON("u-rec", sendFor), 403, "send-for-not-allowed")

	// Only the grantor decides.
	e.problem(e.do("POST", "/v1/tenants/acme/delegations/"+id+"/approve", "u-rec", ""), 403, "forbidden")
	e.problem(e.do("POST", "/v1/tenants/acme/delegations/"+id+"/approve", "u-adm", ""), 403, "forbidden")
	e.problem(e.do("POST", "/v1/tenants/acme/delegations/"+id+"/approve", "", ""), 400, "acting-user-required")
	e.problem(e.do("POST", "/v1/tenants/acme/delegations/d-999/approve", "u-hm", ""), 404, "not-found")
	a := e.must(e.do("POST", "/v1/tenants/acme/delegations/"+id+"/approve", "u-hm", ""), 200)
	if a.str("status") != "active" {
		t.Fatalf("approve %s", a.raw)
	}
	e.problem(e.do("POST", "/v1/tenants/acme/delegations/"+id+"/decline", "u-hm", ""), 409, "delegation-state")

	// Automation is never allowed, even with an active delegation.
	e.problem(e.sendJSON("u-rec", strings.Replace(sendFor, "one_off", "automation", 1)), 422, "send-for-automation")

	// The happy path: through the grantor's grant, From = grantor.
	for _, kind := range []string{"one_off", "bulk", "bulk_archive", "nurture"} {
		r := e.must(e.sendJSON("u-rec", strings.Replace(sendFor, "one_off", kind, 1)), 201)
		if r.str("status") != "sent" {
			t.Fatalf("%s: %s", kind, r.raw)
		}
	}
	m := e.lastSent()
	if m.Header.Get("From") != `"Hugo" <hm@acme.test>` {
		t.Fatalf("From %q", m.Header.Get("From"))
	}
	hm, _ := e.om.Token(context.Background(), "acme", "u-hm")
	for _, rq := range e.stub.Requests() {
		if rq.AccessToken != hm.AccessToken {
			t.Fatal("a Send For message used the requester's grant")
		}
	}
	id2, _ := store.ParseRef("m-", e.must(e.sendJSON("u-rec", sendFor), 201).str("message_id"))
	msg, _ := e.st.Message(context.Background(), "acme", id2)
	if msg.SentBy != "u-rec" || msg.SendFor != "u-hm" || msg.From != "hm@acme.test" {
		t.Fatalf("stored %+v", msg)
	}

	// Revocation: not by an outsider; by the requester, grantor or admin.
	e.problem(e.do("DELETE", "/v1/tenants/acme/delegations/"+id, "u-other", ""), 403, "forbidden")
	rv := e.must(e.do("DELETE", "/v1/tenants/acme/delegations/"+id, "u-hm", ""), 200)
	if rv.str("status") != "revoked" {
		t.Fatalf("revoke %s", rv.raw)
	}
	e.problem(e.sendJSON("u-rec", sendFor), 403, "send-for-not-allowed")

	// A new request, declined.
	d2 := e.must(e.do("POST", "/v1/tenants/acme/delegations", "", `{"requester":"u-rec","grantor":"u-hm"}`), 201)
	e.must(e.do("POST", "/v1/tenants/acme/delegations/"+d2.str("id")+"/decline", "u-hm", ""), 200)
	e.problem(e.sendJSON("u-rec", sendFor), 403, "send-for-not-allowed")

	// Listing, one delegation with its audit trail.
	l := e.must(e.do("GET", "/v1/tenants/acme/delegations", "", ""), 200)
	if n := len(l.body["delegations"].([]any)); n != 2 {
		t.Fatalf("%d delegations", n)
	}
	l = e.must(e.do("GET", "/v1/tenants/acme/delegations?status=declined", "", ""), 200)
	if n := len(l.body["delegations"].([]any)); n != 1 {
		t.Fatalf("%d declined", n)
	}
	g := e.must(e.do("GET", "/v1/tenants/acme/delegations/"+id, "", ""), 200)
	var steps []string
	for _, h := range g.body["history"].([]any) {
		hm := h.(map[string]any)
		steps = append(steps, fmt.Sprintf("%v:%v", hm["by"], hm["to"]))
	}
	if strings.Join(steps, " ") != "u-rec:requested u-hm:active u-hm:revoked" {
		t.Fatalf("history %v", steps)
	}
	if n := len(e.events("delegation.requested")); n != 2 {
		t.Fatalf("%d delegation.requested events", n)
	}
	if n := len(e.events("delegation.changed")); n != 3 {
		t.Fatalf("%d delegation.changed events", n)
	}
}

func TestOutboundRetriesAndBrokenGrant(t *testing.T) {
	t.Parallel()
	e := newObEnv(t, "microsoft", nil)
	e.seed()
	e.connect("u-rec")
	e.stub.FailSend(providertest.Failure{Status: 429, RetryAfter: "2"}, providertest.Failure{Status: 502})
	r := e.must(e.sendJSON("u-rec", send1), 201)
	if r.str("status") != "sent" || len(e.stub.Requests()) != 3 || e.sleeps[0] < 2*time.Second {
		t.Fatalf("%s after %d calls, sleeps %v", r.raw, len(e.stub.Requests()), e.sleeps)
	}
	// A permanent provider error is recorded on the message.
	e.stub.FailSend(providertest.Failure{Status: 403})
	r = e.must(e.sendJSON("u-rec", send1), 201)
	if r.str("status") != "failed" || !strings.Contains(r.str("error"), "ErrorAccessDenied") {
		t.Fatalf("%s", r.raw)
	}
	// Revoked at the provider: the refresh gets invalid_grant.
	e.stub.RevokeAll()
	r = e.must(e.sendJSON("u-rec", send1), 201)
	if r.str("status") != "failed" || !strings.Contains(r.str("error"), "reconnect") {
		t.Fatalf("%s", r.raw)
	}
	u := e.must(e.do("GET", "/v1/tenants/acme/users/u-rec", "", ""), 200)
	g := u.body["grant"].(map[string]any)
	if g["status"] != "broken" || !strings.Contains(g["error"].(string), "invalid_grant") {
		t.Fatalf("grant %s", u.raw)
	}
	if evs := e.events("grant.broken"); len(evs) != 1 || evs[0].Data.(map[string]any)["user"] != "u-rec" {
		t.Fatalf("grant.broken events %v", evs)
	}
	e.problem(e.sendJSON("u-rec", send1), 409, "grant-broken")
	// Reconnecting repairs it.
	e.connect("u-rec")
	e.must(e.sendJSON("u-rec", send1), 201)
}

func TestOutboundRestartKeepsGrantAndRefresh(t *testing.T) {
	t.Parallel()
	e := newObEnv(t, "microsoft", nil)
	e.seed()
	e.connect("u-rec")
	e.must(e.sendJSON("u-rec", send1), 201)
	e.stub.ExpireAccessTokens() // forces a refresh (and a rotation) on the next send
	e.must(e.sendJSON("u-rec", send1), 201)
	if e.stub.TokenCalls("refresh_token") != 1 {
		t.Fatal("no refresh")
	}
	e.restart()
	e.stub.ExpireAccessTokens()
	r := e.must(e.sendJSON("u-rec", send1), 201)
	if r.str("status") != "sent" || e.stub.TokenCalls("refresh_token") != 2 {
		t.Fatalf("after restart: %s (%d refreshes); was the rotated refresh token persisted?", r.raw, e.stub.TokenCalls("refresh_token"))
	}
	e.st.Close()
	assertSecretsAbsent(t, e.dir, e.stub.Issued())
}

// --- round trip: replies to sent mail are matched by the router ---

type obInbound struct {
	e       *obEnv
	r       *router.Router
	dns     *dnstest.Server
	signers map[string]crypto.Signer
}

func newObInbound(e *obEnv) *obInbound {
	t := e.t
	srv := dnstest.Start(t)
	res, err := dnsres.New(dnsres.Options{Server: srv.Addr(), Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	in := &obInbound{e: e, dns: srv, signers: map[string]crypto.Signer{}}
	for i, d := range []string{"cand.test", "acme.test"} {
		key, txt := dkimtest.RSA(t, i)
		srv.SetTXT("s1._domainkey."+d, txt)
		in.signers[d] = key
	}
	in.r = &router.Router{Store: e.st, Keys: e.kr, Verifier: &trust.Verifier{Resolver: res, MaxSignatures: 5},
		Hostname: "relay.test", MaxHeaderBytes: 1 << 20, MaxMIMEDepth: 20, Salt: []byte("s"), Log: slog.New(slog.DiscardHandler)}
	return in
}

type obBody []byte

func (b obBody) Open() io.Reader { return bytes.NewReader(b) }
func (b obBody) Size() int64     { return int64(len(b)) }

// route DKIM-signs raw as domain and routes it to acme's inbound address.
func (in *obInbound) route(domain, raw string) router.Outcome {
	in.e.t.Helper()
	raw = strings.ReplaceAll(strings.ReplaceAll(raw, "\r\n", "\n"), "\n", "\r\n")
	var out bytes.Buffer
	if err := dkim.Sign(&out, strings.NewReader(raw), &dkim.SignOptions{Domain: domain, Selector: "s1", Signer: in.signers[domain],
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed}); err != nil {
		in.e.t.Fatal(err)
	}
	o, err := in.r.Route(context.Background(), router.Input{Tenant: "acme", Body: obBody(out.Bytes())})
	if err != nil {
		in.e.t.Fatal(err)
	}
	return o
}

func TestOutboundRepliesMatchRouter(t *testing.T) {
	t.Parallel()
	e := newObEnv(t, "google", nil)
	e.seed()
	e.connect("u-hm")
	in := newObInbound(e)
	d := e.must(e.do("POST", "/v1/tenants/acme/delegations", "u-rec", `{"requester":"u-rec","grantor":"u-hm"}`), 201)
	e.must(e.do("POST", "/v1/tenants/acme/delegations/"+d.str("id")+"/approve", "u-hm", ""), 200)
	sent := e.must(e.sendJSON("u-rec", `{"candidate":"c-1","subject":"Interview","text":"Hi Carl","send_for":"u-hm"}`), 201)
	msgid := sent.str("internet_message_id")
	sentMIME := e.lastSent()
	tok := sentMIME.Header.Get("X-Syncrelay-Thread")

	// 1. The grantor's sent copy comes back through the routing rule with a
	// provider-rewritten Message-ID: a duplicate that teaches the new id.
	copyRaw := fmt.Sprintf("From: Hugo <hm@acme.test>\nTo: Carl <carl@cand.test>\nSubject: Interview\nDate: %s\n"+
		"Message-ID: <CAprov123@mail.gmail.com>\nX-Syncrelay-Thread: %s\nMIME-Version: 1.0\nContent-Type: text/plain\n\nHi Carl\n",
		time.Now().Format(time.RFC1123Z), tok)
	o := in.route("acme.test", copyRaw)
	if o.Decision != router.Duplicate || o.Reason != "sent_copy" || o.Message != sent.str("message_id") {
		t.Fatalf("sent copy: %+v", o)
	}

	// 2. The candidate replies to our Message-ID: matched by token, and the
	// requester and the grantor are both notified.
	reply := func(id, inReplyTo string) string {
		return fmt.Sprintf("From: Carl <carl@cand.test>\nTo: hm@acme.test\nSubject: Re: Interview\nDate: %s\nMessage-ID: <%s>\n"+
			"In-Reply-To: <%s>\nReferences: <%s>\nMIME-Version: 1.0\nContent-Type: text/plain\n\nTuesday works.\n",
			time.Now().Format(time.RFC1123Z), id, inReplyTo, inReplyTo)
	}
	o = in.route("cand.test", reply("r1@cand.test", msgid))
	if o.Decision != router.Stored || o.MatchedBy != router.ByToken || o.Thread != sent.str("thread_id") || o.Direction != store.Inbound {
		t.Fatalf("reply: %+v", o)
	}
	evs := e.events("message.received")
	if len(evs) != 1 {
		t.Fatalf("%d message.received", len(evs))
	}
	notify := evs[0].Data.(map[string]any)["notify_users"]
	got := fmt.Sprint(notify)
	if !strings.Contains(got, "u-rec") || !strings.Contains(got, "u-hm") {
		t.Fatalf("notify_users %v: want the requester and the grantor", notify)
	}

	// 3. A reply that only references the provider's id still matches.
	o = in.route("cand.test", reply("r2@cand.test", "CAprov123@mail.gmail.com"))
	if o.Decision != router.Stored || o.MatchedBy != router.ByLearnedID {
		t.Fatalf("reply to the learned id: %+v", o)
	}

	// 4. Replying from the ATS threads on the candidate's message.
	rr := e.must(e.sendJSON("u-rec", fmt.Sprintf(`{"candidate":"c-1","text":"See you","send_for":"u-hm","reply_to_message":%q}`, o.Message)), 201)
	if rr.str("thread_id") != sent.str("thread_id") {
		t.Fatalf("reply on another thread: %s", rr.raw)
	}
	m := e.lastSent()
	refs := m.Header.Get("References")
	for _, want := range []string{msgid, "CAprov123@mail.gmail.com", "r1@cand.test", "r2@cand.test"} {
		if !strings.Contains(refs, "<"+want+">") {
			t.Fatalf("References %q lacks %s", refs, want)
		}
	}
	if m.Header.Get("In-Reply-To") != "<r2@cand.test>" || m.Header.Get("Subject") != "Re: Interview" {
		t.Fatalf("In-Reply-To %q Subject %q", m.Header.Get("In-Reply-To"), m.Header.Get("Subject"))
	}
	// And the answer to that reply matches too.
	o = in.route("cand.test", reply("r3@cand.test", rr.str("internet_message_id")))
	if o.Decision != router.Stored || o.Thread != sent.str("thread_id") {
		t.Fatalf("second reply: %+v", o)
	}
	// Mail that references nothing of ours is discarded.
	o = in.route("cand.test", reply("r4@cand.test", "unrelated@cand.test"))
	if o.Decision != router.Discarded {
		t.Fatalf("unrelated: %+v", o)
	}
}

func TestOutboundOutlookReplyMatchesByThreadIndex(t *testing.T) {
	t.Parallel()
	e := newObEnv(t, "microsoft", nil)
	e.seed()
	e.connect("u-rec")
	in := newObInbound(e)
	sent := e.must(e.sendJSON("u-rec", send1), 201)
	ti := e.lastSent().Header.Get("Thread-Index")
	// Outlook replies that dropped References/In-Reply-To keep Thread-Index
	// with a child block appended.
	hdr, err := base64.StdEncoding.DecodeString(ti)
	if err != nil || len(hdr) != token.ConvHeaderLen {
		t.Fatalf("Thread-Index %q of a new conversation", ti)
	}
	child := base64.StdEncoding.EncodeToString(append(hdr, 1, 2, 3, 4, 5))
	raw := fmt.Sprintf("From: Carl <carl@cand.test>\nTo: rec@acme.test\nSubject: RE: Interview\nDate: %s\nMessage-ID: <o1@cand.test>\n"+
		"Thread-Index: %s\nThread-Topic: Interview\nMIME-Version: 1.0\nContent-Type: text/plain\n\nOK\n",
		time.Now().Format(time.RFC1123Z), child)
	o := in.route("cand.test", raw)
	if o.Decision != router.Stored || o.MatchedBy != router.ByThreadIndex || o.Thread != sent.str("thread_id") {
		t.Fatalf("thread-index reply: %+v", o)
	}
	if got := fmt.Sprint(e.events("message.received")[0].Data.(map[string]any)["notify_users"]); got != "[u-rec]" {
		t.Fatalf("notify_users %s", got)
	}
}
