package bolt_test

import (
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"syncrelay/store/bolt"
	"syncrelay/store/storetest"
)

// TestConformance runs the store contract's suite against the bbolt
// backend.
func TestConformance(t *testing.T) {
	t.Parallel()
	storetest.Run(t, storetest.Factory{Open: openBolt, RawSum: bolt.RawSum})
}

// TestConformanceTailMerge runs the suite with the thread index's tail
// merged into thread_msg after every third message (threadtail.go), so
// that threads are read across the tail, thread_msg and merges in flight.
func TestConformanceTailMerge(t *testing.T) {
	t.Parallel()
	open := func(t *testing.T, now func() time.Time) *storetest.Instance {
		return openBoltWith(t, bolt.Options{Now: now, TailMerge: 3})
	}
	storetest.Run(t, storetest.Factory{Open: open, RawSum: bolt.RawSum})
}

// openBolt opens a fresh bbolt store in a temp dir. Reopen opens the same
// dir again; Crash copies the data dir as a killed process leaves it (no
// counter flush, no clean close: the suite calls it with nothing in
// flight, so the copy is what kill -9 would leave) and opens the copy.
func openBolt(t *testing.T, now func() time.Time) *storetest.Instance {
	return openBoltWith(t, bolt.Options{Now: now})
}

func openBoltWith(t *testing.T, o bolt.Options) *storetest.Instance {
	o.CompactNow, o.LockTimeout = true, 5*time.Second
	dir := t.TempDir()
	open := func(t *testing.T) *bolt.Store {
		t.Helper()
		s, err := bolt.Open(dir, o)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	cur := open(t)
	return &storetest.Instance{
		Backend: cur,
		Reopen: func(t *testing.T) storetest.Backend {
			cur = open(t)
			return cur
		},
		Crash: func(t *testing.T) storetest.Backend {
			t.Helper()
			crashed := t.TempDir()
			if err := copyDir(dir, crashed); err != nil {
				t.Fatalf("copy the data dir: %v", err)
			}
			_ = cur.Close() // flushes into the abandoned dir, not the copy
			dir = crashed
			cur = open(t)
			return cur
		},
	}
}

// copyDir copies the regular files under src to dst.
func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o700)
		}
		if !d.Type().IsRegular() {
			return nil
		}
		return copyFile(path, target)
	})
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
