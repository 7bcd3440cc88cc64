package mailhdr

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/emersion/go-message/textproto"
)

func addFixtures(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.eml")
	for _, file := range files {
		raw, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
}

// splitMessage is readMessage for fuzzing: ok is false when the header is
// unreadable (the SMTP layer would not get this far).
func splitMessage(raw []byte) (textproto.Header, *bufio.Reader, bool) {
	br := bufio.NewReader(bytes.NewReader(raw))
	h, err := textproto.ReadHeader(br)
	return h, br, err == nil
}

func checkID(t *testing.T, id string) {
	t.Helper()
	if id == "" || len(id) > MaxMsgIDLen || !strings.Contains(id, "@") ||
		strings.ContainsAny(id, "<>\r\n") || !utf8.ValidString(id) {
		t.Fatalf("bad id %q", id)
	}
	if n, ok := NormalizeMsgID(id); !ok || n != id {
		t.Fatalf("NormalizeMsgID(%q) = %q, %v: not idempotent", id, n, ok)
	}
	if n, ok := NormalizeMsgID("<" + id + ">"); !ok || n != id {
		t.Fatalf("NormalizeMsgID(<%q>) = %q, %v", id, n, ok)
	}
}

func FuzzMsgIDs(f *testing.F) {
	for _, s := range []string{
		"<a@b.test>",
		"<a@x.test>,\r\n <B@Y.TEST> (comment <c@z.test>) \"q <d@w.test>\"",
		`<"a b"@x.test> <a@[1.2.3.4]> <a(c)@x.test>`,
		"a@x.test b@y.test",
		"<<<>>>@@@(((\"\"\"",
		"<sr.aecwc3lnmu2zbaqbdn3dmqvzswyrn4ubvu@Relay.Example.COM>",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		ids := MsgIDs(v)
		if len(ids) > len(v)/3 { // "a@b" is the shortest id
			t.Fatalf("%d ids", len(ids))
		}
		for _, id := range ids {
			checkID(t, id)
			if got := MsgIDs("<" + id + ">"); len(got) != 1 || got[0] != id {
				t.Fatalf("MsgIDs(<%q>) = %q", id, got)
			}
		}
		if id, ok := NormalizeMsgID(v); ok {
			if strings.ContainsAny(id, "<>") || len(id) > MaxMsgIDLen {
				t.Fatalf("NormalizeMsgID(%q) = %q", v, id)
			}
			if again, ok := NormalizeMsgID(id); !ok || again != id {
				t.Fatalf("NormalizeMsgID not idempotent: %q -> %q -> %q", v, id, again)
			}
		}
	})
}

func FuzzAutoReply(f *testing.F) {
	f.Add([]byte("Auto-Submitted: auto-replied\r\n\r\n"))
	f.Add([]byte("X-MS-Exchange-Generated-Message-Source: Mailbox Rules Agent\r\nX-MS-Exchange-Inbox-Rules-Loop: a@b\r\nX-Auto-Response-Suppress: All\r\n\r\n"))
	f.Add([]byte("Precedence: auto_reply (x\r\n\r\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		h, _, _ := splitMessage(raw)
		ok, reason := AutoReply(h)
		if ok != (reason != "") {
			t.Fatalf("AutoReply = %v, %q", ok, reason)
		}
	})
}

func FuzzParseDSN(f *testing.F) {
	addFixtures(f)
	f.Add([]byte("Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n" +
		"Content-Type: message/delivery-status\r\n\r\n\r\nFinal-Recipient: rfc822; a@b\r\nAction: failed\r\nStatus: 5.1.1\r\n" +
		"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <x@y>\r\n--b--\r\n"))
	f.Add([]byte("Content-Type: multipart/report; boundary=b\r\n\r\n--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n--b--\r\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		h, body, ok := splitMessage(raw)
		if !ok {
			return
		}
		d, ok, err := ParseDSN(h, body, 5, 1<<16)
		if err != nil && !errors.Is(err, ErrTooDeep) && !errors.Is(err, ErrTooLarge) {
			t.Fatalf("unexpected error %v", err)
		}
		if !ok {
			if d.MessageID != "" || d.Status != "" || d.Action != "" || d.Diagnostic != "" || d.Recipient != "" || len(d.OriginalMessageIDs) != 0 {
				t.Fatalf("not a DSN but %+v", d)
			}
			return
		}
		seen := map[string]bool{}
		for _, id := range d.OriginalMessageIDs {
			checkID(t, id)
			if seen[id] {
				t.Fatalf("duplicate id %q", id)
			}
			seen[id] = true
		}
		if d.MessageID != "" && (len(d.OriginalMessageIDs) == 0 || d.OriginalMessageIDs[0] != d.MessageID) {
			t.Fatalf("MessageID %q not first in %q", d.MessageID, d.OriginalMessageIDs)
		}
		if len(d.Diagnostic) > MaxDiagnosticLen || !utf8.ValidString(d.Diagnostic) || !utf8.ValidString(d.Recipient) {
			t.Fatalf("bad diagnostic/recipient %q %q", d.Diagnostic, d.Recipient)
		}
		if d.Status != "" && statusCode(d.Status) != d.Status {
			t.Fatalf("bad status %q", d.Status)
		}
	})
}

func FuzzMIMEDepth(f *testing.F) {
	addFixtures(f)
	f.Add([]byte("From: a@b\r\n" + nestedMIME(7)))
	f.Add([]byte("Content-Type: message/rfc822\r\n\r\nContent-Type: message/rfc822\r\n\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\n--x--\r\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		h, body, ok := splitMessage(raw)
		if !ok {
			return
		}
		const limit = 6
		d, err := MIMEDepth(h, body, limit)
		switch {
		case err == nil:
			if d < 0 || d > limit {
				t.Fatalf("depth %d with limit %d and no error", d, limit)
			}
		case errors.Is(err, ErrTooDeep):
			if d != limit+1 {
				t.Fatalf("ErrTooDeep with depth %d", d)
			}
		default:
			t.Fatalf("unexpected error %v", err)
		}
	})
}

// FuzzPlainID: where plainID decides, fullNormID decides the same.
func FuzzPlainID(f *testing.F) {
	for _, s := range []string{
		"a@b.test", "A.B@X.Test", "a@b..c", "a@.b", "a@b.", "@b", "a@", "a@b@c", "a@b:c", "a b@c",
		"a(c)@b", "\"a\"@b", "a@[1.2.3.4]", "a\\b@c", "é@b", "sr.aecwc3lnmu2zbaqbdn3dmqvzswyrn4ubvu@Relay.Example.COM",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, ok, decided := plainID(s)
		if !decided {
			return
		}
		if wantID, wantOK := fullNormID(s); id != wantID || ok != wantOK {
			t.Fatalf("plainID(%q) = %q, %v; fullNormID %q, %v", s, id, ok, wantID, wantOK)
		}
	})
}
