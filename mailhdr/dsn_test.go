package mailhdr

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/emersion/go-message/textproto"
)

// readMessage splits raw into its header and a reader for the body.
func readMessage(t testing.TB, raw []byte) (textproto.Header, io.Reader) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(raw))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		t.Fatalf("ReadHeader: %v", err)
	}
	return h, br
}

func readFixture(t testing.TB, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestFixturesUseCRLF(t *testing.T) {
	files, _ := filepath.Glob("testdata/*.eml")
	if len(files) == 0 {
		t.Fatal("no fixtures")
	}
	for _, f := range files {
		raw, _ := os.ReadFile(f)
		if bytes.Count(raw, []byte("\n")) != bytes.Count(raw, []byte("\r\n")) {
			t.Errorf("%s has bare LF line endings", f)
		}
	}
}

func TestParseDSNFixtures(t *testing.T) {
	tests := []struct {
		file     string
		want     DSN
		diagPref string // Diagnostic is checked by prefix when set
	}{
		{
			file: "gmail_dsn.eml", // Gmail: multipart/related inside the report, message/rfc822 returned
			want: DSN{
				OriginalMessageIDs: []string{"sr.aecwc3lnmu2zbaqbdn3dmqvzswyrn4ubvu@relay.example.com"},
				MessageID:          "sr.aecwc3lnmu2zbaqbdn3dmqvzswyrn4ubvu@relay.example.com",
				Status:             "5.1.1",
				Action:             "failed",
				Recipient:          "nosuchuser@cand.test",
			},
			diagPref: "550-5.1.1 The email account that you tried to reach does not exist. Please try 550-5.1.1 double-checking",
		},
		{
			file: "gmail_dsn_headers.eml", // Gmail: text/rfc822-headers, first recipient only delayed
			want: DSN{
				OriginalMessageIDs: []string{
					"CAFx9jN1q=Zq7uXk4Ls_v3wXk2kP8b2mC=XyZ0t1VdE@mail.gmail.com",
					"CAB7kq0aW1x2y3z4=ab-cd_ef@mail.gmail.com",
					"sr.aecwc3lnmu2zbaqbdn3dmqvzswyrn4ubvu@relay.example.com",
				},
				MessageID:  "CAFx9jN1q=Zq7uXk4Ls_v3wXk2kP8b2mC=XyZ0t1VdE@mail.gmail.com",
				Status:     "5.1.1",
				Action:     "failed",
				Recipient:  "gone@cand.test",
				Diagnostic: "550 5.1.1 <gone@cand.test>: Recipient address rejected: User unknown",
			},
		},
		{
			file: "exchange_ndr.eml", // Exchange Online NDR
			want: DSN{
				OriginalMessageIDs: []string{
					"DM6PR11MB46573F1E2A3B4C5D6E7F8A9BB8C7D@dm6pr11mb4657.namprd11.prod.outlook.com",
					"sr.aebqcylsmfzgs4a2hvbl4ts5qbz3rtfx2m@relay.example.com",
				},
				MessageID:  "DM6PR11MB46573F1E2A3B4C5D6E7F8A9BB8C7D@dm6pr11mb4657.namprd11.prod.outlook.com",
				Status:     "5.1.10",
				Action:     "failed",
				Recipient:  "candidate@cand.test",
				Diagnostic: "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient candidate@cand.test not found by SMTP address lookup",
			},
		},
		{
			file: "postfix_dsn.eml", // Postfix: text/rfc822-headers
			want: DSN{
				OriginalMessageIDs: []string{"sr.aebqcylsmfzgs4a2hvbl4ts5qbz3rtfx2m@relay.example.com"},
				MessageID:          "sr.aebqcylsmfzgs4a2hvbl4ts5qbz3rtfx2m@relay.example.com",
				Status:             "5.1.1",
				Action:             "failed",
				Recipient:          "nosuch@cand.test",
				Diagnostic:         "550 5.1.1 <nosuch@cand.test>: Recipient address rejected: User unknown in virtual mailbox table",
			},
		},
		{
			file: "postfix_dsn_rfc822.eml", // Postfix: message/rfc822, expired (4.4.1 but failed)
			want: DSN{
				OriginalMessageIDs: []string{
					"sr.aecwc3lnmu2zbaqbdn3dmqvzsxyrn4ubvu@relay.example.com",
					"sr.aecwc3lnmu2zbaqbdn3dmqvzswyrn4ubvu@relay.example.com",
					"CAHk7=wg9XyZ@mail.gmail.com",
				},
				MessageID:  "sr.aecwc3lnmu2zbaqbdn3dmqvzsxyrn4ubvu@relay.example.com",
				Status:     "4.4.1",
				Action:     "failed",
				Recipient:  "carl@cand.test",
				Diagnostic: "delivery temporarily suspended: connect to store.cand.test[10.0.0.5]:24: Connection refused",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			raw := readFixture(t, tt.file)
			for _, variant := range []struct {
				name string
				raw  []byte
			}{{"crlf", raw}, {"lf", bytes.ReplaceAll(raw, []byte("\r\n"), []byte("\n"))}} {
				h, body := readMessage(t, variant.raw)
				d, ok, err := ParseDSN(h, body, 20, 0)
				if err != nil || !ok {
					t.Fatalf("%s: ParseDSN ok=%v err=%v", variant.name, ok, err)
				}
				got := d
				if tt.diagPref != "" {
					if !strings.HasPrefix(d.Diagnostic, tt.diagPref) {
						t.Errorf("%s: Diagnostic = %q, want prefix %q", variant.name, d.Diagnostic, tt.diagPref)
					}
					got.Diagnostic = ""
				}
				if !reflect.DeepEqual(got, tt.want) {
					t.Errorf("%s: ParseDSN\n got %+v\nwant %+v", variant.name, got, tt.want)
				}
			}
		})
	}
}

// hugeReader yields an endless stream of 'x' lines.
type hugeReader struct{ n int64 }

func (h *hugeReader) Read(p []byte) (int, error) {
	for i := range p {
		if i%76 == 75 {
			p[i] = '\n'
		} else {
			p[i] = 'x'
		}
	}
	h.n += int64(len(p))
	return len(p), nil
}

func TestParseDSNStopsAfterReturnedHeaders(t *testing.T) {
	raw := readFixture(t, "exchange_ndr.eml")
	// Cut the fixture inside the returned message body and continue forever.
	cut := bytes.Index(raw, []byte("Hi Carl,"))
	h, body := readMessage(t, raw[:cut])
	hr := &hugeReader{}
	d, ok, err := ParseDSN(h, io.MultiReader(body, hr), 20, 0)
	if err != nil || !ok || d.Status != "5.1.10" || d.MessageID == "" {
		t.Fatalf("got %+v ok=%v err=%v", d, ok, err)
	}
	if hr.n > 1<<20 {
		t.Errorf("read %d bytes of the returned body", hr.n)
	}
}

func TestParseDSNLimits(t *testing.T) {
	raw := readFixture(t, "gmail_dsn.eml")

	h, body := readMessage(t, raw)
	d, ok, err := ParseDSN(h, body, 20, 300)
	if !errors.Is(err, ErrTooLarge) || !ok {
		t.Fatalf("small maxBytes: ok=%v err=%v, want ok and ErrTooLarge", ok, err)
	}
	if d.Status != "" {
		t.Errorf("status found within 300 bytes? %+v", d)
	}
	// The outer In-Reply-To still names the bounced message.
	if len(d.OriginalMessageIDs) != 1 || !strings.HasPrefix(d.OriginalMessageIDs[0], "sr.") {
		t.Errorf("fallback ids = %q", d.OriginalMessageIDs)
	}

	// Gmail nests the human-readable part two levels deep: depth limit 1
	// reports it, after nothing useful was found.
	h, body = readMessage(t, raw)
	_, ok, err = ParseDSN(h, body, 1, 0)
	if !errors.Is(err, ErrTooDeep) || !ok {
		t.Fatalf("maxDepth 1: ok=%v err=%v, want ok and ErrTooDeep", ok, err)
	}

	// Nesting 25 deep inside a report with limit 20.
	msg := "From: MAILER-DAEMON@x.test\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=rep\r\n\r\n" +
		"--rep\r\n" + nestedMIME(24) + "\r\n--rep\r\nContent-Type: message/delivery-status\r\n\r\n" +
		"Final-Recipient: rfc822; a@b.test\r\nAction: failed\r\nStatus: 5.0.0\r\n\r\n--rep--\r\n"
	h, body = readMessage(t, []byte(msg))
	_, ok, err = ParseDSN(h, body, 20, 0)
	if !errors.Is(err, ErrTooDeep) || !ok {
		t.Fatalf("deep report: ok=%v err=%v", ok, err)
	}
	// Same message within the limit.
	h, body = readMessage(t, []byte(msg))
	d, ok, err = ParseDSN(h, body, 30, 0)
	if err != nil || !ok || d.Status != "5.0.0" {
		t.Fatalf("deep report, limit 30: %+v ok=%v err=%v", d, ok, err)
	}
}

type failingReader struct {
	r   io.Reader
	err error
}

func (f *failingReader) Read(p []byte) (int, error) {
	n, err := f.r.Read(p)
	if err == io.EOF {
		return n, f.err
	}
	return n, err
}

func TestParseDSNReadError(t *testing.T) {
	raw := readFixture(t, "postfix_dsn.eml")
	cut := bytes.Index(raw, []byte("Final-Recipient"))
	h, body := readMessage(t, raw[:cut])
	boom := errors.New("disk on fire")
	_, ok, err := ParseDSN(h, &failingReader{body, boom}, 20, 0)
	if !errors.Is(err, boom) || !ok {
		t.Fatalf("ok=%v err=%v, want ok and the read error", ok, err)
	}
}

func TestParseDSNShapes(t *testing.T) {
	const ds = "Content-Type: message/delivery-status\r\n\r\n" +
		"Reporting-MTA: dns; mx.example.net\r\n\r\n"
	tests := []struct {
		name   string
		msg    string
		ok     bool
		want   DSN
		noWant bool // only check ok
	}{
		{name: "plain text", msg: "Content-Type: text/plain\r\n\r\nhello\r\n", ok: false, noWant: true},
		{name: "no content type", msg: "Subject: hi\r\n\r\nhello\r\n", ok: false, noWant: true},
		{name: "multipart mixed", msg: "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" + ds +
			"Final-Recipient: rfc822; a@b.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n", ok: false, noWant: true},
		{name: "read receipt", msg: "Content-Type: multipart/report; report-type=disposition-notification; boundary=b\r\n\r\n--b\r\n" +
			"Content-Type: message/disposition-notification\r\n\r\nDisposition: manual-action/MDN-sent-manually; displayed\r\n\r\n--b--\r\n", ok: false, noWant: true},
		{name: "ARF", msg: "Content-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n--b\r\n" +
			"Content-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n\r\n--b--\r\n", ok: false, noWant: true},
		{name: "report without report-type but with status", ok: true,
			msg: "Content-Type: multipart/report; boundary=b\r\n\r\n--b\r\n" + ds +
				"Final-Recipient: rfc822;<a@b.test>\r\nAction: Failed\r\nStatus: 5.2.2 (mailbox full)\r\n\r\n--b--\r\n",
			want: DSN{Recipient: "a@b.test", Action: "failed", Status: "5.2.2"}},
		{name: "report without report-type and without status", ok: false, noWant: true,
			msg: "Content-Type: multipart/report; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b--\r\n"},
		{name: "declared but junk body", ok: true,
			msg:  "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\nIn-Reply-To: <X@Y.test>\r\n\r\njunk junk\r\n",
			want: DSN{OriginalMessageIDs: []string{"X@y.test"}}},
		{name: "declared without boundary", ok: true,
			msg:  "Content-Type: multipart/report; report-type=delivery-status\r\n\r\njunk\r\n",
			want: DSN{}},
		{name: "global delivery status", ok: true,
			msg: "Content-Type: multipart/report; report-type=global-delivery-status; boundary=b\r\n\r\n--b\r\n" +
				"Content-Type: message/global-delivery-status\r\n\r\nReporting-MTA: dns; mx\r\n\r\n" +
				"Final-Recipient: utf-8; ü@b.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b\r\n" +
				"Content-Type: message/global-headers\r\n\r\nMessage-ID: <m@b.test>\r\n--b--\r\n",
			want: DSN{OriginalMessageIDs: []string{"m@b.test"}, MessageID: "m@b.test", Recipient: "ü@b.test", Action: "failed", Status: "5.1.1"}},
		{name: "picks first failed; status from diagnostic", ok: true,
			msg: "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n" + ds +
				"Final-Recipient: rfc822; ok@b.test\r\nAction: delivered\r\nStatus: 2.0.0\r\n\r\n" +
				"Final-Recipient: rfc822; bad@b.test\r\nAction: failed\r\nStatus: 5.0.0.0.0\r\nDiagnostic-Code: smtp; 550-5.7.1 blocked\r\n\r\n--b--\r\n",
			want: DSN{Recipient: "bad@b.test", Action: "failed", Status: "5.7.1", Diagnostic: "550-5.7.1 blocked"}},
		{name: "no action, 5xx status counts as failed", ok: true,
			msg: "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n" + ds +
				"Final-Recipient: rfc822; w@b.test\r\nStatus: 4.0.0\r\n\r\nOriginal-Recipient: rfc822; f@b.test\r\nStatus: 5.1.2\r\n\r\n--b--\r\n",
			want: DSN{Recipient: "f@b.test", Status: "5.1.2"}},
		{name: "only delayed", ok: true,
			msg: "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n" + ds +
				"Final-Recipient: rfc822; w@b.test\r\nAction: delayed\r\nStatus: 4.4.7\r\n\r\n--b--\r\n",
			want: DSN{Recipient: "w@b.test", Action: "delayed", Status: "4.4.7"}},
		{name: "base64 delivery status and control chars", ok: true,
			msg: "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n" +
				"Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
				"RmluYWwtUmVjaXBpZW50OiByZmM4MjI7IGFAYi50ZXN0DQpBY3Rpb246IGZhaWxlZA0KU3RhdHVz\r\nOiA1LjEuMQ0KRGlhZ25vc3RpYy1Db2RlOiBzbXRwOyA1NTAgbm8ACXN1Y2ggdXNlcg0K\r\n--b--\r\n",
			want: DSN{Recipient: "a@b.test", Action: "failed", Status: "5.1.1", Diagnostic: "550 no such user"}},
		{name: "single block DSN", ok: true,
			msg: "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n" +
				"Content-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx\r\nX-Original-Message-ID: <orig@Host.test>\r\n" +
				"Final-Recipient: rfc822; a@b.test\r\nAction: failed\r\nStatus: 5.1.1\r\n--b--\r\n",
			want: DSN{OriginalMessageIDs: []string{"orig@host.test"}, MessageID: "orig@host.test", Recipient: "a@b.test", Action: "failed", Status: "5.1.1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, body := readMessage(t, []byte(tt.msg))
			d, ok, err := ParseDSN(h, body, 20, 0)
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if ok != tt.ok {
				t.Fatalf("ok = %v, want %v (%+v)", ok, tt.ok, d)
			}
			if !tt.noWant && !reflect.DeepEqual(d, tt.want) {
				t.Errorf("\n got %+v\nwant %+v", d, tt.want)
			}
			if !ok && !reflect.DeepEqual(d, DSN{}) {
				t.Errorf("not a DSN but fields set: %+v", d)
			}
		})
	}
}

func TestDiagnosticBounded(t *testing.T) {
	long := strings.Repeat("é", MaxDiagnosticLen)
	msg := "Content-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n" +
		"Content-Type: message/delivery-status\r\n\r\n\r\nFinal-Recipient: rfc822; a@b.test\r\nAction: failed\r\n" +
		"Diagnostic-Code: smtp; " + long + "\r\n--b--\r\n"
	h, body := readMessage(t, []byte(msg))
	d, ok, err := ParseDSN(h, body, 20, 0)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	if len(d.Diagnostic) > MaxDiagnosticLen || len(d.Diagnostic) < MaxDiagnosticLen-2 || !strings.HasPrefix(d.Diagnostic, "éé") {
		t.Errorf("diagnostic len %d", len(d.Diagnostic))
	}
	if !strings.HasSuffix(d.Diagnostic, "é") {
		t.Error("diagnostic truncated inside a rune")
	}
}

func TestStatusCode(t *testing.T) {
	tests := map[string]string{
		"5.1.1":                    "5.1.1",
		"5.1.10":                   "5.1.10",
		"4.4.7 (delivery expired)": "4.4.7",
		"smtp; 550-5.7.26 unauth":  "5.7.26",
		"550 5.1.1 user unknown":   "5.1.1",
		"2.0.0":                    "2.0.0",
		"3.1.1":                    "",
		"15.1.1":                   "",
		"5.1.1234":                 "",
		"5.1":                      "",
		"5..1":                     "",
		"":                         "",
		"v5.1.1":                   "5.1.1",
	}
	for in, want := range tests {
		if got := statusCode(in); got != want {
			t.Errorf("statusCode(%q) = %q, want %q", in, got, want)
		}
	}
}

// A DSN names at most MaxDSNIDs ids, the bounced message's own first, however
// long the References it returns (MsgIDs itself reads them in full).
func TestParseDSNBoundsIDs(t *testing.T) {
	var refs strings.Builder
	for i := 0; i < 3*MaxDSNIDs; i++ {
		fmt.Fprintf(&refs, "\r\n <r%d@x.test>", i)
	}
	raw := "From: MAILER-DAEMON@mx.test\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n" +
		"--b\r\nContent-Type: text/plain\r\n\r\nFailed.\r\n" +
		"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.test\r\n\r\nFinal-Recipient: rfc822; carl@cand.test\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n" +
		"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <sent@relay.test>\r\nReferences:" + refs.String() + "\r\n\r\n--b--\r\n"
	h, body := readMessage(t, []byte(raw))
	d, ok, err := ParseDSN(h, body, 20, 0)
	if err != nil || !ok || d.Action != "failed" {
		t.Fatalf("got %+v ok=%v err=%v", d.Action, ok, err)
	}
	if len(d.OriginalMessageIDs) != MaxDSNIDs || d.OriginalMessageIDs[0] != "sent@relay.test" {
		t.Fatalf("%d ids, first %q", len(d.OriginalMessageIDs), d.OriginalMessageIDs[0])
	}
}
