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
	err = s.db.View(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bMessages)
		prefix := keyU64(tenant, thread)
		c := tx.Bucket(bThreadMsg).Cursor()
		start := append(slicesClone(prefix), putU64(after+1)...)
		for k, _ := c.Seek(start); k != nil && len(k) == len(prefix)+8 && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			var m Message
			if err := getMessage(mb, keyU64(tenant, getU64(k[len(prefix):])), &m); err != nil {
				return err
			}
			if m.Removed {
				continue
			}
			if len(msgs) == limit {
				more = true
				return nil
			}
			msgs = append(msgs, &m)
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
	err := s.db.View(func(tx *bolt.Tx) error {
		mb := tx.Bucket(bMessages)
		prefix := keyU64(tenant, thread)
		return forPrefix(tx.Bucket(bThreadMsg), prefix, func(k, _ []byte) error {
			if found || len(k) != len(prefix)+8 {
				return nil
			}
			var m Message
			if err := getMessage(mb, keyU64(tenant, getU64(k[len(prefix):])), &m); err != nil {
				return err
			}
			found = m.Involves(userID, email)
			return nil
		})
	})
	return found, err
}

func slicesClone(b []byte) []byte { return append([]byte(nil), b...) }
