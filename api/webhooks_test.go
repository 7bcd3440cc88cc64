package api

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"
)

// deadLetter enqueues an event and fails it for good.
func deadLetter(t *testing.T, w *world, tenant, typ string) {
	t.Helper()
	ctx := context.Background()
	must(t, w.st.Enqueue(ctx, tenant, typ, map[string]any{"n": 1}))
	evs, err := w.st.ClaimEvents(ctx, time.Now().Add(time.Second), 100, time.Minute)
	must(t, err)
	for _, e := range evs {
		must(t, w.st.EventFailed(ctx, e.Seq, e.Attempts, time.Now(), "HTTP 500: receiver says no", time.Time{}, true))
	}
}

func TestFailedWebhooksListAndRedeliver(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	deadLetter(t, w, "acme", "message.received")
	deadLetter(t, w, "beta", "grant.broken")
	deadLetter(t, w, "acme", "message.bounced")
	must(t, w.st.Enqueue(context.Background(), "acme", "delegation.changed", map[string]any{})) // pending: not listed

	code, body := callJSON(t, w.hs, "GET", "/v1/webhooks/failed", "", "")
	if code != 200 {
		t.Fatalf("%d %v", code, body)
	}
	checkSchema(t, "DeadEventPage", body)
	evs := body["events"].([]any)
	if len(evs) != 3 || body["next_cursor"] != nil {
		t.Fatalf("events %v", body)
	}
	e0 := evs[0].(map[string]any)
	if e0["id"] != "evt-1" || e0["type"] != "message.received" || e0["tenant"] != "acme" || e0["attempts"] != float64(1) ||
		!strings.Contains(e0["last_error"].(string), "HTTP 500") || e0["data"].(map[string]any)["n"] != float64(1) {
		t.Fatalf("event %v", e0)
	}

	// Tenant filter (isolation) and pagination.
	_, body = callJSON(t, w.hs, "GET", "/v1/webhooks/failed?tenant=beta", "", "")
	if evs := body["events"].([]any); len(evs) != 1 || evs[0].(map[string]any)["tenant"] != "beta" {
		t.Fatalf("beta filter %v", body)
	}
	_, body = callJSON(t, w.hs, "GET", "/v1/webhooks/failed?limit=2", "", "")
	next, _ := body["next_cursor"].(string)
	if len(body["events"].([]any)) != 2 || next == "" {
		t.Fatalf("page 1 %v", body)
	}
	_, body = callJSON(t, w.hs, "GET", "/v1/webhooks/failed?limit=2&cursor="+url.QueryEscape(next), "", "")
	if evs := body["events"].([]any); len(evs) != 1 || evs[0].(map[string]any)["id"] != "evt-3" || body["next_cursor"] != nil {
		t.Fatalf("page 2 %v", body)
	}
	for _, bad := range []string{"?limit=0", "?cursor=@@@", "?cursor=" + encodeCursor("t1.1.1")} {
		if code, _ := callJSON(t, w.hs, "GET", "/v1/webhooks/failed"+bad, "", ""); code != 400 {
			t.Errorf("%s: %d", bad, code)
		}
	}
	if code, _ := callJSON(t, w.hs, "GET", "/v1/webhooks/failed?tenant=nope", "", ""); code != 404 {
		t.Error("unknown tenant filter")
	}

	// Redeliver one.
	code, body = callJSON(t, w.hs, "POST", "/v1/webhooks/failed/evt-1/redeliver", "", "")
	if code != 202 || body["redelivered"] != float64(1) || body["ids"].([]any)[0] != "evt-1" {
		t.Fatalf("redeliver %d %v", code, body)
	}
	checkSchema(t, "Redelivered", body)
	e, _ := w.st.OutboxEvent(context.Background(), 1)
	if e.State != "pending" || e.Attempts != 0 {
		t.Fatalf("state after redeliver %+v", e)
	}
	// Not dead (any more / pending) is a conflict; unknown is 404.
	if code, p := callJSON(t, w.hs, "POST", "/v1/webhooks/failed/evt-1/redeliver", "", ""); code != 409 || !strings.Contains(p["detail"].(string), "pending") {
		t.Fatalf("redeliver pending: %d %v", code, p)
	}
	for _, id := range []string{"evt-99", "x-1", "evt-0"} {
		if code, _ := callJSON(t, w.hs, "POST", "/v1/webhooks/failed/"+id+"/redeliver", "", ""); code != 404 {
			t.Errorf("redeliver %s: %d", id, code)
		}
	}

	// Bulk: one tenant's, by filter; then the rest.
	code, body = callJSON(t, w.hs, "POST", "/v1/webhooks/failed/redeliver", "", `{"tenant":"beta"}`)
	if code != 202 || body["redelivered"] != float64(1) || body["ids"].([]any)[0] != "evt-2" {
		t.Fatalf("bulk beta %d %v", code, body)
	}
	if code, _ := callJSON(t, w.hs, "POST", "/v1/webhooks/failed/redeliver", "", `{"ids":["evt-3"],"tenant":"beta"}`); code != 404 {
		t.Fatal("bulk redelivered another tenant's event", code)
	}
	if code, _ := callJSON(t, w.hs, "POST", "/v1/webhooks/failed/redeliver", "", `{"ids":["nope"]}`); code != 400 {
		t.Fatal("bad id accepted")
	}
	if code, _ := callJSON(t, w.hs, "POST", "/v1/webhooks/failed/redeliver", "", `{"all":true}`); code != 400 {
		t.Fatal("unknown field accepted")
	}
	code, body = callJSON(t, w.hs, "POST", "/v1/webhooks/failed/redeliver", "", `{}`)
	if code != 202 || body["redelivered"] != float64(1) {
		t.Fatalf("bulk all %d %v", code, body)
	}
	_, body = callJSON(t, w.hs, "GET", "/v1/webhooks/failed", "", "")
	if len(body["events"].([]any)) != 0 {
		t.Fatalf("still dead: %v", body)
	}
	// Bearer auth applies.
	if code, _, _ := callNoAuth(t, w, "GET", "/v1/webhooks/failed"); code != 401 {
		t.Fatal("no auth", code)
	}
}
