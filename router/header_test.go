package router

import (
	"bufio"
	"bytes"
	"io"
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
