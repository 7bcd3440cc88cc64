package smtpd

import (
	"bufio"
	"bytes"
	"io"
	"testing"
)

// FuzzReadData checks the DATA decoder's invariants on arbitrary streams:
// it never panics; when it accepts a body, the stream left for go-smtp
// starts with the ".\r\n" terminator, the body has no bare CR or LF, and
// the body is exactly the consumed bytes with each line's leading dot
// removed (RFC 5321 §4.5.2).
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

// FuzzBodyCheckerFastPath: feeding whole lines (feed's fast path) and
// feeding one byte at a time (the plain scan) reach the same verdict.
func FuzzBodyCheckerFastPath(f *testing.F) {
	for _, s := range []string{"ab\r\ncd\r\n", "a\rb\r\n", "a\n\r\n", "\r\n\r\n", "abcdef\r\nx\r\n"} {
		f.Add([]byte(s), uint8(4))
	}
	f.Fuzz(func(t *testing.T, in []byte, maxLine uint8) {
		var lines, bytewise bodyChecker
		lines.dst, bytewise.dst = io.Discard, io.Discard
		lines.maxLine, bytewise.maxLine = int(maxLine), int(maxLine)
		for _, l := range bytes.SplitAfter(in, []byte("\n")) {
			lines.feed(l)
		}
		for i := range in {
			bytewise.feed(in[i : i+1])
		}
		type verdict struct {
			bare, long, mid bool
			n               int64
		}
		a := verdict{lines.bareEOL, lines.longLine, lines.midLine, lines.n}
		b := verdict{bytewise.bareEOL, bytewise.longLine, bytewise.midLine, bytewise.n}
		if a != b {
			t.Fatalf("%q maxLine %d: by lines %+v, byte by byte %+v", in, maxLine, a, b)
		}
	})
}
