package bolt

import (
	"context"
	"errors"
	"testing"
)

func TestDelegationLifecycle(t *testing.T) {
	t.Parallel()
	s, _ := openKVClock(t)
	seed(t, s)
	ctx := context.Background()
	if err := s.CreateUser(ctx, &User{Tenant: "acme", ID: "u-hm", Email: "hm@acme.test", Role: RoleLimitedTeamMember}); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateDelegation(ctx, &Delegation{Tenant: "acme", Requester: "u-rec", Grantor: "ghost"}, "u-rec"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown grantor: %v", err)
	}
	d := &Delegation{Tenant: "acme", Requester: "u-rec", Grantor: "u-hm"}
	if err := s.CreateDelegation(ctx, d, "u-rec"); err != nil {
		t.Fatal(err)
	}
	if d.ID == 0 || d.Status != DelegationRequested || len(d.History) != 1 {
		t.Fatalf("%+v", d)
	}
	if err := s.CreateDelegation(ctx, &Delegation{Tenant: "acme", Requester: "u-rec", Grantor: "u-hm"}, "u-rec"); !errors.Is(err, ErrExists) {
		t.Fatalf("duplicate open request: %v", err)
	}
	if got, err := s.OpenDelegation(ctx, "acme", "u-rec", "u-hm"); err != nil || got.ID != d.ID {
		t.Fatalf("open: %v %v", got, err)
	}
	if _, err := s.OpenDelegation(ctx, "acme", "u-hm", "u-rec"); !errors.Is(err, ErrNotFound) {
		t.Fatal("direction ignored")
	}

	denied := errors.New("no")
	if _, err := s.TransitionDelegation(ctx, "acme", d.ID, "u-rec", DelegationActive, func(*Delegation) error { return denied }); !errors.Is(err, denied) {
		t.Fatalf("check ignored: %v", err)
	}
	a, err := s.TransitionDelegation(ctx, "acme", d.ID, "u-hm", DelegationActive, nil)
	if err != nil || a.Status != DelegationActive {
		t.Fatalf("approve: %+v %v", a, err)
	}
	if again, err := s.TransitionDelegation(ctx, "acme", d.ID, "u-hm", DelegationActive, nil); err != nil || len(again.History) != 2 {
		t.Fatalf("repeat approve should be a no-op: %+v %v", again, err)
	}
	if _, err := s.TransitionDelegation(ctx, "acme", d.ID, "u-hm", DelegationDeclined, nil); !errors.Is(err, ErrTransition) {
		t.Fatalf("decline after approve: %v", err)
	}
	r, err := s.TransitionDelegation(ctx, "acme", d.ID, "u-rec", DelegationRevoked, nil)
	if err != nil || r.Status != DelegationRevoked {
		t.Fatal(err)
	}
	if _, err := s.TransitionDelegation(ctx, "acme", d.ID, "u-hm", DelegationActive, nil); !errors.Is(err, ErrTransition) {
		t.Fatal("revoked delegation re-activated")
	}
	if _, err := s.OpenDelegation(ctx, "acme", "u-rec", "u-hm"); !errors.Is(err, ErrNotFound) {
		t.Fatal("revoked delegation still open")
	}
	// A new request after revocation is allowed.
	d2 := &Delegation{Tenant: "acme", Requester: "u-rec", Grantor: "u-hm"}
	if err := s.CreateDelegation(ctx, d2, ""); err != nil || d2.ID == d.ID {
		t.Fatalf("re-request: %v", err)
	}
	got, _ := s.Delegation(ctx, "acme", d.ID)
	want := []string{"->requested", "requested->active", "active->revoked"}
	if len(got.History) != len(want) {
		t.Fatalf("history %+v", got.History)
	}
	for i, h := range got.History {
		if h.From+"->"+h.To != want[i] || h.At.IsZero() {
			t.Fatalf("history %d: %+v", i, h)
		}
	}
	if got.History[1].By != "u-hm" || got.History[2].By != "u-rec" {
		t.Fatalf("audit actors %+v", got.History)
	}
	all, _ := s.Delegations(ctx, "acme")
	if len(all) != 2 {
		t.Fatalf("%d delegations", len(all))
	}
	evs, _ := s.Events(ctx, "")
	var types []string
	for _, e := range evs {
		types = append(types, e.Type)
	}
	wantTypes := "delegation.requested delegation.changed delegation.changed delegation.requested"
	if joined := joinTypes(types); joined != wantTypes {
		t.Fatalf("events %s, want %s", joined, wantTypes)
	}
	data := evs[1].Data.(map[string]any)
	if data["status"] != "active" || data["previous_status"] != "requested" || data["changed_by"] != "u-hm" || data["delegation_id"] != "d-1" {
		t.Fatalf("changed data %v", data)
	}
	if id, ok := ParseDelegationRef("d-1"); !ok || id != 1 {
		t.Fatal("ParseDelegationRef")
	}
}

func joinTypes(s []string) string {
	out := ""
	for i, v := range s {
		if i > 0 {
			out += " "
		}
		out += v
	}
	return out
}
