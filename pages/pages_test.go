package pages

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/mail"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"syncrelay/setup"
	"syncrelay/signedlink"
	"syncrelay/store"
	"syncrelay/store/bolt"
)

var linkKey = []byte("links-key-for-tests-0123456789ab")

// captureSender records probes instead of sending them (the end-to-end
// path through a provider stand-in is in browser_test.go).
type captureSender struct {
	mu   sync.Mutex
	sent [][]byte
	err  error
}

func (c *captureSender) SendRaw(ctx context.Context, tenant, user string, raw []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	c.sent = append(c.sent, raw)
	return nil
}

type fixture struct {
	t     *testing.T
	st    *bolt.Store
	srv   *Server
	hs    *httptest.Server
	now   time.Time
	sends *captureSender
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	st, err := bolt.Open(t.TempDir(), bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ctx := context.Background()
	must(t, st.CreateTenant(ctx, &store.Tenant{ID: "acme", Name: "Acme", Domains: []string{"acme.test"}, Provider: "google",
		InboundAddress: "acme-secret@relay.test", DKIMPolicy: "require"}))
	must(t, st.CreateUser(ctx, &store.User{Tenant: "acme", ID: "u-rita", Email: "rita@acme.test", Role: "team_member"}))
	must(t, st.PutGrant(ctx, &store.Grant{Tenant: "acme", User: "u-rita", Provider: "google", Status: store.GrantActive, Sealed: []byte("x"), Connected: time.Now()}))
	f := &fixture{t: t, st: st, now: time.Now().UTC(), sends: &captureSender{}}
	f.srv, err = New(Options{Store: st, Links: signedlink.New(linkKey, func() time.Time { return f.now }), CSRFKey: linkKey,
		Hostname: "relay.test", Probes: f.sends, ProbeTimeout: time.Minute, Now: func() time.Time { return f.now }})
	if err != nil {
		t.Fatal(err)
	}
	f.hs = httptest.NewServer(f.srv)
	t.Cleanup(f.hs.Close)
	f.srv.o.PublicURL = f.hs.URL
	return f
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) link(ttl time.Duration) string {
	f.t.Helper()
	u, _, err := f.srv.MintAdmin(context.Background(), "acme", ttl)
	must(f.t, err)
	return u
}

func get(t *testing.T, c *http.Client, u string) (int, http.Header, string) {
	t.Helper()
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Get(u)
	must(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

func noRedirect(jar http.CookieJar) *http.Client {
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

var csrfRE = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

func TestAdminPageShowsSetup(t *testing.T) {
	f := newFixture(t)
	code, h, body := get(t, nil, f.link(0))
	if code != 200 {
		t.Fatalf("status %d: %s", code, body)
	}
	if h.Get("Content-Security-Policy") != CSP {
		t.Errorf("CSP %q", h.Get("Content-Security-Policy"))
	}
	if h.Get("Cache-Control") != "no-store" || h.Get("Referrer-Policy") != "no-referrer" || h.Get("X-Frame-Options") != "DENY" {
		t.Errorf("headers %v", h)
	}
	ten, _ := f.st.Tenant(context.Background(), "acme")
	rules := setup.For("relay.test", ten)
	var printed strings.Builder
	rules.Print(&printed)
	for _, want := range []string{
		"acme-secret@relay.test",
		// The exact rules check prints, HTML-escaped.
		htmlEsc(rules.Google.Regex),
		htmlEsc(rules.Exchange.PowerShell[3]), // the Thread-Index rule
		"Thread-Index",
		`<svg class="chart"`,
		`data-copy="google-rule"`,
		`<script src="/p/static/admin.js">`,
		"Verify forwarding",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// Every line of check's Google block is on the page as is.
	g, x := rulesText(rules)
	for _, part := range []string{g, x} {
		for _, l := range strings.Split(strings.TrimSpace(part), "\n") {
			if !strings.Contains(body, htmlEsc(l)) {
				t.Errorf("rule line missing: %q", l)
			}
		}
	}
	if strings.Contains(body, "style=") || strings.Contains(body, "<script>") {
		t.Error("inline style or script: the CSP would block it")
	}
}

// Broken grants and the quarantine are listed; no message content is.
func TestAdminPageListsWithoutContent(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	must(t, f.st.CreateUser(ctx, &store.User{Tenant: "acme", ID: "u-bob", Email: "bob@acme.test", Role: "team_member"}))
	must(t, f.st.PutGrant(ctx, &store.Grant{Tenant: "acme", User: "u-bob", Provider: "google", Status: store.GrantActive, Sealed: []byte("x"), Connected: time.Now()}))
	g, err := f.st.Grant(ctx, "acme", "u-bob")
	must(t, err)
	if ok, err := f.st.MarkGrantBroken(ctx, "acme", "u-bob", g.Version, "invalid_grant: revoked"); !ok || err != nil {
		t.Fatalf("MarkGrantBroken %v %v", ok, err)
	}
	q := &store.Quarantined{Tenant: "acme", Reason: "DKIM policy: no DKIM signature", DKIM: []store.AuthResult{{Domain: "cand.test", Result: "fail"}}}
	raw := "From: carl@cand.test\r\nSubject: SECRET-SUBJECT-1\r\n\r\nSECRET-BODY-2\r\n"
	must(t, f.st.Quarantine(ctx, q, &store.Raw{Body: strings.NewReader(raw), Size: int64(len(raw))}, time.Hour))
	f.st.Count("acme", "discarded", "no_match")
	_, _, body := get(t, nil, f.link(0))
	for _, want := range []string{"bob@acme.test", "invalid_grant: revoked", "q_" + strconv.FormatUint(q.ID, 10), "cand.test: fail", "no DKIM signature"} {
		if !strings.Contains(body, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	for _, never := range []string{"SECRET-SUBJECT-1", "SECRET-BODY-2", "carl@cand.test"} {
		if strings.Contains(body, never) {
			t.Errorf("page shows message content %q", never)
		}
	}
	// Without quarantine actions configured there are no buttons.
	if strings.Contains(body, `value="release"`) {
		t.Error("release button without quarantine actions")
	}
}

func htmlEsc(s string) string {
	r := strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&#34;", "'", "&#39;", "+", "&#43;")
	return r.Replace(s)
}

func TestLinkErrors(t *testing.T) {
	f := newFixture(t)
	good := f.link(time.Hour)
	u, _ := url.Parse(good)
	tok := u.Query().Get("t")
	s := signedlink.New(linkKey, func() time.Time { return f.now })
	expired, _ := s.Sign(signedlink.Claims{Purpose: signedlink.PurposeAdmin, Tenant: "acme", Expires: f.now.Add(-time.Minute)})
	delegation, _ := s.Sign(signedlink.Claims{Purpose: signedlink.PurposeDelegation, Tenant: "acme", Expires: f.now.Add(time.Hour)})
	ghost, _ := s.Sign(signedlink.Claims{Purpose: signedlink.PurposeAdmin, Tenant: "ghost", Expires: f.now.Add(time.Hour)})
	tampered := tok[:len(tok)-3] + "AAA"
	if tampered == tok {
		tampered = tok[:len(tok)-3] + "BBB"
	}
	for _, tc := range []struct {
		name, q  string
		code     int
		sentence string
	}{
		{"missing", "", 400, "no token"},
		{"tampered", "t=" + url.QueryEscape(tampered), 403, "not valid"},
		{"garbage", "t=%3Cscript%3E", 403, "not valid"},
		{"expired", "t=" + url.QueryEscape(expired), 410, "expired"},
		{"other purpose", "t=" + url.QueryEscape(delegation), 403, "not valid"},
		{"unknown tenant", "t=" + url.QueryEscape(ghost), 404, "no longer exists"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, h, body := get(t, nil, f.hs.URL+"/p/admin?"+tc.q)
			if code != tc.code || !strings.Contains(body, tc.sentence) {
				t.Fatalf("%d %q, want %d with %q", code, body, tc.code, tc.sentence)
			}
			if h.Get("Content-Security-Policy") != CSP || !strings.HasPrefix(h.Get("Content-Type"), "text/html") {
				t.Errorf("headers %v", h)
			}
			if strings.Contains(body, "goroutine") || strings.Contains(body, "signedlink:") || strings.Contains(body, "acme-secret") {
				t.Errorf("error page leaks internals: %s", body)
			}
		})
	}
	// Rotation revokes the earlier link, not later ones.
	if _, err := f.srv.RotateAdmin(context.Background(), "acme"); err != nil {
		t.Fatal(err)
	}
	if code, _, body := get(t, nil, good); code != 410 || !strings.Contains(body, "revoked") {
		t.Fatalf("old link after rotate: %d %s", code, body)
	}
	if code, _, _ := get(t, nil, f.link(0)); code != 200 {
		t.Fatalf("new link after rotate: %d", code)
	}
	// A link expires with the clock.
	short := f.link(time.Minute)
	f.now = f.now.Add(2 * time.Minute)
	if code, _, body := get(t, nil, short); code != 410 || !strings.Contains(body, "expired") {
		t.Fatalf("after expiry: %d %s", code, body)
	}
}

func TestMintAdminTTL(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	_, exp, err := f.srv.MintAdmin(ctx, "acme", 0)
	if err != nil || exp.Sub(f.now) < DefaultAdminTTL-time.Second || exp.Sub(f.now) > DefaultAdminTTL {
		t.Errorf("default: %v %v", exp, err)
	}
	for _, ttl := range []time.Duration{time.Second, MaxAdminTTL + time.Hour, -time.Hour} {
		if _, _, err := f.srv.MintAdmin(ctx, "acme", ttl); err == nil {
			t.Errorf("ttl %s accepted", ttl)
		}
	}
	if _, _, err := f.srv.MintAdmin(ctx, "ghost", 0); err == nil {
		t.Error("unknown tenant accepted")
	}
}

// POSTs need the cookie and the form token of the same link.
func TestCSRF(t *testing.T) {
	f := newFixture(t)
	link := f.link(0)
	tok, _ := url.Parse(link)
	jar, _ := cookiejar.New(nil)
	c := noRedirect(jar)
	_, _, body := get(t, c, link)
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no CSRF field on the page")
	}
	csrf := strings.ReplaceAll(m[1], "&#43;", "+")
	other, _ := url.Parse(f.link(0))
	post := func(c *http.Client, form url.Values, origin string) int {
		req, _ := http.NewRequest("POST", f.hs.URL+"/p/admin/verify", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := c.Do(req)
		must(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	t0 := tok.Query().Get("t")
	for _, tc := range []struct {
		name   string
		c      *http.Client
		form   url.Values
		origin string
	}{
		{"no cookie", noRedirect(nil), url.Values{"t": {t0}, "csrf": {csrf}}, ""},
		{"no field", c, url.Values{"t": {t0}}, ""},
		{"wrong field", c, url.Values{"t": {t0}, "csrf": {flip(csrf)}}, ""},
		{"field of another link", c, url.Values{"t": {other.Query().Get("t")}, "csrf": {csrf}}, ""},
		{"cross-origin", c, url.Values{"t": {t0}, "csrf": {csrf}}, "https://evil.example"},
	} {
		if code := post(tc.c, tc.form, tc.origin); code != http.StatusForbidden {
			t.Errorf("%s: %d, want 403", tc.name, code)
		}
	}
	if len(f.sends.sent) != 0 {
		t.Fatal("a refused POST sent a probe")
	}
	// The quarantine form is checked the same way.
	req, _ := http.NewRequest("POST", f.hs.URL+"/p/admin/quarantine", strings.NewReader(url.Values{"t": {t0}, "id": {"1"}, "action": {"delete"}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if resp, err := c.Do(req); err != nil || resp.StatusCode != http.StatusForbidden {
		t.Fatalf("quarantine POST without CSRF field: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if code := post(c, url.Values{"t": {t0}, "csrf": {csrf}}, f.hs.URL); code != http.StatusSeeOther {
		t.Fatalf("good POST: %d", code)
	}
	if len(f.sends.sent) != 1 {
		t.Fatalf("probes sent: %d", len(f.sends.sent))
	}
}

func TestProbe(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	ten, _ := f.st.Tenant(ctx, "acme")
	must(t, f.srv.startProbe(ctx, ten))
	m, err := mail.ReadMessage(bytes.NewReader(f.sends.sent[0]))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get("From") != "<rita@acme.test>" || m.Header.Get("To") != "<rita@acme.test>" {
		t.Errorf("probe from %q to %q", m.Header.Get("From"), m.Header.Get("To"))
	}
	// The routing rules match it: Google's regex on the full headers,
	// Exchange's on X-Syncrelay-Thread.
	rules := setup.For("relay.test", ten)
	head := string(f.sends.sent[0][:bytes.Index(f.sends.sent[0], []byte("\r\n\r\n"))])
	if !regexp.MustCompile(rules.Google.Regex).MatchString(head) {
		t.Errorf("Google rule %q does not match the probe's headers", rules.Google.Regex)
	}
	if !regexp.MustCompile(`^\w\w*$`).MatchString(m.Header.Get("X-Syncrelay-Thread")) {
		t.Errorf("Exchange X-Syncrelay-Thread rule does not match %q", m.Header.Get("X-Syncrelay-Thread"))
	}
	v := m.Header.Get(HeaderProbe)
	a := &store.TenantActivity{}
	pv, _ := f.srv.probeView(ctx, ten, a, f.now)
	if pv.State != "pending" {
		t.Fatalf("state %q", pv.State)
	}
	for _, bad := range []string{"", "acme", "beta." + v[5:], "acme." + strings.Repeat("0", 32), v + "x"} {
		if ok, err := f.srv.ProbeReturned(ctx, "acme", bad); ok || err != nil {
			t.Errorf("ProbeReturned(%q) = %v %v", bad, ok, err)
		}
	}
	if ok, err := f.srv.ProbeReturned(ctx, "beta", v); ok || err != nil {
		t.Errorf("at another tenant's address: %v %v", ok, err)
	}
	f.now = f.now.Add(3 * time.Second)
	if ok, err := f.srv.ProbeReturned(ctx, "acme", v); !ok || err != nil {
		t.Fatalf("ProbeReturned = %v %v", ok, err)
	}
	pv, _ = f.srv.probeView(ctx, ten, a, f.now)
	if pv.State != "returned" || pv.Took != "3s" {
		t.Fatalf("after return: %+v", pv)
	}

	// A probe that does not come back times out with hints; a second
	// click while it is on its way sends nothing more.
	must(t, f.srv.startProbe(ctx, ten))
	must(t, f.srv.startProbe(ctx, ten))
	if len(f.sends.sent) != 2 {
		t.Fatalf("%d probes sent, want 2 (one per started check)", len(f.sends.sent))
	}
	f.now = f.now.Add(2 * time.Minute)
	pv, _ = f.srv.probeView(ctx, ten, a, f.now)
	if pv.State != "timeout" || len(pv.Hints) == 0 || !strings.Contains(pv.Hints[0], "Nothing reached the inbound address") {
		t.Fatalf("timeout: %+v", pv)
	}
	a.LastForwarded = f.now
	a.LastDay.Reasons = map[string]uint64{"rejected/dkim_unaligned": 4}
	pv, _ = f.srv.probeView(ctx, ten, a, f.now)
	if len(pv.Hints) != 2 || !strings.Contains(pv.Hints[0], "but not the probe") || !strings.Contains(pv.Hints[1], "4 messages") {
		t.Fatalf("hints: %q", pv.Hints)
	}

	// A send that fails says why.
	f.sends.err = io.ErrUnexpectedEOF
	must(t, f.srv.startProbe(ctx, ten))
	pv, _ = f.srv.probeView(ctx, ten, a, f.now)
	if pv.State != "send_failed" || !strings.Contains(pv.Error, "rita@acme.test") {
		t.Fatalf("send failure: %+v", pv)
	}
}

func TestChartBuckets(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		f.st.Count("acme", "stored", "")
	}
	f.st.Count("acme", "discarded", "no_match")
	f.st.Count("acme", "discarded", "probe") // a returned probe is not over-forwarding
	f.st.Count("acme", "rejected", "dkim_fail")
	f.st.CountAuth("acme", true, false)
	must(t, f.st.FlushCounters(ctx))
	now := time.Now().UTC()
	day, err := f.srv.buckets(ctx, "acme", dayStarts(now), now)
	if err != nil {
		t.Fatal(err)
	}
	last := day[len(day)-1]
	if len(day) != 24 || last.Values[0] != 3 || last.Values[1] != 1 || last.Values[3] != 1 || last.Total != 5 {
		t.Fatalf("this hour: %+v", last)
	}
	for _, b := range day[:23] {
		if b.Total != 0 {
			t.Fatalf("earlier hour %v: %+v", b.Start, b)
		}
	}
	week, err := f.srv.buckets(ctx, "acme", weekStarts(now), now)
	if err != nil {
		t.Fatal(err)
	}
	if len(week) != 7 || week[6].Total != 5 {
		t.Fatalf("week: %+v", week)
	}
	svg := string(svgChart("t", day, func(t time.Time) string { return t.Format("15:00") }, 3))
	if strings.Count(svg, `class="s-stored"`) != 1 || !strings.Contains(svg, "3 stored") {
		t.Errorf("svg: %s", svg)
	}
}

func TestStaticAndUnknown(t *testing.T) {
	f := newFixture(t)
	code, h, body := get(t, nil, f.hs.URL+"/p/static/admin.js")
	if code != 200 || !strings.Contains(body, "clipboard") || h.Get("Content-Security-Policy") != CSP {
		t.Fatalf("admin.js: %d %v", code, h)
	}
	code, _, body = get(t, nil, f.hs.URL+"/p/nothing")
	if code != 404 || !strings.Contains(body, "no page here") {
		t.Fatalf("unknown page: %d %s", code, body)
	}
}

// flip changes the first character of s.
func flip(s string) string {
	if s[0] == 'A' {
		return "B" + s[1:]
	}
	return "A" + s[1:]
}

// While a probe is out the page reloads itself, to a URL without the
// #verify fragment of the form's redirect: Chrome does not reload again a
// page whose refresh target differs from it only by a fragment.
func TestPendingProbeRefreshes(t *testing.T) {
	f := newFixture(t)
	ten, _ := f.st.Tenant(context.Background(), "acme")
	link := f.link(0)
	_, _, body := get(t, nil, link)
	if strings.Contains(body, `http-equiv="refresh"`) {
		t.Fatal("refresh without a probe out")
	}
	must(t, f.srv.startProbe(context.Background(), ten))
	_, _, body = get(t, nil, link)
	u, _ := url.Parse(link)
	want := `<meta http-equiv="refresh" content="5; url=/p/admin?t=` + u.Query().Get("t") + `">`
	if !strings.Contains(body, want) {
		t.Fatalf("pending page lacks %s", want)
	}
}

// storeDeleter is QuarantineActions that deletes through the store with
// the action record, as the daemon's does (release is not exercised here:
// it needs the router; the browser test releases through the daemon).
type storeDeleter struct {
	st *bolt.Store
	by []string
}

func (d *storeDeleter) ReleaseQuarantined(ctx context.Context, tenant string, id uint64, by string) error {
	return errors.New("not in this test")
}

func (d *storeDeleter) DeleteQuarantined(ctx context.Context, tenant string, id uint64, by string) error {
	d.by = append(d.by, by)
	return d.st.DeleteQuarantined(ctx, tenant, id, &store.QuarantineAction{Action: store.QuarantineDeleted, By: by})
}

// A delete from the page names the link that did it, and the page lists
// the recorded actions (ids and who, never content).
func TestAdminQuarantineActionRecorded(t *testing.T) {
	f := newFixture(t)
	del := &storeDeleter{st: f.st}
	f.srv.o.Quarantine = del
	ctx := context.Background()
	q := &store.Quarantined{Tenant: "acme", Reason: "DKIM policy: no DKIM signature"}
	raw := "Subject: SECRET-SUBJECT-3\r\n\r\nbody\r\n"
	must(t, f.st.Quarantine(ctx, q, &store.Raw{Body: strings.NewReader(raw), Size: int64(len(raw))}, time.Hour))
	link := f.link(0)
	u, _ := url.Parse(link)
	claims, err := f.srv.o.Links.Verify(u.Query().Get("t"), signedlink.PurposeAdmin)
	must(t, err)
	jar, _ := cookiejar.New(nil)
	c := noRedirect(jar)
	_, _, body := get(t, c, link)
	if !strings.Contains(body, "No quarantined message was released or deleted yet.") {
		t.Fatalf("the page does not say that no action was taken yet")
	}
	m := csrfRE.FindStringSubmatch(body)
	if m == nil {
		t.Fatal("no CSRF field")
	}
	form := url.Values{"t": {u.Query().Get("t")}, "csrf": {strings.ReplaceAll(m[1], "&#43;", "+")}, "id": {strconv.FormatUint(q.ID, 10)}, "action": {"delete"}}
	req, _ := http.NewRequest("POST", f.hs.URL+"/p/admin/quarantine", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := c.Do(req)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("delete POST: %d", resp.StatusCode)
	}
	wantBy := "admin link n=" + claims.Nonce + " g=0"
	if len(del.by) != 1 || del.by[0] != wantBy {
		t.Fatalf("acted by %q, want %q", del.by, wantBy)
	}
	_, _, body = get(t, c, link)
	i := strings.Index(body, "Recent quarantine actions")
	if i < 0 || !strings.Contains(body[i:], `<table id="quarantine-actions">`) {
		t.Fatalf("page has no recent quarantine actions")
	}
	sec := body[i:]
	for _, want := range []string{"deleted", "q_" + strconv.FormatUint(q.ID, 10), htmlEsc(wantBy), "no DKIM signature"} {
		if !strings.Contains(sec, want) {
			t.Errorf("actions section lacks %q", want)
		}
	}
	if strings.Contains(body, "SECRET-SUBJECT-3") {
		t.Error("page shows message content")
	}
}
