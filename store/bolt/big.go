package bolt

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// bigDir keeps messages over largeMessage in files of their own,
// raw/big/<sha256>-<random>. Each file belongs to exactly one record (no
// sharing, so removal needs no reference count): it is written to a temp
// file, fsynced, linked under its final name and the directory fsynced
// before the record that names it is committed. A crash in between leaves
// a file no record names, which collectOrphans removes at open.
type bigDir struct {
	root string // raw/big
	tmp  string // raw/tmp
}

func (d *bigDir) path(name string) string { return filepath.Join(d.root, name) }

func validBigName(name string) bool {
	sum, rnd, ok := strings.Cut(name, "-")
	if !ok || !validSum(sum) || len(rnd) != 16 {
		return false
	}
	_, err := hex.DecodeString(rnd)
	return err == nil
}

// put streams head then body into a new file and returns its locator.
func (d *bigDir) put(head []byte, body io.Reader, size int64) (loc string, err error) {
	for _, dir := range []string{d.root, d.tmp} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", fmt.Errorf("store: %w", err)
		}
	}
	f, err := os.CreateTemp(d.tmp, "big-*")
	if err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // linked under its final name, or given up
	r := body
	if size >= 0 {
		r = io.LimitReader(body, size)
	}
	sum, n, err := writeDurably(f, head, r)
	if err != nil {
		f.Close()
		return "", err
	}
	if size >= 0 && n != int64(len(head))+size {
		return "", fmt.Errorf("store: message ended after %d of %d bytes", n-int64(len(head)), size)
	}
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	name := sum + "-" + hex.EncodeToString(rnd[:])
	if err := os.Link(tmp, d.path(name)); err != nil {
		return "", fmt.Errorf("store: link: %w", err)
	}
	if err := syncDir(d.root); err != nil {
		os.Remove(d.path(name))
		return "", err
	}
	return "f:" + name, nil
}

func (d *bigDir) open(name string) (RawFile, error) {
	if !validBigName(name) {
		return nil, fmt.Errorf("raw: bad name %q: %w", name, ErrNotFound)
	}
	f, err := os.Open(d.path(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("raw %s: %w", name, ErrNotFound)
	}
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

func (d *bigDir) remove(name string) error {
	if !validBigName(name) {
		return nil
	}
	if err := os.Remove(d.path(name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// names lists the files in the directory.
func (d *bigDir) names() ([]string, error) {
	ents, err := os.ReadDir(d.root)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if validBigName(e.Name()) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}

// fileRaw is a RawFile over a whole file.
type fileRaw struct {
	*os.File
	size int64
}

func (f *fileRaw) Size() int64 { return f.size }
