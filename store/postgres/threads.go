package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"syncrelay/store"
)

// threadKey orders group-commit requests by the thread they lock first.
func threadKey(tenant string, thread uint64) string {
	return fmt.Sprintf("%s\x00%020d", tenant, thread)
}

// CreateOutbound records a message syncrelay is about to send, and its new
// thread when th.ID is 0 (th.ID must otherwise name an existing thread of
// the tenant), before the provider is called.
func (s *Store) CreateOutbound(ctx context.Context, th *store.Thread, m *store.Message, mint store.MintFunc) error {
	now := s.now().UTC()
	var outTh store.Thread
	var outM store.Message
	key := ""
	if th.ID != 0 {
		key = threadKey(th.Tenant, th.ID)
	}
	err := s.group(ctx, key, func(ctx context.Context, tx pgx.Tx) error {
		t, msg := *th, *m
		if t.ID == 0 {
			if err := tx.QueryRow(ctx, "SELECT nextval('thread_ids')").Scan(&t.ID); err != nil {
				return err
			}
			t.Created = now
		} else if err := getJSON(ctx, tx, &t, "SELECT data FROM threads WHERE tenant = $1 AND id = $2 FOR UPDATE", t.Tenant, t.ID); err != nil {
			return fmt.Errorf("thread %d: %w", th.ID, err)
		}
		if err := tx.QueryRow(ctx, "SELECT nextval('message_ids')").Scan(&msg.ID); err != nil {
			return err
		}
		msg.Thread, msg.Tenant, msg.Candidate = t.ID, t.Tenant, t.Candidate
		msg.Direction = store.Outbound
		if msg.Received.IsZero() {
			msg.Received = now
		}
		id, conv := mint(t.ID, msg.ID)
		msg.InternetMessageID = strings.ToLower(id)
		// Every header issued stays indexed: replies to earlier mail of
		// the thread still carry the old one.
		if conv != "" && t.ConvIndex != conv {
			t.ConvIndex = conv
			if _, err := tx.Exec(ctx, `INSERT INTO conv_index (tenant, conv, thread) VALUES ($1, $2, $3)
				ON CONFLICT (tenant, conv) DO UPDATE SET thread = excluded.thread`, t.Tenant, conv, t.ID); err != nil {
				return err
			}
		}
		for _, u := range []string{msg.SentBy, msg.SendFor} {
			if u != "" && !slices.Contains(t.Participants, u) {
				t.Participants = append(t.Participants, u)
			}
		}
		t.LastActivity = now
		if err := putThread(ctx, tx, &t); err != nil {
			return err
		}
		if err := s.insertMessage(ctx, tx, &msg, msg.InternetMessageID); err != nil {
			return err
		}
		outTh, outM = t, msg
		return nil
	})
	if err != nil {
		return err
	}
	*th, *m = outTh, outM
	return nil
}

// selectThread reads a thread record and the arrival of its newest
// message: an inbound commit does not rewrite its thread (one more row
// version per message on the hottest rows), so LastActivity is the later
// of the two, as in store/bolt.
const selectThread = `SELECT t.data, (SELECT m.received FROM messages m
	WHERE m.tenant = t.tenant AND m.thread = t.id ORDER BY m.id DESC LIMIT 1) FROM threads t`

// scanThread decodes a row of selectThread.
func scanThread(r pgx.Row, t *store.Thread) error {
	var data []byte
	var newest *time.Time
	if err := r.Scan(&data, &newest); err != nil {
		return notFound(err)
	}
	if err := decode(data, t); err != nil {
		return err
	}
	if newest != nil && newest.After(t.LastActivity) {
		t.LastActivity = newest.UTC()
	}
	return nil
}

// putThread inserts or replaces a thread record.
func putThread(ctx context.Context, tx pgx.Tx, t *store.Thread) error {
	data, err := encode(t)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO threads (tenant, id, candidate, data) VALUES ($1, $2, $3, $4)
		ON CONFLICT (tenant, id) DO UPDATE SET candidate = excluded.candidate, data = excluded.data`,
		t.Tenant, t.ID, t.Candidate, data)
	return err
}

// insertMessage stores a new message and indexes it: under its duplicate
// key dk on its thread, and under its Message-ID for matching rule 2.
func (s *Store) insertMessage(ctx context.Context, tx pgx.Tx, m *store.Message, dk string) error {
	if err := s.indexMsgID(ctx, tx, m.Tenant, m.InternetMessageID, store.Ref{Thread: m.Thread, Message: m.ID}); err != nil {
		return err
	}
	if dk != "" {
		if _, err := s.claimCopy(ctx, tx, m.Tenant, m.Thread, dk, m.ID); err != nil {
			return err
		}
	}
	data, err := encode(m)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO messages (tenant, id, thread, direction, status, sent_by, msgid, received, data)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
		m.Tenant, m.ID, m.Thread, m.Direction, m.Status, m.SentBy, m.InternetMessageID, m.Received, data)
	return err
}

// updateMessage saves a changed message record.
func updateMessage(ctx context.Context, tx pgx.Tx, m *store.Message) error {
	data, err := encode(m)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `UPDATE messages SET direction = $3, status = $4, sent_by = $5, received = $6, data = $7
		WHERE tenant = $1 AND id = $2`, m.Tenant, m.ID, m.Direction, m.Status, m.SentBy, m.Received, data)
	return err
}

func lockMessage(ctx context.Context, tx pgx.Tx, tenant string, id uint64) (*store.Message, error) {
	var m store.Message
	if err := getJSON(ctx, tx, &m, "SELECT data FROM messages WHERE tenant = $1 AND id = $2 FOR UPDATE", tenant, id); err != nil {
		return nil, fmt.Errorf("message %d: %w", id, err)
	}
	return &m, nil
}

// indexMsgID records msgid for matching rule 2 unless a message already
// holds it: a later copy (on another thread) never takes an id over.
func (s *Store) indexMsgID(ctx context.Context, tx pgx.Tx, tenant, msgid string, ref store.Ref) error {
	if msgid == "" || store.Synthetic(msgid) {
		return nil
	}
	if err := s.announce(ctx, tx, tenantKey{tenant, msgid}); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, "INSERT INTO msgids (tenant, msgid, thread, message) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
		tenant, msgid, ref.Thread, ref.Message)
	return err
}

// claimCopy records msg as the holder of duplicate key dk on a thread
// unless one already is; it returns the holder. The unique key decides
// between concurrent copies, also across nodes.
func (s *Store) claimCopy(ctx context.Context, tx pgx.Tx, tenant string, thread uint64, dk string, msg uint64) (uint64, error) {
	if err := s.announce(ctx, tx, tenantKey{tenant, dk}); err != nil {
		return 0, err
	}
	var holder uint64
	err := tx.QueryRow(ctx, `WITH ins AS (
			INSERT INTO thread_copies (tenant, thread, dk, message) VALUES ($1, $2, $3, $4)
			ON CONFLICT DO NOTHING RETURNING message)
		SELECT message FROM ins UNION ALL
		SELECT message FROM thread_copies WHERE tenant = $1 AND thread = $2 AND dk = $3
		LIMIT 1`, tenant, thread, dk, msg).Scan(&holder)
	if errors.Is(err, pgx.ErrNoRows) {
		// The conflicting row was committed while the insert waited for
		// it, after this statement's snapshot: a new statement sees it.
		err = tx.QueryRow(ctx, "SELECT message FROM thread_copies WHERE tenant = $1 AND thread = $2 AND dk = $3", tenant, thread, dk).Scan(&holder)
	}
	return holder, err
}

// UpdateMessage applies fn to a stored message and saves it; raw, when not
// nil, replaces the message's raw copy in the same commit.
func (s *Store) UpdateMessage(ctx context.Context, tenant string, id uint64, raw *store.Raw, fn func(*store.Message) error) (*store.Message, error) {
	body, err := readRaw(raw)
	if err != nil {
		return nil, err
	}
	var out store.Message
	err = s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		m, err := lockMessage(ctx, tx, tenant, id)
		if err != nil {
			return err
		}
		if raw != nil {
			if err := dropRaw(ctx, tx, m.Raw); err != nil {
				return err
			}
			if m.Raw, err = putRaw(ctx, tx, body); err != nil {
				return err
			}
			m.Size = int64(len(body))
		}
		if err := fn(m); err != nil {
			return err
		}
		out = *m
		return updateMessage(ctx, tx, m)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// Message returns one message.
func (s *Store) Message(ctx context.Context, tenant string, id uint64) (*store.Message, error) {
	var m store.Message
	if err := getJSON(ctx, s.pool, &m, "SELECT data FROM messages WHERE tenant = $1 AND id = $2", tenant, id); err != nil {
		return nil, fmt.Errorf("message %d: %w", id, err)
	}
	return &m, nil
}

// Thread returns one thread of a tenant.
func (s *Store) Thread(ctx context.Context, tenant string, id uint64) (*store.Thread, error) {
	var t store.Thread
	if err := scanThread(s.pool.QueryRow(ctx, selectThread+" WHERE t.tenant = $1 AND t.id = $2", tenant, id), &t); err != nil {
		return nil, fmt.Errorf("thread %d: %w", id, err)
	}
	return &t, nil
}

// UpdateThread applies fn to a stored thread and saves it.
func (s *Store) UpdateThread(ctx context.Context, tenant string, id uint64, fn func(*store.Thread) error) (*store.Thread, error) {
	var out store.Thread
	err := s.group(ctx, threadKey(tenant, id), func(ctx context.Context, tx pgx.Tx) error {
		var t store.Thread
		if err := scanThread(tx.QueryRow(ctx, selectThread+" WHERE t.tenant = $1 AND t.id = $2 FOR UPDATE OF t", tenant, id), &t); err != nil {
			return fmt.Errorf("thread %d: %w", id, err)
		}
		if err := fn(&t); err != nil {
			return err
		}
		out = t
		return putThread(ctx, tx, &t)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// ThreadByConvIndex finds the thread whose issued Thread-Index
// conversation header (hex) is conv.
func (s *Store) ThreadByConvIndex(ctx context.Context, tenant, conv string) (uint64, bool, error) {
	var id uint64
	err := s.pool.QueryRow(ctx, "SELECT thread FROM conv_index WHERE tenant = $1 AND conv = $2", tenant, strings.ToLower(conv)).Scan(&id)
	if err == pgx.ErrNoRows {
		return 0, false, nil
	}
	return id, err == nil, err
}

// LookupMsgID finds the message a Message-ID belongs to (issued, learned
// or received; the first holder). Synthetic ids never match.
func (s *Store) LookupMsgID(ctx context.Context, tenant, msgid string) (store.Ref, bool, error) {
	var r store.Ref
	if store.Synthetic(msgid) || s.unknownKey(tenant, msgid) {
		return r, false, nil
	}
	err := s.pool.QueryRow(ctx, "SELECT thread, message FROM msgids WHERE tenant = $1 AND msgid = $2", tenant, msgid).Scan(&r.Thread, &r.Message)
	if err == pgx.ErrNoRows {
		return store.Ref{}, false, nil
	}
	return r, err == nil, err
}

// LookupMsgIDs is LookupMsgID for many ids in one query: the messages
// holding any of them, in the order of ids.
func (s *Store) LookupMsgIDs(ctx context.Context, tenant string, ids []string) ([]store.Ref, error) {
	real := make([]string, 0, len(ids))
	for _, id := range ids {
		// Ids the node's filter knows nothing of need no query: mail that
		// references nothing syncrelay knows is discarded without a
		// round trip.
		if !store.Synthetic(id) && !s.unknownKey(tenant, id) {
			real = append(real, id)
		}
	}
	if len(real) == 0 {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT m.thread, m.message FROM unnest($2::text[]) WITH ORDINALITY AS q(id, n)
		JOIN msgids m ON m.tenant = $1 AND m.msgid = q.id ORDER BY q.n`, tenant, real)
	if err != nil {
		return nil, err
	}
	var out []store.Ref
	var r store.Ref
	_, err = pgx.ForEachRow(rows, []any{&r.Thread, &r.Message}, func() error {
		out = append(out, r)
		return nil
	})
	return out, err
}

// LookupCopy finds the message on a thread that a copy with this
// Message-ID (or, without a usable one, this content digest) duplicates.
func (s *Store) LookupCopy(ctx context.Context, tenant string, thread uint64, msgid, digest string) (store.Ref, bool, error) {
	dk := store.DedupKey(msgid, digest)
	if dk == "" || s.unknownKey(tenant, dk) {
		return store.Ref{}, false, nil
	}
	var id uint64
	err := s.pool.QueryRow(ctx, "SELECT message FROM thread_copies WHERE tenant = $1 AND thread = $2 AND dk = $3", tenant, thread, dk).Scan(&id)
	if err == pgx.ErrNoRows {
		return store.Ref{}, false, nil
	}
	return store.Ref{Thread: thread, Message: id}, err == nil, err
}

// ThreadMessages lists a thread's messages oldest first, removed ones included.
func (s *Store) ThreadMessages(ctx context.Context, tenant string, thread uint64) ([]*store.Message, error) {
	return listJSON[store.Message](ctx, s.pool, "SELECT data FROM messages WHERE tenant = $1 AND thread = $2 ORDER BY id", tenant, thread)
}

// ThreadMessagesPage lists up to limit messages of a thread that are on
// the profile, oldest first, after message id after; more reports whether
// further messages follow.
func (s *Store) ThreadMessagesPage(ctx context.Context, tenant string, thread, after uint64, limit int) ([]*store.Message, bool, error) {
	// Removed messages are skipped after decoding (the flag is in the
	// record), so read in chunks until the page is full.
	var out []*store.Message
	for {
		chunk, err := listJSON[store.Message](ctx, s.pool, "SELECT data FROM messages WHERE tenant = $1 AND thread = $2 AND id > $3 ORDER BY id LIMIT $4",
			tenant, thread, after, limit+1)
		if err != nil {
			return nil, false, err
		}
		for _, m := range chunk {
			after = m.ID
			if m.Removed {
				continue
			}
			if len(out) == limit {
				return out, true, nil
			}
			out = append(out, m)
		}
		if len(chunk) < limit+1 {
			return out, false, nil
		}
	}
}

// ThreadInvolves reports whether a user took part in a thread, by
// syncrelay's own records only (SPEC §3 "Who sees a secret thread").
func (s *Store) ThreadInvolves(ctx context.Context, tenant string, thread uint64, userID, email string) (bool, error) {
	msgs, err := s.ThreadMessages(ctx, tenant, thread)
	if err != nil {
		return false, err
	}
	email = strings.ToLower(email)
	for _, m := range msgs {
		if m.Involves(userID, email) {
			return true, nil
		}
	}
	return false, nil
}

// CandidateThreads lists a candidate's threads, newest activity first.
func (s *Store) CandidateThreads(ctx context.Context, tenant, cand string) ([]*store.Thread, error) {
	rows, err := s.pool.Query(ctx, selectThread+" WHERE t.tenant = $1 AND t.candidate = $2 ORDER BY t.id", tenant, cand)
	if err != nil {
		return nil, err
	}
	var out []*store.Thread
	for rows.Next() {
		t := new(store.Thread)
		if err := scanThread(rows, t); err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, t)
	}
	rows.Close()
	err = rows.Err()
	slices.SortStableFunc(out, func(a, b *store.Thread) int { return b.LastActivity.Compare(a.LastActivity) })
	return out, err
}

// RemoveMessage takes a message off the profile: the record becomes a
// tombstone (a later copy does not bring it back) and its raw bytes are
// deleted in the same transaction.
func (s *Store) RemoveMessage(ctx context.Context, tenant string, id uint64) error {
	return s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		m, err := lockMessage(ctx, tx, tenant, id)
		if err != nil {
			return err
		}
		if err := dropRaw(ctx, tx, m.Raw); err != nil {
			return err
		}
		m.Removed, m.RemovedAt, m.Raw = true, s.now().UTC(), ""
		return updateMessage(ctx, tx, m)
	})
}

// MarkBounced records a DSN against a sent message and enqueues
// message.bounced, unless the message was already marked with the same
// status (already=true).
func (s *Store) MarkBounced(ctx context.Context, tenant string, id uint64, status, diag string) (already bool, err error) {
	now := s.now().UTC()
	err = s.group(ctx, "", func(ctx context.Context, tx pgx.Tx) error {
		m, err := lockMessage(ctx, tx, tenant, id)
		if err != nil {
			return err
		}
		already = m.Bounced && m.BounceStatus == status
		m.Bounced, m.BounceStatus, m.BounceDiagnostic = true, status, diag
		if err := updateMessage(ctx, tx, m); err != nil {
			return err
		}
		if already {
			return nil // a second copy of the same DSN raises no second event
		}
		return enqueue(ctx, tx, tenant, "message.bounced", map[string]any{
			"message_id": store.MessageRef(m.ID), "thread_id": store.ThreadRef(m.Thread), "candidate": m.Candidate,
			"status": status, "diagnostic": diag,
		}, now)
	})
	return already, err
}
