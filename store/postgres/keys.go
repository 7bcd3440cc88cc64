package postgres

import (
	"context"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
)

// New Message-IDs and duplicate keys are announced to every node's filter
// (filter.go) by the transaction that inserts them: a pg_notify in the
// same transaction, delivered if and only if it commits. A group commit
// sends one notice for all the keys of its batch (split when a payload
// would pass PostgreSQL's 8000 bytes).
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

const notifySQL = "SELECT pg_notify('" + notifyChannel + "', $1)"

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
