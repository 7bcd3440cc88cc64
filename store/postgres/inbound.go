package postgres

import (
	"context"
	"fmt"
	"slices"
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
	err = s.group(ctx, threadKey(tenant, thread), func(ctx context.Context, tx pgx.Tx) error {
		var err error
		if in.Learn != nil {
			res, err = learn(ctx, tx, in)
			return err
		}
		res, err = s.commitNew(ctx, tx, in, body, now)
		return err
	})
	return res, err
}

// learn records a provider-assigned Message-ID of a sent message (its
// forwarded sent copy); no new message is stored.
func learn(ctx context.Context, tx pgx.Tx, in *store.Incoming) (store.CommitResult, error) {
	tenant, ref := in.Message.Tenant, *in.Learn
	m, err := lockMessage(ctx, tx, tenant, ref.Message)
	if err != nil {
		return store.CommitResult{}, fmt.Errorf("sent message: %w", err)
	}
	id := in.Message.InternetMessageID
	if id != "" && !synthetic(id) && id != m.InternetMessageID && !slices.Contains(m.LearnedIDs, id) {
		var held store.Ref
		err := tx.QueryRow(ctx, "SELECT thread, message FROM msgids WHERE tenant = $1 AND msgid = $2", tenant, id).Scan(&held.Thread, &held.Message)
		if err != nil && err != pgx.ErrNoRows {
			return store.CommitResult{}, err
		}
		// An id another message already holds is no provider-assigned id
		// of this one: learning it would tie two threads together.
		if err == pgx.ErrNoRows || held == ref {
			m.LearnedIDs = append(m.LearnedIDs, id)
			if err := indexMsgID(ctx, tx, tenant, id, ref); err != nil {
				return store.CommitResult{}, err
			}
			if _, err := claimCopy(ctx, tx, tenant, ref.Thread, id, ref.Message); err != nil {
				return store.CommitResult{}, err
			}
		}
	}
	addMailbox(m, in.Mailbox)
	return store.CommitResult{Decision: store.Duplicate, Ref: ref, Removed: m.Removed}, updateMessage(ctx, tx, m)
}

// duplicate adds a copy's mailbox to the message it duplicates.
func duplicate(ctx context.Context, tx pgx.Tx, tenant string, ref store.Ref, mbox string) (store.CommitResult, error) {
	m, err := lockMessage(ctx, tx, tenant, ref.Message)
	if err != nil {
		return store.CommitResult{}, fmt.Errorf("indexed %w", err)
	}
	addMailbox(m, mbox)
	return store.CommitResult{Decision: store.Duplicate, Ref: ref, Removed: m.Removed}, updateMessage(ctx, tx, m)
}

func (s *Store) commitNew(ctx context.Context, tx pgx.Tx, in *store.Incoming, body []byte, now time.Time) (store.CommitResult, error) {
	tenant := in.Message.Tenant
	var th store.Thread
	// Locking the thread serialises copies of one thread across nodes, so
	// the duplicate check below sees the other node's committed copy.
	if err := getJSON(ctx, tx, &th, "SELECT data FROM threads WHERE tenant = $1 AND id = $2 FOR UPDATE", tenant, in.Message.Thread); err != nil {
		return store.CommitResult{}, fmt.Errorf("thread %d: %w", in.Message.Thread, err)
	}
	m := in.Message
	if err := tx.QueryRow(ctx, "SELECT nextval('message_ids')").Scan(&m.ID); err != nil {
		return store.CommitResult{}, err
	}
	dk := dedupKey(m.InternetMessageID, in.Digest)
	if dk != "" {
		holder, err := claimCopy(ctx, tx, tenant, th.ID, dk, m.ID)
		if err != nil {
			return store.CommitResult{}, err
		}
		if holder != m.ID {
			return duplicate(ctx, tx, tenant, store.Ref{Thread: th.ID, Message: holder}, in.Mailbox)
		}
	}
	m.Candidate, m.Received = th.Candidate, now
	m.Mailboxes = nil
	addMailbox(&m, in.Mailbox)
	if m.InternetMessageID == "" {
		// No usable Message-ID: a synthetic one marks it (never indexed
		// for matching); the digest in dk de-duplicates it.
		m.InternetMessageID = fmt.Sprintf("no-id.%d%s", m.ID, syntheticDomain)
	}
	if in.Raw != nil {
		var err error
		if m.Raw, err = putRaw(ctx, tx, body); err != nil {
			return store.CommitResult{}, err
		}
		m.Size = int64(len(body))
	} else {
		m.Raw, m.Size = "", 0
	}
	// dk is already claimed above.
	if err := insertMessage(ctx, tx, &m, ""); err != nil {
		return store.CommitResult{}, err
	}
	th.LastActivity = now
	if err := putThread(ctx, tx, &th); err != nil {
		return store.CommitResult{}, err
	}
	if in.Event != nil {
		data := make(map[string]any, len(in.Event)+3)
		for k, v := range in.Event {
			data[k] = v
		}
		data["message_id"] = store.MessageRef(m.ID)
		data["thread_id"] = store.ThreadRef(th.ID)
		data["candidate"] = th.Candidate
		if err := enqueue(ctx, tx, tenant, "message.received", data, now); err != nil {
			return store.CommitResult{}, err
		}
	}
	return store.CommitResult{Decision: store.Stored, Ref: store.Ref{Thread: th.ID, Message: m.ID}}, nil
}
