package outbound

import (
	"bytes"
	"io"
	"mime"
	"net/mail"
	"strings"
	"testing"
	"time"

	gomail "github.com/emersion/go-message/mail"
)

func parse(t *testing.T, raw []byte) *mail.Message {
	t.Helper()
	if bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\n")) {
		t.Fatal("bare LF in composed message")
	}
	for i, line := range bytes.Split(raw, []byte("\r\n")) {
		if len(line) > 998 {
			t.Fatalf("line %d is %d bytes", i, len(line))
		}
	}
	m, err := mail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var dec = new(mime.WordDecoder)

func TestComposeHeaders(t *testing.T) {
	t.Parallel()
	date := time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)
	raw, err := Compose(&Mail{
		From:        mail.Address{Name: "Rita Zoë", Address: "rec@acme.test"},
		To:          []mail.Address{{Name: "Carl", Address: "carl@cand.test"}},
		Cc:          []mail.Address{{Address: "hm@acme.test"}, {Address: "x@acme.test"}},
		Subject:     "Entretien — prochaine étape",
		Text:        "Bonjour Carl,\nÀ bientôt.\n",
		Date:        date,
		MessageID:   "sr.abc234@relay.test",
		ThreadToken: "abc234",
		InReplyTo:   "cand-1@cand.test",
		References:  []string{"sr.root@relay.test", "cand-1@cand.test"},
		ThreadIndex: "AQHZ",
		ThreadTopic: "Entretien — prochaine étape",
		Keywords:    []string{"Recruiting"},
	})
	if err != nil {
		t.Fatal(err)
	}
	m := parse(t, raw)
	h := m.Header
	from, err := h.AddressList("From")
	if err != nil || len(from) != 1 || from[0].Name != "Rita Zoë" || from[0].Address != "rec@acme.test" {
		t.Fatalf("From %v %v", from, err)
	}
	if !strings.Contains(h.Get("From"), "=?utf-8?") {
		t.Fatalf("non-ASCII display name not RFC 2047 encoded: %q", h.Get("From"))
	}
	to, _ := h.AddressList("To")
	cc, _ := h.AddressList("Cc")
	if len(to) != 1 || to[0].String() != `"Carl" <carl@cand.test>` || len(cc) != 2 || cc[1].Address != "x@acme.test" {
		t.Fatalf("To %v Cc %v", to, cc)
	}
	subj, err := dec.DecodeHeader(h.Get("Subject"))
	if err != nil || subj != "Entretien — prochaine étape" || !strings.HasPrefix(h.Get("Subject"), "=?utf-8?") {
		t.Fatalf("Subject %q -> %q %v", h.Get("Subject"), subj, err)
	}
	if d, err := h.Date(); err != nil || !d.Equal(date) {
		t.Fatalf("Date %q", h.Get("Date"))
	}
	checks := map[string]string{
		"Message-Id":         "<sr.abc234@relay.test>",
		"X-Syncrelay-Thread": "abc234",
		"In-Reply-To":        "<cand-1@cand.test>",
		"References":         "<sr.root@relay.test> <cand-1@cand.test>",
		"Thread-Index":       "AQHZ",
		"Keywords":           "Recruiting",
		"Mime-Version":       "1.0",
	}
	for k, want := range checks {
		if got := h.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if topic, _ := dec.DecodeHeader(h.Get("Thread-Topic")); topic != "Entretien — prochaine étape" {
		t.Errorf("Thread-Topic %q", topic)
	}
	ct, params, _ := mime.ParseMediaType(h.Get("Content-Type"))
	if ct != "text/plain" || params["charset"] != "utf-8" || h.Get("Content-Transfer-Encoding") != "quoted-printable" {
		t.Fatalf("content headers %q %q", h.Get("Content-Type"), h.Get("Content-Transfer-Encoding"))
	}
	// go-message decodes the transfer encoding.
	mr, err := gomail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	p, err := mr.NextPart()
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(p.Body)
	if string(body) != "Bonjour Carl,\r\nÀ bientôt.\r\n" {
		t.Fatalf("body %q", body)
	}
}

func TestComposeAlternative(t *testing.T) {
	t.Parallel()
	raw, err := Compose(&Mail{
		From: mail.Address{Address: "rec@acme.test"}, To: []mail.Address{{Address: "carl@cand.test"}},
		Subject: "Hi", Text: "plain", HTML: "<p>rich</p>", Date: time.Now(), MessageID: "sr.x@relay.test",
	})
	if err != nil {
		t.Fatal(err)
	}
	m := parse(t, raw)
	for _, k := range []string{"Thread-Index", "Keywords", "In-Reply-To", "References", "Cc"} {
		if _, ok := m.Header[k]; ok {
			t.Errorf("%s present on a plain new Google message", k)
		}
	}
	mr, err := gomail.CreateReader(bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if ct, _, _ := mr.Header.ContentType(); ct != "multipart/alternative" {
		t.Fatalf("content type %q", ct)
	}
	var parts []string
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ct, _, _ := p.Header.(*gomail.InlineHeader).ContentType()
		b, _ := io.ReadAll(p.Body)
		parts = append(parts, ct+"="+string(b))
	}
	if strings.Join(parts, ";") != "text/plain=plain;text/html=<p>rich</p>" {
		t.Fatalf("parts %v", parts)
	}
}

func TestComposeNoHeaderInjection(t *testing.T) {
	t.Parallel()
	raw, err := Compose(&Mail{
		From:    mail.Address{Name: "Eve\r\nBcc: victim@x.test", Address: "rec@acme.test"},
		To:      []mail.Address{{Address: "carl@cand.test"}},
		Subject: "Hello\r\nBcc: victim@x.test", Text: "x", Date: time.Now(), MessageID: "sr.x@relay.test",
		Keywords: []string{"A\r\nBcc: victim@x.test"}, ThreadIndex: "AQ", ThreadTopic: "t\nBcc: v@x.test",
	})
	if err != nil {
		t.Fatal(err)
	}
	m := parse(t, raw)
	if _, ok := m.Header["Bcc"]; ok {
		t.Fatalf("header injected:\n%s", raw)
	}
}

func TestComposeLongReferencesFolded(t *testing.T) {
	t.Parallel()
	var refs []string
	for i := range 20 {
		refs = append(refs, strings.Repeat("a", 40)+string(rune('a'+i))+"@relay.test")
	}
	raw, err := Compose(&Mail{From: mail.Address{Address: "a@b.test"}, To: []mail.Address{{Address: "c@d.test"}},
		Subject: "s", Text: "t", Date: time.Now(), MessageID: "sr.x@relay.test", References: refs})
	if err != nil {
		t.Fatal(err)
	}
	m := parse(t, raw)
	got := strings.Fields(m.Header.Get("References"))
	if len(got) != 20 || got[19] != "<"+refs[19]+">" {
		t.Fatalf("References %v", got)
	}
}
