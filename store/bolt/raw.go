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
	"strings"
	"sync"
)

// rawDir is schema 1's layout of raw messages: content-addressed files
// (raw/ab/abcdef...). It is only read now: by the migration to schema 2,
// and by OpenRaw for a store opened read-only before its migration.
type rawDir struct {
	root string
}

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
