package pages_test

import (
	"bytes"
	"context"
	"encoding/json"
	"html"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	gomail "github.com/emersion/go-message/mail"

	"syncrelay/api"
	"syncrelay/delegation"
	"syncrelay/oauth"
	"syncrelay/outbound"
	"syncrelay/outbound/providertest"
	"syncrelay/pages"
	"syncrelay/signedlink"
	"syncrelay/store"
	"syncrelay/store/bolt"
	"syncrelay/token"
)

const apiToken = "approval-test-token"

// approvalEnv is the daemon's HTTP listener for Send For approval: the API
// and the pages on one loopback server, a bbolt store, the real outbound
// service sending through a local Gmail stand-in (providertest), and a
// clock the test can move.
type approvalEnv struct {
	t    *testing.T
	st   *bolt.Store
	stub *providertest.Stub
	hs   *httptest.Server

	mu  sync.Mutex
	now time.Time
}

func (e *approvalEnv) clock() time.Time { e.mu.Lock(); defer e.mu.Unlock(); return e.now }

func (e *approvalEnv) advance(d time.Duration) { e.mu.Lock(); e.now = e.now.Add(d); e.mu.Unlock() }

func newApprovalEnv(t *testing.T) *approvalEnv {
	t.Helper()
	e := &approvalEnv{t: t, now: time.Now(), stub: providertest.Start(t, "google")}
	st, err := bolt.Open(t.TempDir(), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e.st = st
	var h http.Handler
	e.hs = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(func() { e.hs.Close(); st.Close() })

	om, err := oauth.New(oauth.Options{Store: st, GrantKey: bytes.Repeat([]byte{1}, 32), StateKey: bytes.Repeat([]byte{2}, 32),
		Google: oauth.ProviderConfig{ClientID: providertest.ClientID, ClientSecret: providertest.ClientSecret,
			RedirectURL: e.hs.URL + "/oauth/google/callback", AuthURL: e.stub.AuthURL(), TokenURL: e.stub.TokenURL()}})
	if err != nil {
		t.Fatal(err)
	}
	kr, err := token.New(bytes.Repeat([]byte{3}, 32), "relay.test")
	if err != nil {
		t.Fatal(err)
	}
	svc, err := outbound.New(outbound.Options{Store: st, Tokens: om, Keys: kr,
		Providers: map[string]outbound.Provider{"google": &outbound.Gmail{BaseURL: e.stub.APIBase()}}})
	if err != nil {
		t.Fatal(err)
	}
	linkKey := bytes.Repeat([]byte{4}, 32)
	signer := signedlink.New(linkKey, e.clock)
	ap, err := delegation.New(delegation.Options{Store: st, Sender: svc, Signer: signer, BaseURL: e.hs.URL, Now: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	apiSrv := api.New(api.Options{Store: st, Tokens: []string{apiToken}, Hostname: "relay.test",
		Outbound: api.OutboundOptions{Store: st, Sender: svc, OAuth: om, Approvals: ap}})
	pg, err := pages.New(pages.Options{Store: st, Links: signer, CSRFKey: linkKey, PublicURL: e.hs.URL, Hostname: "relay.test", Now: e.clock})
	if err != nil {
		t.Fatal(err)
	}
	pg.EnableDelegationApproval(ap)
	mux := http.NewServeMux()
	mux.Handle("/p/", pg)
	mux.Handle("/", apiSrv)
	h = mux

	e.must("POST", "/v1/tenants", "", `{"id":"acme","name":"Acme","domains":["acme.test"],"provider":"google","delegation_approval":"email"}`, 201)
	for _, u := range []string{
		`{"id":"u-rec","email":"rec@acme.test","name":"Rita","role":"team_member"}`,
		`{"id":"u-hm","email":"hm@acme.test","name":"Hugo","role":"limited_team_member"}`,
		`{"id":"u-vp","email":"vp@acme.test","name":"Vera","role":"admin"}`,
		`{"id":"u-other","email":"other@acme.test","name":"Otto","role":"team_member"}`,
	} {
		e.must("POST", "/v1/tenants/acme/users", "", u, 201)
	}
	return e
}

// api calls the HTTP API with the bearer token.
func (e *approvalEnv) api(method, path, actor, body string) (int, map[string]any, []byte) {
	e.t.Helper()
	req, _ := http.NewRequest(method, e.hs.URL+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+apiToken)
	if actor != "" {
		req.Header.Set("X-Acting-User", actor)
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	_ = json.Unmarshal(raw, &m)
	if resp.StatusCode == http.StatusFound {
		m = map[string]any{"location": resp.Header.Get("Location")}
	}
	return resp.StatusCode, m, raw
}

func (e *approvalEnv) must(method, path, actor, body string, code int) map[string]any {
	e.t.Helper()
	got, m, raw := e.api(method, path, actor, body)
	if got != code {
		e.t.Fatalf("%s %s: %d, want %d: %s", method, path, got, code, raw)
	}
	return m
}

// connect runs user's OAuth consent over HTTP against the stand-in.
func (e *approvalEnv) connect(user string) {
	e.t.Helper()
	m := e.must("GET", "/oauth/google/start?tenant=acme&user="+user, user, "", http.StatusFound)
	cb := e.stub.Authorize(e.t, m["location"].(string))
	resp, err := http.Get(cb)
	if err != nil {
		e.t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		e.t.Fatalf("callback: %d", resp.StatusCode)
	}
}

var linkRE = regexp.MustCompile(`https?://\S+/p/delegation\?t=[A-Za-z0-9_.%-]+`)

// request asks grantor for Send For as requester over the API and returns
// the delegation id and the link parsed out of the email the stand-in
// received.
func (e *approvalEnv) request(requester, grantor string) (string, string) {
	e.t.Helper()
	n := len(e.stub.Sent())
	d := e.must("POST", "/v1/tenants/acme/delegations", requester, `{"requester":"`+requester+`","grantor":"`+grantor+`"}`, 201)
	if ae, _ := d["approval_email"].(map[string]any); ae["status"] != "sent" {
		e.t.Fatalf("approval_email %v", d["approval_email"])
	}
	sent := e.stub.Sent()
	if len(sent) != n+1 {
		e.t.Fatalf("%d emails sent for one request", len(sent)-n)
	}
	mr, err := gomail.CreateReader(bytes.NewReader(sent[n]))
	if err != nil {
		e.t.Fatal(err)
	}
	var text []byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			e.t.Fatal(err)
		}
		if h, ok := p.Header.(*gomail.InlineHeader); ok {
			if ct, _, _ := h.ContentType(); ct == "text/plain" {
				text, _ = io.ReadAll(p.Body)
			}
		}
	}
	link := linkRE.FindString(string(text))
	if link == "" {
		e.t.Fatalf("no link in the email:\n%s", text)
	}
	return d["id"].(string), link
}

func (e *approvalEnv) status(id string) string {
	e.t.Helper()
	return e.must("GET", "/v1/tenants/acme/delegations/"+id, "", "", 200)["status"].(string)
}

func (e *approvalEnv) changedEvents() []*store.Event {
	e.t.Helper()
	evs, err := e.st.Events(context.Background(), "")
	if err != nil {
		e.t.Fatal(err)
	}
	var out []*store.Event
	for _, ev := range evs {
		if ev.Type == "delegation.changed" {
			out = append(out, ev)
		}
	}
	return out
}

// browserClient is a plain HTTP client with cookies, like a browser
// without JavaScript.
func browserClient(t *testing.T) *http.Client {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar}
}

type page struct {
	code int
	h    http.Header
	body string
}

func get(t *testing.T, c *http.Client, u string) page {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return page{resp.StatusCode, resp.Header, string(b)}
}

func post(t *testing.T, c *http.Client, u string, form url.Values) page {
	t.Helper()
	resp, err := c.PostForm(u, form)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return page{resp.StatusCode, resp.Header, string(b)}
}

var hiddenRE = regexp.MustCompile(`<input type="hidden" name="(\w+)" value="([^"]*)">`)

// form reads the hidden fields of the page's decision form.
func (p page) form(t *testing.T) url.Values {
	t.Helper()
	v := url.Values{}
	for _, m := range hiddenRE.FindAllStringSubmatch(p.body, -1) {
		v.Set(m[1], html.UnescapeString(m[2]))
	}
	if v.Get("t") == "" || v.Get("csrf") == "" {
		t.Fatalf("no decision form on the page:\n%s", p.body)
	}
	return v
}
