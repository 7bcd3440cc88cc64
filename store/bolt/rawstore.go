package bolt

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	bolt "go.etcd.io/bbolt"

	"syncrelay/store"
)

// Raw bytes and the records that own them.
//
// Every locator a committed record holds is indexed to its owner, so that
// removal frees exactly that record's bytes (no scan, no reference count:
// nothing is shared) and compaction can move a segment's live records:
//
//	segments     seg u64        -> end u64 (committed end), live u64 (bytes referenced)
//	segment_recs seg u64 off u64 -> owner key
//	big_files    name           -> owner key
//
// An owner key is 'm' or 'q' followed by the message's or quarantined
// message's key (tenant/u64) in its bucket.

var (
	bSegs     = []byte("segments")
	bSegRecs  = []byte("segment_recs")
	bBigFiles = []byte("big_files")
)

const (
	ownerMessage    = 'm'
	ownerQuarantine = 'q'
)

var errSegmentGone = errors.New("store: raw bytes were written to a segment that compaction removed before the commit")

func ownerKey(kind byte, tenant string, id uint64) []byte {
	return append([]byte{kind}, keyU64(tenant, id)...)
}

func segRecKey(seg uint64, off int64) []byte {
	b := make([]byte, 16)
	binary.BigEndian.PutUint64(b, seg)
	binary.BigEndian.PutUint64(b[8:], uint64(off))
	return b
}

type segStat struct{ end, live int64 }

func getSegStat(b *bolt.Bucket, seg uint64) (segStat, bool) {
	v := b.Get(putU64(seg))
	if len(v) != 16 {
		return segStat{}, false
	}
	return segStat{int64(binary.BigEndian.Uint64(v)), int64(binary.BigEndian.Uint64(v[8:]))}, true
}

func putSegStat(b *bolt.Bucket, seg uint64, st segStat) error {
	v := make([]byte, 16)
	binary.BigEndian.PutUint64(v, uint64(st.end))
	binary.BigEndian.PutUint64(v[8:], uint64(st.live))
	return b.Put(putU64(seg), v)
}

// writeRaw stores raw's bytes where their size says (segment log or a file
// of their own) and returns the locator and size. The bytes become durable
// with the commit that links them (the commit loop flushes the segment
// log before every transaction; large files are durable already).
func (s *Store) writeRaw(raw *Raw) (string, int64, error) {
	if raw == nil {
		return "", 0, nil
	}
	if s.segs == nil {
		return "", 0, errors.New("store: opened read-only")
	}
	n := int64(len(raw.Head)) + raw.Size
	if raw.Size >= 0 && n <= largeMessage {
		loc, err := s.segs.append(raw.Head, raw.Body, raw.Size)
		return loc, n, err
	}
	loc, err := s.big.put(raw.Head, raw.Body, raw.Size)
	if err != nil {
		return "", 0, err
	}
	if raw.Size < 0 {
		f, err := s.big.open(strings.TrimPrefix(loc, "f:"))
		if err != nil {
			return "", 0, err
		}
		n = f.Size()
		f.Close()
	}
	return loc, n, nil
}

// errSegmentSyncFailed refuses a record whose bytes are in a segment that
// a flush failed on: the kernel may have dropped them with the failed
// flush's pages, and a later flush's success does not say they are on disk.
var errSegmentSyncFailed = errors.New("store: the raw bytes' segment failed an fdatasync; write them again")

// linkNew is linkRaw for bytes written by this process and committed
// through the group commit: it refuses bytes in a segment a flush failed
// on. Its requests run after every earlier batch's flush has ended, so a
// failure is seen here; their own batch's failed flush fails them all.
func (s *Store) linkNew(tx *bolt.Tx, loc string, owner []byte) error {
	if l, ok := parseSegLoc(loc); ok {
		if err := s.segs.flushFailed(l.seg); err != nil {
			// The batch's own flush may fail while its requests run: either
			// way the request fails with what the flush said.
			return fmt.Errorf("%w (%w)", errSegmentSyncFailed, err)
		}
	}
	return linkRaw(tx, loc, owner)
}

// linkRaw records in tx that owner holds loc.
func linkRaw(tx *bolt.Tx, loc string, owner []byte) error {
	if l, ok := parseSegLoc(loc); ok {
		sb := tx.Bucket(bSegs)
		st, ok := getSegStat(sb, l.seg)
		if !ok {
			return errSegmentGone
		}
		st.end = max(st.end, l.off+l.n)
		st.live += l.n
		if err := putSegStat(sb, l.seg, st); err != nil {
			return err
		}
		return tx.Bucket(bSegRecs).Put(segRecKey(l.seg, l.off), owner)
	}
	if name, ok := strings.CutPrefix(loc, "f:"); ok {
		return tx.Bucket(bBigFiles).Put([]byte(name), owner)
	}
	return nil // "" (no raw copy) or a schema-1 address during migration
}

// unlinkRaw records in tx that loc's owner gives it up, and returns what
// to delete once tx is committed (a large message's file).
func unlinkRaw(tx *bolt.Tx, loc string) (bigName string, err error) {
	if l, ok := parseSegLoc(loc); ok {
		k := segRecKey(l.seg, l.off)
		rb := tx.Bucket(bSegRecs)
		if rb.Get(k) == nil {
			return "", nil
		}
		if err := rb.Delete(k); err != nil {
			return "", err
		}
		sb := tx.Bucket(bSegs)
		if st, ok := getSegStat(sb, l.seg); ok {
			st.live = max(0, st.live-l.n)
			return "", putSegStat(sb, l.seg, st)
		}
		return "", nil
	}
	if name, ok := strings.CutPrefix(loc, "f:"); ok {
		return name, tx.Bucket(bBigFiles).Delete([]byte(name))
	}
	return "", nil
}

// OpenRaw opens the bytes behind a record's Raw locator.
func (s *Store) OpenRaw(ctx context.Context, loc string) (RawFile, error) {
	if l, ok := parseSegLoc(loc); ok {
		if s.segs == nil {
			return s.openSegReadOnly(l)
		}
		return s.segs.open(l)
	}
	if name, ok := strings.CutPrefix(loc, "f:"); ok {
		return s.big.open(name)
	}
	f, err := s.raw.open(loc) // schema 1
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &fileRaw{File: f, size: fi.Size()}, nil
}

// openSegReadOnly reads a record from a store opened read-only (no segment
// log: the owning daemon may be appending to the files).
func (s *Store) openSegReadOnly(l segLocation) (RawFile, error) {
	f, err := os.Open(s.segPath(l.seg))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("raw %s: %w", l.String(), ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	return &sectionFile{SectionReader: newSection(f, l), f: f}, nil
}

// CollectOrphans removes large-message files that no committed record
// names (left by a crash between the write and the commit) and stale temp
// files. Orphaned segment bytes are handled when the segment log opens.
func (s *Store) CollectOrphans(ctx context.Context) (int, error) {
	if err := os.RemoveAll(s.big.tmp); err != nil {
		return 0, err
	}
	names, err := s.big.names()
	if err != nil {
		return 0, err
	}
	n := 0
	for _, name := range names {
		var owned bool
		if err := s.db.View(func(tx *bolt.Tx) error {
			owned = tx.Bucket(bBigFiles).Get([]byte(name)) != nil
			return nil
		}); err != nil {
			return n, err
		}
		if !owned {
			if err := s.big.remove(name); err != nil {
				return n, err
			}
			n++
		}
	}
	return n, nil
}

// committedSegments reads the segments table: id -> committed end.
func (s *Store) committedSegments() (map[uint64]int64, error) {
	out := map[uint64]int64{}
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bSegs)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			if len(k) == 8 && len(v) == 16 {
				out[getU64(k)] = int64(binary.BigEndian.Uint64(v))
			}
			return nil
		})
	})
	return out, err
}

// registerSegment records a new, empty segment (before it is written to).
func (s *Store) registerSegment(id uint64) error {
	return s.db.Update(func(tx *bolt.Tx) error {
		return putSegStat(tx.Bucket(bSegs), id, segStat{})
	})
}

func (s *Store) segPath(id uint64) string { return s.segDir() + "/" + segName(id) }

func (s *Store) segDir() string { return s.dir + "/raw/seg" }

func newSection(f *os.File, l segLocation) *io.SectionReader {
	return io.NewSectionReader(f, l.off, l.n)
}

// sectionFile is a RawFile over part of a file it owns.
type sectionFile struct {
	*io.SectionReader
	f *os.File
}

func (s *sectionFile) Close() error { return s.f.Close() }

// DryRun returns a scratch copy of the store whose writes vanish on Close,
// so the production pipeline can run against today's data without changing
// it (replay). Records of the copy keep their locators, but their bytes are
// not copied: reading them gives ErrNotFound.
func (s *Store) DryRun(ctx context.Context) (store.Store, error) {
	tmp, err := os.MkdirTemp("", "syncrelay-dryrun-")
	if err != nil {
		return nil, err
	}
	err = s.db.View(func(tx *bolt.Tx) error { return tx.CopyFile(tmp+"/syncrelay.db", 0o600) })
	if err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("store: dry run: snapshot: %w", err)
	}
	d, err := Open(tmp, Options{Scratch: true, Now: s.now, CompactNow: true})
	if err != nil {
		os.RemoveAll(tmp)
		return nil, err
	}
	d.cleanup = func() { os.RemoveAll(tmp) }
	return d, nil
}
