package bolt

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestTenantCache: Tenant answers from its cache what a read of the record
// would (after CreateTenant and UpdateTenant, under concurrent reads and
// updates), and a caller changing the Tenant it got changes nothing.
func TestTenantCache(t *testing.T) {
	t.Parallel()
	s, _ := openTest(t)
	seed(t, s)
	ctx := context.Background()
	get := func() *Tenant {
		t.Helper()
		ten, err := s.Tenant(ctx, "acme")
		if err != nil {
			t.Fatal(err)
		}
		return ten
	}
	first := get()
	first.Domains[0], first.DKIMPolicy = "changed.test", PolicyOff
	first.SigningDomains = append(first.SigningDomains, "x.test")
	if again := get(); again.Domains[0] != "acme.test" || again.DKIMPolicy != PolicyRequire || again.SigningDomains != nil {
		t.Fatalf("a caller's change reached the cache: %+v", again)
	}

	if _, err := s.UpdateTenant(ctx, "acme", func(ten *Tenant) error {
		ten.DKIMPolicy, ten.SigningDomains = PolicyQuarantine, []string{"esp.test"}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if ten := get(); ten.DKIMPolicy != PolicyQuarantine || !slices.Equal(ten.SigningDomains, []string{"esp.test"}) {
		t.Fatalf("after UpdateTenant: %+v", ten)
	}

	// Readers racing updates: once the updates are over, the record read
	// is the last one written.
	var wg sync.WaitGroup
	const updates = 50
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				if _, err := s.Tenant(ctx, "acme"); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for i := range updates {
		if _, err := s.UpdateTenant(ctx, "acme", func(ten *Tenant) error {
			ten.Name = fmt.Sprint(i)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if ten := get(); ten.Name != fmt.Sprint(updates-1) {
		t.Fatalf("after %d updates: name %q", updates, ten.Name)
	}

	if _, err := s.Tenant(ctx, "nobody"); err == nil {
		t.Fatal("an unknown tenant was found")
	}
	if err := s.CreateTenant(ctx, &Tenant{ID: "nobody", InboundAddress: "nobody-x@relay.test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Tenant(ctx, "nobody"); err != nil {
		t.Fatalf("after CreateTenant: %v", err)
	}
}

// TestCopyTenantCopiesEveryReference: copyTenant clones every field that
// refers to memory (a field added to Tenant with a slice, map or pointer
// must be cloned there too, or callers would share it with the cache).
func TestCopyTenantCopiesEveryReference(t *testing.T) {
	t.Parallel()
	cloned := map[string]bool{"Domains": true, "TrustedForwarders": true, "SigningDomains": true}
	typ := reflect.TypeFor[Tenant]()
	for i := range typ.NumField() {
		f := typ.Field(i)
		switch f.Type.Kind() {
		case reflect.String, reflect.Bool, reflect.Int, reflect.Int64:
		case reflect.Struct:
			if f.Type != reflect.TypeFor[time.Time]() {
				t.Errorf("Tenant.%s: a struct copyTenant does not know", f.Name)
			}
		default:
			if !cloned[f.Name] {
				t.Errorf("Tenant.%s (%s): copyTenant does not clone it", f.Name, f.Type)
			}
		}
	}
	ten := &Tenant{Domains: []string{"a"}, TrustedForwarders: []string{"b"}, SigningDomains: []string{"c"}}
	c := copyTenant(ten)
	c.Domains[0], c.TrustedForwarders[0], c.SigningDomains[0] = "x", "y", "z"
	if ten.Domains[0] != "a" || ten.TrustedForwarders[0] != "b" || ten.SigningDomains[0] != "c" {
		t.Fatalf("the copy shares memory: %+v", ten)
	}
	if e := copyTenant(&Tenant{Domains: []string{}}); e.Domains == nil || e.SigningDomains != nil {
		t.Fatalf("empty and nil slices not kept apart: %#v", e)
	}
}
