package api

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"syncrelay/pages"
	"syncrelay/signedlink"
	"syncrelay/store"
)

// The admin-links endpoints with the real pages server behind them.
func TestAdminLinks(t *testing.T) {
	t.Parallel()
	hs, _, st := newTestServer(t)
	ctx := context.Background()
	must(t, st.CreateTenant(ctx, &store.Tenant{ID: "acme", Provider: "google", InboundAddress: "acme-x@relay.test", DKIMPolicy: "require"}))
	pg, err := pages.New(pages.Options{Store: st, Links: signedlink.New([]byte("0123456789abcdef0123456789abcdef"), nil),
		CSRFKey: []byte("k"), PublicURL: "https://relay.example.com/", Hostname: "relay.test"})
	if err != nil {
		t.Fatal(err)
	}
	s := New(Options{Store: st, Tokens: []string{testToken}, Hostname: "relay.test", AdminLinks: pg})
	hs = httptest.NewServer(s)
	t.Cleanup(hs.Close)
	pagesHS := httptest.NewServer(pg)
	t.Cleanup(pagesHS.Close)

	code, m := callJSON(t, hs, "POST", "/v1/tenants/acme/admin-links", "", "")
	if code != http.StatusCreated {
		t.Fatalf("create: %d %v", code, m)
	}
	u, _ := m["url"].(string)
	if !strings.HasPrefix(u, "https://relay.example.com/p/admin?t=") {
		t.Fatalf("url %q", u)
	}
	exp, err := time.Parse(time.RFC3339, m["expires_at"].(string))
	if err != nil || time.Until(exp) < 23*time.Hour || time.Until(exp) > 24*time.Hour {
		t.Fatalf("expires_at %v %v", m["expires_at"], err)
	}
	open := func(link string) int {
		resp, err := http.Get(pagesHS.URL + strings.TrimPrefix(link, "https://relay.example.com"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := open(u); c != 200 {
		t.Fatalf("page: %d", c)
	}

	code, m = callJSON(t, hs, "POST", "/v1/tenants/acme/admin-links", "", `{"ttl":"90m"}`)
	if code != http.StatusCreated {
		t.Fatalf("ttl 90m: %d %v", code, m)
	}
	exp, _ = time.Parse(time.RFC3339, m["expires_at"].(string))
	if d := time.Until(exp); d < 89*time.Minute || d > 90*time.Minute {
		t.Errorf("ttl 90m expires in %s", d)
	}

	for _, tc := range []struct {
		path, body string
		code       int
		detail     string
	}{
		{"/v1/tenants/acme/admin-links", `{"ttl":"8d"}`, 400, "not a duration"},
		{"/v1/tenants/acme/admin-links", `{"ttl":"169h"}`, 400, "out of bounds"},
		{"/v1/tenants/acme/admin-links", `{"ttl":"10s"}`, 400, "out of bounds"},
		{"/v1/tenants/acme/admin-links", `{"ttl":"1h","x":1}`, 400, "unknown field"},
		{"/v1/tenants/ghost/admin-links", ``, 404, "ghost"},
		{"/v1/tenants/ghost/admin-links/rotate", ``, 404, "ghost"},
	} {
		code, m := callJSON(t, hs, "POST", tc.path, "", tc.body)
		if code != tc.code || !strings.Contains(m["detail"].(string), tc.detail) {
			t.Errorf("%s %s: %d %v, want %d with %q", tc.path, tc.body, code, m, tc.code, tc.detail)
		}
	}
	if c, _, _ := do(t, hs, "POST", "/v1/tenants/acme/admin-links", "", ""); c != 401 {
		t.Errorf("no token: %d", c)
	}

	code, m = callJSON(t, hs, "POST", "/v1/tenants/acme/admin-links/rotate", "", "")
	if code != 200 || m["generation"] != float64(1) {
		t.Fatalf("rotate: %d %v", code, m)
	}
	if c := open(u); c != http.StatusGone {
		t.Fatalf("revoked link: %d", c)
	}
	_, m = callJSON(t, hs, "POST", "/v1/tenants/acme/admin-links", "", "")
	if c := open(m["url"].(string)); c != 200 {
		t.Fatalf("link after rotate: %d", c)
	}
}

func TestAdminLinksNotEnabled(t *testing.T) {
	t.Parallel()
	hs, _, st := newTestServer(t)
	must(t, st.CreateTenant(context.Background(), &store.Tenant{ID: "acme", Provider: "google", InboundAddress: "acme-x@relay.test", DKIMPolicy: "require"}))
	if code, m := callJSON(t, hs, "POST", "/v1/tenants/acme/admin-links", "", ""); code != http.StatusNotImplemented {
		t.Fatalf("%d %v", code, m)
	}
}
