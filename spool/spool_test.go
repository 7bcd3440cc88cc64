package spool

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"runtime"
	"testing"
)

func readAll(t *testing.T, s *Spool) []byte {
	t.Helper()
	b, err := io.ReadAll(s.Open())
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return b
}

func dirEntries(t *testing.T, dir string) int {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	return len(es)
}

func TestInMemory(t *testing.T) {
	dir := t.TempDir()
	s := New(dir, 16)
	defer s.Close()
	for _, p := range []string{"hello ", "world", "!!!!!"} { // exactly 16 bytes
		if _, err := s.Write([]byte(p)); err != nil {
			t.Fatal(err)
		}
	}
	if s.f != nil {
		t.Fatal("spilled at exactly the limit")
	}
	if got := s.Size(); got != 16 {
		t.Fatalf("Size = %d", got)
	}
	if n := dirEntries(t, dir); n != 0 {
		t.Fatalf("%d files in spool dir for an in-memory message", n)
	}
	// Open gives a fresh reader each time.
	r1, r2 := s.Open(), s.Open()
	b1, _ := io.ReadAll(r1)
	b2, _ := io.ReadAll(r2)
	if string(b1) != "hello world!!!!!" || string(b2) != string(b1) {
		t.Fatalf("got %q and %q", b1, b2)
	}
}

func TestSpillToFile(t *testing.T) {
	dir := t.TempDir()
	s := New(dir, 10)
	want := []byte("0123456789abcdefghij")
	s.Write(want[:8])
	s.Write(want[8:15]) // goes past the limit: spills
	if s.f == nil {
		t.Fatal("did not spill")
	}
	fi, err := s.f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); runtime.GOOS != "windows" && perm != 0o600 {
		t.Fatalf("spill file mode %v, want 0600", perm)
	}
	if runtime.GOOS != "windows" && dirEntries(t, dir) != 0 {
		t.Fatal("spill file still has a name: it should be unlinked at once")
	}
	s.Write(want[15:])
	if got := readAll(t, s); !bytes.Equal(got, want) {
		t.Fatalf("got %q", got)
	}
	// Readers are independent and concurrent-safe (ReadAt based).
	r1, r2 := s.Open(), s.Open()
	buf := make([]byte, 5)
	io.ReadFull(r1, buf)
	b2, _ := io.ReadAll(r2)
	rest, _ := io.ReadAll(r1)
	if string(buf)+string(rest) != string(want) || string(b2) != string(want) {
		t.Fatal("readers interfere")
	}
	if s.Size() != int64(len(want)) {
		t.Fatalf("Size = %d", s.Size())
	}
	f := s.f
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Stat(); err == nil {
		t.Fatal("file still open after Close")
	}
	if dirEntries(t, dir) != 0 {
		t.Fatal("file left behind")
	}
	if err := s.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if _, err := s.Write([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	if _, err := s.Open().Read(buf); !errors.Is(err, ErrClosed) {
		t.Fatalf("Open after Close: %v", err)
	}
}

func TestSpillDirMissing(t *testing.T) {
	s := New(t.TempDir()+"/does-not-exist", 4)
	defer s.Close()
	if _, err := s.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Write([]byte("defg")); err == nil {
		t.Fatal("want an error when the spool dir does not exist")
	}
	if _, err := s.Write([]byte("x")); err == nil {
		t.Fatal("error is not sticky")
	}
	if _, err := io.ReadAll(s.Open()); err == nil {
		t.Fatal("Open of a broken spool should fail")
	}
}

func TestDefaults(t *testing.T) {
	s := New("", 0)
	if s.memLimit != DefaultMemLimit || s.dir == "" {
		t.Fatalf("defaults: %+v", s)
	}
}

// pattern is a deterministic, non-repeating-ish stream of message lines.
type pattern struct{ n, i int64 }

func (p *pattern) Read(b []byte) (int, error) {
	if p.i >= p.n {
		return 0, io.EOF
	}
	k := 0
	for k < len(b) && p.i < p.n {
		b[k] = byte('a' + (p.i*7+p.i/97)%26)
		if p.i%78 == 76 {
			b[k] = '\r'
		} else if p.i%78 == 77 {
			b[k] = '\n'
		}
		k++
		p.i++
	}
	return k, nil
}

// A 25 MB message must not be held in memory: the requirement is
// that it adds at most 16 MiB; measure every byte allocated while writing
// and reading it back.
func TestLargeMessageMemory(t *testing.T) {
	const size = 25_000_000
	want := sha256.New()
	io.Copy(want, &pattern{n: size})

	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)

	s := New(t.TempDir(), 0)
	buf := make([]byte, 4096)
	src := &pattern{n: size}
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := s.Write(buf[:n]); werr != nil {
				t.Fatal(werr)
			}
		}
		if err != nil {
			break
		}
	}
	got := sha256.New()
	if _, err := io.CopyBuffer(got, s.Open(), buf); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	s.Close()

	if s.Size() != size {
		t.Fatalf("size %d", s.Size())
	}
	if !bytes.Equal(got.Sum(nil), want.Sum(nil)) {
		t.Fatal("content differs")
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d KiB for a %d MB message", alloc>>10, size/1_000_000)
	if alloc > 16<<20 {
		t.Fatalf("allocated %d bytes (> 16 MiB) for a 25 MB message", alloc)
	}
}

// BenchmarkSpool4K spools a 4 KiB message the way smtpd feeds it (in
// chunks of a few hundred bytes), then reads it back once.
func BenchmarkSpool4K(b *testing.B) {
	chunk := bytes.Repeat([]byte("x"), 510)
	dir := b.TempDir()
	b.ReportAllocs()
	for b.Loop() {
		s := New(dir, 0)
		for range 8 {
			if _, err := s.Write(chunk); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := io.Copy(io.Discard, s.Open()); err != nil {
			b.Fatal(err)
		}
		s.Close()
	}
}

// Reuse and Release: a released buffer serves the next spool without an
// allocation and holds only that spool's bytes; a spilled spool gives
// nothing back.
func TestReuse(t *testing.T) {
	first := New(t.TempDir(), 1024)
	first.Write(bytes.Repeat([]byte("a"), 600))
	mem, err := first.Release()
	if err != nil || cap(mem) < 600 {
		t.Fatalf("Release = cap %d, %v", cap(mem), err)
	}
	if _, err := first.Write([]byte("x")); err != ErrClosed {
		t.Fatalf("Write after Release: %v", err)
	}
	p := []byte("bb")
	allocs := testing.AllocsPerRun(10, func() {
		s := New("", 1024)
		s.Reuse(mem)
		s.Write(p)
		if got := readAll(t, s); string(got) != "bb" {
			t.Fatalf("reused spool holds %q", got)
		}
		mem, _ = s.Release()
	})
	if allocs > 3 { // the Spool and its reader, not a buffer
		t.Errorf("%.0f allocations per reused spool", allocs)
	}
	spilled := New(t.TempDir(), 4)
	spilled.Reuse(mem)
	spilled.Write([]byte("more than four"))
	if m, err := spilled.Release(); m != nil || err != nil {
		t.Fatalf("spilled spool released %d bytes, %v", cap(m), err)
	}
}
