package bolt

import (
	"context"
	"testing"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkInboundLookups measures what the router's lookups for one
// stored message cost (issue 12 asked whether one bbolt View for all of
// them would pay): the thread, the tenant, the sender's user and the
// per-thread copy, each in its own View as today ("separate"), against
// an empty View ("view-only", the part one shared View would save per
// lookup).
func BenchmarkInboundLookups(b *testing.B) {
	s, commit := commitBench(b)
	defer s.Close()
	for i := range int64(256) {
		if err := commit(i); err != nil {
			b.Fatal(err)
		}
	}
	ctx := context.Background()
	b.Run("separate", func(b *testing.B) {
		for b.Loop() {
			th, err := s.Thread(ctx, "acme", 2)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Tenant(ctx, "acme"); err != nil {
				b.Fatal(err)
			}
			_, _ = s.UserByEmail(ctx, "acme", "carl@cand.test")
			if _, _, err := s.LookupCopy(ctx, "acme", th.ID, "new@cand.test", ""); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("view-only", func(b *testing.B) {
		for b.Loop() {
			_ = s.db.View(func(*bolt.Tx) error { return nil })
		}
	})
}
