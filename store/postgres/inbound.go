package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"syncrelay/store"
)

// CommitInbound durably records a matched message with its raw bytes
// (group commit), or reports it a duplicate. The same Message-ID (or
// content, without one) on the same thread is stored once, also when two
// nodes commit copies at the same time: the thread row is locked first and
// the thread_copies key decides. A later copy only adds its mailbox, and a
// removed message stays removed.
func (s *Store) CommitInbound(ctx context.Context, in *store.Incoming) (store.CommitResult, error) {
	var res store.CommitResult
	body, err := readRaw(in.Raw)
	if err != nil {
		return res, err
	}
	now := s.now().UTC()
	tenant, thread := in.Message.Tenant, in.Message.Thread
	if in.Learn != nil {
		thread = in.Learn.Thread
	}
	key := threadKey(tenant, thread)
	if in.Learn != nil {
		err = s.group(ctx, key, func(ctx context.Context, tx pgx.Tx) error {
			var err error
			res, err = s.learn(ctx, tx, in)
			return err
		})
		return res, err
	}
	// Within a thread, copies are ordered by their duplicate key: two
	// nodes committing the same copies claim the keys in the same order.
	r := &commitReq{key: key + "\x00" + store.DedupKey(in.Message.InternetMessageID, in.Digest), err: make(chan error, 1), op: func() batchOp {
		return &commitOp{s: s, in: in, body: body, now: now, res: &res}
	}}
	return res, s.queue(ctx, r)
}

// learn records a provider-assigned Message-ID of a sent message (its
// forwarded sent copy); no new message is stored.
func (s *Store) learn(ctx context.Context, tx pgx.Tx, in *store.Incoming) (store.CommitResult, error) {
	tenant, ref := in.Message.Tenant, *in.Learn
	m, err := lockMessage(ctx, tx, tenant, ref.Message)
	if err != nil {
		return store.CommitResult{}, fmt.Errorf("sent message: %w", err)
	}
	id := in.Message.InternetMessageID
	if id != "" && !store.Synthetic(id) && id != m.InternetMessageID && !slices.Contains(m.LearnedIDs, id) {
		var held store.Ref
		err := tx.QueryRow(ctx, "SELECT thread, message FROM msgids WHERE tenant = $1 AND msgid = $2", tenant, id).Scan(&held.Thread, &held.Message)
		if err != nil && err != pgx.ErrNoRows {
			return store.CommitResult{}, err
		}
		// An id another message already holds is no provider-assigned id
		// of this one: learning it would tie two threads together.
		if err == pgx.ErrNoRows || held == ref {
			m.LearnedIDs = append(m.LearnedIDs, id)
			if err := s.indexMsgID(ctx, tx, tenant, id, ref); err != nil {
				return store.CommitResult{}, err
			}
			if _, err := s.claimCopy(ctx, tx, tenant, ref.Thread, id, ref.Message); err != nil {
				return store.CommitResult{}, err
			}
		}
	}
	m.AddMailbox(in.Mailbox)
	return store.CommitResult{Decision: store.Duplicate, Ref: ref, Removed: m.Removed}, updateMessage(ctx, tx, m)
}

// duplicate adds a copy's mailbox to the message it duplicates.
func duplicate(ctx context.Context, tx pgx.Tx, tenant string, ref store.Ref, mbox string) (store.CommitResult, error) {
	m, err := lockMessage(ctx, tx, tenant, ref.Message)
	if err != nil {
		return store.CommitResult{}, fmt.Errorf("indexed %w", err)
	}
	m.AddMailbox(mbox)
	return store.CommitResult{Decision: store.Duplicate, Ref: ref, Removed: m.Removed}, updateMessage(ctx, tx, m)
}

// commitOp is CommitInbound of a new copy, pipelined (see pipeline.go):
//
//  1. read the thread (not locked: threads are never deleted and the
//     commit does not rewrite it; a lock on a thread row made the batches
//     of two nodes on the same threads wait for each other's commit),
//     allocate the message and blob ids, claim the duplicate key (the
//     unique index serialises copies of one message across nodes);
//  2. a new message: write its bytes, record and indexes, touch the thread
//     and enqueue its event; a duplicate: read the message it duplicates;
//  3. a duplicate: add the copy's mailbox to it.
type commitOp struct {
	s    *Store
	in   *store.Incoming
	body []byte
	now  time.Time
	res  *store.CommitResult

	step   int
	final  bool // the step just queued is the last
	th     store.Thread
	id     uint64
	blob   int64
	holder uint64 // the message holding the duplicate key (id: this one)
	dup    store.Message
}

func (o *commitOp) last() bool { return o.final }

func (o *commitOp) next(p *pipe) bool {
	o.final = false
	o.step++
	switch o.step {
	case 1:
		o.lockAndClaim(p)
		return true
	case 2:
		if o.holder == 0 && o.dk() != "" {
			// The key was committed by another transaction while the
			// claim waited, after the claim's snapshot: read it again.
			o.step--
			p.row(func(r pgx.Row) error { return r.Scan(&o.holder) },
				"SELECT message FROM thread_copies WHERE tenant = $1 AND thread = $2 AND dk = $3", o.in.Message.Tenant, o.th.ID, o.dk())
			return true
		}
		if o.holder != o.id {
			p.row(func(r pgx.Row) error { return scanJSON(r, &o.dup) },
				"SELECT data FROM messages WHERE tenant = $1 AND id = $2 FOR UPDATE", o.in.Message.Tenant, o.holder)
			return true
		}
		return o.store(p)
	case 3:
		if o.holder == o.id {
			return false
		}
		m, ok := p.dups[o.holder]
		if !ok {
			m = &o.dup
		}
		*o.res = store.CommitResult{Decision: store.Duplicate, Ref: store.Ref{Thread: o.th.ID, Message: o.holder}, Removed: m.Removed}
		before := len(m.Mailboxes)
		m.AddMailbox(o.in.Mailbox)
		if len(m.Mailboxes) == before {
			return false // a redelivery through a known mailbox changes nothing
		}
		p.dups[o.holder] = m
		data, err := encode(m)
		if err != nil {
			p.fail(err)
			return true
		}
		p.exec("UPDATE messages SET data = $3 WHERE tenant = $1 AND id = $2", m.Tenant, m.ID, data)
		o.final = true
		return true
	}
	return false
}

func (o *commitOp) dk() string { return store.DedupKey(o.in.Message.InternetMessageID, o.in.Digest) }

func (o *commitOp) lockAndClaim(p *pipe) {
	tenant, thread := o.in.Message.Tenant, o.in.Message.Thread
	p.row(func(r pgx.Row) error {
		if err := scanJSON(r, &o.th); err != nil {
			return fmt.Errorf("thread %d: %w", thread, err)
		}
		return nil
	}, "SELECT data FROM threads WHERE tenant = $1 AND id = $2", tenant, thread)
	p.row(func(r pgx.Row) error {
		err := r.Scan(&o.id, &o.blob)
		if o.dk() == "" {
			o.holder = o.id // no key: never a duplicate
		}
		return err
	}, "SELECT nextval('message_ids'), nextval(pg_get_serial_sequence('raw_blobs', 'id'))")
	o.holder = 0
	if dk := o.dk(); dk != "" {
		p.note(o.s, tenant, dk)
		// currval: the id allocated just above, in this session.
		p.row(func(r pgx.Row) error {
			err := r.Scan(&o.holder)
			if errors.Is(err, pgx.ErrNoRows) {
				return nil // read again in the next step
			}
			return err
		}, `WITH ins AS (
				INSERT INTO thread_copies (tenant, thread, dk, message) VALUES ($1, $2, $3, currval('message_ids'))
				ON CONFLICT DO NOTHING RETURNING message)
			SELECT message FROM ins UNION ALL
			SELECT message FROM thread_copies WHERE tenant = $1 AND thread = $2 AND dk = $3
			LIMIT 1`, tenant, thread, dk)
	}
}

// store queues the writes of a new message.
func (o *commitOp) store(p *pipe) bool {
	in := o.in
	m := in.Message
	m.ID, m.Candidate, m.Received = o.id, o.th.Candidate, o.now
	m.Mailboxes = nil
	m.AddMailbox(in.Mailbox)
	if m.InternetMessageID == "" {
		// No usable Message-ID: a synthetic one marks it (never indexed
		// for matching); the digest in the key de-duplicates it.
		m.InternetMessageID = fmt.Sprintf("no-id.%d%s", m.ID, store.SyntheticDomain)
	}
	m.Raw, m.Size = "", 0
	if in.Raw != nil {
		m.Raw, m.Size = rawPrefix+strconv.FormatInt(o.blob, 10), int64(len(o.body))
		p.exec("INSERT INTO raw_blobs (id, bytes) VALUES ($1, $2)", o.blob, o.body)
	}
	// The thread is not rewritten: its LastActivity is read from its
	// newest message (selectThread).
	mdata, err := encode(&m)
	if err == nil {
		p.exec(`INSERT INTO messages (tenant, id, thread, direction, status, sent_by, msgid, received, data)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
			m.Tenant, m.ID, m.Thread, m.Direction, m.Status, m.SentBy, m.InternetMessageID, m.Received, mdata)
		if !store.Synthetic(m.InternetMessageID) {
			if m.InternetMessageID != o.dk() { // the same key was noted in step 1
				p.note(o.s, m.Tenant, m.InternetMessageID)
			}
			p.exec("INSERT INTO msgids (tenant, msgid, thread, message) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
				m.Tenant, m.InternetMessageID, m.Thread, m.ID)
		}
		err = o.event(p, &m)
	}
	if err != nil {
		p.fail(err)
	}
	*o.res = store.CommitResult{Decision: store.Stored, Ref: store.Ref{Thread: o.th.ID, Message: m.ID}}
	o.final = true
	return true
}

// event queues message.received with the new message's ids.
func (o *commitOp) event(p *pipe, m *store.Message) error {
	if o.in.Event == nil {
		return nil
	}
	data := make(map[string]any, len(o.in.Event)+3)
	for k, v := range o.in.Event {
		data[k] = v
	}
	data["message_id"] = store.MessageRef(m.ID)
	data["thread_id"] = store.ThreadRef(o.th.ID)
	data["candidate"] = o.th.Candidate
	b, err := json.Marshal(data)
	if err != nil {
		return err
	}
	p.exec(`INSERT INTO outbox (tenant, type, created, state, next_attempt, data) VALUES ($1, 'message.received', $2, 'pending', $2, $3)`,
		m.Tenant, o.now, b)
	return nil
}
