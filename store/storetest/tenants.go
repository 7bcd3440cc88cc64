package storetest

import (
	"errors"
	"slices"
	"strings"

	"syncrelay/store"
)

var tenantTests = []test{
	{"CreateAndRead", testTenantCreateAndRead},
	{"CreateConflicts", testTenantCreateConflicts},
	{"Update", testTenantUpdate},
	{"ListByID", testTenantList},
	{"InboundTenant", testInboundTenant},
	{"InboundTenantAfterMiss", testInboundTenantAfterMiss},
}

func testTenantCreateAndRead(e *env) {
	in := &store.Tenant{ID: "acme", Name: "Acme", Domains: []string{"acme.test", "acme.example"}, Provider: "microsoft",
		InboundAddress: inboundAt, DKIMPolicy: store.PolicyQuarantine, TrustedForwarders: []string{"fwd.test"}}
	e.must(e.b.CreateTenant(e.ctx, in), "CreateTenant")
	// A zero creation time is stamped by the store.
	if in.Created.IsZero() {
		e.fatalf("CreateTenant left Created zero")
	}
	got, err := e.b.Tenant(e.ctx, "acme")
	e.must(err, "Tenant")
	if got.ID != in.ID || got.Name != in.Name || !slices.Equal(got.Domains, in.Domains) || got.Provider != in.Provider ||
		got.InboundAddress != in.InboundAddress || got.DKIMPolicy != in.DKIMPolicy ||
		!slices.Equal(got.TrustedForwarders, in.TrustedForwarders) || !got.Created.Equal(in.Created) {
		e.fatalf("Tenant = %+v, want %+v", got, in)
	}
	if _, err := e.b.Tenant(e.ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("Tenant(missing) = %v, want ErrNotFound", err)
	}
}

func testTenantCreateConflicts(e *env) {
	e.mkTenant("acme", inboundAt)
	for _, c := range []struct {
		name string
		t    store.Tenant
	}{
		{"same id", store.Tenant{ID: "acme", InboundAddress: "other-1234@relay.test"}},
		// Inbound addresses are compared case-insensitively: they
		// resolve case-insensitively (RCPT TO).
		{"same inbound address", store.Tenant{ID: "beta", InboundAddress: strings.ToUpper(inboundAt)}},
	} {
		if err := e.b.CreateTenant(e.ctx, &c.t); !errors.Is(err, store.ErrExists) {
			e.fatalf("CreateTenant(%s) = %v, want ErrExists", c.name, err)
		}
	}
	// A refused tenant left nothing behind.
	if _, err := e.b.Tenant(e.ctx, "beta"); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("refused tenant stored: %v", err)
	}
	if id, ok, err := e.b.InboundTenant(e.ctx, "other-1234@relay.test"); ok || err != nil {
		e.fatalf("refused tenant's address resolves: %q %v %v", id, ok, err)
	}
}

func testTenantUpdate(e *env) {
	e.mkTenant("acme", inboundAt)
	got, err := e.b.UpdateTenant(e.ctx, "acme", func(t *store.Tenant) error {
		t.Name, t.DKIMPolicy = "Acme Inc", store.PolicyOff
		// The ID and the inbound address cannot change: a changed
		// address would orphan the admins' routing rules.
		t.ID, t.InboundAddress = "hijack", "hijack@relay.test"
		return nil
	})
	e.must(err, "UpdateTenant")
	if got.ID != "acme" || got.InboundAddress != inboundAt || got.Name != "Acme Inc" || got.DKIMPolicy != store.PolicyOff {
		e.fatalf("UpdateTenant returned %+v", got)
	}
	re, err := e.b.Tenant(e.ctx, "acme")
	e.must(err, "Tenant")
	if re.Name != "Acme Inc" || re.InboundAddress != inboundAt {
		e.fatalf("update not stored: %+v", re)
	}
	if _, ok, _ := e.b.InboundTenant(e.ctx, "hijack@relay.test"); ok {
		e.fatalf("the inbound address was changed by an update")
	}
	// An error from fn aborts the update.
	boom := errors.New("boom")
	if _, err := e.b.UpdateTenant(e.ctx, "acme", func(t *store.Tenant) error { t.Name = "lost"; return boom }); !errors.Is(err, boom) {
		e.fatalf("UpdateTenant with failing fn = %v, want its error", err)
	}
	if re, _ := e.b.Tenant(e.ctx, "acme"); re.Name != "Acme Inc" {
		e.fatalf("a failed update was stored: %+v", re)
	}
	if _, err := e.b.UpdateTenant(e.ctx, "nope", func(*store.Tenant) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("UpdateTenant(missing) = %v, want ErrNotFound", err)
	}
}

func testTenantList(e *env) {
	if ts, err := e.b.Tenants(e.ctx); err != nil || len(ts) != 0 {
		e.fatalf("empty store: Tenants = %v %v", ts, err)
	}
	for _, id := range []string{"zeta", "acme", "mid"} {
		e.mkTenant(id, id+"-0011223344556677@relay.test")
	}
	ts, err := e.b.Tenants(e.ctx)
	e.must(err, "Tenants")
	var ids []string
	for _, t := range ts {
		ids = append(ids, t.ID)
	}
	// Listings are ordered by id.
	if !slices.Equal(ids, []string{"acme", "mid", "zeta"}) {
		e.fatalf("Tenants = %v, want [acme mid zeta]", ids)
	}
}

func testInboundTenant(e *env) {
	e.mkTenant("acme", inboundAt)
	e.mkTenant("beta", "beta-8899aabbccddeeff@relay.test")
	for _, c := range []struct {
		addr string
		want string // "" for none
	}{
		{inboundAt, "acme"},
		{strings.ToUpper(inboundAt), "acme"}, // case-insensitive
		{"Beta-8899AABBccddeeff@Relay.Test", "beta"},
		{"acme@relay.test", ""}, // a guess at the slug does not resolve
		{"acme-3f9a1c7e5b2d4a6@relay.test", ""},
		{"", ""},
	} {
		id, ok, err := e.b.InboundTenant(e.ctx, c.addr)
		if err != nil || ok != (c.want != "") || id != c.want {
			e.fatalf("InboundTenant(%q) = %q %v %v, want %q", c.addr, id, ok, err, c.want)
		}
	}
}

// testInboundTenantAfterMiss: an address that did not resolve (a RCPT
// that arrived first) resolves as soon as its tenant is created: a stale
// negative answer would bounce real mail with 550.
func testInboundTenantAfterMiss(e *env) {
	const addr = "late-0123456789abcdef@relay.test"
	for range 2 {
		if _, ok, err := e.b.InboundTenant(e.ctx, addr); ok || err != nil {
			e.fatalf("before the tenant exists: ok=%v err=%v", ok, err)
		}
	}
	e.mkTenant("late", addr)
	if id, ok, err := e.b.InboundTenant(e.ctx, strings.ToUpper(addr)); !ok || err != nil || id != "late" {
		e.fatalf("right after CreateTenant: %q %v %v", id, ok, err)
	}
}

var peopleTests = []test{
	{"Users", testUsers},
	{"UserConflicts", testUserConflicts},
	{"Candidates", testCandidates},
	{"TenantsAreApart", testPeopleTenantsApart},
}

func testUsers(e *env) {
	e.mkTenant("acme", inboundAt)
	u := &store.User{Tenant: "acme", ID: "u-rec", Email: "Rec@Acme.test", Name: "Rita", Role: store.RoleTeamMember}
	e.must(e.b.CreateUser(e.ctx, u), "CreateUser")
	if u.Created.IsZero() {
		e.fatalf("CreateUser left Created zero")
	}
	e.mkUser("acme", "u-admin", "admin@acme.test", store.RoleAdmin)
	got, err := e.b.User(e.ctx, "acme", "u-rec")
	e.must(err, "User")
	if got.Tenant != "acme" || got.ID != "u-rec" || got.Email != "Rec@Acme.test" || got.Name != "Rita" ||
		got.Role != store.RoleTeamMember || !got.Created.Equal(u.Created) {
		e.fatalf("User = %+v", got)
	}
	// Emails match case-insensitively; the stored spelling is kept.
	for _, email := range []string{"rec@acme.test", "REC@ACME.TEST", "Rec@Acme.test"} {
		got, err := e.b.UserByEmail(e.ctx, "acme", email)
		if err != nil || got.ID != "u-rec" || got.Tenant != "acme" {
			e.fatalf("UserByEmail(%q) = %+v %v", email, got, err)
		}
	}
	if _, err := e.b.UserByEmail(e.ctx, "acme", "nobody@acme.test"); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("UserByEmail(unknown) = %v, want ErrNotFound", err)
	}
	if _, err := e.b.User(e.ctx, "acme", "nope"); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("User(missing) = %v, want ErrNotFound", err)
	}
	us, err := e.b.Users(e.ctx, "acme")
	e.must(err, "Users")
	if len(us) != 2 || us[0].ID != "u-admin" || us[1].ID != "u-rec" || us[0].Tenant != "acme" {
		e.fatalf("Users = %+v, want u-admin, u-rec (by id)", us)
	}
}

func testUserConflicts(e *env) {
	e.mkTenant("acme", inboundAt)
	e.mkUser("acme", "u-rec", "rec@acme.test", store.RoleTeamMember)
	for _, c := range []struct {
		name string
		u    store.User
		want error
	}{
		{"same id", store.User{Tenant: "acme", ID: "u-rec", Email: "other@acme.test"}, store.ErrExists},
		{"same email, other case", store.User{Tenant: "acme", ID: "u-2", Email: "REC@acme.test"}, store.ErrExists},
		{"unknown tenant", store.User{Tenant: "nope", ID: "u-3", Email: "x@nope.test"}, store.ErrNotFound},
	} {
		if err := e.b.CreateUser(e.ctx, &c.u); !errors.Is(err, c.want) {
			e.fatalf("CreateUser(%s) = %v, want %v", c.name, err, c.want)
		}
	}
	if _, err := e.b.User(e.ctx, "acme", "u-2"); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("refused user stored: %v", err)
	}
	if u, _ := e.b.UserByEmail(e.ctx, "acme", "other@acme.test"); u != nil {
		e.fatalf("refused user's email indexed: %+v", u)
	}
}

func testCandidates(e *env) {
	e.mkTenant("acme", inboundAt)
	c := &store.Candidate{Tenant: "acme", ID: "c-2", Name: "Cleo", Emails: []string{"cleo@cand.test", "Cleo@Home.test"}}
	e.must(e.b.CreateCandidate(e.ctx, c), "CreateCandidate")
	if c.Created.IsZero() {
		e.fatalf("CreateCandidate left Created zero")
	}
	e.mkCandidate("acme", "c-1", "carl@cand.test")
	got, err := e.b.Candidate(e.ctx, "acme", "c-2")
	e.must(err, "Candidate")
	if got.Tenant != "acme" || got.Name != "Cleo" || !slices.Equal(got.Emails, c.Emails) {
		e.fatalf("Candidate = %+v", got)
	}
	for _, bad := range []struct {
		name string
		c    store.Candidate
		want error
	}{
		{"same id", store.Candidate{Tenant: "acme", ID: "c-1", Emails: []string{"new@cand.test"}}, store.ErrExists},
		// An address is one candidate's: the timeline must not be
		// ambiguous about whose it is.
		{"email of another candidate", store.Candidate{Tenant: "acme", ID: "c-3", Emails: []string{"new2@cand.test", "CLEO@home.test"}}, store.ErrExists},
		{"unknown tenant", store.Candidate{Tenant: "nope", ID: "c-4"}, store.ErrNotFound},
	} {
		if err := e.b.CreateCandidate(e.ctx, &bad.c); !errors.Is(err, bad.want) {
			e.fatalf("CreateCandidate(%s) = %v, want %v", bad.name, err, bad.want)
		}
	}
	// The refused candidate left none of its addresses taken.
	e.mkCandidate("acme", "c-5", "new2@cand.test")
	cs, err := e.b.Candidates(e.ctx, "acme")
	e.must(err, "Candidates")
	var ids []string
	for _, c := range cs {
		ids = append(ids, c.ID)
	}
	if !slices.Equal(ids, []string{"c-1", "c-2", "c-5"}) {
		e.fatalf("Candidates = %v, want [c-1 c-2 c-5] (by id)", ids)
	}
	if _, err := e.b.Candidate(e.ctx, "acme", "c-3"); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("Candidate(refused) = %v, want ErrNotFound", err)
	}
}

// testPeopleTenantsApart: a tenant's people are its own, also for a tenant
// whose id starts with another's.
func testPeopleTenantsApart(e *env) {
	e.mkTenant("acme", inboundAt)
	e.mkTenant("acme-eu", "acme-eu-0011223344556677@relay.test")
	e.mkUser("acme", "u-1", "same@shared.test", store.RoleAdmin)
	e.mkUser("acme-eu", "u-1", "same@shared.test", store.RoleTeamMember) // same id and email: another tenant
	e.mkCandidate("acme", "c-1", "carl@cand.test")
	e.mkCandidate("acme-eu", "c-1", "carl@cand.test")
	for _, tn := range []string{"acme", "acme-eu"} {
		us, err := e.b.Users(e.ctx, tn)
		if err != nil || len(us) != 1 || us[0].Tenant != tn {
			e.fatalf("Users(%s) = %+v %v", tn, us, err)
		}
		cs, err := e.b.Candidates(e.ctx, tn)
		if err != nil || len(cs) != 1 || cs[0].Tenant != tn {
			e.fatalf("Candidates(%s) = %+v %v", tn, cs, err)
		}
	}
	if u, err := e.b.UserByEmail(e.ctx, "acme-eu", "same@shared.test"); err != nil || u.Role != store.RoleTeamMember {
		e.fatalf("UserByEmail(acme-eu) = %+v %v", u, err)
	}
	if _, err := e.b.UserByEmail(e.ctx, "beta", "same@shared.test"); !errors.Is(err, store.ErrNotFound) {
		e.fatalf("UserByEmail of an unknown tenant = %v, want ErrNotFound", err)
	}
}
