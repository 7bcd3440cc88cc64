package postgres

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// New Message-IDs and duplicate keys reach every node's filter (filter.go)
// two ways:
//   - a group commit logs the keys of its batch in key_log, in its own
//     transaction, and sends them as a notice right after its COMMIT, in a
//     transaction of its own with synchronous_commit off (one notice per
//     batch, split when a payload would pass PostgreSQL's 8000 bytes).
//     The notice is not sent inside the commit: PostgreSQL lets one
//     NOTIFYing transaction commit at a time and holds that lock through
//     the commit's WAL flush, so the batches of all nodes took turns on
//     the flush instead of sharing it (0005_key_log.sql). The notice's own
//     transaction writes nothing that needs a flush, so it holds the lock
//     for microseconds;
//   - each node's listener reads key_log every keyCatchUp, the rows its
//     previous read's snapshot did not see (catchUp): a notice lost
//     because its node died between the commit and the notice, or
//     dropped because the notice transaction failed, delays its keys by
//     keyCatchUp at most.
//
// The unbatched write paths (sends, learned ids: announce) still NOTIFY
// inside their transaction; they are rare.
//
// A payload is "k" followed by entries "<len(tenant)>,<len(key)>,<tenant><key>":
// lengths make any byte of a tenant or key safe.

type tenantKey struct{ tenant, key string }

const maxPayload = 7900

// keyPayloads encodes keys into as few payloads as fit.
func keyPayloads(keys []tenantKey) []string {
	var out []string
	var b strings.Builder
	for _, k := range keys {
		e := strconv.Itoa(len(k.tenant)) + "," + strconv.Itoa(len(k.key)) + "," + k.tenant + k.key
		if 1+len(e) > maxPayload {
			// Longer than any payload (keys are at most 998 characters,
			// SPEC §3, so this is not expected): every node rebuilds.
			out = append(out, "r")
			continue
		}
		if b.Len() > 0 && b.Len()+len(e) > maxPayload {
			out = append(out, b.String())
			b.Reset()
		}
		if b.Len() == 0 {
			b.WriteByte('k')
		}
		b.WriteString(e)
	}
	if b.Len() > 0 {
		out = append(out, b.String())
	}
	return out
}

// parseKeys decodes a "k" payload's entries (without the "k"); ok is false
// for a malformed one.
func parseKeys(p string, fn func(tenant, key string)) bool {
	for p != "" {
		tl, rest, ok1 := strings.Cut(p, ",")
		kl, rest, ok2 := strings.Cut(rest, ",")
		t, err1 := strconv.Atoi(tl)
		k, err2 := strconv.Atoi(kl)
		if !ok1 || !ok2 || err1 != nil || err2 != nil || t < 0 || k < 0 || t+k > len(rest) {
			return false
		}
		fn(rest[:t], rest[t:t+k])
		p = rest[t+k:]
	}
	return true
}

const (
	notifySQL = "SELECT pg_notify('" + notifyChannel + "', $1)"
	keyLogSQL = "INSERT INTO key_log (payloads) VALUES ($1)"
	// keyCatchUp is how often a node reads key_log for keys whose notice
	// it did not get: the longest a lost notice delays them.
	keyCatchUp = time.Second
	// keyLogKept is how long key_log rows are kept: far longer than any
	// listener goes without reading (it reconnects and reloads every key
	// when a read fails).
	keyLogKept = 10 * time.Minute
)

// queueNotices queues, after a COMMIT, the transaction that sends the
// committed batch's notices. synchronous_commit off: it waits for no WAL
// flush, so the notify queue lock it takes is held only briefly; its
// notices are sent once it commits (or lost with a crash of the server,
// after which every listener reconnects and reloads all keys anyway).
func queueNotices(b *pgx.Batch, payloads []string) {
	if len(payloads) == 0 {
		return
	}
	b.Queue("BEGIN")
	b.Queue("SELECT set_config('synchronous_commit', 'off', true)")
	for _, p := range payloads {
		b.Queue(afterCommitNotifySQL, p)
	}
	b.Queue("COMMIT")
}

// afterCommitNotifySQL is notifySQL; a test breaks it to fail the notices.
var afterCommitNotifySQL = notifySQL

// notifyAfter sends committed keys' notices (queueNotices) on a pooled
// connection. A failure is only logged: the other nodes' catch-up reads
// the keys from key_log.
func (s *Store) notifyAfter(ctx context.Context, payloads []string) {
	if len(payloads) == 0 {
		return
	}
	b := &pgx.Batch{}
	queueNotices(b, payloads)
	if err := s.pool.SendBatch(ctx, b).Close(); err != nil {
		s.logger.Warn("store: key notice not sent; other nodes read the keys from key_log within a second", "err", err)
	}
}

// catchUp reads the key_log rows that the snapshot snap (as text) did not
// see, adds their keys to the filter and returns the snapshot of this
// read. Rows snap did not see are those of transactions at or past its
// xmax or in progress then (its xip list): both are index scans, however
// long an unrelated transaction stays open. rebuild is true when a
// payload asks for a rebuild or the filter is full.
func (s *Store) catchUp(ctx context.Context, conn *pgx.Conn, snap string) (next string, rebuild bool, err error) {
	var payloads []string
	err = conn.QueryRow(ctx, `SELECT pg_current_snapshot()::text, coalesce((SELECT array_agg(p) FROM key_log, unnest(payloads) p
			WHERE xid >= pg_snapshot_xmax($1::pg_snapshot)
			   OR xid = ANY (ARRAY(SELECT pg_snapshot_xip($1::pg_snapshot)))), '{}')`, snap).Scan(&next, &payloads)
	if err != nil {
		return snap, false, err
	}
	for _, p := range payloads {
		if s.cache.apply(p) {
			rebuild = true
		}
	}
	return next, rebuild, nil
}

// pruneKeyLog deletes key_log rows older than keyLogKept.
func (s *Store) pruneKeyLog(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, "DELETE FROM key_log WHERE at < now() - make_interval(secs => $1)", keyLogKept.Seconds())
	return err
}

// announce notes keys in this node's filter and announces them to every
// node in tx's commit (the unbatched write paths: sends, learned ids).
func (s *Store) announce(ctx context.Context, tx pgx.Tx, keys ...tenantKey) error {
	for _, k := range keys {
		s.noteKey(k.tenant, k.key)
	}
	for _, p := range keyPayloads(keys) {
		if _, err := tx.Exec(ctx, notifySQL, p); err != nil {
			return err
		}
	}
	return nil
}
