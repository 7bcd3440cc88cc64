package bolt

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// CreateOutbound records a message syncrelay is about to send, and its new
// thread when th.ID is 0 (th.ID must otherwise name an existing thread of
// the tenant). The message is committed before the provider is called so
// that a sent copy or reply arriving first still matches.
func (s *Store) CreateOutbound(ctx context.Context, th *Thread, m *Message, mint MintFunc) error {
	now := s.now().UTC()
	var outTh Thread
	var outM Message
	err := s.group(ctx, func(tx *bolt.Tx) error {
		t := *th
		msg := *m
		tb := tx.Bucket(bThreads)
		if t.ID == 0 {
			seq, err := tb.NextSequence()
			if err != nil {
				return err
			}
			t.ID = seq
			t.Created = now
			if err := tx.Bucket(bCandThread).Put(key(t.Tenant, t.Candidate, string(putU64(t.ID))), nil); err != nil {
				return err
			}
		} else if err := getThreadRec(tb, keyU64(t.Tenant, t.ID), &t); err != nil {
			return fmt.Errorf("thread %d: %w", th.ID, err)
		}
		seq, err := tx.Bucket(bMessages).NextSequence()
		if err != nil {
			return err
		}
		msg.ID, msg.Thread, msg.Tenant, msg.Candidate = seq, t.ID, t.Tenant, t.Candidate
		msg.Direction = Outbound
		if msg.Received.IsZero() {
			msg.Received = now
		}
		id, conv := mint(t.ID, msg.ID)
		msg.InternetMessageID = strings.ToLower(id)
		// Every header issued stays indexed: a thread started before the
		// Thread-Index prefix was fixed gets the new header on its next
		// send, and replies to its earlier mail still carry the old one.
		if conv != "" && t.ConvIndex != conv {
			t.ConvIndex = conv
			if err := tx.Bucket(bConvIndex).Put(key(t.Tenant, conv), putU64(t.ID)); err != nil {
				return err
			}
		}
		for _, u := range []string{msg.SentBy, msg.SendFor} {
			if u != "" && !slices.Contains(t.Participants, u) {
				t.Participants = append(t.Participants, u)
			}
		}
		t.LastActivity = now
		if err := s.putMessage(tx, &msg, msg.InternetMessageID); err != nil {
			return err
		}
		if msg.Status != "" { // sent through the API: the status counts it
			if err := tx.Bucket(bSentIdx).Put(sentKey(msg.Tenant, msg.Received, msg.ID), nil); err != nil {
				return err
			}
		}
		if err := putThreadRec(tb, keyU64(t.Tenant, t.ID), &t); err != nil {
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

// putMessage stores a new message and indexes it: under its duplicate key
// dk on its thread, and under its Message-ID for matching rule 2.
func (s *Store) putMessage(tx *bolt.Tx, m *Message, dk string) error {
	if err := indexMsgID(tx, m.Tenant, m.InternetMessageID, Ref{Thread: m.Thread, Message: m.ID}); err != nil {
		return err
	}
	if dk != "" {
		if err := putIfAbsent(tx.Bucket(bMsgID), copyKey(m.Tenant, m.Thread, dk), putU64(m.ID)); err != nil {
			return err
		}
	}
	s.indexInThread(tx, m)
	return putMessageRec(tx.Bucket(bMessages), keyU64(m.Tenant, m.ID), m)
}

// UpdateMessage applies fn to a stored message and saves it; raw, when not
// nil, replaces the message's raw copy in the same commit.
func (s *Store) UpdateMessage(ctx context.Context, tenant string, id uint64, raw *Raw, fn func(*Message) error) (*Message, error) {
	loc, size, err := s.writeRaw(raw)
	if err != nil {
		return nil, err
	}
	var out Message
	var freed string
	err = s.group(ctx, func(tx *bolt.Tx) error {
		var m Message
		if err := getMessage(tx.Bucket(bMessages), keyU64(tenant, id), &m); err != nil {
			return fmt.Errorf("message %d: %w", id, err)
		}
		freed = ""
		if raw != nil {
			var err error
			if freed, err = unlinkRaw(tx, m.Raw); err != nil {
				return err
			}
			if err := s.linkNew(tx, loc, ownerKey(ownerMessage, tenant, id)); err != nil {
				return err
			}
			m.Raw, m.Size = loc, size
		}
		if err := fn(&m); err != nil {
			return err
		}
		out = m
		return putMessageRec(tx.Bucket(bMessages), keyU64(tenant, id), &m)
	})
	if err != nil {
		return nil, err
	}
	if freed != "" {
		_ = s.big.remove(freed)
	}
	return &out, nil
}

// Thread returns one thread of a tenant.
func (s *Store) Thread(ctx context.Context, tenant string, id uint64) (*Thread, error) {
	var t Thread
	err := s.viewThreads(func(tx *bolt.Tx) error {
		return s.getThread(tx, tenant, id, &t)
	})
	if err != nil {
		return nil, fmt.Errorf("thread %d: %w", id, err)
	}
	return &t, nil
}

// getThread reads a thread. Its LastActivity is the later of the record's
// (set when syncrelay sends on it) and the newest message's arrival: an
// inbound commit does not rewrite the thread record, which would dirty one
// more page per message in every batch.
// It may fail with errTailMoved (see viewThreads).
func (s *Store) getThread(tx *bolt.Tx, tenant string, id uint64, t *Thread) error {
	if err := getThreadRec(tx.Bucket(bThreads), keyU64(tenant, id), t); err != nil {
		return err
	}
	// The router reads the thread of every matched message: one Get for
	// the newest tail entry, not one per entry.
	mb := tx.Bucket(bMessages)
	newest, err := s.tail.newestAfter(tenant, id, mergedMark(tx), func(m uint64) bool { return mb.Get(keyU64(tenant, m)) != nil })
	if err != nil {
		return err
	}
	if newest == 0 {
		prefix := keyU64(tenant, id)
		c := tx.Bucket(bThreadMsg).Cursor()
		k, _ := c.Seek(append(slicesClone(prefix), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff))
		if k == nil {
			k, _ = c.Last()
		} else {
			k, _ = c.Prev()
		}
		if k == nil || len(k) != len(prefix)+8 || !bytes.HasPrefix(k, prefix) {
			return nil
		}
		newest = getU64(k[len(prefix):])
	}
	var m Message
	if err := getMessage(mb, keyU64(tenant, newest), &m); err == nil && m.Received.After(t.LastActivity) {
		t.LastActivity = m.Received
	}
	return nil
}

// UpdateThread applies fn to a stored thread and saves it.
func (s *Store) UpdateThread(ctx context.Context, tenant string, id uint64, fn func(*Thread) error) (*Thread, error) {
	var out Thread
	err := s.db.Update(func(tx *bolt.Tx) error {
		// No merge can commit while this transaction is open (one writer
		// at a time), so getThread cannot meet errTailMoved here.
		if err := s.getThread(tx, tenant, id, &out); err != nil {
			return fmt.Errorf("thread %d: %w", id, err)
		}
		if err := fn(&out); err != nil {
			return err
		}
		return putThreadRec(tx.Bucket(bThreads), keyU64(tenant, id), &out)
	})
	if err != nil {
		return nil, err
	}
	return &out, nil
}

// ThreadByConvIndex finds the thread whose issued Thread-Index conversation
// header (hex) is conv.
func (s *Store) ThreadByConvIndex(ctx context.Context, tenant, conv string) (uint64, bool, error) {
	var id uint64
	err := s.db.View(func(tx *bolt.Tx) error {
		id = getU64(tx.Bucket(bConvIndex).Get(key(tenant, strings.ToLower(conv))))
		return nil
	})
	return id, id != 0, err
}

// LookupMsgID finds the message a Message-ID (without <>, domain lowercased)
// belongs to: one syncrelay issued, one it learned from a sent copy, or one
// it received (the first message that held it, when copies on several
// threads carry it). The ids the store makes up for mail without one never
// match: anyone could write them in References.
func (s *Store) LookupMsgID(ctx context.Context, tenant, msgid string) (Ref, bool, error) {
	var r Ref
	var ok bool
	if Synthetic(msgid) {
		return r, false, nil
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		r, ok = parseRef(tx.Bucket(bMsgID).Get(key(tenant, msgid)))
		return nil
	})
	return r, ok, err
}

// Message returns one message.
func (s *Store) Message(ctx context.Context, tenant string, id uint64) (*Message, error) {
	var m Message
	err := s.db.View(func(tx *bolt.Tx) error {
		return getMessage(tx.Bucket(bMessages), keyU64(tenant, id), &m)
	})
	if err != nil {
		return nil, fmt.Errorf("message %d: %w", id, err)
	}
	return &m, nil
}

// ThreadMessages lists a thread's messages oldest first, removed ones included.
func (s *Store) ThreadMessages(ctx context.Context, tenant string, thread uint64) ([]*Message, error) {
	var out []*Message
	err := s.viewThreads(func(tx *bolt.Tx) error {
		out = nil
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
			out = append(out, &m)
		}
		return nil
	})
	return out, err
}

// CandidateThreads lists a candidate's threads, newest first.
func (s *Store) CandidateThreads(ctx context.Context, tenant, cand string) ([]*Thread, error) {
	var out []*Thread
	err := s.viewThreads(func(tx *bolt.Tx) error {
		out = nil
		prefix := key(tenant, cand, "")
		return forPrefix(tx.Bucket(bCandThread), prefix, func(k, _ []byte) error {
			var t Thread
			if err := s.getThread(tx, tenant, getU64(k[len(prefix):]), &t); err != nil {
				return err
			}
			out = append(out, &t)
			return nil
		})
	})
	slices.SortFunc(out, func(a, b *Thread) int { return b.LastActivity.Compare(a.LastActivity) })
	return out, err
}

// LookupMsgIDs is LookupMsgID for many ids in one read (References is
// read in full, so it may name a hundred thousand): the messages holding
// any of them, in the order of ids.
func (s *Store) LookupMsgIDs(ctx context.Context, tenant string, ids []string) ([]Ref, error) {
	var refs []Ref
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bMsgID)
		for _, id := range ids {
			if Synthetic(id) {
				continue
			}
			if r, ok := parseRef(b.Get(key(tenant, id))); ok {
				refs = append(refs, r)
			}
		}
		return nil
	})
	return refs, err
}

// LookupCopy finds the message on a thread that a copy with this
// Message-ID (or, without a usable one, this content digest) duplicates.
func (s *Store) LookupCopy(ctx context.Context, tenant string, thread uint64, msgid, digest string) (Ref, bool, error) {
	var r Ref
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		r, ok = threadCopy(tx, tenant, thread, DedupKey(msgid, digest))
		return nil
	})
	return r, ok, err
}

// CommitInbound durably records a matched message (group commit). The same
// Message-ID (or content, without one) on the same thread is stored once: a
// later copy only adds its mailbox, and a removed message stays removed. A
// copy on another thread is another message and never changes this one.
func (s *Store) CommitInbound(ctx context.Context, in *Incoming) (CommitResult, error) {
	var res CommitResult
	tenant := in.Message.Tenant
	now := s.now().UTC()
	loc, size, err := s.writeRaw(in.Raw)
	if err != nil {
		return res, err
	}
	err = s.group(ctx, func(tx *bolt.Tx) error {
		ib := tx.Bucket(bMsgID)
		mb := tx.Bucket(bMessages)
		if in.Learn != nil {
			var m Message
			if err := getMessage(mb, keyU64(tenant, in.Learn.Message), &m); err != nil {
				return fmt.Errorf("sent message %d: %w", in.Learn.Message, err)
			}
			id := in.Message.InternetMessageID
			held, taken := parseRef(ib.Get(key(tenant, id)))
			// An id another message already holds is no provider-assigned
			// id of this one: learning it would tie two threads together.
			if id != "" && !Synthetic(id) && id != m.InternetMessageID && !slices.Contains(m.LearnedIDs, id) && (!taken || held == *in.Learn) {
				m.LearnedIDs = append(m.LearnedIDs, id)
				if err := indexMsgID(tx, tenant, id, *in.Learn); err != nil {
					return err
				}
				if err := putIfAbsent(tx.Bucket(bMsgID), copyKey(tenant, in.Learn.Thread, id), putU64(in.Learn.Message)); err != nil {
					return err
				}
			}
			m.AddMailbox(in.Mailbox)
			res = CommitResult{Decision: Duplicate, Ref: *in.Learn, Removed: m.Removed}
			return putMessageRec(mb, keyU64(tenant, m.ID), &m)
		}
		dk := DedupKey(in.Message.InternetMessageID, in.Digest)
		if ref, ok := threadCopy(tx, tenant, in.Message.Thread, dk); ok {
			var m Message
			if err := getMessage(mb, keyU64(tenant, ref.Message), &m); err != nil {
				return fmt.Errorf("indexed message %d: %w", ref.Message, err)
			}
			m.AddMailbox(in.Mailbox)
			res = CommitResult{Decision: Duplicate, Ref: ref, Removed: m.Removed}
			return putMessageRec(mb, keyU64(tenant, m.ID), &m)
		}
		var th Thread
		if err := getThreadRec(tx.Bucket(bThreads), keyU64(tenant, in.Message.Thread), &th); err != nil {
			return fmt.Errorf("thread %d: %w", in.Message.Thread, err)
		}
		seq, err := mb.NextSequence()
		if err != nil {
			return err
		}
		m := in.Message
		m.ID, m.Candidate, m.Received = seq, th.Candidate, now
		m.Raw, m.Size = loc, size
		if err := s.linkNew(tx, loc, ownerKey(ownerMessage, tenant, m.ID)); err != nil {
			return err
		}
		m.Mailboxes = nil
		m.AddMailbox(in.Mailbox)
		if m.InternetMessageID == "" {
			// No usable Message-ID: a synthetic one marks it (never
			// indexed for matching); the digest in dk de-duplicates it.
			m.InternetMessageID = fmt.Sprintf("no-id.%d%s", m.ID, SyntheticDomain)
		}
		if err := s.putMessage(tx, &m, dk); err != nil {
			return err
		}
		if in.Event != nil {
			data := map[string]any{}
			for k, v := range in.Event {
				data[k] = v
			}
			data["message_id"] = MessageRef(m.ID)
			data["thread_id"] = ThreadRef(th.ID)
			data["candidate"] = th.Candidate
			if err := s.enqueue(tx, tenant, "message.received", data, now); err != nil {
				return err
			}
		}
		res = CommitResult{Decision: Stored, Ref: Ref{Thread: th.ID, Message: m.ID}}
		return nil
	})
	return res, err
}

// MarkBounced records a DSN against a sent message and enqueues
// message.bounced. It reports already=true, and raises no event, when the
// message was already marked with the same status (a redelivered DSN).
func (s *Store) MarkBounced(ctx context.Context, tenant string, id uint64, status, diag string) (already bool, err error) {
	now := s.now().UTC()
	err = s.group(ctx, func(tx *bolt.Tx) error {
		mb := tx.Bucket(bMessages)
		var m Message
		if err := getMessage(mb, keyU64(tenant, id), &m); err != nil {
			return fmt.Errorf("message %d: %w", id, err)
		}
		already = m.Bounced && m.BounceStatus == status
		m.Bounced, m.BounceStatus, m.BounceDiagnostic = true, status, diag
		if err := putMessageRec(mb, keyU64(tenant, id), &m); err != nil {
			return err
		}
		if already {
			return nil // a second copy of the same DSN raises no second event
		}
		return s.enqueue(tx, tenant, "message.bounced", map[string]any{
			"message_id": MessageRef(m.ID), "thread_id": ThreadRef(m.Thread), "candidate": m.Candidate,
			"status": status, "diagnostic": diag,
		}, now)
	})
	return already, err
}

// RemoveMessage takes a message off the profile: the record becomes a
// tombstone (so a later copy does not bring it back) and gives up its raw
// bytes: a large message's file is deleted after the commit, segment bytes
// at the next compaction.
func (s *Store) RemoveMessage(ctx context.Context, tenant string, id uint64) error {
	var freed string
	err := s.group(ctx, func(tx *bolt.Tx) error {
		mb := tx.Bucket(bMessages)
		var m Message
		if err := getMessage(mb, keyU64(tenant, id), &m); err != nil {
			return fmt.Errorf("message %d: %w", id, err)
		}
		var err error
		if freed, err = unlinkRaw(tx, m.Raw); err != nil {
			return err
		}
		m.Removed, m.RemovedAt, m.Raw = true, s.now().UTC(), ""
		return putMessageRec(mb, keyU64(tenant, id), &m)
	})
	if err != nil {
		return err
	}
	if freed != "" {
		return s.big.remove(freed)
	}
	return nil
}

// copyKey is the msgid-bucket key of a thread's duplicate key: next to the
// tenant-wide entry of the same id. Normalised Message-IDs hold no control
// characters, so the 0x00 cannot be part of an id.
func copyKey(tenant string, thread uint64, dk string) []byte {
	return binary.BigEndian.AppendUint64(append(key(tenant, dk), 0), thread)
}

// threadCopy finds the message of a thread with duplicate key dk.
func threadCopy(tx *bolt.Tx, tenant string, thread uint64, dk string) (Ref, bool) {
	if dk == "" {
		return Ref{}, false
	}
	if id := getU64(tx.Bucket(bMsgID).Get(copyKey(tenant, thread, dk))); id != 0 {
		return Ref{Thread: thread, Message: id}, true
	}
	// Stores written before duplicates were per thread only have the
	// tenant-wide index, whose ids were then unique within the tenant.
	if ref, ok := parseRef(tx.Bucket(bMsgID).Get(key(tenant, dk))); ok && ref.Thread == thread {
		return ref, true
	}
	return Ref{}, false
}

// indexMsgID records msgid for matching rule 2 unless a message already
// holds it: a later copy (on another thread) never takes an id over.
func indexMsgID(tx *bolt.Tx, tenant, msgid string, ref Ref) error {
	if msgid == "" || Synthetic(msgid) {
		return nil
	}
	return putIfAbsent(tx.Bucket(bMsgID), key(tenant, msgid), refBytes(ref))
}

func putIfAbsent(b *bolt.Bucket, k, v []byte) error {
	if b.Get(k) != nil {
		return nil
	}
	return b.Put(k, v)
}

func refBytes(r Ref) []byte { return append(putU64(r.Thread), putU64(r.Message)...) }

func parseRef(b []byte) (Ref, bool) {
	if len(b) != 16 {
		return Ref{}, false
	}
	return Ref{Thread: getU64(b[:8]), Message: getU64(b[8:])}, true
}

// --- outbox ---

func (s *Store) enqueue(tx *bolt.Tx, tenant, typ string, data any, now time.Time) error {
	ob := tx.Bucket(bOutbox)
	seq, err := ob.NextSequence()
	if err != nil {
		return err
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return fmt.Errorf("event %s: %w", typ, err)
	}
	return putEvent(ob, seq, &eventRec{ID: eventID(seq), Seq: seq, Type: typ, Created: now, Tenant: tenant,
		Data: raw, NextAttempt: now, State: EventPending})
}

// Enqueue adds an event to the durable outbox on its own.
func (s *Store) Enqueue(ctx context.Context, tenant, typ string, data any) error {
	now := s.now().UTC()
	return s.group(ctx, func(tx *bolt.Tx) error { return s.enqueue(tx, tenant, typ, data, now) })
}

// Events lists outbox events in order, optionally only those in state.
func (s *Store) Events(ctx context.Context, state string) ([]*Event, error) {
	var out []*Event
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bOutbox).ForEach(func(k, v []byte) error {
			var r eventRec
			if err := decodeEvent(v, &r); err != nil {
				return err
			}
			if state != "" && r.State != state {
				return nil
			}
			e := r.event()
			// As before the binary form: Data as JSON decodes it.
			e.Data = nil
			if len(r.Data) > 0 {
				if err := json.Unmarshal(r.Data, &e.Data); err != nil {
					return err
				}
			}
			out = append(out, e)
			return nil
		})
	})
	return out, err
}

// --- counters and forwarding health ---

func hourKey(t time.Time) string { return t.UTC().Format("2006010215") }

// Count records one decision for a tenant (buffered; see counterBuf).
func (s *Store) Count(tenant, decision, reason string) {
	if s.counts == nil {
		return
	}
	now := s.now()
	k := tenant + "/" + hourKey(now) + "/" + decision + "/" + reason
	s.counts.mu.Lock()
	s.counts.m[k]++
	s.counts.last[tenant] = now.UTC()
	s.counts.mu.Unlock()
}

func (s *Store) flushCounters() error {
	if s.counts == nil {
		return nil
	}
	s.counts.mu.Lock()
	m, last := s.counts.m, s.counts.last
	s.counts.m, s.counts.last = map[string]uint64{}, map[string]time.Time{}
	s.counts.mu.Unlock()
	if len(m) == 0 && len(last) == 0 {
		return nil
	}
	return s.db.Update(func(tx *bolt.Tx) error {
		cb := tx.Bucket(bCounters)
		for k, n := range m {
			if err := cb.Put([]byte(k), putU64(getU64(cb.Get([]byte(k)))+n)); err != nil {
				return err
			}
		}
		kv := tx.Bucket(bKV)
		for t, at := range last {
			if err := kv.Put(key("last_seen", t), []byte(at.Format(time.RFC3339Nano))); err != nil {
				return err
			}
		}
		return nil
	})
}

// Counts returns a tenant's decision counts ("decision/reason" -> n) since
// the given time (hour granularity), including unflushed ones, and the time
// of the last forwarded message (zero if never).
func (s *Store) Counts(ctx context.Context, tenant string, since time.Time) (map[string]uint64, time.Time, error) {
	out := map[string]uint64{}
	var last time.Time
	from := hourKey(since)
	add := func(k string, n uint64) {
		rest, ok := strings.CutPrefix(k, tenant+"/")
		if !ok || len(rest) < 11 || rest[:10] < from {
			return
		}
		out[rest[11:]] += n
	}
	err := s.db.View(func(tx *bolt.Tx) error {
		// Keys are tenant/hour/...: start at the window's first hour, so
		// the read is as long as the window, not as the tenant's history.
		c := tx.Bucket(bCounters).Cursor()
		prefix := []byte(tenant + "/")
		for k, v := c.Seek(append(slicesClone(prefix), from...)); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			add(string(k), getU64(v))
		}
		if v := tx.Bucket(bKV).Get(key("last_seen", tenant)); v != nil {
			last, _ = time.Parse(time.RFC3339Nano, string(v))
		}
		return nil
	})
	if s.counts != nil {
		s.counts.mu.Lock()
		for k, n := range s.counts.m {
			add(k, n)
		}
		if t, ok := s.counts.last[tenant]; ok && t.After(last) {
			last = t
		}
		s.counts.mu.Unlock()
	}
	return out, last, err
}

// FlushCounters writes buffered counters now (they are otherwise flushed
// every 10 s and at Close).
func (s *Store) FlushCounters(ctx context.Context) error { return s.flushCounters() }

// CommitStats counts this process's group commits (zero when read-only).
func (s *Store) CommitStats() CommitStats {
	if s.commits == nil {
		return CommitStats{}
	}
	return s.commits.Stats()
}
