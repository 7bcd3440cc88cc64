package bolt

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// The segment log keeps the raw bytes of small and medium messages
// (Dovecot's mdbox idea, measured in ../shared/design/storage.md): a
// session reserves a range at the end of the active segment file and
// pwrites its message there in parallel with other sessions, outside the
// commit loop; the loop then fdatasyncs each segment written since its
// last batch once, before the bbolt transaction that refers to the bytes.
// So a batch of kept messages costs one data flush plus bbolt's own,
// never a file, an fsync and a directory fsync per message, and a
// committed record never points at unsynced bytes.
//
// Bytes past a segment's committed end (a crash between the write and the
// commit, or a write whose commit failed) are never referred to: at open
// the file is truncated to its committed end, and appending always starts
// a new segment. Removed messages leave dead bytes that Compact gives back
// by moving the live messages of a segment and deleting its file.

const (
	// segmentMax is the size at which the active segment is sealed.
	segmentMax = 64 << 20
	// largeMessage is the size above which a message gets a file of its
	// own (bigDir): streaming it keeps memory flat, and a flush of its own
	// costs little next to its size.
	largeMessage = 1 << 20
)

// segLog is the directory of segment files, raw/seg/<16 hex digits>.
type segLog struct {
	dir string

	mu      sync.Mutex // allocation: active, nextID, files
	active  *segment
	nextID  uint64
	files   map[uint64]*segment
	dirFile *os.File
	// register durably records a new segment before anything is written to
	// it, so that commits can tell a new segment from a compacted one.
	register func(id uint64) error
	// now is the store's clock: seal times are compared with it by
	// Compact, so they must come from the same clock.
	now func() time.Time

	dmu   sync.Mutex // the segments written since the last flush
	dirty map[*segment]struct{}

	// pads are the alignment gaps (see pageAlign) that no commit has
	// counted as live yet, by segment. pmu is taken after mu, never
	// before, and nothing else is taken while it is held: the commit loop
	// reads pads while it holds bbolt's writer lock, which rotate waits
	// for while it holds mu.
	pmu  sync.Mutex
	pads map[uint64][]segPad

	// syncFile makes a segment's bytes durable: fdatasync, or a test's
	// stand-in that delays or fails it.
	syncFile func(*os.File) error

	// failed holds the ids of segments a flush failed on, with that
	// flush's error (uint64 → error). Not under mu: the commit loop reads
	// it while it holds bbolt's writer lock.
	failed sync.Map
}

type segment struct {
	id     uint64
	f      *os.File
	size   int64 // reserved end: the next append's offset (active segment)
	sealed time.Time

	readers int  // open RawFiles; guarded by segLog.mu
	gone    bool // deleted by compaction: close f when readers drop to 0
	// alignNext is set by a flush: the next reservation starts on a page.
	alignNext atomic.Bool
	// syncFailed is set by a failed flush: the next reservation seals the
	// segment and starts another.
	syncFailed atomic.Bool
}

// segPad is a gap of n bytes at off that the first reservation after a
// flush skipped to start on a page.
type segPad struct{ off, n int64 }

// pageAlign is the alignment of the first append after a flush. A flush
// leaves the segment's last page partly written and clean; the next
// append into it dirties it again, and so the page is written twice: 4 KiB
// more per batch (the partial page, measured with /proc/self/io). Starting
// the next batch on a fresh page writes each page once, for on average
// half a page of gap per batch in the file.
const pageAlign = 4096

func segName(id uint64) string { return fmt.Sprintf("%016x", id) }

func parseSegName(name string) (uint64, bool) {
	if len(name) != 16 {
		return 0, false
	}
	id, err := strconv.ParseUint(name, 16, 64)
	return id, err == nil
}

// openSegLog opens the segment files named by committed (id → committed
// end), truncating each to its end, and deletes files nobody committed to.
// A scratch store (a copy of the database alone) opens none: its new
// segments get ids above every committed one, and old records' bytes read
// as ErrNotFound.
func openSegLog(dir string, committed map[uint64]int64, scratch bool) (*segLog, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	l := &segLog{dir: dir, files: map[uint64]*segment{}, dirty: map[*segment]struct{}{}, pads: map[uint64][]segPad{}}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	for _, e := range ents {
		id, ok := parseSegName(e.Name())
		if !ok {
			continue
		}
		l.nextID = max(l.nextID, id+1)
		if _, ok := committed[id]; !ok && !scratch {
			// Created, maybe written, never committed to: an orphan.
			if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
				return nil, fmt.Errorf("store: remove orphan segment: %w", err)
			}
		}
	}
	for id, end := range committed {
		l.nextID = max(l.nextID, id+1)
		if scratch {
			continue
		}
		f, err := os.OpenFile(filepath.Join(dir, segName(id)), os.O_RDWR, 0)
		if err != nil {
			l.close()
			return nil, fmt.Errorf("store: segment %s: %w", segName(id), err)
		}
		fi, err := f.Stat()
		if err == nil && fi.Size() > end {
			err = f.Truncate(end)
		}
		if err == nil && fi.Size() < end {
			err = fmt.Errorf("is %d bytes, but committed records reach %d (the data dir was damaged)", fi.Size(), end)
		}
		if err != nil {
			f.Close()
			l.close()
			return nil, fmt.Errorf("store: segment %s: %w", segName(id), err)
		}
		// Sealed long ago: no session of this process can be writing to it.
		l.files[id] = &segment{id: id, f: f, size: end, sealed: time.Unix(1, 0)}
	}
	if l.dirFile, err = os.Open(dir); err != nil {
		l.close()
		return nil, fmt.Errorf("store: %w", err)
	}
	return l, nil
}

func (l *segLog) clock() time.Time {
	if l.now == nil {
		return time.Now()
	}
	return l.now()
}

func (l *segLog) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range l.files {
		s.f.Close()
	}
	l.files = map[uint64]*segment{}
	l.active = nil
	if l.dirFile != nil {
		l.dirFile.Close()
		l.dirFile = nil
	}
}

// reserve returns the segment and offset where n bytes go.
func (l *segLog) reserve(n int64) (*segment, int64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.files == nil || l.dirFile == nil {
		return nil, 0, ErrClosed
	}
	if l.active == nil || l.active.syncFailed.Load() || (l.active.size > 0 && l.active.size+n > segmentMax) {
		if err := l.rotate(); err != nil {
			return nil, 0, err
		}
	}
	s := l.active
	if s.alignNext.Swap(false) {
		if r := s.size % pageAlign; r != 0 {
			l.pmu.Lock()
			l.pads[s.id] = append(l.pads[s.id], segPad{off: s.size, n: pageAlign - r})
			l.pmu.Unlock()
			s.size += pageAlign - r
		}
	}
	off := s.size
	s.size += n
	return s, off, nil
}

// rotate seals the active segment and starts a new one. The new file and
// its directory entry are durable, and the segment registered, before any
// message is written to it.
func (l *segLog) rotate() error {
	if l.active != nil {
		l.active.sealed = l.clock()
		l.active = nil
	}
	id := l.nextID
	l.nextID++
	f, err := os.OpenFile(filepath.Join(l.dir, segName(id)), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("store: new segment: %w", err)
	}
	if err := l.dirFile.Sync(); err != nil {
		f.Close()
		os.Remove(f.Name())
		return fmt.Errorf("store: new segment: fsync dir: %w", err)
	}
	if l.register != nil {
		if err := l.register(id); err != nil {
			f.Close()
			os.Remove(f.Name())
			return fmt.Errorf("store: new segment: %w", err)
		}
	}
	s := &segment{id: id, f: f}
	l.files[id] = s
	l.active = s
	return nil
}

// seal ends the active segment (so compaction may take it).
func (l *segLog) seal() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.active != nil {
		l.active.sealed = l.clock()
		l.active = nil
	}
}

// append writes head followed by exactly size bytes of body to the log and
// returns the record's locator. The bytes are durable only after the next
// flush, which the commit loop does before committing the record.
func (l *segLog) append(head []byte, body io.Reader, size int64) (string, error) {
	n := int64(len(head)) + size
	s, off, err := l.reserve(n)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	bw := bufWriters.Get().(*bufio.Writer)
	bw.Reset(io.NewOffsetWriter(s.f, off))
	defer func() { bw.Reset(nil); bufWriters.Put(bw) }()
	w := io.MultiWriter(bw, h)
	if _, err := w.Write(head); err != nil {
		return "", fmt.Errorf("store: segment write: %w", err)
	}
	got, err := io.CopyN(w, body, size)
	if err == nil {
		err = bw.Flush()
	}
	if errors.Is(err, io.EOF) {
		err = fmt.Errorf("message ended after %d of %d bytes", got, size)
	}
	if err != nil {
		// The reserved range stays unreferenced: dead bytes for compaction.
		return "", fmt.Errorf("store: segment write: %w", err)
	}
	l.dmu.Lock()
	l.dirty[s] = struct{}{}
	l.dmu.Unlock()
	return segLoc(s.id, off, n, hex.EncodeToString(h.Sum(nil))), nil
}

// flush makes every append that returned before it durable (fdatasync of
// each segment written since the previous flush).
func (l *segLog) flush() error {
	l.dmu.Lock()
	if len(l.dirty) == 0 {
		l.dmu.Unlock()
		return nil
	}
	segs := make([]*segment, 0, len(l.dirty))
	for s := range l.dirty {
		segs = append(segs, s)
	}
	clear(l.dirty)
	l.dmu.Unlock()
	// Not l.mu: the commit loop waits for this flush while it holds
	// bbolt's writer lock, and rotate holds l.mu while it waits for that.
	for _, s := range segs {
		s.alignNext.Store(true)
	}
	var errs []error
	for _, s := range segs {
		syncFn := fdatasync
		if l.syncFile != nil {
			syncFn = l.syncFile
		}
		if err := syncFn(s.f); err != nil {
			err = fmt.Errorf("store: segment %s: fdatasync: %w", segName(s.id), err)
			errs = append(errs, err)
			// After a failed flush the kernel may have dropped the dirty
			// pages (fsyncgate): never append to this file again. Not
			// l.mu (see above): reserve seals it. Nor commit a record
			// whose bytes are in it (linkNew): bytes appended before this
			// flush but committed by a later batch may be among the
			// dropped pages, and the later flush would not say so.
			s.syncFailed.Store(true)
			l.failed.LoadOrStore(s.id, err)
		}
	}
	return errors.Join(errs...)
}

// flushFailed returns the error of the first flush of segment id that
// failed in this process, or nil.
func (l *segLog) flushFailed(id uint64) error {
	if err, ok := l.failed.Load(id); ok {
		return err.(error)
	}
	return nil
}

// padsBelow returns the uncounted gaps of segment id that lie below end
// (the segment's committed end): those a commit may count as live. A gap
// above it is not counted, so that it never hides the dead bytes of a
// removed record from compaction; a gap the records never pass is cut off
// with the rest of the file at the next Open.
func (l *segLog) padsBelow(id uint64, end int64) []segPad {
	l.pmu.Lock()
	defer l.pmu.Unlock()
	var out []segPad
	for _, p := range l.pads[id] {
		if p.off+p.n <= end {
			out = append(out, p)
		}
	}
	return out
}

// padsCounted forgets gaps a committed transaction counted as live.
func (l *segLog) padsCounted(id uint64, counted []segPad) {
	l.pmu.Lock()
	defer l.pmu.Unlock()
	if left := slices.DeleteFunc(l.pads[id], func(p segPad) bool { return slices.Contains(counted, p) }); len(left) > 0 {
		l.pads[id] = left
	} else {
		delete(l.pads, id)
	}
}

// paddedSegments lists the segments with uncounted gaps.
func (l *segLog) paddedSegments() []uint64 {
	l.pmu.Lock()
	defer l.pmu.Unlock()
	ids := make([]uint64, 0, len(l.pads))
	for id := range l.pads {
		ids = append(ids, id)
	}
	return ids
}

func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if serr != syscall.EINTR {
				return
			}
		}
	}); err != nil {
		return err
	}
	return serr
}

// open returns a reader of one record.
func (l *segLog) open(loc segLocation) (RawFile, error) {
	l.mu.Lock()
	s := l.files[loc.seg]
	if s == nil || s.gone {
		l.mu.Unlock()
		return nil, fmt.Errorf("raw %s: segment gone: %w", loc.String(), ErrNotFound)
	}
	s.readers++
	l.mu.Unlock()
	return &segReader{SectionReader: io.NewSectionReader(s.f, loc.off, loc.n), l: l, s: s}, nil
}

type segReader struct {
	*io.SectionReader
	l    *segLog
	s    *segment
	once sync.Once
}

func (r *segReader) Close() error {
	r.once.Do(func() {
		r.l.mu.Lock()
		defer r.l.mu.Unlock()
		r.s.readers--
		if r.s.gone && r.s.readers == 0 {
			r.s.f.Close()
		}
	})
	return nil
}

// drop deletes a segment's file (compaction; its records have moved).
func (l *segLog) drop(id uint64) error {
	l.mu.Lock()
	s := l.files[id]
	if s != nil {
		delete(l.files, id)
		s.gone = true
		if s.readers == 0 {
			s.f.Close()
		}
		if l.active == s {
			l.active = nil
		}
	}
	l.mu.Unlock()
	l.pmu.Lock()
	delete(l.pads, id)
	l.pmu.Unlock()
	err := os.Remove(filepath.Join(l.dir, segName(id)))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("store: remove segment: %w", err)
	}
	return nil
}

// sealedBefore lists the segments sealed before t, oldest first.
func (l *segLog) sealedBefore(t time.Time) []uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	var ids []uint64
	for id, s := range l.files {
		if s != l.active && !s.sealed.IsZero() && !s.sealed.After(t) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	return ids
}

func (l *segLog) activeID() (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.active == nil {
		return 0, false
	}
	return l.active.id, true
}

func (l *segLog) path(id uint64) string { return filepath.Join(l.dir, segName(id)) }

// --- locators ---
//
// Message.Raw and Quarantined.Raw hold an opaque locator:
//
//	s:<segment hex>:<offset>:<length>:<sha256 hex>   bytes in the segment log
//	f:<sha256 hex>-<random hex>                     a large message's own file (bigDir)
//	<sha256 hex>                                    schema 1 (a content-addressed file), migrated at open

type segLocation struct {
	seg    uint64
	off, n int64
	sum    string
}

func segLoc(seg uint64, off, n int64, sum string) string {
	return "s:" + segName(seg) + ":" + strconv.FormatInt(off, 10) + ":" + strconv.FormatInt(n, 10) + ":" + sum
}

func (l segLocation) String() string { return segLoc(l.seg, l.off, l.n, l.sum) }

func parseSegLoc(loc string) (segLocation, bool) {
	rest, ok := strings.CutPrefix(loc, "s:")
	if !ok {
		return segLocation{}, false
	}
	parts := strings.Split(rest, ":")
	if len(parts) != 4 {
		return segLocation{}, false
	}
	seg, ok := parseSegName(parts[0])
	off, err1 := strconv.ParseInt(parts[1], 10, 64)
	n, err2 := strconv.ParseInt(parts[2], 10, 64)
	if !ok || err1 != nil || err2 != nil || off < 0 || n < 0 || !validSum(parts[3]) {
		return segLocation{}, false
	}
	return segLocation{seg: seg, off: off, n: n, sum: parts[3]}, true
}

// RawSum returns the SHA-256 (hex) of the bytes behind a locator, as
// recorded when they were written.
func RawSum(loc string) string {
	if l, ok := parseSegLoc(loc); ok {
		return l.sum
	}
	if name, ok := strings.CutPrefix(loc, "f:"); ok {
		sum, _, _ := strings.Cut(name, "-")
		return sum
	}
	return loc
}
