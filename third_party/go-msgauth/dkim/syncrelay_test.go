package dkim

// Reproductions of syncrelay's patches to this copy (see ../SYNCRELAY.md).
// The TestSyncrelayPatch* tests fail on upstream v0.7.0 and pass here;
// syncrelay's trust package runs this file against both. The reference
// tests pass on both: they pin that the patched canonicaliser gives
// upstream's output.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand"
	"net/textproto"
	"reflect"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"unicode"
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

// refReadHeader and refCanonicalizeHeader are upstream v0.7.0's, as they
// were before patch 3.
func refReadHeader(r *bufio.Reader) (header, error) {
	tr := textproto.NewReader(r)

	var h header
	for {
		l, err := tr.ReadLine()
		if err != nil {
			return h, fmt.Errorf("failed to read header: %v", err)
		}

		if len(l) == 0 {
			break
		} else if len(h) > 0 && (l[0] == ' ' || l[0] == '\t') {
			// This is a continuation line
			h[len(h)-1] += l + crlf
		} else {
			h = append(h, l+crlf)
		}
	}

	return h, nil
}

func refCanonicalizeHeader(s string) string {
	k, v, ok := strings.Cut(s, ":")
	if !ok {
		return strings.TrimSpace(strings.ToLower(s)) + ":" + crlf
	}

	k = strings.TrimSpace(strings.ToLower(k))
	v = strings.Join(strings.FieldsFunc(v, func(r rune) bool {
		return r == ' ' || r == '\t' || r == '\n' || r == '\r'
	}), " ")
	return k + ":" + v + crlf
}

// checkHeader reads data with readHeader and the reference, through a
// bufio.Reader of the given size (16, the smallest, splits long lines),
// and canonicalises every field both ways.
func checkHeader(t *testing.T, data []byte, size int) {
	t.Helper()
	got, gerr := readHeader(bufio.NewReaderSize(bytes.NewReader(data), size))
	want, werr := refReadHeader(bufio.NewReaderSize(bytes.NewReader(data), size))
	if fmt.Sprint(gerr) != fmt.Sprint(werr) || !reflect.DeepEqual(got, want) {
		t.Fatalf("readHeader(%q) = %q, %v; want %q, %v", data, got, gerr, want, werr)
	}
	for _, f := range append(got, string(data)) {
		var c relaxedCanonicalizer
		if g, w := c.CanonicalizeHeader(f), refCanonicalizeHeader(f); g != w {
			t.Fatalf("CanonicalizeHeader(%q) = %q, want %q", f, g, w)
		}
	}
}

var syncrelayHeaders = []string{
	"",
	"\r\n",
	"From: a@b\r\n\r\nbody",
	"From: a@b\nTo:  c@d \n\n",
	" leading: continuation\r\nFrom: a\r\n\r\n",
	"DKIM-Signature: v=1; a=rsa-sha256;\r\n d=example.org; s=x;\r\n\th=From:To;\r\n b=abc\r\n def\r\n\r\n",
	"No-Colon\r\n\r\n",
	"  Sp Ace :  x  \t y \r\n\r\n",
	"\u0130\u212a-K\u00e9y: V\u00e0lue \u00a0 x\r\n\r\n",
	"X-Bin: \xff\xfe \x80\r\n\r\n",
	"X-CR: a\rb\r\n\r\n",
	"X-Long: " + strings.Repeat("w ", 200) + "\r\n" + strings.Repeat(" c", 50) + "\r\n\r\n",
	"From: unterminated",
	"From: a\r\n folded but no end",
	"\x0bVt: x\x0c\r\n\r\n",
}

func TestSyncrelayHeaderMatchesReference(t *testing.T) {
	for _, h := range syncrelayHeaders {
		for _, size := range []int{16, 4096} {
			checkHeader(t, []byte(h), size)
		}
	}
}

func FuzzSyncrelayHeader(f *testing.F) {
	for _, h := range syncrelayHeaders {
		f.Add([]byte(h), false)
	}
	f.Fuzz(func(t *testing.T, data []byte, small bool) {
		size := 4096
		if small {
			size = 16
		}
		checkHeader(t, data, size)
	})
}

// Patch 3: upstream's readHeader makes a string per line and another per
// line of a folded field; its relaxed header canonicalisation four.
func TestSyncrelayPatch3HeaderAllocs(t *testing.T) {
	sig := "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=sel;\r\n" +
		strings.Repeat(" h=From:To:Subject:Date:Message-ID:References:In-Reply-To;\r\n", 6) +
		" b=" + strings.Repeat("A", 60) + "\r\n"
	hdr := sig + "From: a@example.org\r\nTo: b@example.net\r\nSubject: hello\r\n" +
		"Date: Mon, 2 Jan 2006 15:04:05 -0700\r\nMessage-ID: <x@y>\r\n\r\n"
	br := bufio.NewReader(nil)
	allocs := testing.AllocsPerRun(50, func() {
		br.Reset(strings.NewReader(hdr))
		if _, err := readHeader(br); err != nil {
			t.Fatal(err)
		}
	})
	// 6 fields: a string each, plus three slices (the header, the field
	// and the line being read).
	if allocs > 10 {
		t.Errorf("readHeader of 6 fields over 13 lines: %.0f allocations (patch 3: one string per field)", allocs)
	}
	var c relaxedCanonicalizer
	allocs = testing.AllocsPerRun(50, func() { c.CanonicalizeHeader("Subject:  Re:   hello \r\n  world\r\n") })
	if allocs > 1 {
		t.Errorf("relaxed CanonicalizeHeader: %.0f allocations (patch 3: one)", allocs)
	}
}

// refSigRegex, refRemoveSignature and refStripWhitespace are upstream
// v0.7.0's removeSignature and stripWhitespace, as they were before patch 4.
var refSigRegex = regexp.MustCompile(`(b\s*=)[^;]+`)

func refRemoveSignature(s string) string { return refSigRegex.ReplaceAllString(s, "$1") }

func refStripWhitespace(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsSpace(r) {
			return -1
		}
		return r
	}, s)
}

var syncrelaySigFields = []string{
	"",
	"b=",
	"b=;",
	"b=x",
	"bb=x;b=y",
	"b =x; bh = y ;b\t\r\n=z",
	"b\v=x; b\u00a0=y",
	"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org; s=brisbane;\r\n" +
		" h=From:To:Subject; bh=2jUSOH9NhtVGCQWNr9BrIAPreKQjO6Sn7XIkfJVOzv8=;\r\n" +
		" b=AuUoFEfDxTDkHlLXSZEpZj79LICEps6eda7W3deTVFOk4yAUoqOB\r\n 4nujc7YopdG5dWLSdNg6xNAZpOPr+kHxt1IrE+NahM6L/LbvaHutKVdkLLkpVaVVQPzeRDI009SO2Il5Lu7rDNH6mZckBdrIx0orEtZV4bmp/YzhwvcubU4=\r\n",
	"b=\xff\xfe;b=\xc3",
	"\xffb=ab=c;bb;=b==",
}

func checkSigTags(t *testing.T, s string) {
	t.Helper()
	if got, want := removeSignature(s), refRemoveSignature(s); got != want {
		t.Errorf("removeSignature(%q) = %q, upstream %q", s, got, want)
	}
	if got, want := stripWhitespace(s), refStripWhitespace(s); got != want {
		t.Errorf("stripWhitespace(%q) = %q, upstream %q", s, got, want)
	}
}

func TestSyncrelaySigTagsMatchReference(t *testing.T) {
	for _, s := range syncrelaySigFields {
		checkSigTags(t, s)
	}
}

func FuzzSyncrelaySigTags(f *testing.F) {
	for _, s := range syncrelaySigFields {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) { checkSigTags(t, s) })
}

// Patch 4: upstream removes the signature with a regexp (several
// allocations and a tenth of a verification's CPU, the RSA operation
// excluded); one allocation here, for the result.
func TestSyncrelayPatch4RemoveSignatureAllocs(t *testing.T) {
	sig := syncrelaySigFields[7]
	allocs := testing.AllocsPerRun(50, func() { removeSignature(sig) })
	if allocs > 1 {
		t.Errorf("removeSignature of a DKIM-Signature: %.0f allocations (patch 4: one)", allocs)
	}
}
