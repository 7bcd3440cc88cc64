package storetest

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"syncrelay/store"
)

var quarantineTests = []test{
	{"KeepListExpire", testQuarantine},
	{"Delete", testQuarantineDelete},
	{"ActionsRecorded", testQuarantineActions},
	{"ActionsBounded", testQuarantineActionsBounded},
}

// testQuarantineActions: a delete with an action records it in the same
// commit (a failed delete records nothing); actions are listed newest
// first, per tenant, survive a reopen, and hold no message content.
func testQuarantineActions(e *env) {
	e.seed()
	e.mkTenant("beta", "beta-8899aabbccddeeff@relay.test")
	th, _ := e.send(tenantID, "c-1", 0)
	put := func(tenant string) *store.Quarantined {
		e.t.Helper()
		q := &store.Quarantined{Tenant: tenant, Reason: "dkim_fail", Thread: th.ID}
		e.must(e.b.Quarantine(e.ctx, q, rawOf("", "Subject: secret-subject\r\n\r\nsecret-body\r\n"), time.Hour), "Quarantine")
		return q
	}
	if acts, err := e.b.QuarantineActions(e.ctx, tenantID, 0); err != nil || len(acts) != 0 {
		e.fatalf("QuarantineActions before any = %+v %v", acts, err)
	}
	rel, del, other := put(tenantID), put(tenantID), put("beta")
	e.must(e.b.DeleteQuarantined(e.ctx, tenantID, rel.ID, &store.QuarantineAction{Action: store.QuarantineReleased,
		Message: store.MessageRef(77), Thread: store.ThreadRef(th.ID), By: "admin link n=abc g=0"}), "release")
	e.advance(10 * time.Millisecond)
	e.must(e.b.DeleteQuarantined(e.ctx, tenantID, del.ID, &store.QuarantineAction{Action: store.QuarantineDeleted, By: "api user=u-boss"}), "delete")
	// A delete that finds nothing records nothing.
	if err := e.b.DeleteQuarantined(e.ctx, tenantID, del.ID, &store.QuarantineAction{Action: store.QuarantineDeleted, By: "x"}); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("second delete = %v, want ErrNotFound", err)
	}
	e.must(e.b.DeleteQuarantined(e.ctx, "beta", other.ID, nil), "delete without an action")
	e.reopen()
	acts, err := e.b.QuarantineActions(e.ctx, tenantID, 0)
	e.must(err, "QuarantineActions")
	if len(acts) != 2 {
		e.fatalf("QuarantineActions = %+v, want 2", acts)
	}
	d, r := acts[0], acts[1]
	if d.Action != store.QuarantineDeleted || d.Quarantine != del.ID || d.By != "api user=u-boss" || d.Tenant != tenantID ||
		d.Reason != "dkim_fail" || d.At.IsZero() || d.Seq <= r.Seq {
		e.fatalf("newest action = %+v (older %+v)", d, r)
	}
	if r.Action != store.QuarantineReleased || r.Quarantine != rel.ID || r.Message != store.MessageRef(77) || r.Thread != store.ThreadRef(th.ID) || r.By != "admin link n=abc g=0" || !r.At.Before(d.At) {
		e.fatalf("release action = %+v", r)
	}
	if one, _ := e.b.QuarantineActions(e.ctx, tenantID, 1); len(one) != 1 || one[0].Seq != d.Seq {
		e.fatalf("QuarantineActions(limit 1) = %+v, want the newest", one)
	}
	if b, _ := e.b.QuarantineActions(e.ctx, "beta", 0); len(b) != 0 {
		e.fatalf("beta's actions = %+v, want none (its delete had no action)", b)
	}
	for _, a := range acts {
		if j := fmt.Sprintf("%+v", *a); strings.Contains(j, "secret") {
			e.fatalf("action holds message content: %s", j)
		}
	}
}

// testQuarantineActionsBounded: a tenant keeps only its newest
// QuarantineActionsKept actions; another tenant's are untouched.
func testQuarantineActionsBounded(e *env) {
	e.seed()
	e.mkTenant("beta", "beta-8899aabbccddeeff@relay.test")
	del := func(tenant string) uint64 {
		e.t.Helper()
		q := &store.Quarantined{Tenant: tenant, Reason: "dkim_fail"}
		e.must(e.b.Quarantine(e.ctx, q, rawOf("", "x\r\n"), time.Hour), "Quarantine")
		e.must(e.b.DeleteQuarantined(e.ctx, tenant, q.ID, &store.QuarantineAction{Action: store.QuarantineDeleted, By: "t"}), "DeleteQuarantined")
		return q.ID
	}
	betaID := del("beta")
	var ids []uint64
	for range store.QuarantineActionsKept + 3 {
		ids = append(ids, del(tenantID))
	}
	acts, err := e.b.QuarantineActions(e.ctx, tenantID, 0)
	e.must(err, "QuarantineActions")
	if len(acts) != store.QuarantineActionsKept {
		e.fatalf("%d actions kept, want %d", len(acts), store.QuarantineActionsKept)
	}
	if acts[0].Quarantine != ids[len(ids)-1] || acts[len(acts)-1].Quarantine != ids[3] {
		e.fatalf("kept %d..%d, want the newest %d..%d", acts[len(acts)-1].Quarantine, acts[0].Quarantine, ids[3], ids[len(ids)-1])
	}
	if b, _ := e.b.QuarantineActions(e.ctx, "beta", 0); len(b) != 1 || b[0].Quarantine != betaID {
		e.fatalf("beta's actions = %+v", b)
	}
}

// testQuarantineDelete: deleting one quarantined message removes it (and
// only it, of its tenant) and frees its bytes; deleting it again, or
// another tenant's id, is ErrNotFound.
func testQuarantineDelete(e *env) {
	e.seed()
	e.mkTenant("beta", "beta-8899aabbccddeeff@relay.test")
	th, _ := e.send(tenantID, "c-1", 0)
	put := func(tenant, body string) *store.Quarantined {
		e.t.Helper()
		q := &store.Quarantined{Tenant: tenant, Reason: "dkim_fail", Thread: th.ID}
		e.must(e.b.Quarantine(e.ctx, q, rawOf("", body), time.Hour), "Quarantine")
		return q
	}
	gone := put(tenantID, pattern(2000, "deleted-one"))
	kept := put(tenantID, pattern(2000, "kept-one"))
	other := put("beta", "beta's\r\n")
	if err := e.b.DeleteQuarantined(e.ctx, "beta", gone.ID, nil); !errors.Is(err, store.ErrNotFound) && gone.ID != other.ID {
		e.fatalf("delete of acme's id as beta: %v", err)
	}
	e.must(e.b.DeleteQuarantined(e.ctx, tenantID, gone.ID, nil), "DeleteQuarantined")
	if err := e.b.DeleteQuarantined(e.ctx, tenantID, gone.ID, nil); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("second delete: %v, want ErrNotFound", err)
	}
	qs, err := e.b.QuarantinedMessages(e.ctx, tenantID)
	e.must(err, "QuarantinedMessages")
	if len(qs) != 1 || qs[0].ID != kept.ID {
		e.fatalf("after delete: %+v", qs)
	}
	if qs, _ := e.b.QuarantinedMessages(e.ctx, "beta"); len(qs) != 1 {
		e.fatalf("beta's quarantine: %+v", qs)
	}
	if _, err := e.b.Compact(e.ctx); err != nil {
		e.fatalf("Compact: %v", err)
	}
	if _, err := e.readRaw(e.b, gone.Raw); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("deleted message's bytes readable after Compact: %v", err)
	}
	qs, _ = e.b.QuarantinedMessages(e.ctx, tenantID)
	e.mustRaw(e.b, qs[0].Raw, []byte(pattern(2000, "kept-one")))
}

// testQuarantine: a quarantined message is kept with its bytes, listed per
// tenant, never on a profile, and expires after keep: the record goes and
// its bytes are freed by the next compaction.
func testQuarantine(e *env) {
	e.seed()
	e.mkTenant("beta", "beta-8899aabbccddeeff@relay.test")
	th, _ := e.send(tenantID, "c-1", 0)
	quarantine := func(tenant, reason, body string, keep time.Duration) *store.Quarantined {
		e.t.Helper()
		q := &store.Quarantined{Tenant: tenant, Reason: reason, Thread: th.ID,
			DKIM: []store.AuthResult{{Domain: "cand.test", Result: "fail"}}}
		e.must(e.b.Quarantine(e.ctx, q, rawOf("Authentication-Results: x; dkim=fail\r\n", body), keep), "Quarantine")
		return q
	}
	keep := time.Minute
	if e.f.RealClock {
		keep = 50 * time.Millisecond
	}
	short := quarantine(tenantID, "dkim_fail", pattern(3000, "short-lived"), keep)
	long := quarantine(tenantID, "dkim_fail", pattern(3000, "long-lived"), 48*time.Hour)
	quarantine("beta", "dkim_fail", "other tenant\r\n", keep)

	if short.ID == 0 || short.ID == long.ID || short.Raw == "" || short.Received.IsZero() ||
		!short.Expires.Equal(short.Received.Add(keep)) || short.Size != int64(len("Authentication-Results: x; dkim=fail\r\n")+3000) {
		e.fatalf("Quarantine filled in %+v", short)
	}
	e.mustRaw(e.b, short.Raw, []byte("Authentication-Results: x; dkim=fail\r\n"+pattern(3000, "short-lived")))
	qs, err := e.b.QuarantinedMessages(e.ctx, tenantID)
	e.must(err, "QuarantinedMessages")
	if len(qs) != 2 || qs[0].ID != short.ID || qs[1].ID != long.ID || qs[0].Reason != "dkim_fail" || qs[0].Thread != th.ID || qs[0].Raw != short.Raw {
		e.fatalf("QuarantinedMessages = %+v", qs)
	}
	// Quarantine is not the profile.
	if msgs, _ := e.b.ThreadMessages(e.ctx, tenantID, th.ID); len(msgs) != 1 {
		e.fatalf("a quarantined message reached the thread")
	}

	// Nothing is due yet.
	if n, err := e.b.ExpireQuarantine(e.ctx); err != nil || n != 0 {
		e.fatalf("early ExpireQuarantine = %d %v", n, err)
	}
	e.advance(keep + keep/2)
	if n, err := e.b.ExpireQuarantine(e.ctx); err != nil || n != 2 { // acme's short one and beta's
		e.fatalf("ExpireQuarantine = %d %v, want 2", n, err)
	}
	qs, _ = e.b.QuarantinedMessages(e.ctx, tenantID)
	if len(qs) != 1 || qs[0].ID != long.ID {
		e.fatalf("after expiry: %+v", qs)
	}
	if qs, _ := e.b.QuarantinedMessages(e.ctx, "beta"); len(qs) != 0 {
		e.fatalf("beta's expired quarantine kept: %+v", qs)
	}
	if _, err := e.b.Compact(e.ctx); err != nil {
		e.fatalf("Compact: %v", err)
	}
	if _, err := e.readRaw(e.b, short.Raw); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("expired quarantine's bytes readable after Compact: %v", err)
	}
	// Compaction may have moved the live one's bytes: read its record again.
	qs, _ = e.b.QuarantinedMessages(e.ctx, tenantID)
	if len(qs) != 1 {
		e.fatalf("after Compact: %+v", qs)
	}
	e.mustRaw(e.b, qs[0].Raw, []byte("Authentication-Results: x; dkim=fail\r\n"+pattern(3000, "long-lived")))
}
