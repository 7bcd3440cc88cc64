package bolt

import (
	"bytes"
	"context"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// ThreadMessagesPage lists up to limit messages of a thread that are on the
// profile (removed ones are skipped), oldest first, starting after message
// id after (0: from the start). more reports whether further messages
// follow.
func (s *Store) ThreadMessagesPage(ctx context.Context, tenant string, thread, after uint64, limit int) (msgs []*Message, more bool, err error) {
	err = s.viewThreads(func(tx *bolt.Tx) error {
		msgs, more = nil, false
		tail, err := s.tailIDs(tx, tenant, thread)
		if err != nil {
			return err
		}
		mb := tx.Bucket(bMessages)
		// take adds message id; false once the page is full.
		take := func(id uint64) (bool, error) {
			var m Message
			if err := getMessage(mb, keyU64(tenant, id), &m); err != nil {
				return false, err
			}
			if m.Removed {
				return true, nil
			}
			if len(msgs) == limit {
				more = true
				return false, nil
			}
			msgs = append(msgs, &m)
			return true, nil
		}
		prefix := keyU64(tenant, thread)
		c := tx.Bucket(bThreadMsg).Cursor()
		start := append(slicesClone(prefix), putU64(after+1)...)
		for k, _ := c.Seek(start); k != nil && len(k) == len(prefix)+8 && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if ok, err := take(getU64(k[len(prefix):])); !ok || err != nil {
				return err
			}
		}
		for _, id := range tail {
			if id <= after {
				continue
			}
			if ok, err := take(id); !ok || err != nil {
				return err
			}
		}
		return nil
	})
	return msgs, more, err
}

// ThreadInvolves reports whether a user took part in a thread, by
// syncrelay's own records only (SPEC §3 "Who sees a secret thread"): they
// sent a message on it through syncrelay (SentBy) or had one sent for them
// (SendFor), were in the To or Cc of a message sent through syncrelay, or
// sent one from their own mailbox that passed DKIM aligned with its From
// (AuthAligned). What a sender controls (X-Original-To, Delivered-To,
// Mailboxes, the To/Cc of other mail, a reused Message-ID) never counts.
// Removed messages count: the user was part of the conversation.
func (s *Store) ThreadInvolves(ctx context.Context, tenant string, thread uint64, userID, email string) (bool, error) {
	email = strings.ToLower(email)
	found := false
	err := s.viewThreads(func(tx *bolt.Tx) error {
		found = false
		ids, err := s.threadIDs(tx, tenant, thread)
		if err != nil {
			return err
		}
		mb := tx.Bucket(bMessages)
		for _, id := range ids {
			var m Message
			if err := getMessage(mb, keyU64(tenant, id), &m); err != nil {
				return err
			}
			if m.Involves(userID, email) {
				found = true
				return nil
			}
		}
		return nil
	})
	return found, err
}

func slicesClone(b []byte) []byte { return append([]byte(nil), b...) }
