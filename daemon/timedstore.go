package daemon

import (
	"context"
	"time"

	"syncrelay/metrics"
	"syncrelay/router"
	"syncrelay/store"
)

// timedStore times the inbound path's durable writes.
type timedStore struct {
	router.Store
	m *metrics.Metrics
}

func (s timedStore) CommitInbound(ctx context.Context, in *store.Incoming) (store.CommitResult, error) {
	t := time.Now()
	res, err := s.Store.CommitInbound(ctx, in)
	s.m.StoreCommit(metrics.OpCommitInbound, time.Since(t))
	return res, err
}

func (s timedStore) MarkBounced(ctx context.Context, tenant string, id uint64, status, diag string) (bool, error) {
	t := time.Now()
	already, err := s.Store.MarkBounced(ctx, tenant, id, status, diag)
	s.m.StoreCommit(metrics.OpMarkBounced, time.Since(t))
	return already, err
}

func (s timedStore) Quarantine(ctx context.Context, q *store.Quarantined, raw *store.Raw, keep time.Duration) error {
	t := time.Now()
	err := s.Store.Quarantine(ctx, q, raw, keep)
	s.m.StoreCommit(metrics.OpQuarantine, time.Since(t))
	return err
}
