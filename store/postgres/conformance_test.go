package postgres

import (
	"context"
	"fmt"
	"testing"
	"time"

	"syncrelay/internal/pgtest"
	"syncrelay/store/storetest"
)

// TestConformance runs the store contract's suite against PostgreSQL:
// every subtest gets its own database; Peer opens a second node on it.
func TestConformance(t *testing.T) {
	t.Parallel() // alongside the tests that wait
	storetest.Run(t, storetest.Factory{Open: openPG})
}

func openPG(t *testing.T, now func() time.Time) *storetest.Instance {
	// A copy of a migrated database: the suite tests the store, not the
	// migrations (TestMigrationsConcurrent and the tests in store_test.go
	// migrate empty databases), and copying costs a fraction of migrating.
	dsn := pgtest.DSNFrom(t, "migrated", migrated)
	nodes := 0
	open := func(t *testing.T) *Store {
		t.Helper()
		nodes++
		s, err := Open(context.Background(), dsn, Options{Now: now, Node: fmt.Sprintf("node%d", nodes)})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cur := open(t)
	return &storetest.Instance{
		Backend: cur,
		Reopen: func(t *testing.T) storetest.Backend {
			cur = open(t)
			return cur
		},
		// A crashed node loses its buffered counters and nothing else:
		// every commit it acknowledged is in the database.
		Crash: func(t *testing.T) storetest.Backend {
			cur.counts = newCounterBuf()
			_ = cur.Close()
			cur = open(t)
			return cur
		},
		Peer: func(t *testing.T) storetest.Backend { return open(t) },
	}
}

// migrated prepares pgtest's template database: Open applies the
// migrations, Close leaves no connection behind.
func migrated(ctx context.Context, dsn string) error {
	s, err := Open(ctx, dsn, Options{Node: "template"})
	if err != nil {
		return err
	}
	return s.Close()
}
