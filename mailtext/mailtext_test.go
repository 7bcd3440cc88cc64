package mailtext

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func crlf(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")
}

func parse(t *testing.T, raw string) *Extract {
	t.Helper()
	ex, err := Parse(strings.NewReader(crlf(raw)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	return ex
}

func TestPlainQuotedPrintableLatin1(t *testing.T) {
	ex := parse(t, `From: a@b.test
Subject: hi
Content-Type: text/plain; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

Bonjour Ren=E9,=20
merci pour l'entretien.=
 A bient=F4t
`)
	want := "Bonjour René,\nmerci pour l'entretien. A bientôt"
	if ex.Text != want || ex.FromHTML || len(ex.Attachments) != 0 {
		t.Fatalf("got %q %+v", ex.Text, ex)
	}
}

func TestNoContentTypeAndUnlabelledLegacyBytes(t *testing.T) {
	ex := parse(t, "From: a@b.test\n\nplain body\n")
	if ex.Text != "plain body" {
		t.Fatalf("%q", ex.Text)
	}
	// Unlabelled non-UTF-8 bytes are read as windows-1252, never invalid UTF-8.
	raw := "Content-Type: text/plain\r\n\r\nna\xefve \x93quoted\x94\r\n"
	ex, _ = Parse(strings.NewReader(raw), Options{})
	if ex.Text != "naïve \u201cquoted\u201d" {
		t.Fatalf("%q", ex.Text)
	}
}

func TestAlternativePrefersPlain(t *testing.T) {
	ex := parse(t, `Content-Type: multipart/alternative; boundary=b

--b
Content-Type: text/plain; charset=utf-8

Hello plain
--b
Content-Type: text/html; charset=utf-8

<p>Hello <b>html</b></p>
--b--
`)
	if ex.Text != "Hello plain" || ex.FromHTML {
		t.Fatalf("%q", ex.Text)
	}
}

func TestHTMLOnlyWithRelatedImageAndAttachment(t *testing.T) {
	ex := parse(t, `Content-Type: multipart/mixed; boundary=m

--m
Content-Type: multipart/related; boundary=r

--r
Content-Type: text/html; charset=windows-1252
Content-Transfer-Encoding: quoted-printable

<html><head><title>T</title><style>p{color:red}</style></head><body>
<p>Dear Carl,</p><p>Thanks&nbsp;for=20applying to <a href=3D"https://acme.test/jobs/1">the job</a>.</p>
<ul><li>one</li><li>two</li></ul><img src=3D"cid:logo" alt=3D"Acme logo"><br>Caf=E9<script>alert(1)</script>
</body></html>
--r
Content-Type: image/png
Content-ID: <logo>
Content-Transfer-Encoding: base64

iVBORw0KGgo=
--r--
--m
Content-Type: application/pdf; name="=?UTF-8?B?Q1Yg4oCTIENhcmwucGRm?="
Content-Disposition: attachment; filename*=UTF-8''CV%20%E2%80%93%20Carl.pdf
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--m--
`)
	want := "Dear Carl,\n\nThanks for applying to the job (https://acme.test/jobs/1).\n\n- one\n- two\n[Acme logo]\nCafé"
	if ex.Text != want || !ex.FromHTML {
		t.Fatalf("text:\n%q\nwant\n%q", ex.Text, want)
	}
	if len(ex.Attachments) != 2 {
		t.Fatalf("attachments %+v", ex.Attachments)
	}
	img, pdf := ex.Attachments[0], ex.Attachments[1]
	if img.Part != "1.2" || img.ContentType != "image/png" || !img.Inline || img.ContentID != "logo" || img.Size != 8 || img.Filename != "part-1-2.png" {
		t.Fatalf("image %+v", img)
	}
	if pdf.Part != "2" || pdf.Filename != "CV – Carl.pdf" || pdf.Size != 9 || pdf.Inline {
		t.Fatalf("pdf %+v", pdf)
	}

	// Download streams the decoded part; unknown or non-attachment parts are refused.
	var got bytes.Buffer
	err := OpenPart(strings.NewReader(crlf(testRawMixed)), "2", Options{}, func(a Attachment, body io.Reader) error {
		if a.Filename != "cv.pdf" {
			t.Errorf("filename %q", a.Filename)
		}
		_, err := io.Copy(&got, body)
		return err
	})
	if err != nil || got.String() != "%PDF-1.4\n" {
		t.Fatalf("download %q %v", got.String(), err)
	}
	for _, p := range []string{"1", "3", "", "2.1", "../../etc"} {
		if err := OpenPart(strings.NewReader(crlf(testRawMixed)), p, Options{}, func(Attachment, io.Reader) error { return nil }); !errors.Is(err, ErrNoPart) {
			t.Errorf("part %q: %v", p, err)
		}
	}
}

const testRawMixed = `Content-Type: multipart/mixed; boundary=m

--m
Content-Type: text/plain

see attached
--m
Content-Type: application/pdf
Content-Disposition: attachment; filename="../../cv.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQK
--m--
`

func TestForwardedMessageAndDSN(t *testing.T) {
	ex := parse(t, `Content-Type: multipart/report; report-type=delivery-status; boundary=r

--r
Content-Type: text/plain

Your message could not be delivered.
--r
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.test
--r
Content-Type: message/rfc822

Subject: original
From: rec@acme.test

original body
--r--
`)
	if ex.Text != "Your message could not be delivered." {
		t.Fatalf("%q", ex.Text)
	}
	if len(ex.Attachments) != 2 || ex.Attachments[0].Filename != "part-2.txt" || ex.Attachments[1].Filename != "part-3.eml" {
		t.Fatalf("%+v", ex.Attachments)
	}
}

func TestMalformedAndLimits(t *testing.T) {
	// Garbage still yields a result and no panic.
	for _, raw := range []string{"", "\x00\x01", "Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n", "Content-Type: text/plain; charset=klingon\r\n\r\nqapla\r\n"} {
		if _, err := Parse(strings.NewReader(raw), Options{}); err != nil && raw != "" && raw != "\x00\x01" {
			t.Errorf("%q: %v", raw, err)
		}
	}
	ex, _ := Parse(strings.NewReader("Content-Type: text/plain; charset=klingon\r\n\r\nqapla\r\n"), Options{})
	if ex.Text != "qapla" {
		t.Fatalf("unknown charset: %q", ex.Text)
	}
	// Deep nesting stops at MaxDepth.
	var b strings.Builder
	for i := 0; i < 50; i++ {
		b.WriteString("Content-Type: multipart/mixed; boundary=b" + string(rune('A'+i%26)) + string(rune('a'+i/26)) + "\r\n\r\n--b" + string(rune('A'+i%26)) + string(rune('a'+i/26)) + "\r\n")
	}
	b.WriteString("Content-Type: text/plain\r\n\r\ndeep\r\n")
	if _, err := Parse(strings.NewReader(b.String()), Options{MaxDepth: 5}); err != nil {
		t.Fatal(err)
	}
	// Text is cut on a rune boundary.
	ex, _ = Parse(strings.NewReader("Content-Type: text/plain; charset=utf-8\r\n\r\n"+strings.Repeat("é", 100)+"\r\n"), Options{MaxTextBytes: 51})
	if !ex.Truncated || len(ex.Text) != 50 {
		t.Fatalf("truncate: %d %v", len(ex.Text), ex.Truncated)
	}
}

func TestHTMLToText(t *testing.T) {
	cases := []struct{ in, want string }{
		{`<div>a</div><div>b</div>`, "a\nb"},
		{`line1<br>line2<br/>line3`, "line1\nline2\nline3"},
		{`<ol start="3"><li>x</li><li>y</li></ol>`, "3. x\n4. y"},
		{`<blockquote><p>quoted</p>more</blockquote>after`, "> quoted\n\n> more\nafter"},
		{`<pre>  a  b
  c</pre>`, "  a  b\n  c"},
		{`<a href="mailto:rec@acme.test">rec@acme.test</a>`, "rec@acme.test"},
		{`<a href="javascript:x()">click</a>`, "click"},
		{`<table><tr><td>a</td><td>b</td></tr><tr><td>c</td><td>d</td></tr></table>`, "a  b\nc  d"},
		{`a &amp; b &lt;c&gt; &#233;`, "a & b <c> é"},
		{strings.Repeat("<div>", 100000) + "deep" + strings.Repeat("</div>", 100000), "deep"},
	}
	for _, c := range cases {
		if got := HTMLToText(c.in); got != c.want {
			t.Errorf("HTMLToText(%.40q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestCache(t *testing.T) {
	c := NewCache(1000)
	c.Add("a", &Extract{Text: strings.Repeat("x", 100)})
	c.Add("b", &Extract{Text: strings.Repeat("y", 100)})
	if _, ok := c.Get("a"); !ok {
		t.Fatal("miss")
	}
	c.Add("huge", &Extract{Text: strings.Repeat("z", 900)}) // over max/4: not cached
	if _, ok := c.Get("huge"); ok {
		t.Fatal("huge entry cached")
	}
	for i := 0; i < 20; i++ {
		c.Add(string(rune('c'+i)), &Extract{Text: strings.Repeat("w", 100)})
	}
	if c.Len() > 7 {
		t.Fatalf("cache over budget: %d entries", c.Len())
	}
	if _, ok := NewCache(0).Get("a"); ok {
		t.Fatal("disabled cache hit")
	}
}
