package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// rawDir keeps the raw .eml of kept messages as content-addressed files
// (raw/ab/abcdef...). A file is fsynced, renamed into place and its directory
// fsynced before any bbolt record refers to it, so a committed record never
// points at a missing file; a crash in between leaves an orphan that
// CollectOrphans removes at start.
type rawDir struct {
	root string
}

func (d rawDir) tmpDir() string { return filepath.Join(d.root, "tmp") }

func (d rawDir) path(sum string) string {
	return filepath.Join(d.root, sum[:2], sum)
}

func validSum(sum string) bool {
	if len(sum) != 64 {
		return false
	}
	_, err := hex.DecodeString(sum)
	return err == nil && strings.ToLower(sum) == sum
}

// put streams r (prefixed by head) into a content-addressed file and returns
// its address and size. It is durable when it returns nil.
func (d rawDir) put(head []byte, r io.Reader) (sum string, size int64, err error) {
	if err := os.MkdirAll(d.tmpDir(), 0o700); err != nil {
		return "", 0, fmt.Errorf("raw: %w", err)
	}
	f, err := os.CreateTemp(d.tmpDir(), "put-*")
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
	h := sha256.New()
	w := io.MultiWriter(f, h)
	n, err := w.Write(head)
	if err != nil {
		return "", 0, fmt.Errorf("raw: write: %w", err)
	}
	m, err := io.Copy(w, r)
	if err != nil {
		return "", 0, fmt.Errorf("raw: write: %w", err)
	}
	if err = f.Sync(); err != nil {
		return "", 0, fmt.Errorf("raw: fsync: %w", err)
	}
	if err = f.Close(); err != nil {
		return "", 0, fmt.Errorf("raw: close: %w", err)
	}
	sum = hex.EncodeToString(h.Sum(nil))
	shard := filepath.Dir(d.path(sum))
	newShard := false
	if _, statErr := os.Stat(shard); errors.Is(statErr, os.ErrNotExist) {
		newShard = true
	}
	if err = os.MkdirAll(shard, 0o700); err != nil {
		return "", 0, fmt.Errorf("raw: %w", err)
	}
	if err = os.Rename(tmp, d.path(sum)); err != nil {
		return "", 0, fmt.Errorf("raw: rename: %w", err)
	}
	if err = syncDir(shard); err != nil {
		return "", 0, err
	}
	if newShard {
		if err = syncDir(d.root); err != nil {
			return "", 0, err
		}
	}
	return sum, int64(n) + m, nil
}

func (d rawDir) open(sum string) (*os.File, error) {
	if !validSum(sum) {
		return nil, fmt.Errorf("raw: bad address %q: %w", sum, ErrNotFound)
	}
	f, err := os.Open(d.path(sum))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("raw %s: %w", sum, ErrNotFound)
	}
	return f, err
}

func (d rawDir) remove(sum string) error {
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
func (d rawDir) walk(fn func(sum string) error) error {
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
