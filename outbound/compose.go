package outbound

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/mail"
	"strings"
	"time"

	gomail "github.com/emersion/go-message/mail"
)

// Mail is one message to compose.
type Mail struct {
	From    mail.Address
	To, Cc  []mail.Address
	Subject string
	Text    string
	HTML    string // optional: sent as a multipart/alternative with Text
	Date    time.Time
	// MessageID is "sr.TOKEN@HOST" (no angle brackets); ThreadToken is
	// TOKEN, carried in X-Syncrelay-Thread so the user's sent copy is
	// recognised even if the provider rewrites the Message-ID.
	MessageID   string
	ThreadToken string
	// InReplyTo and References (ids without angle brackets) thread a reply.
	InReplyTo  string
	References []string
	// ThreadIndex (base64) and ThreadTopic are the Outlook conversation
	// headers for Microsoft tenants.
	ThreadIndex string
	ThreadTopic string
	// Keywords become the Keywords header, which Exchange maps to Outlook
	// categories (MS-OXCMAIL PidNameKeywords).
	Keywords []string
}

// HeaderThreadToken is the header carrying the thread token.
const HeaderThreadToken = "X-Syncrelay-Thread"

// Compose renders m as an RFC 5322 message with CRLF line endings: UTF-8
// text (quoted-printable), an HTML alternative when given, RFC 2047 encoded
// words in Subject and display names where needed.
func Compose(m *Mail) ([]byte, error) {
	if m.MessageID == "" || len(m.To) == 0 {
		return nil, errors.New("compose: Message-ID and a recipient are required")
	}
	var h gomail.Header
	h.SetDate(m.Date)
	h.SetAddressList("From", []*mail.Address{sanitizeAddr(m.From)})
	h.SetAddressList("To", addrPtrs(m.To))
	h.SetAddressList("Cc", addrPtrs(m.Cc))
	h.SetSubject(oneLine(m.Subject))
	h.SetMessageID(m.MessageID)
	if m.InReplyTo != "" {
		h.SetMsgIDList("In-Reply-To", []string{m.InReplyTo})
	}
	h.SetMsgIDList("References", m.References)
	if m.ThreadToken != "" {
		h.Set(HeaderThreadToken, m.ThreadToken)
	}
	if m.ThreadIndex != "" {
		h.Set("Thread-Index", m.ThreadIndex)
		if t := oneLine(m.ThreadTopic); t != "" {
			h.SetText("Thread-Topic", t)
		}
	}
	if len(m.Keywords) > 0 {
		kw := make([]string, 0, len(m.Keywords))
		for _, k := range m.Keywords {
			if k = oneLine(strings.ReplaceAll(k, ",", " ")); k != "" {
				kw = append(kw, k)
			}
		}
		if len(kw) > 0 {
			h.SetText("Keywords", strings.Join(kw, ", "))
		}
	}
	// MIME-Version is added by the writer.

	var buf bytes.Buffer
	if m.HTML == "" {
		h.SetContentType("text/plain", map[string]string{"charset": "utf-8"})
		h.Set("Content-Transfer-Encoding", "quoted-printable")
		w, err := gomail.CreateSingleInlineWriter(&buf, h)
		if err != nil {
			return nil, fmt.Errorf("compose: %w", err)
		}
		if err := writeClose(w, m.Text); err != nil {
			return nil, err
		}
		return buf.Bytes(), nil
	}
	w, err := gomail.CreateInlineWriter(&buf, h)
	if err != nil {
		return nil, fmt.Errorf("compose: %w", err)
	}
	for _, p := range []struct{ ctype, body string }{{"text/plain", m.Text}, {"text/html", m.HTML}} {
		var ph gomail.InlineHeader
		ph.SetContentType(p.ctype, map[string]string{"charset": "utf-8"})
		ph.Set("Content-Transfer-Encoding", "quoted-printable")
		pw, err := w.CreatePart(ph)
		if err != nil {
			return nil, fmt.Errorf("compose: %w", err)
		}
		if err := writeClose(pw, p.body); err != nil {
			return nil, err
		}
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("compose: %w", err)
	}
	return buf.Bytes(), nil
}

func writeClose(w io.WriteCloser, body string) error {
	// Normalise line endings; the quoted-printable writer emits CRLF.
	body = strings.ReplaceAll(body, "\r\n", "\n")
	body = strings.ReplaceAll(body, "\r", "\n")
	if _, err := io.WriteString(w, body); err != nil {
		w.Close()
		return fmt.Errorf("compose: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("compose: %w", err)
	}
	return nil
}

// oneLine removes line breaks and control characters so a value cannot
// inject header fields.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	return strings.TrimSpace(s)
}

func sanitizeAddr(a mail.Address) *mail.Address {
	return &mail.Address{Name: oneLine(a.Name), Address: a.Address}
}

func addrPtrs(as []mail.Address) []*mail.Address {
	out := make([]*mail.Address, 0, len(as))
	for _, a := range as {
		out = append(out, sanitizeAddr(a))
	}
	return out
}
