package smtpd

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

// DATA as go-smtp (the patched copy in third_party/go-smtp) decodes it and
// readBody checks it, over a real connection: framing, dot-unstuffing, and
// where a message with a bare CR or LF ends. Each case runs on its own
// connection; after a refused one the connection is closed.
func TestDataDecoding(t *testing.T) {
	ts := startServer(t, Options{MaxLineLength: -1, DataTimeout: 20 * time.Second})
	for _, tc := range []struct {
		in, body string
		bare     bool // refused with 550 5.6.0 and closed
	}{
		{in: ".\r\n", body: ""},
		{in: "a\r\n.\r\n", body: "a\r\n"},
		{in: "..a\r\n..\r\n.\r\n", body: ".a\r\n.\r\n"},
		{in: ".a\r\n.\r\n", body: "a\r\n"},
		{in: "a\r\n.\rb\r\n.\r\n", bare: true}, // the CR upstream go-smtp's decoder drops
		{in: "a\r\n.\nb\r\n.\r\n", bare: true}, // bare LF after the dot
		{in: "a\n.\r\nb\r\n.\r\n", bare: true}, // "\n.\r\n" ends a doomed message, never a good one
		{in: "a\r.\rb\r\n.\r\n", bare: true},
		{in: "a\n.\n", bare: true},
		{in: "a\n..\r\nb\r\n.\r\n", bare: true},                                                 // "..": a stuffed dot to anyone
		{in: "a\r\r\n.\r\nb\r\n.\r\n", bare: true},                                              // literal CRLF.CRLF ends it
		{in: strings.Repeat("x", 5000) + "\r\n.\r\n", body: strings.Repeat("x", 5000) + "\r\n"}, // longer than a read
	} {
		before := len(ts.del.all())
		r := ts.inData(t, inboundAddr)
		r.send(tc.in)
		if tc.bare {
			if txt := r.expect(550); txt != "5.6.0 Bare CR or LF not allowed (reason=bare_eol)" {
				t.Errorf("%q: reply %q", tc.in, txt)
			}
			r.expectClosed()
			if n := len(ts.del.all()); n != before {
				t.Errorf("%q delivered", tc.in)
			}
			continue
		}
		r.expect(250)
		d := ts.del.all()
		if len(d) != before+1 || !bytes.Equal(d[before].body, []byte(tc.body)) {
			t.Errorf("%q: delivered %d, want body %q", tc.in, len(d)-before, tc.body)
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
	if DataReply(discardLogger(), b.end()).Code != 552 { // also over 10 bytes: size wins
		t.Fatalf("end = %v", b.end())
	}
	if out.String() != "abcd\r\n" {
		t.Fatalf("stored %q after failure", out.String())
	}
}
