package api

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"syncrelay/setup"
	"syncrelay/store"
	"syncrelay/store/bolt"
)

var _ statusStore = (*bolt.Store)(nil)
var _ BackupSource = (*bolt.Store)(nil)

type testClock struct {
	mu sync.Mutex
	t  time.Time // zero: real time
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.t.IsZero() {
		return time.Now()
	}
	return c.t
}

func (c *testClock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

func newStatusServer(t *testing.T, staleAfter time.Duration) (*httptest.Server, *bolt.Store, *testClock) {
	t.Helper()
	clock := &testClock{}
	st, err := bolt.Open(t.TempDir(), bolt.Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s := New(Options{Store: st, Tokens: []string{testToken}, Hostname: "relay.test", StaleAfter: staleAfter, Backup: st})
	hs := httptest.NewServer(s)
	t.Cleanup(hs.Close)
	return hs, st, clock
}

func TestTenantStatusVerdicts(t *testing.T) {
	t.Parallel()
	hs, st, clock := newStatusServer(t, 6*time.Hour)
	ctx := context.Background()
	code, _, ten := do(t, hs, "POST", "/v1/tenants", testToken, acme)
	if code != 201 {
		t.Fatal(code, ten)
	}
	inbound := ten["inbound_address"].(string)

	// Never seen: nothing arrived yet.
	code, _, got := do(t, hs, "GET", "/v1/tenants/acme/status", testToken, "")
	if code != 200 {
		t.Fatal(code, got)
	}
	if got["forwarding"] != "never_seen" || got["last_forwarded_at"] != nil || got["stale_after"] != "6h" ||
		got["inbound_address"] != inbound || got["detail"] != "no message has ever reached the inbound address" {
		t.Fatalf("fresh tenant: %v", got)
	}
	if a, _ := got["action"].(string); !strings.Contains(a, "Google Admin console") || !strings.Contains(a, inbound) || adminCannotRun(a) {
		t.Fatalf("action %q", a)
	}
	checkSchema(t, "TenantStatus", got)
	if bg, ok := got["broken_grants"].([]any); !ok || len(bg) != 0 {
		t.Fatalf("broken_grants %v", got["broken_grants"])
	}
	auth := got["authentication"].(map[string]any)
	if auth["pass_rate"] != nil || auth["checked"].(float64) != 0 {
		t.Fatalf("authentication %v", auth)
	}

	// Mail sent, still nothing forwarded: never_seen says so.
	if err := st.CreateUser(ctx, &store.User{Tenant: "acme", ID: "u-rec", Email: "rec@acme.test", Role: store.RoleTeamMember}); err != nil {
		t.Fatal(err)
	}
	if err := st.CreateCandidate(ctx, &store.Candidate{Tenant: "acme", ID: "c-1", Emails: []string{"carl@cand.test"}}); err != nil {
		t.Fatal(err)
	}
	sendAt := func(at time.Time) {
		clock.Set(at)
		th := store.Thread{Tenant: "acme", Candidate: "c-1", CreatedBy: "u-rec"}
		m := store.Message{From: "rec@acme.test", SentBy: "u-rec", Status: "sent"}
		if err := st.CreateOutbound(ctx, &th, &m, func(th, m uint64) (string, string) {
			return fmt.Sprintf("sr.t%d.%d@relay.test", th, m), ""
		}); err != nil {
			t.Fatal(err)
		}
		clock.Set(time.Time{})
	}
	sendAt(time.Now().Add(-time.Hour))
	_, _, got = do(t, hs, "GET", "/v1/tenants/acme/status", testToken, "")
	if got["forwarding"] != "never_seen" || got["detail"] != "no message has ever reached the inbound address although 1 message was sent through syncrelay in the last 6h" {
		t.Fatalf("sent, never seen: %v", got)
	}

	// Stale: the last forwarded message is 2 days old, and mail was sent.
	clock.Set(time.Now().Add(-48 * time.Hour))
	st.Count("acme", "stored", "token")
	clock.Set(time.Time{})
	_, _, got = do(t, hs, "GET", "/v1/tenants/acme/status", testToken, "")
	if got["forwarding"] != "stale" || !strings.HasPrefix(got["detail"].(string), "the last forwarded message arrived 48h") ||
		!strings.HasSuffix(got["detail"].(string), "although 1 message was sent through syncrelay in the last 6h") {
		t.Fatalf("stale: %v", got)
	}
	if got["last_forwarded_at"] == nil || got["action"] == "" {
		t.Fatalf("stale: %v", got)
	}

	// OK: mail arrives again; counts and authentication show up.
	st.Count("acme", "stored", "token")
	st.CountAuth("acme", true, false)
	st.Count("acme", "discarded", "no_match")
	st.Count("acme", "rejected", "dkim_fail")
	st.CountAuth("acme", false, false)
	_, _, got = do(t, hs, "GET", "/v1/tenants/acme/status", testToken, "")
	if got["forwarding"] != "ok" || got["action"] != nil {
		t.Fatalf("ok: %v", got)
	}
	if is, ok := got["issues"].([]any); !ok || len(is) != 0 {
		t.Fatalf("issues %v", got["issues"])
	}
	checkSchema(t, "TenantStatus", got)
	hour := got["last_hour"].(map[string]any)
	if hour["total"].(float64) != 3 || hour["decisions"].(map[string]any)["stored"].(float64) != 1 ||
		hour["reasons"].(map[string]any)["discarded/no_match"].(float64) != 1 {
		t.Fatalf("last_hour %v", hour)
	}
	if day := got["last_day"].(map[string]any); day["total"].(float64) != 3 { // the 48h-old one is outside
		t.Fatalf("last_day %v", day)
	}
	auth = got["authentication"].(map[string]any)
	if auth["checked"].(float64) != 2 || auth["dkim_pass"].(float64) != 1 || auth["passed"].(float64) != 1 || auth["pass_rate"].(float64) != 0.5 {
		t.Fatalf("authentication %v", auth)
	}
	if s := got["sent"].(map[string]any); s["count"].(float64) != 1 || s["last_sent_at"] == nil {
		t.Fatalf("sent %v", s)
	}

	// A broken grant is listed with the user's email.
	if err := st.PutGrant(ctx, &store.Grant{Tenant: "acme", User: "u-rec", Provider: "google", Sealed: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	g, _ := st.Grant(ctx, "acme", "u-rec")
	if _, err := st.MarkGrantBroken(ctx, "acme", "u-rec", g.Version, "invalid_grant"); err != nil {
		t.Fatal(err)
	}
	_, _, got = do(t, hs, "GET", "/v1/tenants/acme/status", testToken, "")
	bg := got["broken_grants"].([]any)
	if len(bg) != 1 {
		t.Fatalf("broken_grants %v", bg)
	}
	if b := bg[0].(map[string]any); b["user"] != "u-rec" || b["email"] != "rec@acme.test" || b["reason"] != "invalid_grant" || b["provider"] != "google" {
		t.Fatalf("broken grant %v", b)
	}

	// Errors are problems.
	if code, _, p := do(t, hs, "GET", "/v1/tenants/nope/status", testToken, ""); code != 404 || p["status"].(float64) != 404 {
		t.Fatalf("unknown tenant: %d %v", code, p)
	}
	if code, _, _ := do(t, hs, "GET", "/v1/tenants/acme/status", "", ""); code != 401 {
		t.Fatalf("no token: %d", code)
	}
}

func TestForwardingVerdict(t *testing.T) {
	t.Parallel()
	now := time.Date(2025, 3, 10, 12, 0, 0, 0, time.UTC)
	ms := &store.Tenant{ID: "beta", Provider: "microsoft", InboundAddress: "beta-x@relay.test"}
	day := func(stored, discarded uint64) store.WindowCounts {
		return store.WindowCounts{Total: stored + discarded, Reasons: map[string]uint64{"stored/token": stored, "discarded/no_match": discarded}}
	}
	for _, tc := range []struct {
		name       string
		last       time.Time
		sent       int
		day        store.WindowCounts
		want, text string
	}{
		{"never, nothing sent", time.Time{}, 0, day(0, 0), ForwardingNeverSeen, "no message has ever reached the inbound address"},
		{"never, sent", time.Time{}, 3, day(0, 0), ForwardingNeverSeen, "no message has ever reached the inbound address although 3 messages were sent through syncrelay in the last 24h"},
		{"recent", now.Add(-5 * time.Minute), 3, day(4, 1), ForwardingOK, "the last forwarded message arrived 5m ago"},
		{"old but quiet", now.Add(-50 * time.Hour), 0, day(0, 0), ForwardingOK, "the last forwarded message arrived 50h ago; no mail was sent through syncrelay since, so none was expected"},
		{"stale", now.Add(-25*time.Hour - 30*time.Minute), 2, day(0, 0), ForwardingStale, "the last forwarded message arrived 25h30m ago although 2 messages were sent through syncrelay in the last 24h"},
		{"forwards everything", now.Add(-time.Minute), 1, day(0, 40), ForwardingOverForwarding,
			"40 of the 40 messages forwarded in the last 24h (100%) were not part of an ATS conversation and were discarded unread: the routing rule copies more mail than it should"},
		{"mostly discarded", now.Add(-time.Minute), 1, day(4, 6), ForwardingOverForwarding,
			"6 of the 10 messages forwarded in the last 24h (60%) were not part of an ATS conversation and were discarded unread: the routing rule copies more mail than it should"},
		{"half discarded", now.Add(-time.Minute), 1, day(5, 5), ForwardingOK, "the last forwarded message arrived 1m ago"},
		{"too few to tell", now.Add(-time.Minute), 1, day(0, 9), ForwardingOK, "the last forwarded message arrived 1m ago"},
	} {
		a := &store.TenantActivity{LastForwarded: tc.last, Sent: tc.sent, LastDay: tc.day}
		v, detail, action := forwardingVerdict(ms, a, now, 24*time.Hour, setup.For("relay.test", ms))
		if v != tc.want || detail != tc.text {
			t.Errorf("%s: got %s %q, want %s %q", tc.name, v, detail, tc.want, tc.text)
		}
		if (v == ForwardingOK) != (action == "") {
			t.Errorf("%s: action %q", tc.name, action)
		}
		if v != ForwardingOK && (!strings.Contains(action, "Exchange admin center (Mail flow > Rules)") ||
			!strings.Contains(action, "beta-x@relay.test") || adminCannotRun(action)) {
			t.Errorf("%s: action is not for the Microsoft admin: %q", tc.name, action)
		}
	}
}

// TestTenantIssues: over_forwarding and dkim_unaligned from a day's
// counters, with actions an email admin can follow.
func TestTenantIssues(t *testing.T) {
	t.Parallel()
	google := &store.Tenant{ID: "acme", Provider: "google", Domains: []string{"acme.test"}, InboundAddress: "acme-x@relay.test"}
	ms := &store.Tenant{ID: "beta", Provider: "microsoft", Domains: []string{"beta.test"}, InboundAddress: "beta-x@relay.test"}
	for _, tc := range []struct {
		name    string
		t       *store.Tenant
		reasons map[string]uint64
		signers map[string]uint64
		want    []string // issue codes
		domains string   // signing_domains of dkim_unaligned
		action  string   // in every action
	}{
		{"nothing", google, nil, nil, nil, "", ""},
		{"ordinary refusals", google, map[string]uint64{"stored/token": 3, "rejected/dkim_fail": 2}, nil, nil, "", ""},
		{"delivery reports are not over-forwarding", google, map[string]uint64{"discarded/delivery_report": 20}, nil, nil, "", ""},
		{"own mail unaligned", google, map[string]uint64{"stored/token": 3, "rejected/dkim_unaligned": 2, "quarantined/dkim_unaligned": 1},
			map[string]uint64{"a.esp.test": 1, "acme-test.evil.gappssmtp.com": 2}, []string{IssueDKIMUnaligned},
			"[acme-test.evil.gappssmtp.com a.esp.test]", "Google Admin console (Apps > Google Workspace > Gmail > Authenticate email"},
		{"microsoft unaligned", ms, map[string]uint64{"rejected/dkim_unaligned": 1}, map[string]uint64{"beta.onmicrosoft.com": 1},
			[]string{IssueDKIMUnaligned}, "[beta.onmicrosoft.com]", "Microsoft Defender portal"},
		{"both", ms, map[string]uint64{"discarded/no_match": 30, "rejected/dkim_unaligned": 1}, nil,
			[]string{IssueOverForwarding, IssueDKIMUnaligned}, "[]", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := store.WindowCounts{Reasons: tc.reasons, UnalignedSigners: tc.signers}
			for _, n := range tc.reasons {
				w.Total += n
			}
			issues := TenantIssues(tc.t, &store.TenantActivity{LastDay: w}, setup.For("relay.test", tc.t))
			var codes []string
			for _, is := range issues {
				codes = append(codes, is.Code)
				if !strings.Contains(is.Action, tc.action) || adminCannotRun(is.Action) || is.Detail == "" || is.Count == 0 {
					t.Errorf("%s: %+v", is.Code, is)
				}
				if is.Code == IssueDKIMUnaligned {
					if got := fmt.Sprint(is.SigningDomains); got != tc.domains && !(tc.domains == "[]" && len(is.SigningDomains) == 0) {
						t.Errorf("signing domains %s, want %s", got, tc.domains)
					}
					if len(is.SigningDomains) > 0 && !strings.Contains(is.Action, is.SigningDomains[0]) {
						t.Errorf("the action does not name the domain to add: %q", is.Action)
					}
				}
			}
			if fmt.Sprint(codes) != fmt.Sprint(tc.want) {
				t.Errorf("issues %v, want %v", codes, tc.want)
			}
		})
	}
}

// adminCannotRun reports an action text that points a company's email
// admin at a shell command, the API or the relay's docs.
func adminCannotRun(s string) bool {
	for _, bad := range []string{"`", "syncrelay check", "curl", "PATCH ", "docs/", "$ "} {
		if strings.Contains(s, bad) {
			return true
		}
	}
	return false
}

func TestAdminBackup(t *testing.T) {
	t.Parallel()
	hs, _, _ := newStatusServer(t, 0)
	if code, _, _ := do(t, hs, "POST", "/v1/tenants", testToken, acme); code != 201 {
		t.Fatal(code)
	}

	req, _ := http.NewRequest("GET", hs.URL+"/v1/admin/backup", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("backup without a token: %d", resp.StatusCode)
	}
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-tar" ||
		!strings.HasPrefix(resp.Header.Get("Content-Disposition"), `attachment; filename="syncrelay-backup-`) {
		t.Fatalf("backup: %d %v", resp.StatusCode, resp.Header)
	}
	archive, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "restored")
	res, err := bolt.Restore(context.Background(), bytes.NewReader(archive), dir)
	if err != nil {
		t.Fatal(err)
	}
	if res.Manifest.Tenants != 1 || res.Manifest.RawFiles != 0 {
		t.Fatalf("manifest %+v", res.Manifest)
	}
	r, err := bolt.Open(dir, bolt.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if ten, err := r.Tenant(context.Background(), "acme"); err != nil || ten.Name != "Acme" {
		t.Fatalf("restored tenant %v %v", ten, err)
	}
}
