package api

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

var paramRE = regexp.MustCompile(`\{[^}]*\}`)

// normalize makes "METHOD /a/{x}/b" comparable across parameter names.
func normalize(method, path string) string {
	return strings.ToUpper(method) + " " + paramRE.ReplaceAllString(path, "{}")
}

type openAPIDocT struct {
	OpenAPI    string                               `json:"openapi"`
	Info       map[string]any                       `json:"info"`
	Security   []map[string][]string                `json:"security"`
	Paths      map[string]map[string]map[string]any `json:"paths"`
	Webhooks   map[string]map[string]map[string]any `json:"webhooks"`
	Components map[string]map[string]any            `json:"components"`
}

var httpMethods = []string{"get", "put", "post", "delete", "patch", "head", "options", "trace"}

func loadDoc(t *testing.T) (openAPIDocT, map[string]any) {
	t.Helper()
	var doc openAPIDocT
	if err := json.Unmarshal(OpenAPI(), &doc); err != nil {
		t.Fatalf("openapi.json is not valid JSON: %v", err)
	}
	var raw map[string]any
	_ = json.Unmarshal(OpenAPI(), &raw)
	return doc, raw
}

// TestOpenAPIConsistency: every route the server registers is documented,
// and every documented route is registered; the document is well formed.
func TestOpenAPIConsistency(t *testing.T) {
	t.Parallel()
	_, srv, _ := newTestServer(t)
	doc, raw := loadDoc(t)
	if !strings.HasPrefix(doc.OpenAPI, "3.1.") || doc.Info["title"] == nil || doc.Info["version"] == nil {
		t.Fatalf("not an OpenAPI 3.1 document: %q %v", doc.OpenAPI, doc.Info)
	}

	registered := map[string]string{}
	for _, p := range srv.Routes() {
		method, path, ok := strings.Cut(p, " ")
		if !ok || !slices.Contains(httpMethods, strings.ToLower(method)) {
			t.Errorf("route %q has no method: every route must name one (and be documented)", p)
			continue
		}
		registered[normalize(method, path)] = p
	}
	documented := map[string]string{}
	opIDs := map[string]string{}
	for path, item := range doc.Paths {
		for method, opAny := range item {
			if method == "parameters" || method == "summary" || method == "description" {
				continue
			}
			if !slices.Contains(httpMethods, method) {
				t.Errorf("%s: unknown key %q", path, method)
				continue
			}
			key := normalize(method, path)
			documented[key] = path
			checkOperation(t, key, path, item, opAny, opIDs)
		}
	}
	var missing, extra []string
	for k, p := range registered {
		if _, ok := documented[k]; !ok {
			missing = append(missing, p)
		}
	}
	for k := range documented {
		if _, ok := registered[k]; !ok {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	if len(missing) > 0 {
		t.Errorf("routes registered but not in api/openapi.json:\n  %s", strings.Join(missing, "\n  "))
	}
	if len(extra) > 0 {
		t.Errorf("routes in api/openapi.json but not registered:\n  %s", strings.Join(extra, "\n  "))
	}

	// Every $ref resolves.
	walkRefs(raw, func(ref string) {
		if resolve(raw, ref) == nil {
			t.Errorf("unresolvable $ref %q", ref)
		}
	})
	// The webhooks SPEC names are documented.
	for _, ev := range []string{"message.received", "message.bounced", "delegation.requested", "delegation.changed", "grant.broken"} {
		if doc.Webhooks[ev]["post"] == nil {
			t.Errorf("webhook %s not documented", ev)
		}
	}
}

// checkOperation checks one operation: an operationId (unique), responses,
// and path parameters that match the template exactly.
func checkOperation(t *testing.T, key, path string, item map[string]map[string]any, opAny any, opIDs map[string]string) {
	t.Helper()
	op, ok := opAny.(map[string]any)
	if !ok {
		t.Errorf("%s: not an object", key)
		return
	}
	id, _ := op["operationId"].(string)
	if id == "" {
		t.Errorf("%s: no operationId", key)
	} else if prev, dup := opIDs[id]; dup {
		t.Errorf("%s: operationId %q also used by %s", key, id, prev)
	}
	opIDs[id] = key
	if rs, _ := op["responses"].(map[string]any); len(rs) == 0 {
		t.Errorf("%s: no responses", key)
	}
	want := map[string]bool{}
	for _, m := range paramRE.FindAllString(path, -1) {
		want[strings.TrimSuffix(strings.Trim(m, "{}"), "...")] = true
	}
	got := map[string]bool{}
	doc := rawDoc()
	var params []any
	if ps, ok := op["parameters"].([]any); ok {
		params = append(params, ps...)
	}
	for _, p := range params {
		pm, _ := p.(map[string]any)
		if ref, ok := pm["$ref"].(string); ok {
			pm, _ = resolve(doc, ref).(map[string]any)
		}
		if pm["in"] == "path" {
			if pm["required"] != true {
				t.Errorf("%s: path parameter %v must be required", key, pm["name"])
			}
			got[fmt.Sprint(pm["name"])] = true
		}
	}
	for n := range want {
		if !got[n] {
			t.Errorf("%s: path parameter {%s} not declared", key, n)
		}
	}
	for n := range got {
		if !want[n] {
			t.Errorf("%s: declares path parameter %q not in the path", key, n)
		}
	}
}

func rawDoc() map[string]any {
	var raw map[string]any
	_ = json.Unmarshal(OpenAPI(), &raw)
	return raw
}

func walkRefs(v any, fn func(string)) {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if s, ok := e.(string); ok && k == "$ref" {
				fn(s)
			} else {
				walkRefs(e, fn)
			}
		}
	case []any:
		for _, e := range x {
			walkRefs(e, fn)
		}
	}
}

func resolve(doc map[string]any, ref string) any {
	p, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil
	}
	var cur any = doc
	for _, seg := range strings.Split(p, "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[strings.ReplaceAll(strings.ReplaceAll(seg, "~1", "/"), "~0", "~")]
	}
	return cur
}

// TestOpenAPISecurityMatchesServer: operations the document marks public
// answer without a token; every other one answers 401 without a token.
func TestOpenAPISecurityMatchesServer(t *testing.T) {
	t.Parallel()
	hs, srv, _ := newTestServer(t)
	doc, _ := loadDoc(t)
	registered := map[string]bool{}
	for _, p := range srv.Routes() {
		m, path, _ := strings.Cut(p, " ")
		registered[normalize(m, path)] = true
	}
	for path, item := range doc.Paths {
		for method, opAny := range item {
			op := opAny
			if op == nil || !registered[normalize(method, path)] {
				continue
			}
			sec, hasSec := op["security"].([]any)
			public := hasSec && len(sec) == 0
			url := hs.URL + paramRE.ReplaceAllString(path, "x")
			req, _ := http.NewRequest(strings.ToUpper(method), url, strings.NewReader("{}"))
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if public && resp.StatusCode == 401 {
				t.Errorf("%s %s is documented public but wants a token", method, path)
			}
			if !public && resp.StatusCode != 401 {
				t.Errorf("%s %s is documented as needing a token but answered %d without one", method, path, resp.StatusCode)
			}
		}
	}
}

func TestOpenAPIServed(t *testing.T) {
	t.Parallel()
	hs, _, _ := newTestServer(t)
	resp, err := http.Get(hs.URL + "/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || string(b) != string(OpenAPI()) {
		t.Fatalf("GET /openapi.json: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
}

// --- a small JSON Schema checker for responses (the subset the document uses) ---

// checkSchema validates a decoded JSON value against a schema of
// components.schemas, so tests catch any drift between the document and
// what the handlers return.
func checkSchema(t *testing.T, name string, v any) {
	t.Helper()
	doc := rawDoc()
	s := resolve(doc, "#/components/schemas/"+name)
	if s == nil {
		t.Fatalf("no schema %s", name)
	}
	var errs []string
	validate(doc, s, v, name, &errs)
	if len(errs) > 0 {
		t.Fatalf("response does not match schema %s:\n  %s", name, strings.Join(errs, "\n  "))
	}
}

func validate(doc map[string]any, sAny, v any, at string, errs *[]string) {
	s, _ := sAny.(map[string]any)
	if s == nil {
		return
	}
	if ref, ok := s["$ref"].(string); ok {
		validate(doc, resolve(doc, ref), v, at, errs)
		return
	}
	if all, ok := s["allOf"].([]any); ok {
		for _, sub := range all {
			validate(doc, sub, v, at, errs)
		}
	}
	if ty, ok := s["type"]; ok {
		var types []string
		switch x := ty.(type) {
		case string:
			types = []string{x}
		case []any:
			for _, e := range x {
				types = append(types, e.(string))
			}
		}
		if !slices.ContainsFunc(types, func(ty string) bool { return jsonType(v, ty) }) {
			*errs = append(*errs, fmt.Sprintf("%s: %v is not %v", at, v, types))
			return
		}
	}
	if enum, ok := s["enum"].([]any); ok && !slices.Contains(enum, v) {
		*errs = append(*errs, fmt.Sprintf("%s: %v not in %v", at, v, enum))
	}
	switch x := v.(type) {
	case map[string]any:
		props, _ := s["properties"].(map[string]any)
		if req, ok := s["required"].([]any); ok {
			for _, r := range req {
				if _, ok := x[r.(string)]; !ok {
					*errs = append(*errs, fmt.Sprintf("%s: required %q missing", at, r))
				}
			}
		}
		for k, e := range x {
			if ps, ok := props[k]; ok {
				validate(doc, ps, e, at+"."+k, errs)
			} else if s["additionalProperties"] == false {
				*errs = append(*errs, fmt.Sprintf("%s: undocumented field %q", at, k))
			}
		}
	case []any:
		for i, e := range x {
			validate(doc, s["items"], e, fmt.Sprintf("%s[%d]", at, i), errs)
		}
	}
}

func jsonType(v any, ty string) bool {
	switch ty {
	case "null":
		return v == nil
	case "object":
		_, ok := v.(map[string]any)
		return ok
	case "array":
		_, ok := v.([]any)
		return ok
	case "string":
		_, ok := v.(string)
		return ok
	case "boolean":
		_, ok := v.(bool)
		return ok
	case "number":
		_, ok := v.(float64)
		return ok
	case "integer":
		f, ok := v.(float64)
		return ok && f == float64(int64(f))
	}
	return false
}

// TestOpenAPISchemasMatchResponses checks the tenant, user and candidate
// responses against the document (the timeline, thread, message and
// webhook schemas are checked in their own tests).
func TestOpenAPISchemasMatchResponses(t *testing.T) {
	t.Parallel()
	hs, _, _ := newTestServer(t)
	code, _, ten := do(t, hs, "POST", "/v1/tenants", testToken, acme)
	if code != 201 {
		t.Fatal(code)
	}
	checkSchema(t, "Tenant", ten)
	_, _, u := do(t, hs, "POST", "/v1/tenants/acme/users", testToken, `{"id":"u-rec","email":"rec@acme.test","name":"Rita","role":"team_member"}`)
	checkSchema(t, "User", u)
	_, _, c := do(t, hs, "POST", "/v1/tenants/acme/candidates", testToken, `{"id":"c-1","name":"Carl","emails":["carl@cand.test"]}`)
	checkSchema(t, "Candidate", c)
	_, _, p := do(t, hs, "GET", "/v1/tenants/nope", testToken, "")
	checkSchema(t, "Problem", p)
}
