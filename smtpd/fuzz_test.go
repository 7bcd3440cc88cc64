package smtpd

import (
	"bufio"
	"bytes"
	"io"
	"testing"
)

// FuzzReadData checks the DATA decoder's invariants on arbitrary streams:
// it never panics; when it stops without an error, either it stopped at a
// fake terminator and the message is refused for a bare CR or LF, or the
// stream left for go-smtp starts with the ".\r\n" terminator; when it
// accepts a body, the body has no bare CR or LF and is exactly the consumed
// bytes with each line's leading dot removed (RFC 5321 §4.5.2).
func FuzzReadData(f *testing.F) {
	for _, s := range []string{
		"a\r\n.\r\n", ".a\r\n.\r\n", "a\r\n.\rb\r\n.\r\n", "a\n.\r\nb\r\n.\r\n",
		"a\r\r\n.\r\nMAIL FROM:<x>\r\n", "\r\n.\r\n", ".\r\n", "a\n.\n", "..\r\n.\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		var out bytes.Buffer
		br := bufio.NewReaderSize(bytes.NewReader(in), 16)
		b := &bodyChecker{dst: &out}
		if err := readData(br, b, func() {}); err != nil {
			return
		}
		if b.fakeEnd {
			if !b.bareEOL || b.end() == nil {
				t.Fatalf("%q: stopped at a fake terminator without refusing the message", in)
			}
			return
		}
		rest, _ := io.ReadAll(br)
		if !bytes.HasPrefix(rest, []byte(".\r\n")) {
			t.Fatalf("accepted %q but left %q (no terminator next)", in, rest)
		}
		if b.end() != nil {
			return // rejected for bare CR/LF or a limit: one 5xx, nothing delivered
		}
		body := out.Bytes()
		for i, c := range body {
			if c == '\r' && (i+1 >= len(body) || body[i+1] != '\n') {
				t.Fatalf("bare CR accepted in %q", in)
			}
			if c == '\n' && (i == 0 || body[i-1] != '\r') {
				t.Fatalf("bare LF accepted in %q", in)
			}
		}
		consumed := in[:len(in)-len(rest)]
		var unstuffed bytes.Buffer
		for _, line := range bytes.SplitAfter(consumed, []byte("\r\n")) {
			unstuffed.Write(bytes.TrimPrefix(line, []byte(".")))
		}
		if !bytes.Equal(unstuffed.Bytes(), body) {
			t.Fatalf("consumed %q decoded to %q, want %q", consumed, body, unstuffed.Bytes())
		}
	})
}

// FuzzBodyCheckerFastPath: feeding whole lines (the fast path), one byte
// at a time (the plain scan), everything at once and in chunks of any size
// (as BDAT reads come, lines and reads unaligned) reach the same verdict.
func FuzzBodyCheckerFastPath(f *testing.F) {
	for _, s := range []string{"ab\r\ncd\r\n", "a\rb\r\n", "a\n\r\n", "\r\n\r\n", "abcdef\r\nx\r\n", "a\nb\r\n", "x\r.\ry\r\n"} {
		f.Add([]byte(s), uint8(4), uint8(3))
	}
	f.Fuzz(func(t *testing.T, in []byte, maxLine, chunk uint8) {
		type verdict struct {
			bare, fake, long, mid bool
			n                     int64
		}
		run := func(split func(func([]byte))) verdict {
			b := bodyChecker{dst: io.Discard, maxLine: int(maxLine)}
			split(b.feed)
			return verdict{b.bareEOL, b.fakeEnd, b.longLine, b.midLine, b.n}
		}
		want := run(func(feed func([]byte)) {
			for i := range in {
				feed(in[i : i+1])
			}
		})
		for name, split := range map[string]func(func([]byte)){
			"by lines": func(feed func([]byte)) {
				for _, l := range bytes.SplitAfter(in, []byte("\n")) {
					feed(l)
				}
			},
			"at once": func(feed func([]byte)) { feed(in) },
			"in chunks": func(feed func([]byte)) {
				for p, n := in, int(chunk)+1; len(p) > 0; p = p[min(n, len(p)):] {
					feed(p[:min(n, len(p))])
				}
			},
		} {
			if got := run(split); got != want {
				t.Fatalf("%q maxLine %d chunk %d: %s %+v, byte by byte %+v", in, maxLine, chunk, name, got, want)
			}
		}
	})
}
