package api

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"syncrelay/store/bolt"
)

const testToken = "test-token-123"

func newTestServer(t *testing.T) (*httptest.Server, *Server, *bolt.Store) {
	t.Helper()
	st, err := bolt.Open(t.TempDir(), bolt.Options{CompactNow: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s := New(Options{Store: st, Tokens: []string{"other", testToken}, Hostname: "relay.test"})
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	return hs, s, st
}

func do(t *testing.T, hs *httptest.Server, method, path, token, body string) (int, http.Header, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(method, hs.URL+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &m); err != nil {
			t.Fatalf("%s %s: body is not JSON: %q", method, path, raw)
		}
	}
	return resp.StatusCode, resp.Header, m
}

const acme = `{"id":"acme","name":"Acme","domains":["acme.test"],"provider":"google"}`

func TestCreateTenant(t *testing.T) {
	t.Parallel()
	hs, _, st := newTestServer(t)
	code, _, body := do(t, hs, "POST", "/v1/tenants", testToken, acme)
	if code != 201 {
		t.Fatalf("status %d: %v", code, body)
	}
	addr, _ := body["inbound_address"].(string)
	if !regexp.MustCompile(`^acme-[a-z2-7]{16}@relay\.test$`).MatchString(addr) {
		t.Fatalf("inbound_address %q: want acme-<80 random bits>@relay.test", addr)
	}
	if body["dkim_policy"] != "require" || body["trusted_forwarders"] == nil {
		t.Fatalf("defaults missing: %v", body)
	}
	if id, ok, _ := st.InboundTenant(t.Context(), addr); !ok || id != "acme" {
		t.Fatal("inbound address not resolvable at once")
	}
	// A second tenant gets a different secret.
	_, _, b2 := do(t, hs, "POST", "/v1/tenants", testToken, `{"id":"beta","name":"B","domains":["b.test"],"provider":"microsoft"}`)
	if b2["inbound_address"] == addr || !strings.HasPrefix(b2["inbound_address"].(string), "beta-") {
		t.Fatalf("second address %v", b2["inbound_address"])
	}
	code, _, p := do(t, hs, "POST", "/v1/tenants", testToken, acme)
	if code != 409 || p["status"].(float64) != 409 {
		t.Fatalf("duplicate tenant: %d %v", code, p)
	}
}

func TestErrorsAreProblems(t *testing.T) {
	t.Parallel()
	hs, _, _ := newTestServer(t)
	cases := []struct {
		name, method, path, token, body string
		code                            int
		detail                          string
	}{
		{"no token", "POST", "/v1/tenants", "", acme, 401, "Bearer"},
		{"wrong token", "GET", "/v1/tenants", "nope", "", 401, "Bearer"},
		{"unknown field", "POST", "/v1/tenants", testToken, `{"id":"a","name":"A","domains":["a.test"],"provider":"google","colour":"red"}`, 400, `unknown field "colour"`},
		{"trailing data", "POST", "/v1/tenants", testToken, acme + `{}`, 400, "after the JSON"},
		{"bad provider", "POST", "/v1/tenants", testToken, `{"id":"a","name":"A","domains":["a.test"],"provider":"yahoo"}`, 400, "provider"},
		{"bad id", "POST", "/v1/tenants", testToken, `{"id":"A B","name":"A","domains":["a.test"],"provider":"google"}`, 400, "id:"},
		{"bad domain", "POST", "/v1/tenants", testToken, `{"id":"a","name":"A","domains":["not a domain"],"provider":"google"}`, 400, "domains"},
		{"bad policy", "POST", "/v1/tenants", testToken, `{"id":"a","name":"A","domains":["a.test"],"provider":"google","dkim_policy":"maybe"}`, 400, "dkim_policy"},
		{"empty body", "POST", "/v1/tenants", testToken, ``, 400, "empty"},
		{"unknown tenant", "GET", "/v1/tenants/nope/users", testToken, "", 404, "nope"},
		{"unknown route", "GET", "/v2/whatever", testToken, "", 404, "no such endpoint"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			code, h, body := do(t, hs, c.method, c.path, c.token, c.body)
			if code != c.code {
				t.Fatalf("status %d, want %d (%v)", code, c.code, body)
			}
			if h.Get("Content-Type") != "application/problem+json" {
				t.Fatalf("content type %q", h.Get("Content-Type"))
			}
			if int(body["status"].(float64)) != c.code || body["title"] == "" || body["type"] == "" {
				t.Fatalf("not a problem document: %v", body)
			}
			detail, _ := body["detail"].(string)
			if c.code == 401 {
				detail = h.Get("WWW-Authenticate") + detail
			}
			if !strings.Contains(detail, c.detail) {
				t.Fatalf("detail %q does not mention %q", detail, c.detail)
			}
		})
	}
}

func TestUsersCandidatesSync(t *testing.T) {
	t.Parallel()
	hs, _, _ := newTestServer(t)
	do(t, hs, "POST", "/v1/tenants", testToken, acme)
	code, _, u := do(t, hs, "POST", "/v1/tenants/acme/users", testToken, `{"id":"u-rec","email":"rec@acme.test","name":"Rita","role":"team_member"}`)
	if code != 201 || u["grant"].(map[string]any)["status"] != "none" {
		t.Fatalf("create user %d %v", code, u)
	}
	if code, _, _ := do(t, hs, "POST", "/v1/tenants/acme/users", testToken, `{"id":"u-2","email":"x@acme.test","name":"X","role":"boss"}`); code != 400 {
		t.Fatalf("bad role accepted: %d", code)
	}
	if code, _, _ := do(t, hs, "POST", "/v1/tenants/acme/users", testToken, `{"id":"u-3","email":"Rita <r@acme.test>","name":"X","role":"admin"}`); code != 400 {
		t.Fatalf("display-name email accepted: %d", code)
	}
	code, _, got := do(t, hs, "GET", "/v1/tenants/acme/users/u-rec", testToken, "")
	if code != 200 || got["email"] != "rec@acme.test" {
		t.Fatalf("get user %d %v", code, got)
	}
	code, _, c := do(t, hs, "POST", "/v1/tenants/acme/candidates", testToken, `{"id":"c-1","name":"Carl","emails":["carl@cand.test"]}`)
	if code != 201 || c["id"] != "c-1" {
		t.Fatalf("create candidate %d %v", code, c)
	}
	code, _, p := do(t, hs, "POST", "/v1/tenants/acme/candidates/c-1/sync", testToken, "")
	if code != 409 || !strings.Contains(p["detail"].(string), "limited sync") {
		t.Fatalf("sync %d %v", code, p)
	}
	// Tenant isolation: another tenant's path does not see acme's user.
	do(t, hs, "POST", "/v1/tenants", testToken, `{"id":"beta","name":"B","domains":["b.test"],"provider":"google"}`)
	if code, _, _ := do(t, hs, "GET", "/v1/tenants/beta/users/u-rec", testToken, ""); code != 404 {
		t.Fatalf("cross-tenant read: %d", code)
	}
}

func TestHealthReady(t *testing.T) {
	t.Parallel()
	hs, s, _ := newTestServer(t)
	if code, _, _ := do(t, hs, "GET", "/healthz", "", ""); code != 200 {
		t.Fatal("healthz", code)
	}
	if code, _, _ := do(t, hs, "GET", "/readyz", "", ""); code != 503 {
		t.Fatal("readyz before ready", code)
	}
	s.SetReady(true)
	if code, _, _ := do(t, hs, "GET", "/readyz", "", ""); code != 200 {
		t.Fatal("readyz after ready", code)
	}
}
