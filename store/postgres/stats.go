package postgres

import (
	"context"
	"strings"
	"sync"
	"time"

	"syncrelay/store"
)

// Decision counters are buffered in memory and flushed every 10 s and at
// Close (a crash loses seconds of statistics, never a message). Each node
// adds to its own rows (tenant, hour, decision, reason, node), summed on
// read, so nodes never contend for one hot row.

type counterKey struct {
	tenant, decision, reason string
	hour                     time.Time
}

type counterBuf struct {
	mu   sync.Mutex
	m    map[counterKey]uint64
	last map[string]time.Time // latest forwarded-message time per tenant
}

func newCounterBuf() *counterBuf {
	return &counterBuf{m: map[counterKey]uint64{}, last: map[string]time.Time{}}
}

// Count records one decision for a tenant (buffered).
func (s *Store) Count(tenant, decision, reason string) {
	now := s.now().UTC()
	k := counterKey{tenant: tenant, decision: decision, reason: reason, hour: now.Truncate(time.Hour)}
	s.counts.mu.Lock()
	s.counts.m[k]++
	s.counts.last[tenant] = now
	s.counts.mu.Unlock()
}

// Authentication counters share the decision counters under a reserved
// pseudo-decision, as in store/bolt.
const authCounter = "_auth"

// CountAuth records the DKIM/ARC outcome of one message of interest.
func (s *Store) CountAuth(tenant string, dkimPass, arcPass bool) {
	s.Count(tenant, authCounter, "checked")
	if dkimPass {
		s.Count(tenant, authCounter, "dkim_pass")
	}
	if arcPass {
		s.Count(tenant, authCounter, "arc_pass")
	}
	if dkimPass || arcPass {
		s.Count(tenant, authCounter, "passed")
	}
}

// FlushCounters writes buffered counters now.
func (s *Store) FlushCounters(ctx context.Context) error { return s.flushCounters(ctx) }

func (s *Store) flushCounters(ctx context.Context) error {
	s.counts.mu.Lock()
	m, last := s.counts.m, s.counts.last
	s.counts.m, s.counts.last = map[counterKey]uint64{}, map[string]time.Time{}
	s.counts.mu.Unlock()
	if len(m) == 0 && len(last) == 0 {
		return nil
	}
	var tenants, decisions, reasons, lastTenants []string
	var hours, lastAt []time.Time
	var ns []int64
	for k, n := range m {
		tenants, decisions, reasons = append(tenants, k.tenant), append(decisions, k.decision), append(reasons, k.reason)
		hours, ns = append(hours, k.hour), append(ns, int64(n))
	}
	for t, at := range last {
		lastTenants, lastAt = append(lastTenants, t), append(lastAt, at)
	}
	_, err := s.pool.Exec(ctx, `WITH c AS (
			INSERT INTO counters (tenant, hour, decision, reason, node, n)
			SELECT t, h, d, r, $6, n FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::bigint[]) AS u(t, h, d, r, n)
			ON CONFLICT (tenant, hour, decision, reason, node) DO UPDATE SET n = counters.n + excluded.n)
		INSERT INTO last_seen (tenant, at) SELECT * FROM unnest($7::text[], $8::timestamptz[])
		ON CONFLICT (tenant) DO UPDATE SET at = greatest(last_seen.at, excluded.at)`,
		tenants, hours, decisions, reasons, ns, s.node, lastTenants, lastAt)
	if err != nil {
		s.restoreCounts(m, last)
	}
	return err
}

// restoreCounts puts counts whose flush failed back in the buffer, so a
// database outage does not lose them.
func (s *Store) restoreCounts(m map[counterKey]uint64, last map[string]time.Time) {
	s.counts.mu.Lock()
	defer s.counts.mu.Unlock()
	for k, n := range m {
		s.counts.m[k] += n
	}
	for t, at := range last {
		if at.After(s.counts.last[t]) {
			s.counts.last[t] = at
		}
	}
}

// Counts returns a tenant's decision counts ("decision/reason" -> n) since
// the given time (hour granularity), over every node and including this
// node's unflushed ones, and the time of the last forwarded message.
func (s *Store) Counts(ctx context.Context, tenant string, since time.Time) (map[string]uint64, time.Time, error) {
	from := since.UTC().Truncate(time.Hour)
	out := map[string]uint64{}
	var last time.Time
	rows, err := s.pool.Query(ctx, `SELECT decision, reason, sum(n)::bigint FROM counters
		WHERE tenant = $1 AND hour >= $2 GROUP BY decision, reason`, tenant, from)
	if err != nil {
		return nil, last, err
	}
	for rows.Next() {
		var d, r string
		var n int64
		if err := rows.Scan(&d, &r, &n); err != nil {
			rows.Close()
			return nil, last, err
		}
		out[d+"/"+r] += uint64(n)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, last, err
	}
	var at *time.Time
	if err := s.pool.QueryRow(ctx, "SELECT max(at) FROM last_seen WHERE tenant = $1", tenant).Scan(&at); err != nil {
		return nil, last, err
	}
	if at != nil {
		last = at.UTC()
	}
	s.counts.mu.Lock()
	for k, n := range s.counts.m {
		if k.tenant == tenant && !k.hour.Before(from) {
			out[k.decision+"/"+k.reason] += n
		}
	}
	if t, ok := s.counts.last[tenant]; ok && t.After(last) {
		last = t
	}
	s.counts.mu.Unlock()
	return out, last, nil
}

// TenantActivity gathers a tenant's forwarding activity as of now.
func (s *Store) TenantActivity(ctx context.Context, tenant string, now, sentSince time.Time) (*store.TenantActivity, error) {
	day := now.Add(-24 * time.Hour)
	counts, last, err := s.Counts(ctx, tenant, day)
	if err != nil {
		return nil, err
	}
	a := &store.TenantActivity{LastForwarded: last, SentSince: sentSince}
	a.LastDay = window(counts, day)
	hour := now.Add(-time.Hour)
	hcounts, _, err := s.Counts(ctx, tenant, hour)
	if err != nil {
		return nil, err
	}
	a.LastHour = window(hcounts, hour)
	var lastSent *time.Time
	err = s.pool.QueryRow(ctx, `SELECT count(*), max(received) FROM messages
		WHERE tenant = $1 AND received >= $2 AND direction = 'outbound' AND status NOT IN ('', 'failed')`,
		tenant, sentSince).Scan(&a.Sent, &lastSent)
	if lastSent != nil {
		a.LastSent = lastSent.UTC()
	}
	return a, err
}

func window(counts map[string]uint64, since time.Time) store.WindowCounts {
	w := store.WindowCounts{Since: since.UTC().Truncate(time.Hour), Decisions: map[string]uint64{}, Reasons: map[string]uint64{},
		UnalignedSigners: map[string]uint64{}}
	for k, n := range counts {
		decision, reason, _ := strings.Cut(k, "/")
		switch decision {
		case store.UnalignedSigners:
			w.UnalignedSigners[reason] += n
		case authCounter:
			switch reason {
			case "checked":
				w.AuthChecked += n
			case "dkim_pass":
				w.AuthDKIMPass += n
			case "arc_pass":
				w.AuthARCPass += n
			case "passed":
				w.AuthPassed += n
			}
		default:
			w.Total += n
			w.Decisions[decision] += n
			w.Reasons[k] += n
		}
	}
	return w
}

// LatestIssuedMessageID returns the Message-ID of a recent message
// syncrelay sent (among the last 10000 records), for key checks.
func (s *Store) LatestIssuedMessageID(ctx context.Context) (string, bool, error) {
	var id string
	err := s.pool.QueryRow(ctx, `SELECT msgid FROM (SELECT id, msgid, direction, sent_by FROM messages ORDER BY id DESC LIMIT 10000) m
		WHERE direction = 'outbound' AND sent_by <> '' AND msgid LIKE 'sr.%' ORDER BY id DESC LIMIT 1`).Scan(&id)
	if err != nil {
		if notFound(err) == store.ErrNotFound {
			return "", false, nil
		}
		return "", false, err
	}
	return id, true, nil
}

// CommitStats counts this node's group commits.
func (s *Store) CommitStats() store.CommitStats { return s.commits.Stats() }
