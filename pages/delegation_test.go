package pages_test

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"syncrelay/pages"
)

// TestDelegationPageApprove: the emailed link over plain HTTP (a browser
// without JavaScript): the page names the two users and nobody else, a
// POST without the CSRF token changes nothing, Approve decides once (the
// API then shows the delegation active, decided by the grantor, with
// delegation.changed raised), and the link is then used.
func TestDelegationPageApprove(t *testing.T) {
	e := newApprovalEnv(t)
	e.connect("u-rec")
	id, link := e.request("u-rec", "u-hm")
	c := browserClient(t)

	p := get(t, c, link)
	if p.code != 200 || p.h.Get("Content-Security-Policy") != pages.CSP || !strings.HasPrefix(p.h.Get("Content-Type"), "text/html") {
		t.Fatalf("GET %d CSP %q", p.code, p.h.Get("Content-Security-Policy"))
	}
	for _, want := range []string{"Rita", "rec@acme.test", "Hugo", "hm@acme.test", `id="approve"`, `id="decline"`, `data-state="requested"`} {
		if !strings.Contains(p.body, want) {
			t.Fatalf("page lacks %q:\n%s", want, p.body)
		}
	}
	for _, other := range []string{"other@acme.test", "Otto", "vp@acme.test", "<script>"} {
		if strings.Contains(p.body, other) {
			t.Fatalf("page shows %q", other)
		}
	}
	// Viewing twice uses nothing.
	if p2 := get(t, c, link); !strings.Contains(p2.body, `id="approve"`) {
		t.Fatal("a second view lost the buttons")
	}

	form := p.form(t)
	form.Set("action", "approve")
	bad := url.Values{"t": form["t"], "action": {"approve"}, "csrf": {"forged"}}
	if r := post(t, c, e.hs.URL+"/p/delegation", bad); r.code != 403 || strings.Contains(r.body, "goroutine") {
		t.Fatalf("forged CSRF: %d", r.code)
	}
	if r := post(t, browserClient(t), e.hs.URL+"/p/delegation", form); r.code != 403 {
		t.Fatalf("CSRF field without its cookie: %d", r.code)
	}
	if s := e.status(id); s != "requested" {
		t.Fatalf("refused POSTs changed the state to %s", s)
	}

	r := post(t, c, e.hs.URL+"/p/delegation", form)
	if r.code != 200 || !strings.Contains(r.body, `id="done"`) || !strings.Contains(r.body, `data-state="active"`) || strings.Contains(r.body, `id="approve"`) {
		t.Fatalf("approve: %d\n%s", r.code, r.body)
	}
	g := e.must("GET", "/v1/tenants/acme/delegations/"+id, "", "", 200)
	hist := g["history"].([]any)
	if g["status"] != "active" || hist[len(hist)-1].(map[string]any)["by"] != "u-hm" {
		t.Fatalf("API after approval: %v", g)
	}
	if n := len(e.changedEvents()); n != 1 {
		t.Fatalf("%d delegation.changed events", n)
	}

	// The same form again, and the link again: used, state shown, no buttons.
	form.Set("action", "decline")
	if r := post(t, c, e.hs.URL+"/p/delegation", form); r.code != 409 || !strings.Contains(r.body, "already used") || !strings.Contains(r.body, `data-state="active"`) {
		t.Fatalf("second POST: %d\n%s", r.code, r.body)
	}
	p = get(t, c, link)
	if p.code != 200 || !strings.Contains(p.body, "already used") || !strings.Contains(p.body, `id="used"`) || strings.Contains(p.body, `id="approve"`) {
		t.Fatalf("used link: %d\n%s", p.code, p.body)
	}
	if s := e.status(id); s != "active" || len(e.changedEvents()) != 1 {
		t.Fatalf("reuse changed the state: %s", s)
	}
}

// TestDelegationPageDeclineRevokedExpired: decline through the page; a
// request revoked in the ATS shows as revoked without buttons; expired and
// tampered links get a clear page, not a stack trace.
func TestDelegationPageDeclineRevokedExpired(t *testing.T) {
	e := newApprovalEnv(t)
	e.connect("u-rec")
	c := browserClient(t)

	id, link := e.request("u-rec", "u-hm")
	p := get(t, c, link)
	form := p.form(t)
	form.Set("action", "decline")
	r := post(t, c, e.hs.URL+"/p/delegation", form)
	if r.code != 200 || !strings.Contains(r.body, `data-state="declined"`) || e.status(id) != "declined" {
		t.Fatalf("decline: %d %s\n%s", r.code, e.status(id), r.body)
	}

	id2, link2 := e.request("u-rec", "u-vp")
	p = get(t, c, link2)
	form = p.form(t) // the grantor opened the page ...
	e.must("DELETE", "/v1/tenants/acme/delegations/"+id2, "u-rec", "", 200)
	form.Set("action", "approve") // ... and approves after the requester revoked
	if r := post(t, c, e.hs.URL+"/p/delegation", form); r.code != 409 || !strings.Contains(r.body, `data-state="revoked"`) || !strings.Contains(r.body, "no longer waiting") {
		t.Fatalf("approve after revoke: %d\n%s", r.code, r.body)
	}
	if p := get(t, c, link2); p.code != 200 || !strings.Contains(p.body, "Revoked") || strings.Contains(p.body, `id="approve"`) {
		t.Fatalf("revoked: %d\n%s", p.code, p.body)
	}
	if s := e.status(id2); s != "revoked" {
		t.Fatalf("status %s", s)
	}

	e.connect("u-other")
	_, link3 := e.request("u-other", "u-hm")
	u, _ := url.Parse(link3)
	tok := u.Query().Get("t")
	b := []byte(tok)
	if b[3] == 'A' {
		b[3] = 'B'
	} else {
		b[3] = 'A'
	}
	tampered := e.hs.URL + "/p/delegation?t=" + url.QueryEscape(string(b))
	for _, tc := range []struct {
		url  string
		code int
		want string
	}{
		{tampered, 403, "not valid"},
		{e.hs.URL + "/p/delegation", 400, "incomplete"},
		{e.hs.URL + "/p/delegation?t=x.y", 403, "not valid"},
	} {
		p := get(t, c, tc.url)
		if p.code != tc.code || !strings.Contains(p.body, tc.want) || strings.Contains(p.body, "goroutine") || strings.Contains(p.body, "signedlink") {
			t.Fatalf("%s: %d\n%s", tc.url, p.code, p.body)
		}
	}
	e.advance(7*24*time.Hour + time.Minute)
	if p := get(t, c, link3); p.code != 410 || !strings.Contains(p.body, "expired") {
		t.Fatalf("expired: %d\n%s", p.code, p.body)
	}
}
