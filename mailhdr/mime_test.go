package mailhdr

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// nestedMIME returns an entity (header and body) of n nested multipart/mixed
// containers around a text/plain part. It is built in linear time.
func nestedMIME(n int) string {
	var b strings.Builder
	for i := 1; i <= n; i++ {
		fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n", i, i)
	}
	b.WriteString("Content-Type: text/plain\r\n\r\nhello\r\n")
	for i := n; i >= 1; i-- {
		fmt.Fprintf(&b, "\r\n--b%d--\r\n", i)
	}
	return b.String()
}

func TestMIMEDepth(t *testing.T) {
	alt := "Content-Type: multipart/alternative; boundary=alt\r\n\r\n--alt\r\nContent-Type: text/plain\r\n\r\nhi\r\n--alt\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n--alt--\r\n"
	rfc822 := "Content-Type: multipart/mixed; boundary=mix\r\n\r\n--mix\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n" +
		"--mix\r\nContent-Type: message/rfc822\r\n\r\nFrom: a@b.test\r\nSubject: fwd\r\n" + alt + "\r\n--mix--\r\n"
	b64inner := base64.StdEncoding.EncodeToString([]byte("From: a@b.test\r\n" + nestedMIME(3)))
	b64 := "Content-Type: multipart/mixed; boundary=mix\r\n\r\n--mix\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		b64inner + "\r\n--mix--\r\n"

	tests := []struct {
		name  string
		msg   string
		limit int
		want  int
		err   error
	}{
		{"single part", "Content-Type: text/plain\r\n\r\nhello\r\n", 20, 0, nil},
		{"no content type", "Subject: x\r\n\r\nhello\r\n", 20, 0, nil},
		{"alternative", alt, 20, 1, nil},
		{"mixed+alternative", "Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\n" + alt + "\r\n--m\r\nContent-Type: image/png\r\n\r\nxx\r\n--m--\r\n", 20, 2, nil},
		{"forwarded message", rfc822, 20, 3, nil},
		{"base64 encapsulated message", b64, 20, 5, nil},
		{"multipart without boundary", "Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\n", 20, 0, nil},
		{"boundary never appears", "Content-Type: multipart/mixed; boundary=zz\r\n\r\nno parts here\r\n", 20, 1, nil},
		{"truncated", "Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\n" + alt[:60], 20, 2, nil},
		{"bad media type", "Content-Type: multipart/mixed; boundary=\"unterminated\r\n\r\n--x\r\n", 20, 0, nil},
		{"depth 20 limit 20", nestedMIME(20), 20, 20, nil},
		{"depth 25 limit 20", nestedMIME(25), 20, 21, ErrTooDeep},
		{"depth 5 default limit", nestedMIME(5), 0, 5, nil},
		{"depth 25 default limit", nestedMIME(25), 0, DefaultMaxDepth + 1, ErrTooDeep},
		{"limit capped", nestedMIME(HardMaxDepth + 5), 1 << 30, HardMaxDepth + 1, ErrTooDeep},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, body := readMessage(t, []byte("From: a@b.test\r\n"+tt.msg))
			got, err := MIMEDepth(h, body, tt.limit)
			if got != tt.want || !errors.Is(err, tt.err) {
				t.Errorf("MIMEDepth = %d, %v; want %d, %v", got, err, tt.want, tt.err)
			}
		})
	}
}

func TestMIMEDepthFixtures(t *testing.T) {
	for file, want := range map[string]int{
		"gmail_dsn.eml":          3,
		"gmail_dsn_headers.eml":  1,
		"exchange_ndr.eml":       3,
		"postfix_dsn.eml":        1,
		"postfix_dsn_rfc822.eml": 2,
	} {
		h, body := readMessage(t, readFixture(t, file))
		got, err := MIMEDepth(h, body, 20)
		if err != nil || got != want {
			t.Errorf("%s: MIMEDepth = %d, %v; want %d", file, got, err, want)
		}
	}
}

// A very deep message must stop early without blowing the stack or reading
// everything.
func TestMIMEDepthVeryDeep(t *testing.T) {
	start := time.Now()
	msg := "From: a@b.test\r\n" + nestedMIME(100000)
	h, body := readMessage(t, []byte(msg))
	got, err := MIMEDepth(h, body, 20)
	if !errors.Is(err, ErrTooDeep) || got != 21 {
		t.Fatalf("MIMEDepth = %d, %v", got, err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
}

func TestMIMEDepthReadError(t *testing.T) {
	msg := "From: a@b.test\r\n" + nestedMIME(3)
	h, body := readMessage(t, []byte(msg[:len(msg)-20]))
	boom := errors.New("connection reset")
	_, err := MIMEDepth(h, &failingReader{body, boom}, 20)
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want %v", err, boom)
	}
}
