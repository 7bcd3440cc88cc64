package bolt

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Backups.
//
// A backup is one tar archive:
//
//	syncrelay-backup.json   the manifest (always the first entry)
//	syncrelay.db            a consistent bbolt snapshot (Tx.WriteTo)
//	seg/<16 hex>            each segment of the log, up to the snapshot's committed end
//	big/<sha256>-<random>   each large message's file
//	raw/ab/abcdef...        schema 1: every content-addressed raw file
//
// and the tar end-of-archive marker, so a truncated archive is detected.
// Restore checks every record's bytes against the SHA-256 its locator
// carries. The server secret key is deliberately not included: it
// decrypts the OAuth grants in the database, so it is kept (and backed up)
// apart from the data.
//
// Consistency while the daemon writes: the snapshot is copied to a staging
// directory under raw/tmp inside one read transaction (short: a local file
// copy), the files it refers to are computed from that copy, and each is
// pinned with a hard link into the staging directory before anything is
// streamed. Segment bytes below a committed end never change, and a file
// is only deleted after the commit that stopped referring to it
// (compaction, removal), so a file missing at pinning time means a change
// after the snapshot: the backup then starts over with a new snapshot. The
// archive is streamed from the staging directory, without holding a
// transaction open for as long as a slow reader takes.

// BackupFormat is the newest archive format this code writes and reads.
// An archive of a schema-1 store (raw/ entries only) is written as format
// 1, so that the binary that made the store can restore it.
const BackupFormat = 2

// Names inside a backup archive.
const (
	BackupManifestName = "syncrelay-backup.json"
	backupDBName       = "syncrelay.db"
)

// ErrNotEmpty is returned by Restore when the target already holds a store.
var ErrNotEmpty = errors.New("data directory already holds a store")

// errRawGone means a referenced raw file disappeared while pinning.
var errRawGone = errors.New("raw file removed during backup")

const backupAttempts = 5

// testHookBeforePin, when set by a test, runs between the snapshot and
// the pinning of its raw files.
var testHookBeforePin func()

// Backup writes a consistent backup of the store to w and returns its
// manifest. It may run while the store is in use. ctx cancels it between
// files. On error, w holds an incomplete archive (no end marker).
func (s *Store) Backup(ctx context.Context, w io.Writer) (*BackupManifest, error) {
	if s.commits == nil {
		// Opened read-only: no writer can hold the database, so nothing
		// changes under us and no staging is needed.
		return s.backupDirect(ctx, w)
	}
	var lastErr error
	for attempt := 0; attempt < backupAttempts; attempt++ {
		st, err := s.stageBackup(ctx)
		if errors.Is(err, errRawGone) {
			lastErr = err
			continue
		}
		if err != nil {
			return nil, err
		}
		defer st.cleanup()
		return st.m, st.write(ctx, w)
	}
	return nil, fmt.Errorf("store: backup: %w %d times in a row; retry", lastErr, backupAttempts)
}

// staged is a backup ready to stream: a database copy and pinned raw files.
type staged struct {
	dir     string
	m       *BackupManifest
	entries []rawEntry
}

// rawEntry is one file of raw bytes in an archive.
type rawEntry struct {
	name string // in the archive
	src  string // in the data dir
	size int64  // bytes to archive (a segment's committed end)
}

func (e rawEntry) pinName() string { return strings.ReplaceAll(e.name, "/", "_") }

func (st *staged) cleanup() { _ = os.RemoveAll(st.dir) }

func (s *Store) stageBackup(ctx context.Context) (_ *staged, err error) {
	if err := os.MkdirAll(s.big.tmp, 0o700); err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	dir, err := os.MkdirTemp(s.big.tmp, "backup-")
	if err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	st := &staged{dir: dir}
	defer func() {
		if err != nil {
			st.cleanup()
		}
	}()
	created := s.now().UTC()
	dbPath := filepath.Join(dir, backupDBName)
	if err := s.db.View(func(tx *bolt.Tx) error { return tx.CopyFile(dbPath, 0o600) }); err != nil {
		return nil, fmt.Errorf("store: backup: snapshot: %w", err)
	}
	// The snapshot, opened on its own, says exactly which raw files it
	// needs (RawSums is the same function orphan collection trusts).
	snap, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		return nil, fmt.Errorf("store: backup: reopen snapshot: %w", err)
	}
	m, entries, err := snap.describe(s.dir)
	snap.Close()
	if err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	m.CreatedAt = created
	fi, err := os.Stat(dbPath)
	if err != nil {
		return nil, err
	}
	m.DBBytes = fi.Size()
	if testHookBeforePin != nil {
		testHookBeforePin()
	}
	pinDir := filepath.Join(dir, "raw")
	if err := os.Mkdir(pinDir, 0o700); err != nil {
		return nil, err
	}
	for i, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n, err := pin(e.src, filepath.Join(pinDir, e.pinName()))
		if err != nil {
			return nil, err
		}
		if n < e.size {
			return nil, fmt.Errorf("store: backup: %s is %d bytes, the snapshot needs %d", e.name, n, e.size)
		}
		entries[i].src = filepath.Join(pinDir, e.pinName())
		m.RawBytes += e.size
	}
	m.RawFiles = len(entries)
	st.m, st.entries = m, entries
	return st, nil
}

// pin makes dst a hard link to src (a copy where links are not
// supported) and returns the file's size; errRawGone if src is missing.
func pin(src, dst string) (int64, error) {
	err := os.Link(src, dst)
	if errors.Is(err, os.ErrNotExist) {
		return 0, errRawGone
	}
	if err != nil {
		if err := copyFile(src, dst); err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return 0, errRawGone
			}
			return 0, fmt.Errorf("store: backup: pin %s: %w", filepath.Base(src), err)
		}
	}
	fi, err := os.Stat(dst)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// describe returns the manifest fields of s and the raw files it needs,
// as found under dataDir (s may be a snapshot copy elsewhere).
func (s *Store) describe(dataDir string) (*BackupManifest, []rawEntry, error) {
	m := &BackupManifest{Format: BackupFormat}
	var entries []rawEntry
	legacy := map[string]bool{}
	err := s.db.View(func(tx *bolt.Tx) error {
		m.SchemaVersion = int(getU64(tx.Bucket(bMeta).Get(keySchema)))
		if b := tx.Bucket(bTenants); b != nil {
			m.Tenants = b.Stats().KeyN
		}
		if b := tx.Bucket(bMessages); b != nil {
			m.Messages = b.Stats().KeyN
		}
		if b := tx.Bucket(bSegs); b != nil {
			if err := b.ForEach(func(k, v []byte) error {
				if st, ok := getSegStat(b, getU64(k)); ok && st.end > 0 {
					name := segName(getU64(k))
					entries = append(entries, rawEntry{name: "seg/" + name, src: filepath.Join(dataDir, "raw", "seg", name), size: st.end})
				}
				return nil
			}); err != nil {
				return err
			}
		}
		if b := tx.Bucket(bBigFiles); b != nil {
			if err := b.ForEach(func(k, _ []byte) error {
				entries = append(entries, rawEntry{name: "big/" + string(k), src: filepath.Join(dataDir, "raw", "big", string(k)), size: -1})
				return nil
			}); err != nil {
				return err
			}
		}
		if m.SchemaVersion >= 2 {
			return nil
		}
		// Schema 1: the referenced content-addressed files, found by
		// reading every record (only before the migration).
		return forEachRawOwner(tx, func(_ []byte, loc string) error {
			if validSum(loc) {
				legacy[loc] = true
			}
			return nil
		})
	})
	if err != nil {
		return nil, nil, err
	}
	sums := make([]string, 0, len(legacy))
	for sum := range legacy {
		sums = append(sums, sum)
	}
	slices.Sort(sums)
	for _, sum := range sums {
		entries = append(entries, rawEntry{name: rawEntryName(sum), src: filepath.Join(dataDir, "raw", sum[:2], sum), size: -1})
	}
	if m.SchemaVersion < 2 {
		m.Format = 1
	}
	for i, e := range entries {
		if e.size < 0 {
			fi, err := os.Stat(e.src)
			if err != nil {
				return nil, nil, fmt.Errorf("raw file %s: %w", e.name, err)
			}
			entries[i].size = fi.Size()
		}
	}
	return m, entries, nil
}

// forEachRawOwner calls fn with the owner key and locator of every message
// and quarantined message that holds raw bytes.
func forEachRawOwner(tx *bolt.Tx, fn func(owner []byte, loc string) error) error {
	if err := tx.Bucket(bMessages).ForEach(func(k, v []byte) error {
		var m Message
		if err := decodeMessage(v, &m); err != nil {
			return err
		}
		if m.Raw == "" {
			return nil
		}
		return fn(append([]byte{ownerMessage}, k...), m.Raw)
	}); err != nil {
		return err
	}
	return tx.Bucket(bQuarantine).ForEach(func(k, v []byte) error {
		var q Quarantined
		if err := json.Unmarshal(v, &q); err != nil {
			return err
		}
		if q.Raw == "" {
			return nil
		}
		return fn(append([]byte{ownerQuarantine}, k...), q.Raw)
	})
}

func (st *staged) write(ctx context.Context, w io.Writer) error {
	tw := tar.NewWriter(w)
	if err := writeManifest(tw, st.m); err != nil {
		return err
	}
	if err := tarFile(tw, backupDBName, filepath.Join(st.dir, backupDBName), st.m.CreatedAt); err != nil {
		return err
	}
	for _, e := range st.entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := tarFileSized(tw, e.name, e.src, e.size, st.m.CreatedAt); err != nil {
			return err
		}
	}
	return tw.Close()
}

// backupDirect streams a backup of a store nobody writes to (opened
// read-only, or during Open before serving): the snapshot goes straight
// from the read transaction into the archive.
func (s *Store) backupDirect(ctx context.Context, w io.Writer) (*BackupManifest, error) {
	m, entries, err := s.describe(s.dir)
	if err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	m.CreatedAt = s.now().UTC()
	for _, e := range entries {
		m.RawBytes += e.size
	}
	m.RawFiles = len(entries)
	tw := tar.NewWriter(w)
	err = s.db.View(func(tx *bolt.Tx) error {
		m.DBBytes = tx.Size()
		if err := writeManifest(tw, m); err != nil {
			return err
		}
		if err := tw.WriteHeader(fileHeader(backupDBName, m.DBBytes, m.CreatedAt)); err != nil {
			return err
		}
		_, err := tx.WriteTo(tw)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := tarFileSized(tw, e.name, e.src, e.size, m.CreatedAt); err != nil {
			return nil, err
		}
	}
	return m, tw.Close()
}

func rawEntryName(sum string) string { return "raw/" + sum[:2] + "/" + sum }

func fileHeader(name string, size int64, mtime time.Time) *tar.Header {
	return &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o600,
		ModTime: mtime.Truncate(time.Second), Format: tar.FormatPAX}
}

func writeManifest(tw *tar.Writer, m *BackupManifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := tw.WriteHeader(fileHeader(BackupManifestName, int64(len(b)), m.CreatedAt)); err != nil {
		return err
	}
	_, err = tw.Write(b)
	return err
}

func tarFile(tw *tar.Writer, name, src string, mtime time.Time) error {
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	return tarFileSized(tw, name, src, fi.Size(), mtime)
}

// tarFileSized adds the first size bytes of src as name (files are only
// ever appended to below what a snapshot refers to).
func tarFileSized(tw *tar.Writer, name, src string, size int64, mtime time.Time) error {
	f, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("store: backup: %s: %w", name, err)
	}
	defer f.Close()
	if err := tw.WriteHeader(fileHeader(name, size, mtime)); err != nil {
		return err
	}
	n, err := io.Copy(tw, io.LimitReader(f, size))
	if err == nil && n != size {
		err = fmt.Errorf("store: backup: %s: read %d of %d bytes", name, n, size)
	}
	return err
}

// --- restore ---

// RestoreResult describes a finished restore.
type RestoreResult struct {
	Manifest BackupManifest
}

// archiveHandlers receive the database and the raw files of an archive
// being walked; each must consume exactly size bytes from r.
type archiveHandlers struct {
	db func(r io.Reader, size int64) error
	// raw receives a file of raw bytes: rel is its path under raw/ in a
	// data dir, sum the SHA-256 its content must have ("" for a segment,
	// which Restore checks record by record).
	raw func(rel, sum string, r io.Reader, size int64) (int64, error)
}

// archiveRaw maps an archive entry name to its path under raw/ and the
// content hash it must have; ok is false for a name that is no raw file.
func archiveRaw(name string) (rel, sum string, ok bool) {
	switch {
	case strings.HasPrefix(name, "raw/"):
		shard, sum, ok := strings.Cut(strings.TrimPrefix(name, "raw/"), "/")
		if !ok || !validSum(sum) || shard != sum[:2] {
			return "", "", false
		}
		return filepath.Join(shard, sum), sum, true
	case strings.HasPrefix(name, "seg/"):
		id := strings.TrimPrefix(name, "seg/")
		if _, ok := parseSegName(id); !ok {
			return "", "", false
		}
		return filepath.Join("seg", id), "", true
	case strings.HasPrefix(name, "big/"):
		n := strings.TrimPrefix(name, "big/")
		if !validBigName(n) {
			return "", "", false
		}
		return filepath.Join("big", n), RawSum("f:" + n), true
	}
	return "", "", false
}

// walkArchive reads a backup archive, checking its structure: the manifest
// first and of a readable format, then only the database (once) and
// content-addressed raw files (no other names, so no path tricks), and at
// the end counts and sizes matching the manifest.
func walkArchive(ctx context.Context, r io.Reader, h archiveHandlers) (*BackupManifest, error) {
	tr := tar.NewReader(r)
	var m *BackupManifest
	var dbSeen bool
	var rawFiles int
	var rawBytes int64
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		hd, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading archive: %w (truncated, or not a syncrelay backup)", err)
		}
		if hd.Typeflag == tar.TypeDir {
			continue
		}
		name := path.Clean(hd.Name)
		if m == nil && name != BackupManifestName {
			return nil, fmt.Errorf("first entry is %q, not %s: not a syncrelay backup", hd.Name, BackupManifestName)
		}
		if hd.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("entry %q is not a regular file", hd.Name)
		}
		switch {
		case name == BackupManifestName:
			if m != nil {
				return nil, errors.New("second manifest in the archive")
			}
			m = &BackupManifest{}
			if err := json.NewDecoder(io.LimitReader(tr, 1<<20)).Decode(m); err != nil {
				return nil, fmt.Errorf("manifest: %w", err)
			}
			if m.Format < 1 || m.Format > BackupFormat {
				return nil, fmt.Errorf("archive format %d is not supported by this binary (it reads format %d); use a matching syncrelay", m.Format, BackupFormat)
			}
			if m.SchemaVersion > SchemaVersion {
				return nil, fmt.Errorf("the backup has schema version %d, newer than this binary's %d; upgrade syncrelay", m.SchemaVersion, SchemaVersion)
			}
		case name == backupDBName:
			if dbSeen {
				return nil, errors.New("second database in the archive")
			}
			dbSeen = true
			if hd.Size != m.DBBytes {
				return nil, fmt.Errorf("database is %d bytes, the manifest says %d", hd.Size, m.DBBytes)
			}
			if err := h.db(tr, hd.Size); err != nil {
				return nil, fmt.Errorf("database: %w", err)
			}
		default:
			rel, sum, ok := archiveRaw(name)
			if !ok {
				return nil, fmt.Errorf("unexpected entry %q", hd.Name)
			}
			n, err := h.raw(rel, sum, tr, hd.Size)
			if err != nil {
				return nil, fmt.Errorf("raw file %s: %w", name, err)
			}
			rawFiles++
			rawBytes += n
		}
	}
	switch {
	case m == nil:
		return nil, errors.New("empty archive")
	case !dbSeen:
		return nil, errors.New("the archive has no database (truncated?)")
	case rawFiles != m.RawFiles || rawBytes != m.RawBytes:
		return nil, fmt.Errorf("archive has %d raw files (%d bytes), the manifest says %d (%d bytes): truncated or damaged",
			rawFiles, rawBytes, m.RawFiles, m.RawBytes)
	}
	return m, nil
}

// VerifyBackup reads a whole archive and checks it as Restore would,
// without keeping anything: structure, manifest, sizes, every large or
// schema-1 file's content address, and every record's bytes inside the
// segments against the SHA-256 its locator carries. (The database is
// copied to a temp file to read the locators; its own consistency is
// checked by Restore.)
func VerifyBackup(ctx context.Context, r io.Reader) (*BackupManifest, error) {
	var idx segIndex
	defer idx.close()
	m, err := walkArchive(ctx, r, archiveHandlers{
		db: func(r io.Reader, size int64) error { return idx.load(r, size) },
		raw: func(rel, sum string, r io.Reader, size int64) (int64, error) {
			if sum == "" {
				id, _ := parseSegName(filepath.Base(rel))
				return idx.check(id, r, size)
			}
			h := sha256.New()
			n, err := io.Copy(h, io.LimitReader(r, size))
			if err == nil && n != size {
				err = fmt.Errorf("short entry: %d of %d bytes", n, size)
			}
			if err == nil && hex.EncodeToString(h.Sum(nil)) != sum {
				err = errContentMismatch
			}
			return n, err
		},
	})
	if err != nil {
		return nil, fmt.Errorf("store: backup archive: %w", err)
	}
	return m, nil
}

// segIndex is the segment records of an archive's database, to check the
// segments as they stream past.
type segIndex struct {
	dir  string
	recs map[uint64][]segLocation // by segment, in offset order
}

func (x *segIndex) close() {
	if x.dir != "" {
		os.RemoveAll(x.dir)
	}
}

func (x *segIndex) load(r io.Reader, size int64) error {
	dir, err := os.MkdirTemp("", "syncrelay-verify-")
	if err != nil {
		return err
	}
	x.dir = dir
	if _, err := writeSynced(filepath.Join(dir, backupDBName), r, size, ""); err != nil {
		return err
	}
	db, err := bolt.Open(filepath.Join(dir, backupDBName), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		return err
	}
	defer db.Close()
	x.recs = map[uint64][]segLocation{}
	err = db.View(func(tx *bolt.Tx) error {
		if tx.Bucket(bMessages) == nil || tx.Bucket(bQuarantine) == nil {
			return nil
		}
		return forEachRawOwner(tx, func(_ []byte, loc string) error {
			if l, ok := parseSegLoc(loc); ok {
				x.recs[l.seg] = append(x.recs[l.seg], l)
			}
			return nil
		})
	})
	for _, l := range x.recs {
		slices.SortFunc(l, func(a, b segLocation) int { return int(a.off - b.off) })
	}
	return err
}

// check reads a segment of size bytes and hashes each record in it.
func (x *segIndex) check(id uint64, r io.Reader, size int64) (int64, error) {
	var pos int64
	skip := func(to int64) error {
		n, err := io.CopyN(io.Discard, r, to-pos)
		pos += n
		return err
	}
	for _, l := range x.recs[id] {
		if l.off < pos || l.off+l.n > size {
			return pos, fmt.Errorf("record %s lies outside the segment (%d bytes)", l.String(), size)
		}
		if err := skip(l.off); err != nil {
			return pos, err
		}
		h := sha256.New()
		n, err := io.CopyN(h, r, l.n)
		pos += n
		if err != nil {
			return pos, err
		}
		if hex.EncodeToString(h.Sum(nil)) != l.sum {
			return pos, fmt.Errorf("record at offset %d: %w", l.off, errContentMismatch)
		}
	}
	return pos, skip(size)
}

var errContentMismatch = errors.New("content does not match its SHA-256 (damaged)")

// Restore unpacks a backup archive read from r into dir, which must not
// hold a store (no syncrelay.db, no raw/); the caller decides what else
// may be there. The archive is checked as it is read (see walkArchive;
// every raw file must hash to its name); the restored database is then
// checked for consistency (bbolt Check) and every raw file it refers to
// must be present. On error, everything Restore created is removed again.
func Restore(ctx context.Context, r io.Reader, dir string) (res *RestoreResult, err error) {
	dbPath := filepath.Join(dir, backupDBName)
	rawRoot := filepath.Join(dir, "raw")
	for _, p := range []string{dbPath, rawRoot} {
		if _, err := os.Lstat(p); err == nil {
			return nil, fmt.Errorf("store: restore: %s exists: %w", p, ErrNotEmpty)
		} else if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("store: restore: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	partial := dbPath + ".restoring"
	defer func() {
		if err != nil {
			os.Remove(partial)
			os.Remove(dbPath)
			os.RemoveAll(rawRoot)
		}
	}()
	if err := os.Mkdir(rawRoot, 0o700); err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	shards := map[string]bool{}
	m, err := walkArchive(ctx, r, archiveHandlers{
		db: func(r io.Reader, size int64) error {
			_, err := writeSynced(partial, r, size, "")
			return err
		},
		raw: func(rel, sum string, r io.Reader, size int64) (int64, error) {
			shard := filepath.Dir(rel)
			sd := filepath.Join(rawRoot, shard)
			if !shards[shard] {
				if err := os.Mkdir(sd, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
					return 0, err
				}
				shards[shard] = true
			}
			return writeSynced(filepath.Join(rawRoot, rel), r, size, sum)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	for shard := range shards {
		if err := syncDir(filepath.Join(rawRoot, shard)); err != nil {
			return nil, err
		}
	}
	if err := syncDir(rawRoot); err != nil {
		return nil, err
	}
	if err := os.Rename(partial, dbPath); err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	if err := syncDir(dir); err != nil {
		return nil, err
	}
	if err := VerifyDir(dir); err != nil {
		return nil, fmt.Errorf("store: restore: %w", err)
	}
	return &RestoreResult{Manifest: *m}, nil
}

// writeSynced writes exactly size bytes from r to a new file at p and
// fsyncs it; when sum is set the content must hash to it.
func writeSynced(p string, r io.Reader, size int64, sum string) (int64, error) {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return 0, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, size))
	if err == nil && n != size {
		err = fmt.Errorf("short entry: %d of %d bytes", n, size)
	}
	if err == nil && sum != "" && hex.EncodeToString(h.Sum(nil)) != sum {
		err = errContentMismatch
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(p)
	}
	return n, err
}

// VerifyDir checks the store in dir without changing it: the database
// passes bbolt's consistency check, its schema is one this binary reads,
// and the bytes of every record are there and intact. It needs the store not to
// be held by a running daemon.
func VerifyDir(dir string) error {
	s, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer s.Close()
	return s.Verify()
}

// Verify checks the database's consistency and that the bytes of every
// record are there and hash to what was recorded when they were written.
func (s *Store) Verify() error {
	ctx := context.Background()
	var bad []string
	err := s.db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() { // drained in full: the checker reads the tx until it closes the channel
			if len(errs) < 10 {
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("database check failed: %w", err)
		}
		return forEachRawOwner(tx, func(_ []byte, loc string) error {
			if err := s.checkRaw(ctx, loc); err != nil && len(bad) < 1000 {
				bad = append(bad, fmt.Sprintf("%s (%v)", loc, err))
			}
			return nil
		})
	})
	if err != nil {
		return err
	}
	if len(bad) > 0 {
		slices.Sort(bad)
		return fmt.Errorf("%d raw messages are missing or damaged (first: %s)", len(bad), bad[0])
	}
	return nil
}

// checkRaw reads the bytes behind loc and compares their hash.
func (s *Store) checkRaw(ctx context.Context, loc string) error {
	f, err := s.OpenRaw(ctx, loc)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return err
	}
	if hex.EncodeToString(h.Sum(nil)) != RawSum(loc) {
		return errContentMismatch
	}
	return nil
}
