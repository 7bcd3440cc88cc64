package store

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
)

// rawDir keeps the raw .eml of kept messages as content-addressed files
// (raw/ab/abcdef...). A file is fsynced, renamed into place and its directory
// fsynced before any bbolt record refers to it, so a committed record never
// points at a missing file; a crash in between leaves an orphan that
// CollectOrphans removes at start.
type rawDir struct {
	root string
	mu   sync.Mutex // serialises creating shard directories
	dirs sync.Map   // directory path → *os.File open on it (nil for tmp/)

	fmu     sync.Mutex
	flights map[string]*flight // sums being written in place by putInPlace
}

// flight is one putInPlace writing a file; others with the same content
// wait for it rather than race it.
type flight struct {
	done chan struct{}
	err  error
}

func (d *rawDir) tmpDir() string { return filepath.Join(d.root, "tmp") }

func (d *rawDir) path(sum string) string {
	return filepath.Join(d.root, sum[:2], sum)
}

func validSum(sum string) bool {
	if len(sum) != 64 {
		return false
	}
	_, err := hex.DecodeString(sum)
	return err == nil && strings.ToLower(sum) == sum
}

// put writes head then r into a content-addressed file and returns its
// address and size. It is durable when it returns nil.
//
// A reader that can seek (the spool, a byte slice) is hashed first and
// written straight to its final name (putInPlace); any other is streamed
// through a temp file and linked into place (putStream). Both go through
// claim, so writers of the same bytes never race on the final name.
func (d *rawDir) put(head []byte, r io.Reader) (string, int64, error) {
	if rs, ok := r.(io.ReadSeeker); ok {
		return d.putInPlace(head, rs)
	}
	return d.putStream(head, r)
}

// putInPlace creates the file at its final name, which saves the temp
// file's rename and, on ext4, the second journal commit that a rename
// needs before the directory fsync. (On this project's benchmark machine
// the throughput change was within noise: bench/RESULTS.md.)
//
// A file at a final name is always whole and durable: one being written is
// in flights (same-content writers wait for it), a failed write removes
// its file, and files left by a crash are unreferenced and removed at
// start (CollectOrphans) before anything is served.
func (d *rawDir) putInPlace(head []byte, r io.ReadSeeker) (sum string, size int64, err error) {
	start, err := r.Seek(0, io.SeekCurrent)
	if err != nil {
		return "", 0, fmt.Errorf("raw: %w", err)
	}
	h := sha256.New()
	h.Write(head)
	n, err := io.Copy(h, r)
	if err != nil {
		return "", 0, fmt.Errorf("raw: read: %w", err)
	}
	sum, size = hex.EncodeToString(h.Sum(nil)), int64(len(head))+n
	release, ok := d.claim(sum)
	if !ok {
		return sum, size, nil // the same bytes, written meanwhile
	}
	defer func() { release(err) }()
	if _, err = r.Seek(start, io.SeekStart); err != nil {
		return "", 0, fmt.Errorf("raw: %w", err)
	}
	if err = d.writeInPlace(sum, size, head, r); err != nil {
		return "", 0, err
	}
	return sum, size, nil
}

func (d *rawDir) writeInPlace(sum string, size int64, head []byte, r io.Reader) (err error) {
	path := d.path(sum)
	shard := filepath.Dir(path)
	dir, newShard, err := d.shardDir(shard)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrNotExist) {
		// The shard went away under us: forget it and make it again.
		d.forget(shard)
		if dir, newShard, err = d.shardDir(shard); err != nil {
			return err
		}
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	}
	if errors.Is(err, os.ErrExist) {
		return nil // whole and durable (see putInPlace)
	}
	if err != nil {
		return fmt.Errorf("raw: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(path)
		}
	}()
	// Hash again while writing: the name must match what is on disk even
	// if the reader changed between the passes.
	got, n, err := writeDurably(f, head, r)
	if err != nil {
		return err
	}
	if got != sum || n != size {
		return fmt.Errorf("raw: the message changed while it was being stored")
	}
	if err = dir.Sync(); err != nil {
		return fmt.Errorf("raw: fsync dir: %w", err)
	}
	if newShard {
		if err = syncDir(d.root); err != nil {
			return err
		}
	}
	return nil
}

// putStream streams r (prefixed by head) into a temp file, then links it
// to its content address.
//
// The machine this runs on pays dearly per system call, so put makes as
// few as it can: directories known to exist are remembered (a directory
// that vanished is recreated on the failure it causes), a small message
// leaves in one write(2), and shard directories stay open for their fsync.
func (d *rawDir) putStream(head []byte, r io.Reader) (sum string, size int64, err error) {
	f, err := d.createTemp()
	if err != nil {
		return "", 0, fmt.Errorf("raw: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	sum, size, err = writeDurably(f, head, r)
	if err != nil {
		return "", 0, err
	}
	defer os.Remove(tmp) // the file lives on under its final name
	release, ok := d.claim(sum)
	if !ok {
		return sum, size, nil // the same bytes, written meanwhile
	}
	defer func() { release(err) }()
	final := d.path(sum)
	shard := filepath.Dir(final)
	dir, newShard, err := d.shardDir(shard)
	if err != nil {
		return "", 0, err
	}
	// Link, not rename: a file already at the final name is whole and
	// durable and must never be replaced (or removed on failure).
	if err = os.Link(tmp, final); errors.Is(err, os.ErrNotExist) {
		// The shard went away under us: forget it and make it again.
		d.forget(shard)
		if dir, newShard, err = d.shardDir(shard); err != nil {
			return "", 0, err
		}
		err = os.Link(tmp, final)
	}
	if errors.Is(err, os.ErrExist) {
		return sum, size, nil
	}
	if err != nil {
		return "", 0, fmt.Errorf("raw: link: %w", err)
	}
	if err = dir.Sync(); err == nil && newShard {
		err = syncDir(d.root)
	}
	if err != nil {
		os.Remove(final)
		return "", 0, fmt.Errorf("raw: fsync dir: %w", err)
	}
	return sum, size, nil
}

// claim makes the caller the one writer of sum. ok is false when another
// writer of the same bytes finished meanwhile: the file is whole and
// durable. Otherwise the caller writes and then calls release with its
// outcome; a writer that fails has removed its file, and those waiting
// then try again themselves.
func (d *rawDir) claim(sum string) (release func(error), ok bool) {
	for {
		d.fmu.Lock()
		cur := d.flights[sum]
		if cur == nil {
			break
		}
		d.fmu.Unlock()
		<-cur.done
		if cur.err == nil {
			return nil, false
		}
	}
	fl := &flight{done: make(chan struct{})}
	if d.flights == nil {
		d.flights = make(map[string]*flight)
	}
	d.flights[sum] = fl
	d.fmu.Unlock()
	return func(err error) {
		fl.err = err
		d.fmu.Lock()
		delete(d.flights, sum)
		d.fmu.Unlock()
		close(fl.done)
	}, true
}

// writeDurably writes head then r to f through one pooled buffer (a small
// message is one write(2)), fsyncs and closes f, and returns the SHA-256 of
// what it wrote and its size.
func writeDurably(f *os.File, head []byte, r io.Reader) (sum string, size int64, err error) {
	h := sha256.New()
	bw := bufWriters.Get().(*bufio.Writer)
	bw.Reset(f)
	defer func() { bw.Reset(nil); bufWriters.Put(bw) }()
	w := io.MultiWriter(bw, h)
	if _, err = w.Write(head); err != nil {
		return "", 0, fmt.Errorf("raw: write: %w", err)
	}
	n, err := io.Copy(w, r)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return "", 0, fmt.Errorf("raw: write: %w", err)
	}
	if err = f.Sync(); err != nil {
		return "", 0, fmt.Errorf("raw: fsync: %w", err)
	}
	if err = f.Close(); err != nil {
		return "", 0, fmt.Errorf("raw: close: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), int64(len(head)) + n, nil
}

// bufWriters hold a whole typical message, so that it is one write(2).
var bufWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 64<<10) }}

// createTemp creates a temp file in tmp/, making tmp/ when it is missing.
func (d *rawDir) createTemp() (*os.File, error) {
	if _, ok := d.dirs.Load(d.tmpDir()); !ok {
		if err := os.MkdirAll(d.tmpDir(), 0o700); err != nil {
			return nil, err
		}
		d.dirs.Store(d.tmpDir(), (*os.File)(nil))
	}
	f, err := os.CreateTemp(d.tmpDir(), "put-*")
	if err != nil && (errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)) {
		d.forget(d.tmpDir())
		if err := os.MkdirAll(d.tmpDir(), 0o700); err != nil {
			return nil, err
		}
		d.dirs.Store(d.tmpDir(), (*os.File)(nil))
		f, err = os.CreateTemp(d.tmpDir(), "put-*")
	}
	return f, err
}

// shardDir returns shard's directory, open for fsync, creating it (created
// reports that) when it does not exist yet.
func (d *rawDir) shardDir(shard string) (dir *os.File, created bool, err error) {
	if v, ok := d.dirs.Load(shard); ok {
		return v.(*os.File), false, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if v, ok := d.dirs.Load(shard); ok {
		return v.(*os.File), false, nil
	}
	if _, statErr := os.Stat(shard); errors.Is(statErr, os.ErrNotExist) {
		created = true
	}
	if err := os.MkdirAll(shard, 0o700); err != nil {
		return nil, false, fmt.Errorf("raw: %w", err)
	}
	if dir, err = os.Open(shard); err != nil {
		return nil, false, fmt.Errorf("raw: open dir: %w", err)
	}
	d.dirs.Store(shard, dir)
	return dir, created, nil
}

// forget drops what is remembered of dir.
func (d *rawDir) forget(dir string) {
	if v, ok := d.dirs.LoadAndDelete(dir); ok {
		if f, _ := v.(*os.File); f != nil {
			f.Close()
		}
	}
}

// close releases the open shard directories.
func (d *rawDir) close() {
	d.dirs.Range(func(k, _ any) bool {
		d.forget(k.(string))
		return true
	})
}

func (d *rawDir) open(sum string) (*os.File, error) {
	if !validSum(sum) {
		return nil, fmt.Errorf("raw: bad address %q: %w", sum, ErrNotFound)
	}
	f, err := os.Open(d.path(sum))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("raw %s: %w", sum, ErrNotFound)
	}
	return f, err
}

func (d *rawDir) remove(sum string) error {
	if !validSum(sum) {
		return nil
	}
	err := os.Remove(d.path(sum))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// walk calls fn with every stored address.
func (d *rawDir) walk(fn func(sum string) error) error {
	shards, err := os.ReadDir(d.root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, s := range shards {
		if !s.IsDir() || len(s.Name()) != 2 {
			continue
		}
		files, err := os.ReadDir(filepath.Join(d.root, s.Name()))
		if err != nil {
			return err
		}
		for _, f := range files {
			if validSum(f.Name()) {
				if err := fn(f.Name()); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("raw: open dir: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("raw: fsync dir: %w", err)
	}
	return nil
}
