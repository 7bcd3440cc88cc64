package storetest

import (
	"bytes"
	"errors"
	"slices"
	"time"

	"syncrelay/store"
)

var grantTests = []test{
	{"Lifecycle", testGrantLifecycle},
	{"ConcurrentRefresh", testGrantConcurrentRefresh},
}

// testGrantLifecycle: Version fences every write, so a refresh that raced
// with a reconnect (or another node's refresh) is refused (ErrStale), and
// one failure marks a grant broken, with one grant.broken event.
func testGrantLifecycle(e *env) {
	e.seed()
	if err := e.b.PutGrant(e.ctx, &store.Grant{Tenant: tenantID, User: "ghost", Provider: "google", Sealed: []byte{1}}); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("PutGrant for an unknown user = %v, want ErrNotFound", err)
	}
	if _, err := e.b.Grant(e.ctx, tenantID, "u-rec"); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("Grant before any = %v, want ErrNotFound", err)
	}
	g := &store.Grant{Tenant: tenantID, User: "u-rec", Provider: "google", Scopes: []string{"gmail.send"}, Sealed: []byte("sealed-1")}
	e.must(e.b.PutGrant(e.ctx, g), "PutGrant")
	if g.Version != 1 || g.Status != store.GrantActive || g.Connected.IsZero() {
		e.fatalf("PutGrant filled in %+v", g)
	}
	got, err := e.b.Grant(e.ctx, tenantID, "u-rec")
	e.must(err, "Grant")
	if got.Version != 1 || !bytes.Equal(got.Sealed, []byte("sealed-1")) || !slices.Equal(got.Scopes, []string{"gmail.send"}) || got.Provider != "google" {
		e.fatalf("Grant = %+v", got)
	}

	up, err := e.b.UpdateGrantToken(e.ctx, tenantID, "u-rec", 1, []byte("sealed-2"))
	e.must(err, "UpdateGrantToken")
	if up.Version != 2 || !bytes.Equal(up.Sealed, []byte("sealed-2")) || up.Refreshed.IsZero() {
		e.fatalf("UpdateGrantToken = %+v", up)
	}
	if _, err := e.b.UpdateGrantToken(e.ctx, tenantID, "u-rec", 1, []byte("stale")); !errors.Is(err, store.ErrStale) {
		e.fatalf("UpdateGrantToken at an old version = %v, want ErrStale", err)
	}
	if _, err := e.b.UpdateGrantToken(e.ctx, tenantID, "u-boss", 1, nil); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("UpdateGrantToken without a grant = %v, want ErrNotFound", err)
	}

	// Breaking at an old version does nothing.
	if changed, err := e.b.MarkGrantBroken(e.ctx, tenantID, "u-rec", 1, "invalid_grant"); err != nil || changed {
		e.fatalf("MarkGrantBroken(old version) = %v %v", changed, err)
	}
	if changed, err := e.b.MarkGrantBroken(e.ctx, tenantID, "u-rec", 2, "invalid_grant"); err != nil || !changed {
		e.fatalf("MarkGrantBroken = %v %v", changed, err)
	}
	if changed, _ := e.b.MarkGrantBroken(e.ctx, tenantID, "u-rec", 3, "invalid_grant"); changed {
		e.fatalf("a broken grant was broken again")
	}
	br, _ := e.b.Grant(e.ctx, tenantID, "u-rec")
	if br.Status != store.GrantBroken || br.Sealed != nil || br.BrokenReason != "invalid_grant" || br.BrokenAt.IsZero() || br.Version != 3 {
		e.fatalf("broken grant = %+v (the useless ciphertext dropped)", br)
	}
	evs := e.events("grant.broken")
	if len(evs) != 1 {
		e.fatalf("%d grant.broken events, want 1", len(evs))
	}
	if d := e.eventData(evs[0]); d["user"] != "u-rec" || d["provider"] != "google" || d["reason"] != "invalid_grant" {
		e.fatalf("grant.broken data = %v", d)
	}
	if _, err := e.b.UpdateGrantToken(e.ctx, tenantID, "u-rec", 3, []byte("x")); !errors.Is(err, store.ErrStale) {
		e.fatalf("refresh saved on a broken grant: %v", err)
	}

	// A reconnect repairs it.
	e.must(e.b.PutGrant(e.ctx, &store.Grant{Tenant: tenantID, User: "u-rec", Provider: "google", Sealed: []byte("sealed-3")}), "PutGrant again")
	re, _ := e.b.Grant(e.ctx, tenantID, "u-rec")
	if re.Status != store.GrantActive || re.BrokenReason != "" || !re.BrokenAt.IsZero() || re.Version != 4 {
		e.fatalf("reconnected grant = %+v", re)
	}
	e.must(e.b.PutGrant(e.ctx, &store.Grant{Tenant: tenantID, User: "u-boss", Provider: "google", Sealed: []byte("boss")}), "PutGrant")
	gs, err := e.b.Grants(e.ctx, tenantID)
	e.must(err, "Grants")
	if len(gs) != 2 || gs[0].User != "u-boss" || gs[1].User != "u-rec" || gs[0].Sealed != nil || gs[1].Sealed != nil {
		e.fatalf("Grants = %+v, want both by user, without ciphertext", gs)
	}
	e.must(e.b.DeleteGrant(e.ctx, tenantID, "u-rec"), "DeleteGrant")
	if _, err := e.b.Grant(e.ctx, tenantID, "u-rec"); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("deleted grant = %v, want ErrNotFound", err)
	}
	e.must(e.b.DeleteGrant(e.ctx, tenantID, "u-rec"), "DeleteGrant of none")
}

// testGrantConcurrentRefresh: of several refreshes of one version (nodes,
// goroutines), exactly one is saved.
func testGrantConcurrentRefresh(e *env) {
	e.seed()
	e.must(e.b.PutGrant(e.ctx, &store.Grant{Tenant: tenantID, User: "u-rec", Provider: "google", Sealed: []byte{0}}), "PutGrant")
	const n = 8
	errs := make([]error, n)
	parallel(n, func(i int) {
		_, errs[i] = e.b.UpdateGrantToken(e.ctx, tenantID, "u-rec", 1, []byte{byte(i + 1)})
	})
	won := -1
	for i, err := range errs {
		switch {
		case err == nil && won >= 0:
			e.fatalf("refreshes %d and %d both saved", won, i)
		case err == nil:
			won = i
		case !errors.Is(err, store.ErrStale):
			e.fatalf("refresh %d: %v, want ErrStale", i, err)
		}
	}
	g, _ := e.b.Grant(e.ctx, tenantID, "u-rec")
	if won < 0 || g.Version != 2 || !bytes.Equal(g.Sealed, []byte{byte(won + 1)}) {
		e.fatalf("winner %d, grant %+v", won, g)
	}
}

var delegationTests = []test{
	{"Lifecycle", testDelegationLifecycle},
	{"ConcurrentRequests", testDelegationConcurrent},
	{"ApprovalEmailQueue", testApprovalEmailQueue},
}

// testApprovalEmailQueue: an approval email stored with the delegation is
// claimed once it is due, leased (not claimed again until the lease
// ends), finished only by its current attempt, and survives a reopen.
func testApprovalEmailQueue(e *env) {
	e.seed()
	e.mkUser(tenantID, "u-hm", "hm@acme.test", store.RoleTeamMember)
	now := e.now()
	d := &store.Delegation{Tenant: tenantID, Requester: "u-rec", Grantor: "u-boss",
		ApprovalEmail: &store.ApprovalMail{Status: store.EmailQueued, Via: "u-rec", To: "u-boss", Attempts: 1, NextAttempt: now.Add(time.Minute)}}
	e.must(e.b.CreateDelegation(e.ctx, d, "u-rec"), "CreateDelegation")
	if d.ApprovalEmail == nil || d.ApprovalEmail.Status != store.EmailQueued || d.ApprovalEmail.Attempts != 1 {
		e.fatalf("created with %+v", d.ApprovalEmail)
	}
	plain := &store.Delegation{Tenant: tenantID, Requester: "u-rec", Grantor: "u-hm"}
	e.must(e.b.CreateDelegation(e.ctx, plain, "u-rec"), "CreateDelegation without email")
	if got, _ := e.b.ClaimApprovalEmails(e.ctx, now, 10, time.Minute); len(got) != 0 {
		e.fatalf("claimed before due: %+v", got)
	}
	// A crash before the first attempt finished: the email is due again
	// when its lease ends, also after a reopen.
	e.reopen()
	later := now.Add(2 * time.Minute)
	got, err := e.b.ClaimApprovalEmails(e.ctx, later, 10, time.Minute)
	e.must(err, "ClaimApprovalEmails")
	if len(got) != 1 || got[0].ID != d.ID || got[0].ApprovalEmail.Attempts != 2 || !got[0].ApprovalEmail.NextAttempt.Equal(later.Add(time.Minute)) {
		e.fatalf("claim = %+v", got)
	}
	if again, _ := e.b.ClaimApprovalEmails(e.ctx, later.Add(30*time.Second), 10, time.Minute); len(again) != 0 {
		e.fatalf("claimed again within the lease: %+v", again)
	}
	if _, err := e.b.FinishApprovalEmail(e.ctx, tenantID, d.ID, 1, &store.ApprovalMail{Status: store.EmailSent}); !errors.Is(err, store.ErrStale) {
		e.fatalf("finish by an old attempt = %v, want ErrStale", err)
	}
	// A failed attempt queues it again at a later time.
	retry := *got[0].ApprovalEmail
	retry.Error, retry.NextAttempt = "provider 503", later.Add(10*time.Minute)
	if f, err := e.b.FinishApprovalEmail(e.ctx, tenantID, d.ID, 2, &retry); err != nil || f.ApprovalEmail.Error != "provider 503" {
		e.fatalf("finish as retry = %+v %v", f, err)
	}
	if c, _ := e.b.ClaimApprovalEmails(e.ctx, later.Add(5*time.Minute), 10, time.Minute); len(c) != 0 {
		e.fatalf("claimed before its retry time: %+v", c)
	}
	c, err := e.b.ClaimApprovalEmails(e.ctx, later.Add(11*time.Minute), 10, time.Minute)
	if err != nil || len(c) != 1 || c[0].ApprovalEmail.Attempts != 3 {
		e.fatalf("claim of the retry = %+v %v", c, err)
	}
	sent := *c[0].ApprovalEmail
	sent.Status, sent.Error, sent.SentAt = store.EmailSent, "", later.Add(11*time.Minute)
	_, err = e.b.FinishApprovalEmail(e.ctx, tenantID, d.ID, 3, &sent)
	e.must(err, "finish as sent")
	if c, _ := e.b.ClaimApprovalEmails(e.ctx, later.Add(time.Hour), 10, time.Minute); len(c) != 0 {
		e.fatalf("a sent email was claimed: %+v", c)
	}
	e.reopen()
	g, err := e.b.Delegation(e.ctx, tenantID, d.ID)
	e.must(err, "Delegation")
	if g.ApprovalEmail == nil || g.ApprovalEmail.Status != store.EmailSent || g.ApprovalEmail.Attempts != 3 || g.Status != store.DelegationRequested {
		e.fatalf("stored %+v / %+v", g, g.ApprovalEmail)
	}
	// A transition keeps the email's state.
	a, err := e.b.TransitionDelegation(e.ctx, tenantID, d.ID, "u-boss", store.DelegationActive, nil)
	if err != nil || a.ApprovalEmail == nil || a.ApprovalEmail.Status != store.EmailSent {
		e.fatalf("after approval %+v %v", a, err)
	}
}

func testDelegationLifecycle(e *env) {
	e.seed()
	if err := e.b.CreateDelegation(e.ctx, &store.Delegation{Tenant: tenantID, Requester: "u-rec", Grantor: "ghost"}, "u-rec"); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("delegation to an unknown user = %v, want ErrNotFound", err)
	}
	d := &store.Delegation{Tenant: tenantID, Requester: "u-rec", Grantor: "u-boss"}
	e.must(e.b.CreateDelegation(e.ctx, d, "u-rec"), "CreateDelegation")
	if d.ID == 0 || d.Status != store.DelegationRequested || len(d.History) != 1 || d.History[0].By != "u-rec" || d.Created.IsZero() {
		e.fatalf("CreateDelegation filled in %+v", d)
	}
	// One open (requested or active) delegation per pair and direction.
	if err := e.b.CreateDelegation(e.ctx, &store.Delegation{Tenant: tenantID, Requester: "u-rec", Grantor: "u-boss"}, "u-rec"); !errors.Is(err, store.ErrExists) {
		e.fatalf("second open request = %v, want ErrExists", err)
	}
	if got, err := e.b.OpenDelegation(e.ctx, tenantID, "u-rec", "u-boss"); err != nil || got.ID != d.ID {
		e.fatalf("OpenDelegation = %+v %v", got, err)
	}
	if _, err := e.b.OpenDelegation(e.ctx, tenantID, "u-boss", "u-rec"); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("OpenDelegation ignores direction: %v", err)
	}

	// check is the caller's permission rule: its error aborts the move.
	denied := errors.New("denied")
	if _, err := e.b.TransitionDelegation(e.ctx, tenantID, d.ID, "u-rec", store.DelegationActive,
		func(*store.Delegation) error { return denied }); !errors.Is(err, denied) {
		e.fatalf("failing check = %v, want its error", err)
	}
	var seen string
	a, err := e.b.TransitionDelegation(e.ctx, tenantID, d.ID, "u-boss", store.DelegationActive,
		func(cur *store.Delegation) error { seen = cur.Status; return nil })
	e.must(err, "approve")
	if a.Status != store.DelegationActive || len(a.History) != 2 || seen != store.DelegationRequested {
		e.fatalf("approve = %+v (check saw status %q, want the current one)", a, seen)
	}
	// The same move again is a no-op (retries are safe).
	if again, err := e.b.TransitionDelegation(e.ctx, tenantID, d.ID, "u-boss", store.DelegationActive, nil); err != nil || len(again.History) != 2 {
		e.fatalf("repeated approve = %+v %v", again, err)
	}
	if _, err := e.b.TransitionDelegation(e.ctx, tenantID, d.ID, "u-boss", store.DelegationDeclined, nil); !errors.Is(err, store.ErrTransition) {
		e.fatalf("decline after approve = %v, want ErrTransition", err)
	}
	r, err := e.b.TransitionDelegation(e.ctx, tenantID, d.ID, "u-rec", store.DelegationRevoked, nil)
	e.must(err, "revoke")
	if r.Status != store.DelegationRevoked {
		e.fatalf("revoke = %+v", r)
	}
	if _, err := e.b.TransitionDelegation(e.ctx, tenantID, d.ID, "u-boss", store.DelegationActive, nil); !errors.Is(err, store.ErrTransition) {
		e.fatalf("revoked delegation re-activated: %v", err)
	}
	if _, err := e.b.OpenDelegation(e.ctx, tenantID, "u-rec", "u-boss"); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("revoked delegation still open: %v", err)
	}
	if _, err := e.b.TransitionDelegation(e.ctx, tenantID, 987654, "u-rec", store.DelegationRevoked, nil); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("TransitionDelegation(missing) = %v, want ErrNotFound", err)
	}

	// A new request after revocation is allowed.
	d2 := &store.Delegation{Tenant: tenantID, Requester: "u-rec", Grantor: "u-boss"}
	e.must(e.b.CreateDelegation(e.ctx, d2, ""), "re-request")
	if d2.ID == d.ID {
		e.fatalf("re-request reused id %d", d.ID)
	}
	got, err := e.b.Delegation(e.ctx, tenantID, d.ID)
	e.must(err, "Delegation")
	var trail []string
	for _, h := range got.History {
		trail = append(trail, h.By+":"+h.From+">"+h.To)
		if h.At.IsZero() {
			e.fatalf("history entry without time: %+v", h)
		}
	}
	if !slices.Equal(trail, []string{"u-rec:>requested", "u-boss:requested>active", "u-rec:active>revoked"}) {
		e.fatalf("audit trail = %v", trail)
	}
	all, err := e.b.Delegations(e.ctx, tenantID)
	e.must(err, "Delegations")
	if len(all) != 2 || all[0].ID != d.ID || all[1].ID != d2.ID {
		e.fatalf("Delegations = %+v, want both, oldest first", all)
	}
	if _, err := e.b.Delegation(e.ctx, "beta", d.ID); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("Delegation under another tenant = %v, want ErrNotFound", err)
	}

	// Every change raised its event in the same commit.
	var types []string
	all2, _ := e.b.Events(e.ctx, "")
	for _, ev := range all2 {
		types = append(types, ev.Type)
	}
	want := []string{"delegation.requested", "delegation.changed", "delegation.changed", "delegation.requested"}
	if !slices.Equal(types, want) {
		e.fatalf("events = %v, want %v", types, want)
	}
	ch := e.eventData(all2[1])
	if ch["status"] != "active" || ch["previous_status"] != "requested" || ch["changed_by"] != "u-boss" ||
		ch["delegation_id"] != store.DelegationRef(d.ID) || ch["requester"] != "u-rec" || ch["grantor"] != "u-boss" {
		e.fatalf("delegation.changed data = %v", ch)
	}
}

// testDelegationConcurrent: of concurrent requests for one pair, one
// opens a delegation and the others get ErrExists.
func testDelegationConcurrent(e *env) {
	e.seed()
	const n = 8
	errs := make([]error, n)
	parallel(n, func(i int) {
		errs[i] = e.b.CreateDelegation(e.ctx, &store.Delegation{Tenant: tenantID, Requester: "u-rec", Grantor: "u-boss"}, "u-rec")
	})
	ok := 0
	for i, err := range errs {
		if err == nil {
			ok++
		} else if !errors.Is(err, store.ErrExists) {
			e.fatalf("request %d: %v", i, err)
		}
	}
	if all, _ := e.b.Delegations(e.ctx, tenantID); ok != 1 || len(all) != 1 {
		e.fatalf("%d requests succeeded, %d delegations stored; want 1", ok, len(all))
	}
}
