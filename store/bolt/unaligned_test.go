package bolt

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// TestUnalignedSignersCounted: the per-domain counter of unaligned signers
// survives a flush and a reopen, and is not counted as a decision.
func TestUnalignedSignersCounted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	clock := &fakeClock{t: time.Date(2025, 3, 10, 12, 30, 0, 0, time.UTC)}
	s, err := Open(dir, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	s.Count("acme", "rejected", "dkim_unaligned")
	s.Count("acme", UnalignedSigners, "acme.onmicrosoft.com")
	s.Count("acme", "rejected", "dkim_unaligned")
	s.Count("acme", UnalignedSigners, "acme.onmicrosoft.com")
	s.Count("acme", UnalignedSigners, "esp.test")
	s.Count("beta", UnalignedSigners, "beta.onmicrosoft.com")
	if err := s.Close(); err != nil { // flushes the counters
		t.Fatal(err)
	}
	s, err = Open(dir, Options{Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := clock.Now()
	a, err := s.TenantActivity(context.Background(), "acme", now, now.Add(-24*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []WindowCounts{a.LastHour, a.LastDay} {
		if w.Total != 2 || w.Reasons["rejected/dkim_unaligned"] != 2 || len(w.Decisions) != 1 ||
			fmt.Sprint(w.UnalignedSigners) != "map[acme.onmicrosoft.com:2 esp.test:1]" {
			t.Fatalf("window %+v", w)
		}
	}
}
