package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"
)

// TestPutRawPaths: seekable readers are written in place, anything else
// through a temp file; both give the same address and bytes, and leave no
// temp file behind.
func TestPutRawPaths(t *testing.T) {
	s, dir := openTest(t)
	head := []byte("Authentication-Results: relay.test; dkim=pass\r\n")
	body := strings.Repeat("line of the body\r\n", 500)
	want := sha256.Sum256(append(append([]byte{}, head...), body...))
	for name, r := range map[string]io.Reader{
		"in place":  strings.NewReader(body),
		"streaming": iotest.HalfReader(strings.NewReader(body)), // no Seek
	} {
		sum, size, err := s.PutRaw(head, r)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if sum != hex.EncodeToString(want[:]) || size != int64(len(head)+len(body)) {
			t.Fatalf("%s: got %s %d", name, sum, size)
		}
		got, err := os.ReadFile(filepath.Join(dir, "raw", sum[:2], sum))
		if err != nil || !bytes.Equal(got, append(append([]byte{}, head...), body...)) {
			t.Fatalf("%s: file content wrong (%v)", name, err)
		}
	}
	if ents, _ := os.ReadDir(filepath.Join(dir, "raw", "tmp")); len(ents) != 0 {
		t.Errorf("temp files left: %v", ents)
	}
}

// TestPutRawConcurrentSame: many sessions storing identical bytes at once,
// through both paths, all get the address of one whole file.
func TestPutRawConcurrentSame(t *testing.T) {
	s, dir := openTest(t)
	body := strings.Repeat("x", 200<<10)
	var wg sync.WaitGroup
	sums := make([]string, 16)
	for i := range sums {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r io.Reader = strings.NewReader(body)
			if i%2 == 1 {
				r = iotest.HalfReader(r) // no Seek: the temp-file path
			}
			sum, _, err := s.PutRaw(nil, r)
			if err != nil {
				t.Error(err)
			}
			// The file must be whole the moment PutRaw returns.
			if got, err := os.ReadFile(filepath.Join(dir, "raw", sum[:2], sum)); err != nil || len(got) != len(body) {
				t.Errorf("file after PutRaw returned: %d bytes, %v", len(got), err)
			}
			sums[i] = sum
		}()
	}
	wg.Wait()
	for _, sum := range sums[1:] {
		if sum != sums[0] {
			t.Fatalf("different addresses for the same bytes: %v", sums)
		}
	}
}

// changingReader returns different bytes on the second pass.
type changingReader struct {
	*strings.Reader
	passes int
}

func (c *changingReader) Seek(off int64, whence int) (int64, error) {
	if off == 0 && whence == io.SeekStart {
		c.passes++
		if c.passes > 0 { // the rewind before writing
			c.Reader = strings.NewReader("something else entirely\r\n")
		}
	}
	return c.Reader.Seek(off, whence)
}

func TestPutRawReaderChanged(t *testing.T) {
	s, dir := openTest(t)
	_, _, err := s.PutRaw(nil, &changingReader{Reader: strings.NewReader("original\r\n")})
	if err == nil || !strings.Contains(err.Error(), "changed") {
		t.Fatalf("got %v, want an error about the message changing", err)
	}
	n := 0
	s.raw.walk(func(string) error { n++; return nil })
	if n != 0 {
		t.Errorf("%d raw files left after a failed put", n)
	}
	_ = dir
}

// TestPutRawRetryAfterFailure: a write that failed does not block the next
// attempt at the same bytes (the failed flight must be gone).
func TestPutRawRetryAfterFailure(t *testing.T) {
	s, dir := openTest(t)
	body := "retry me\r\n"
	sum := sha256.Sum256([]byte(body))
	shard := filepath.Join(dir, "raw", hex.EncodeToString(sum[:])[:2])
	// A file where the shard directory should be: the write fails.
	if err := os.WriteFile(shard, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.PutRaw(nil, strings.NewReader(body)); err == nil {
		t.Fatal("PutRaw succeeded with its shard blocked")
	}
	if err := os.Remove(shard); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, _, err := s.PutRaw(nil, strings.NewReader(body)); done <- err }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("retry: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("retry after a failed write hangs")
	}
}
