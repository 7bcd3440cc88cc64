package store

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
//	raw/ab/abcdef...        every raw message file the snapshot refers to
//
// and the tar end-of-archive marker, so a truncated archive is detected.
// Raw files are content addressed: restore checks every one against its
// name (SHA-256). The server secret key is deliberately not included: it
// decrypts the OAuth grants in the database, so it is kept (and backed up)
// apart from the data.
//
// Consistency while the daemon writes: the snapshot is copied to a staging
// directory under raw/tmp inside one read transaction (short: a local file
// copy), the raw files it refers to are computed from that copy, and each
// is pinned with a hard link into the staging directory before anything is
// streamed. A raw file is only ever deleted after the commit that stopped
// referring to it, so a file missing at pinning time means a removal after
// the snapshot: the backup then starts over with a new snapshot. The
// archive is streamed from the staging directory, without holding a
// transaction open for as long as a slow reader takes.

// BackupFormat is the archive format version this code writes and reads.
const BackupFormat = 1

// Names inside a backup archive.
const (
	BackupManifestName = "syncrelay-backup.json"
	backupDBName       = "syncrelay.db"
)

// BackupManifest describes an archive; it is its first entry.
type BackupManifest struct {
	Format        int       `json:"format"`
	CreatedAt     time.Time `json:"created_at"`
	SchemaVersion int       `json:"schema_version"`
	DBBytes       int64     `json:"db_bytes"`
	RawFiles      int       `json:"raw_files"`
	RawBytes      int64     `json:"raw_bytes"`
	Tenants       int       `json:"tenants"`
	Messages      int       `json:"messages"`
}

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
	dir  string
	m    *BackupManifest
	sums []string
}

func (st *staged) cleanup() { _ = os.RemoveAll(st.dir) }

func (s *Store) stageBackup(ctx context.Context) (_ *staged, err error) {
	if err := os.MkdirAll(s.raw.tmpDir(), 0o700); err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	dir, err := os.MkdirTemp(s.raw.tmpDir(), "backup-")
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
	m, sums, err := snap.describe()
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
	for _, sum := range sums {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		n, err := pin(s.raw.path(sum), filepath.Join(pinDir, sum))
		if err != nil {
			return nil, err
		}
		m.RawBytes += n
	}
	m.RawFiles = len(sums)
	st.m, st.sums = m, sums
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

// describe returns the manifest fields and sorted raw addresses of s.
func (s *Store) describe() (*BackupManifest, []string, error) {
	m := &BackupManifest{Format: BackupFormat}
	err := s.db.View(func(tx *bolt.Tx) error {
		m.SchemaVersion = int(getU64(tx.Bucket(bMeta).Get(keySchema)))
		if b := tx.Bucket(bTenants); b != nil {
			m.Tenants = b.Stats().KeyN
		}
		if b := tx.Bucket(bMessages); b != nil {
			m.Messages = b.Stats().KeyN
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	refs, err := s.RawSums()
	if err != nil {
		return nil, nil, err
	}
	sums := make([]string, 0, len(refs))
	for sum := range refs {
		if validSum(sum) {
			sums = append(sums, sum)
		}
	}
	slices.Sort(sums)
	return m, sums, nil
}

func (st *staged) write(ctx context.Context, w io.Writer) error {
	tw := tar.NewWriter(w)
	if err := writeManifest(tw, st.m); err != nil {
		return err
	}
	if err := tarFile(tw, backupDBName, filepath.Join(st.dir, backupDBName), st.m.CreatedAt); err != nil {
		return err
	}
	for _, sum := range st.sums {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := tarFile(tw, rawEntryName(sum), filepath.Join(st.dir, "raw", sum), st.m.CreatedAt); err != nil {
			return err
		}
	}
	return tw.Close()
}

// backupDirect streams a backup of a read-only store: the snapshot goes
// straight from the read transaction into the archive.
func (s *Store) backupDirect(ctx context.Context, w io.Writer) (*BackupManifest, error) {
	m, sums, err := s.describe()
	if err != nil {
		return nil, fmt.Errorf("store: backup: %w", err)
	}
	m.CreatedAt = s.now().UTC()
	sizes := make([]int64, len(sums))
	for i, sum := range sums {
		fi, err := os.Stat(s.raw.path(sum))
		if err != nil {
			return nil, fmt.Errorf("store: backup: raw file %s: %w", sum, err)
		}
		sizes[i] = fi.Size()
		m.RawBytes += fi.Size()
	}
	m.RawFiles = len(sums)
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
	for i, sum := range sums {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := tarFileSized(tw, rawEntryName(sum), s.raw.path(sum), sizes[i], m.CreatedAt); err != nil {
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

// tarFileSized adds src as name; the file must still have size bytes
// (content-addressed raw files and the staged snapshot never change).
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
	db  func(r io.Reader, size int64) error
	raw func(sum string, r io.Reader, size int64) (int64, error)
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
		case strings.HasPrefix(name, "raw/"):
			shard, sum, ok := strings.Cut(strings.TrimPrefix(name, "raw/"), "/")
			if !ok || !validSum(sum) || shard != sum[:2] {
				return nil, fmt.Errorf("unexpected entry %q", hd.Name)
			}
			n, err := h.raw(sum, tr, hd.Size)
			if err != nil {
				return nil, fmt.Errorf("raw file %s: %w", sum, err)
			}
			rawFiles++
			rawBytes += n
		default:
			return nil, fmt.Errorf("unexpected entry %q", hd.Name)
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
// without writing anything: structure, manifest, sizes and every raw
// file's content address. (The database's own consistency is checked by
// Restore, which needs it on disk.)
func VerifyBackup(ctx context.Context, r io.Reader) (*BackupManifest, error) {
	m, err := walkArchive(ctx, r, archiveHandlers{
		db: func(r io.Reader, size int64) error {
			n, err := io.Copy(io.Discard, io.LimitReader(r, size))
			if err == nil && n != size {
				err = fmt.Errorf("short entry: %d of %d bytes", n, size)
			}
			return err
		},
		raw: func(sum string, r io.Reader, size int64) (int64, error) {
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

var errContentMismatch = errors.New("content does not match its SHA-256 name (damaged archive)")

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
		raw: func(sum string, r io.Reader, size int64) (int64, error) {
			shard := sum[:2]
			sd := filepath.Join(rawRoot, shard)
			if !shards[shard] {
				if err := os.Mkdir(sd, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
					return 0, err
				}
				shards[shard] = true
			}
			return writeSynced(filepath.Join(sd, sum), r, size, sum)
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
// and every raw file a record refers to exists. It needs the store not to
// be held by a running daemon.
func VerifyDir(dir string) error {
	s, err := Open(dir, Options{ReadOnly: true})
	if err != nil {
		return err
	}
	defer s.Close()
	return s.Verify()
}

// Verify checks the database's consistency and that every raw file a
// record refers to exists.
func (s *Store) Verify() error {
	err := s.db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() { // drained in full: the checker reads the tx until it closes the channel
			if len(errs) < 10 {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	})
	if err != nil {
		return fmt.Errorf("database check failed: %w", err)
	}
	refs, err := s.RawSums()
	if err != nil {
		return err
	}
	var missing []string
	for sum := range refs {
		if _, err := os.Stat(s.raw.path(sum)); err != nil {
			missing = append(missing, sum)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("%d raw message files are missing (first: %s)", len(missing), missing[0])
	}
	return nil
}
