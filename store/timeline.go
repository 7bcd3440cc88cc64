package store

import (
	"bytes"
	"context"
	"slices"
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
			if err := getJSON(mb, keyU64(tenant, getU64(k[len(prefix):])), &m); err != nil {
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

// ThreadInvolves reports whether a user took part in a thread's messages:
// sent one (SentBy), had one sent for them (SendFor), or appears in the
// From, To or Cc of one, or one reached syncrelay through their mailbox.
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
			if err := getJSON(mb, keyU64(tenant, getU64(k[len(prefix):])), &m); err != nil {
				return err
			}
			has := func(list []string) bool {
				return email != "" && slices.ContainsFunc(list, func(a string) bool { return strings.EqualFold(a, email) })
			}
			if (userID != "" && (m.SentBy == userID || m.SendFor == userID)) ||
				(email != "" && strings.EqualFold(m.From, email)) || has(m.To) || has(m.Cc) || has(m.Mailboxes) {
				found = true
			}
			return nil
		})
	})
	return found, err
}

func slicesClone(b []byte) []byte { return append([]byte(nil), b...) }
