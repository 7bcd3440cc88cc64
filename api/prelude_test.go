package api

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestBegin checks the handler prelude on its own: which problem (status
// and type) each missing or bad part gets, in which order, and what it
// resolves when all is well.
func TestBegin(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	type got struct {
		Tenant, Actor, Raw, Name string
	}
	var in struct {
		Name string `json:"name"`
	}
	route := func(p prelude) http.Handler {
		return w.srv.auth(func(rw http.ResponseWriter, r *http.Request) {
			in.Name = ""
			rq, ok := w.srv.begin(rw, r, p)
			if !ok {
				return
			}
			var g got
			if rq.tenant != nil {
				g.Tenant = rq.tenant.ID
			}
			if rq.actor != nil {
				g.Actor = rq.actor.ID
			}
			g.Raw, g.Name = string(rq.raw), in.Name
			writeJSON(rw, http.StatusOK, g)
		})
	}
	w.srv.o.MaxBodyBytes = 100
	all := prelude{tenant: true, actor: requiredActor, raw: true, body: &in}
	for _, tc := range []struct {
		name       string
		p          prelude
		tenant     string
		actor      string
		body       string
		wantStatus int
		wantType   string // problem type, or
		want       got    // the resolved parts
	}{
		{"all there", all, "acme", uAdmin, `{"name":"x"}`, 200, "", got{"acme", uAdmin, `{"name":"x"}`, "x"}},
		{"no tenant comes first", all, "nope", "", `{`, 404, "not-found", got{}},
		{"actor required", all, "acme", "", `{"name":"x"}`, 400, "acting-user-required", got{}},
		{"actor of another tenant", all, "acme", "u-b", `{"name":"x"}`, 403, "unknown-acting-user", got{}},
		{"actor checked before the body", all, "acme", "u-zz", `{`, 403, "unknown-acting-user", got{}},
		{"bad JSON", all, "acme", uAdmin, `{"name":1}`, 400, "invalid-json", got{}},
		{"unknown field", all, "acme", uAdmin, `{"nom":"x"}`, 400, "invalid-json", got{}},
		{"empty body", all, "acme", uAdmin, ``, 400, "invalid-json", got{}},
		{"too large", all, "acme", uAdmin, `{"name":"` + strings.Repeat("x", 200) + `"}`, 413, "too-large", got{}},
		{"optional actor absent", prelude{tenant: true, actor: optionalActor}, "acme", "", "", 200, "", got{Tenant: "acme"}},
		{"optional actor unknown", prelude{tenant: true, actor: optionalActor}, "acme", "u-zz", "", 403, "unknown-acting-user", got{}},
		{"no thread id", prelude{tenant: true, actor: requiredActor, thread: true}, "acme", uAdmin, "", 404, "not-found", got{}},
		{"nothing asked", prelude{}, "nope", "u-zz", "{", 200, "", got{}},
		{"body only", prelude{body: &in}, "nope", "", `{"name":"y"}`, 200, "", got{Name: "y"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mux := http.NewServeMux()
			mux.Handle("POST /{t}", route(tc.p))
			// Served in-process, not through an httptest.Server: after the
			// 413 net/http's server waits 500 ms (rstAvoidanceDelay) before
			// closing the connection, and the server's Close waited for it.
			req := httptest.NewRequest("POST", "/"+tc.tenant, strings.NewReader(tc.body))
			req.Header.Set("Authorization", "Bearer "+testToken)
			if tc.actor != "" {
				req.Header.Set("X-Acting-User", tc.actor)
			}
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, req)
			resp := rec.Result()
			if resp.StatusCode != tc.wantStatus {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantStatus)
			}
			if tc.wantType != "" {
				var p problem
				json.NewDecoder(resp.Body).Decode(&p)
				if resp.Header.Get("Content-Type") != "application/problem+json" || p.Type != "https://syncrelay.dev/problems/"+tc.wantType {
					t.Fatalf("problem %+v (%s), want type %s", p, resp.Header.Get("Content-Type"), tc.wantType)
				}
				return
			}
			var g got
			json.NewDecoder(resp.Body).Decode(&g)
			if g != tc.want {
				t.Fatalf("resolved %+v, want %+v", g, tc.want)
			}
		})
	}
}
