package dkim

// Reproductions of syncrelay's patches to this copy (see ../SYNCRELAY.md).
// The TestSyncrelayPatch* tests fail on upstream v0.7.0 and pass here;
// syncrelay's trust package runs this file against both. The reference
// tests pass on both: they pin that the patched canonicaliser gives
// upstream's output.

import (
	"bytes"
	"crypto/sha256"
	"io"
	"math/rand"
	"runtime"
	"strings"
	"testing"
)

// refRelaxedBody is upstream v0.7.0's relaxed body canonicaliser, as it was
// before patch 1 (crlfFixer.Fix, then the canonical pass, each into a new
// slice).
type refRelaxedBody struct {
	w       io.Writer
	crlfBuf []byte
	wsp     bool
	written bool
	cr      bool
}

func (c *refRelaxedBody) fix(b []byte) []byte {
	res := make([]byte, 0, len(b))
	for _, ch := range b {
		prevCR := c.cr
		c.cr = false
		switch ch {
		case '\r':
			c.cr = true
		case '\n':
			if !prevCR {
				res = append(res, '\r')
			}
		}
		res = append(res, ch)
	}
	return res
}

func (c *refRelaxedBody) Write(b []byte) (int, error) {
	written := len(b)
	b = c.fix(b)
	canonical := make([]byte, 0, len(b))
	for _, ch := range b {
		if ch == ' ' || ch == '\t' {
			c.wsp = true
		} else if ch == '\r' || ch == '\n' {
			c.wsp = false
			c.crlfBuf = append(c.crlfBuf, ch)
		} else {
			if len(c.crlfBuf) > 0 {
				canonical = append(canonical, c.crlfBuf...)
				c.crlfBuf = c.crlfBuf[:0]
			}
			if c.wsp {
				canonical = append(canonical, ' ')
				c.wsp = false
			}
			canonical = append(canonical, ch)
		}
	}
	if !c.written && len(canonical) > 0 {
		c.written = true
	}
	_, err := c.w.Write(canonical)
	return written, err
}

func (c *refRelaxedBody) Close() error {
	if c.written {
		if _, err := c.w.Write([]byte(crlf)); err != nil {
			return err
		}
	}
	return nil
}

// relaxedBodyBoth canonicalises body, written in the given pieces, with
// this package's canonicaliser and with the reference.
func relaxedBodyBoth(body []byte, cuts []int) (got, want []byte) {
	var g, w bytes.Buffer
	gc := new(relaxedCanonicalizer).CanonicalizeBody(&g)
	wc := &refRelaxedBody{w: &w}
	prev := 0
	for _, c := range append(cuts, len(body)) {
		if c < prev {
			c = prev
		}
		if c > len(body) {
			c = len(body)
		}
		gc.Write(body[prev:c])
		wc.Write(body[prev:c])
		prev = c
	}
	gc.Close()
	wc.Close()
	return g.Bytes(), w.Bytes()
}

var syncrelayBodies = []string{
	"",
	"\r\n",
	"\n\n\n",
	"a",
	" a \t b \r\n\r\n",
	"line\nline\r\nline\rline\r\r\n\n",
	"trailing  \t\r\n  \r\n\r\n",
	"x" + strings.Repeat("\r\n", 3000) + "y",
	strings.Repeat(" ", 5000) + "z" + strings.Repeat("\t", 5000),
	strings.Repeat(strings.Repeat("w ", 40)+"\r\n", 100),
	strings.Repeat("ab\n", 2000),
	strings.Repeat("y", 3000) + " \t" + strings.Repeat("z", 1500) + "\n" + strings.Repeat("\r\n", 700) + strings.Repeat("q", 1100),
	strings.Repeat(strings.Repeat("v", 1023)+"\r", 3) + "\r\n",
}

func TestSyncrelayRelaxedBodyMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	for _, body := range syncrelayBodies {
		for try := 0; try < 20; try++ {
			var cuts []int
			if try > 0 && len(body) > 0 {
				for n := rng.Intn(8); n > 0; n-- {
					cuts = append(cuts, rng.Intn(len(body)+1))
				}
				sortInts(cuts)
			}
			if got, want := relaxedBodyBoth([]byte(body), cuts); !bytes.Equal(got, want) {
				t.Fatalf("body %q cut at %v: got %q, want %q", trunc(body), cuts, trunc(string(got)), trunc(string(want)))
			}
		}
	}
}

func FuzzSyncrelayRelaxedBody(f *testing.F) {
	for _, b := range syncrelayBodies {
		f.Add([]byte(b), uint16(0), uint16(0))
	}
	f.Add([]byte("a \r\n\r\nb\n"), uint16(2), uint16(5))
	f.Fuzz(func(t *testing.T, body []byte, c1, c2 uint16) {
		cuts := []int{int(c1), int(c2)}
		sortInts(cuts)
		if got, want := relaxedBodyBoth(body, cuts); !bytes.Equal(got, want) {
			t.Fatalf("body %q cut at %v: got %q, want %q", body, cuts, got, want)
		}
	})
}

func sortInts(a []int) {
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j] < a[j-1]; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
}

func trunc(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return s
}

// allocBytes is the heap allocated per call of f.
func allocBytes(f func()) float64 {
	const runs = 50
	f()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for i := 0; i < runs; i++ {
		f()
	}
	runtime.ReadMemStats(&after)
	return float64(after.TotalAlloc-before.TotalAlloc) / runs
}

// Patch 1: upstream allocates twice the body per Write (the lone-LF fix's
// copy, then the canonical form): 32 KiB of garbage for a 16 KiB body.
func TestSyncrelayPatch1RelaxedBodyGarbage(t *testing.T) {
	body := []byte(strings.Repeat(strings.Repeat("x", 62)+"\r\n", 256)) // 16 KiB
	h := sha256.New()
	n := allocBytes(func() {
		h.Reset()
		wc := new(relaxedCanonicalizer).CanonicalizeBody(h)
		wc.Write(body)
		wc.Close()
	})
	if n > 4096 {
		t.Errorf("relaxed body canonicalisation of %d bytes allocated %.0f bytes (patch 1: under 4 KiB)", len(body), n)
	}
}

// Patch 2: upstream parses the key record (base64, x509) on every lookup.
func TestSyncrelayPatch2KeyParsedOnce(t *testing.T) {
	txts := []string{dnsPublicKey}
	lookup := func(string) ([]string, error) { return txts, nil }
	if _, err := queryDNSTXT("example.org", "brisbane", lookup); err != nil {
		t.Fatal(err)
	}
	allocs := testing.AllocsPerRun(50, func() {
		if _, err := queryDNSTXT("example.org", "brisbane", lookup); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 4 {
		t.Errorf("a repeated key lookup allocated %.0f times (patch 2: the parsed key is reused)", allocs)
	}
}

// The canonicaliser on a 4 KiB body of 64-byte lines, upstream's code
// (the reference) against the patched one.
func BenchmarkSyncrelayRelaxedBody(b *testing.B) {
	body := []byte(strings.Repeat(strings.Repeat("x", 30)+" "+strings.Repeat("y", 31)+"\r\n", 64))
	h := sha256.New()
	for _, c := range []struct {
		name string
		new  func() io.WriteCloser
	}{
		{"upstream", func() io.WriteCloser { return &refRelaxedBody{w: h} }},
		{"patched", func() io.WriteCloser { return new(relaxedCanonicalizer).CanonicalizeBody(h) }},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				h.Reset()
				wc := c.new()
				wc.Write(body)
				wc.Close()
			}
		})
	}
}
