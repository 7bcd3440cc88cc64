package smtpd

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"strings"
	"testing"
)

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// readData on its own: framing, dot-unstuffing and the checks, and what is
// left in the buffer for go-smtp.
func TestReadData(t *testing.T) {
	for _, tc := range []struct {
		in, body, rest string
		bare           bool
		fake           bool // ends at a "." line with a bare CR or LF
		eof            bool // no terminator: runs out of input
	}{
		{in: ".\r\nNEXT", body: "", rest: ".\r\nNEXT"},
		{in: "a\r\n.\r\n", body: "a\r\n", rest: ".\r\n"},
		{in: "..a\r\n..\r\n.\r\n", body: ".a\r\n.\r\n", rest: ".\r\n"},
		{in: ".a\r\n.\r\n", body: "a\r\n", rest: ".\r\n"},
		{in: "a\r\n.\rb\r\n.\r\n", bare: true, fake: true}, // the CR go-smtp's decoder drops
		{in: "a\r\n.\nb\r\n.\r\n", bare: true, fake: true}, // bare LF after the dot
		{in: "a\n.\r\nb\r\n.\r\n", bare: true, fake: true}, // "\n.\r\n" ends a doomed message, never a good one
		{in: "a\r.\rb\r\n.\r\n", bare: true, fake: true},
		{in: "a\n.\n", bare: true, fake: true},
		{in: "a\n..\r\nb\r\n.\r\n", bare: true, rest: ".\r\n"},              // "..": a stuffed dot to anyone
		{in: "a\r\r\n.\r\nb\r\n.\r\n", bare: true, rest: ".\r\nb\r\n.\r\n"}, // literal CRLF.CRLF ends it
		{in: "a\r\n", eof: true},
		{in: "a\r\n.", eof: true},
		{in: strings.Repeat("x", 5000) + "\r\n.\r\n", body: strings.Repeat("x", 5000) + "\r\n", rest: ".\r\n"}, // longer than the buffer
	} {
		var out bytes.Buffer
		br := bufio.NewReaderSize(strings.NewReader(tc.in), 16)
		b := &bodyChecker{dst: &out}
		err := readData(br, b, func() {})
		if tc.eof {
			if err == nil {
				t.Errorf("%q: no error without a terminator", tc.in)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		if b.fakeEnd != tc.fake {
			t.Errorf("%q: fakeEnd %v", tc.in, b.fakeEnd)
		}
		rest, _ := io.ReadAll(br)
		if !tc.fake && string(rest) != tc.rest {
			t.Errorf("%q: left %q, want %q", tc.in, rest, tc.rest)
		}
		endErr := b.end()
		if tc.bare != (endErr != nil) {
			t.Errorf("%q: end() = %v", tc.in, endErr)
		}
		if !tc.bare && out.String() != tc.body {
			t.Errorf("%q: body %q, want %q", tc.in, out.String(), tc.body)
		}
	}
}

func TestBodyCheckerLimits(t *testing.T) {
	var out bytes.Buffer
	b := &bodyChecker{dst: &out, max: 10, maxLine: 6}
	b.feed([]byte("abcd\r\n"))
	if b.failed() {
		t.Fatal("6-byte line with maxLine 6")
	}
	b.feed([]byte("abcde\r\n"))
	if !b.longLine {
		t.Fatal("7-byte line accepted")
	}
	if replyCode(b.end()) != 552 { // also over 10 bytes: size wins
		t.Fatalf("end = %v", b.end())
	}
	if out.String() != "abcd\r\n" {
		t.Fatalf("stored %q after failure", out.String())
	}
}
