package bolt

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Compaction gives the bytes of removed and expired messages back to the
// file system: every sealed segment holding bytes nobody refers to has its
// live records copied to the active segment (through the ordinary append
// and group commit, so each move is as durable as a new message) and is
// then deleted. The daemon runs it every hour (SPEC §11: removed bytes are
// gone within 24 hours); `syncrelay compact` runs it on a stopped store.
//
// A segment is only taken once it has been sealed for compactGrace, so
// that sessions that reserved space in it just before it was sealed have
// committed. Should one still commit after the segment was dropped, its
// commit fails (errSegmentGone: the segment is no longer registered) and
// the sender is asked to retry: nothing acknowledged points at lost bytes.

// compactGrace is how long a segment stays sealed before compaction may
// take it.
const compactGrace = time.Minute

const compactChunk = 128

// Compact frees the bytes of removed and expired messages.
func (s *Store) Compact(ctx context.Context) (CompactStats, error) {
	var st CompactStats
	if s.segs == nil {
		return st, errors.New("store: opened read-only")
	}
	s.compactMu.Lock()
	defer s.compactMu.Unlock()

	// The active segment is sealed when it holds dead bytes, so that the
	// next pass (or this one, for a store nobody writes to) can take it.
	if id, ok := s.segs.activeID(); ok {
		if stat, _ := s.segStat(id); stat.live < stat.end {
			s.segs.seal()
		}
	}
	for _, id := range s.segs.sealedBefore(s.now().Add(-s.grace)) {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		stat, ok := s.segStat(id)
		if !ok || (stat.live == stat.end && stat.end > 0) {
			continue // all live (or not registered: nothing committed to it)
		}
		// Dead bytes to free, or an empty segment (registered at a start
		// that stored nothing before the next): either way it goes.
		moved, err := s.compactSegment(ctx, id)
		st.Moved += moved
		if err != nil {
			return st, fmt.Errorf("store: compact segment %s: %w", segName(id), err)
		}
		st.Segments++
		st.FreedBytes += stat.end - stat.live
	}
	return st, nil
}

func (s *Store) segStat(id uint64) (segStat, bool) {
	var st segStat
	var ok bool
	_ = s.db.View(func(tx *bolt.Tx) error {
		st, ok = getSegStat(tx.Bucket(bSegs), id)
		return nil
	})
	return st, ok
}

// compactSegment moves seg's live records and deletes it.
func (s *Store) compactSegment(ctx context.Context, seg uint64) (int, error) {
	moved := 0
	for {
		recs, err := s.segOwners(seg, compactChunk)
		if err != nil {
			return moved, err
		}
		if len(recs) == 0 {
			break
		}
		n, err := s.moveRecords(ctx, recs)
		moved += n
		if err != nil {
			return moved, err
		}
	}
	// Nothing refers to the segment any more: unregister it, then delete
	// the file (a backup that pinned it keeps its own link).
	err := s.group(ctx, func(tx *bolt.Tx) error {
		prefix := putU64(seg)
		if k, _ := tx.Bucket(bSegRecs).Cursor().Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) {
			return errors.New("a record was linked to the segment while it was compacted")
		}
		return tx.Bucket(bSegs).Delete(prefix)
	})
	if err != nil {
		return moved, err
	}
	return moved, s.segs.drop(seg)
}

// segRec is one entry of the segment index.
type segRec struct {
	key, owner []byte
}

// segOwners returns up to limit index entries of records in seg.
func (s *Store) segOwners(seg uint64, limit int) ([]segRec, error) {
	var recs []segRec
	err := s.db.View(func(tx *bolt.Tx) error {
		prefix := putU64(seg)
		c := tx.Bucket(bSegRecs).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(recs) < limit; k, v = c.Next() {
			recs = append(recs, segRec{key: append([]byte(nil), k...), owner: append([]byte(nil), v...)})
		}
		return nil
	})
	return recs, err
}

type relocation struct {
	owner    []byte
	old, new string
}

// moveRecords copies the bytes of the given owners to the active segment
// and switches each owner to its new locator in one group commit. An owner
// whose locator changed meanwhile (removed) keeps what it has; the copy is
// then dead bytes of the active segment.
func (s *Store) moveRecords(ctx context.Context, recs []segRec) (int, error) {
	var moves []relocation
	var stale [][]byte
	for _, r := range recs {
		loc, err := s.ownerRaw(r.owner)
		if err != nil {
			return 0, err
		}
		l, ok := parseSegLoc(loc)
		if !ok || !bytes.Equal(segRecKey(l.seg, l.off), r.key) {
			stale = append(stale, r.key) // the owner holds other bytes now
			continue
		}
		owner := r.owner
		f, err := s.segs.open(l)
		if err != nil {
			return 0, err
		}
		nloc, err := s.segs.append(nil, f, l.n)
		f.Close()
		if err != nil {
			return 0, err
		}
		if RawSum(nloc) != l.sum {
			return 0, fmt.Errorf("segment record %s does not hash to its recorded sum (damaged)", loc)
		}
		moves = append(moves, relocation{owner: owner, old: loc, new: nloc})
	}
	n := 0
	err := s.group(ctx, func(tx *bolt.Tx) error {
		n = 0
		for _, mv := range moves {
			b, k := ownerBucket(tx, mv.owner)
			if b == nil {
				continue
			}
			v := b.Get(k)
			if v == nil {
				continue
			}
			cur, err := recordRaw(v)
			if err != nil {
				return err
			}
			if cur != mv.old {
				continue
			}
			if _, err := unlinkRaw(tx, mv.old); err != nil {
				return err
			}
			if err := s.linkNew(tx, mv.new, mv.owner); err != nil {
				return err
			}
			data, err := withRaw(v, mv.new)
			if err != nil {
				return err
			}
			if err := b.Put(k, data); err != nil {
				return err
			}
			n++
		}
		// An index entry whose owner is gone or holds other bytes would
		// keep the segment forever: drop it.
		for _, k := range stale {
			if err := tx.Bucket(bSegRecs).Delete(k); err != nil {
				return err
			}
		}
		for _, mv := range moves {
			if l, ok := parseSegLoc(mv.old); ok {
				if err := tx.Bucket(bSegRecs).Delete(segRecKey(l.seg, l.off)); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return n, err
}

// ownerRaw returns the locator an owner's record holds.
func (s *Store) ownerRaw(owner []byte) (string, error) {
	var loc string
	err := s.db.View(func(tx *bolt.Tx) error {
		b, k := ownerBucket(tx, owner)
		if b == nil {
			return nil
		}
		v := b.Get(k)
		if v == nil {
			return nil
		}
		var err error
		loc, err = recordRaw(v)
		return err
	})
	return loc, err
}

func ownerBucket(tx *bolt.Tx, owner []byte) (*bolt.Bucket, []byte) {
	if len(owner) < 2 {
		return nil, nil
	}
	switch owner[0] {
	case ownerMessage:
		return tx.Bucket(bMessages), owner[1:]
	case ownerQuarantine:
		return tx.Bucket(bQuarantine), owner[1:]
	}
	return nil, nil
}
