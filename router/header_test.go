package router

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-message/textproto"
)

// onlyReader hides bytes.Reader's Seek, for bodyAfterHeader's fallback.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(p []byte) (int, error) { return o.r.Read(p) }

type streamBody []byte

func (b streamBody) Open() io.Reader { return onlyReader{bytes.NewReader(b)} }
func (b streamBody) Size() int64     { return int64(len(b)) }

// TestBodyAfterHeader: the body parse finds at the header length it
// measured is exactly where a second parse of the header stops (what
// bodyAfterHeader did before), seekable or not.
func TestBodyAfterHeader(t *testing.T) {
	t.Parallel()
	long := "X-Long: " + strings.Repeat("a", 9000) + "\r\n"
	cases := map[string]string{
		"crlf":             "From: a@b.test\r\nSubject: hi\r\n\r\nbody\r\nmore\r\n",
		"lf":               "From: a@b.test\nSubject: hi\n\nbody\nmore\n",
		"folded":           "From: a@b.test\r\nSubject: hi\r\n there\r\n\tagain\r\n\r\nbody\r\n",
		"no body":          "From: a@b.test\r\nSubject: hi\r\n",
		"no body no eol":   "From: a@b.test\r\nSubject: hi",
		"empty body":       "From: a@b.test\r\n\r\n",
		"long field":       "From: a@b.test\r\n" + long + "\r\n" + strings.Repeat("body line\r\n", 1000),
		"header over 4096": strings.Repeat("X-A: "+strings.Repeat("b", 70)+"\r\n", 100) + "\r\nbody\r\n",
		"blank line first": "\r\nbody\r\n",
		"multipart":        "Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nhi\r\n--x--\r\n",
	}
	r := &Router{}
	for name, msg := range cases {
		br := bufio.NewReader(strings.NewReader(msg))
		_, _ = textproto.ReadHeader(br)
		want, _ := io.ReadAll(br)
		for _, b := range []Body{memBody(msg), streamBody(msg)} {
			_, n, err := r.readHeader(b)
			if err != nil {
				t.Fatalf("%s: readHeader: %v", name, err)
			}
			got, err := io.ReadAll(bodyAfterHeader(b, n))
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s (%T): body %q, %v; want %q", name, b, truncate(got), err, truncate(want))
			}
		}
	}
}

func truncate(b []byte) string {
	if len(b) > 40 {
		return string(b[:40]) + "..."
	}
	return string(b)
}

// FuzzScanHeader: scanHeader refuses what readHeader refuses (too large,
// malformed), measures the same header length, and holds exactly
// readHeader's values of the fields it keeps, in the same order.
func FuzzScanHeader(f *testing.F) {
	for _, s := range []string{
		"From: Carl <carl@cand.test>\r\nmessage-id: <a@b>\r\nReferences: <x@y>\r\n <z@w>\r\nIn-Reply-To: <x@y>\r\n\r\nbody\r\n",
		"References: <a@b>\r\nX-Other: 1\r\nreferences: <c@d>\r\nREFERENCES : <e@f>\r\n\r\n",
		" From: a@b\r\n\r\n",
		"From a@b\r\n\r\n",
		"Fr(m: a@b\r\n\r\n",
		": empty key\r\nFrom: a@b\r\n\r\n",
		"X-Syncrelay-Thread: t\nX-Syncrelay-Probe: p\nThread-Index: AQ==\nContent-Type: multipart/report; report-type=delivery-status\n\n",
		"From: a@b\r\nSubject: hi",
		"",
		"\r\n",
		"From: a@b\r\nX-Pad: " + strings.Repeat("x", 300) + "\r\n\r\n",
		"From: a@b\r\n\tfolded\r\n \r\nTo: c\r\n\r\n",
	} {
		f.Add([]byte(s), uint16(200))
		f.Add([]byte(s), uint16(0))
	}
	f.Fuzz(func(t *testing.T, raw []byte, limit uint16) {
		r := &Router{MaxHeaderBytes: int64(limit)}
		for _, b := range []Body{memBody(raw), streamBody(raw)} {
			want, wantN, wantErr := r.readHeader(b)
			got, gotN, gotErr := r.scanHeader(b)
			var tooBig *headerTooLarge
			if (gotErr == nil) != (wantErr == nil) || errors.As(gotErr, &tooBig) != errors.As(wantErr, &tooBig) {
				t.Fatalf("%q: scanHeader error %v, readHeader %v", raw, gotErr, wantErr)
			}
			if wantErr != nil {
				continue
			}
			if gotN != wantN {
				t.Fatalf("%q: scanHeader length %d, readHeader %d", raw, gotN, wantN)
			}
			for _, k := range narrowKeys {
				if g, w := got.Values(k), want.Values(k); !slices.Equal(g, w) {
					t.Fatalf("%q: %s: scanHeader %q, readHeader %q", raw, k, g, w)
				}
			}
		}
	})
}

// FuzzIsReport: isReport's shortcut decides as mime.ParseMediaType alone
// did, whatever the Content-Type.
func FuzzIsReport(f *testing.F) {
	for _, s := range []string{
		"text/plain; charset=utf-8", "multipart/report; report-type=delivery-status; boundary=x",
		" Multipart/Report ;report-type=Delivery-Status", "multipart/report", "MULTİPART/REPORT; report-type=delivery-status",
		"multipart/report; report-type=delivery-status; x", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if strings.ContainsAny(v, "\r\n") {
			return // not a one-line field
		}
		h := &narrowHeader{fields: [][]byte{[]byte("Content-Type: " + v + "\r\n")}}
		mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
		want := err == nil && mt == "multipart/report" && strings.EqualFold(params["report-type"], "delivery-status")
		if got := isReport(h); got != want {
			t.Fatalf("isReport(%q) = %v, ParseMediaType says %v", v, got, want)
		}
	})
}

// FuzzPlainAddress: where plainAddress answers, net/mail parses the same
// address.
func FuzzPlainAddress(f *testing.F) {
	for _, s := range []string{
		"carl@cand.test", "Carl Candidate <Carl@Cand.test>", " <a@b> ", "a.b@c.d", "=?utf-8?q?x?= <a@b>",
		"\"Carl\" <a@b>", "a@b, c@d", "Carl <a@b> x", "Carl <a@[1.2.3.4]>", "a..b@c", "<a@b", "Carl\t<a@b>\t",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		got, ok := plainAddress(v)
		if !ok {
			return
		}
		a, err := (&mail.AddressParser{WordDecoder: wordDecoder}).Parse(v)
		if err != nil || a.Address != got {
			t.Fatalf("plainAddress(%q) = %q; net/mail: %v, %v", v, got, a, err)
		}
	})
}

// referencedIDs keeps the first of each id, In-Reply-To's first and then
// References newest first, below and above the few it checks without a map.
func TestReferencedIDsDedupe(t *testing.T) {
	t.Parallel()
	var refs []string
	for i := 0; i < 20; i++ {
		refs = append(refs, fmt.Sprintf("<r%d@x.test>", i%13)) // r0..r12, then r0..r6 again
	}
	h := &narrowHeader{fields: [][]byte{
		[]byte("In-Reply-To: <r3@x.test> <r3@x.test> <irt@x.test>\r\n"),
		[]byte("References: " + strings.Join(refs, " ") + "\r\n"),
	}}
	want := []string{"r3@x.test", "irt@x.test", "r6@x.test", "r5@x.test", "r4@x.test", "r2@x.test", "r1@x.test", "r0@x.test",
		"r12@x.test", "r11@x.test", "r10@x.test", "r9@x.test", "r8@x.test", "r7@x.test"}
	if got := referencedIDs(h); !slices.Equal(got, want) {
		t.Fatalf("referencedIDs = %q, want %q", got, want)
	}
}
