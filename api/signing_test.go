package api

import (
	"fmt"
	"testing"
)

// TestTenantSigningDomains: signing_domains (SPEC §5, Appendix A) is
// accepted on create and PATCH, lower-cased, validated and shown.
func TestTenantSigningDomains(t *testing.T) {
	t.Parallel()
	hs, _, _ := newTestServer(t)
	code, _, ten := do(t, hs, "POST", "/v1/tenants", testToken,
		`{"id":"acme","name":"Acme","domains":["acme.test"],"provider":"microsoft","signing_domains":["Acme.onmicrosoft.com"]}`)
	if code != 201 || fmt.Sprint(ten["signing_domains"]) != "[acme.onmicrosoft.com]" {
		t.Fatalf("create: %d %v", code, ten)
	}
	checkSchema(t, "Tenant", ten)
	if code, _, ten := do(t, hs, "POST", "/v1/tenants", testToken, `{"id":"beta","name":"B","domains":["b.test"],"provider":"google"}`); code != 201 ||
		fmt.Sprint(ten["signing_domains"]) != "[]" {
		t.Fatalf("create without: %d %v", code, ten)
	}
	for _, tc := range []struct {
		body string
		code int
		want string // signing_domains after
	}{
		{`{"signing_domains":["mail.esp.test","ACME.onmicrosoft.com"]}`, 200, "[mail.esp.test acme.onmicrosoft.com]"},
		{`{"dkim_policy":"quarantine"}`, 200, "[mail.esp.test acme.onmicrosoft.com]"}, // untouched
		{`{"signing_domains":["not a domain"]}`, 400, "[mail.esp.test acme.onmicrosoft.com]"},
		{`{"signing_domains":["onmicrosoft"]}`, 400, "[mail.esp.test acme.onmicrosoft.com]"},
		{`{"signing_domains":[]}`, 200, "[]"},
	} {
		code, _, body := do(t, hs, "PATCH", "/v1/tenants/acme", testToken, tc.body)
		if code != tc.code {
			t.Fatalf("PATCH %s: %d %v", tc.body, code, body)
		}
		_, _, got := do(t, hs, "GET", "/v1/tenants/acme", testToken, "")
		if s := fmt.Sprint(got["signing_domains"]); s != tc.want {
			t.Fatalf("after PATCH %s: signing_domains %s, want %s", tc.body, s, tc.want)
		}
		checkSchema(t, "Tenant", got)
	}
	if code, _, _ := do(t, hs, "POST", "/v1/tenants", testToken,
		`{"id":"gamma","name":"G","domains":["g.test"],"provider":"google","signing_domains":["x"]}`); code != 400 {
		t.Fatalf("create with an invalid signing domain: %d", code)
	}
}
