package smtpd

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

func TestEHLOCapabilities(t *testing.T) {
	ts := startServer(t, Options{MaxMessageBytes: 12345})
	c := ts.client(t)
	for _, ext := range []string{"PIPELINING", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Errorf("%s not advertised", ext)
		}
	}
	if ok, p := c.Extension("SIZE"); !ok || p != "12345" {
		t.Errorf("SIZE = %v %q, want 12345", ok, p)
	}
	for _, ext := range []string{"STARTTLS", "AUTH"} {
		if ok, _ := c.Extension(ext); ok {
			t.Errorf("%s advertised", ext)
		}
	}
	// Raw: the greeting names our host, and AUTH is refused.
	r := ts.ehlod(t)
	r.send("AUTH PLAIN AGZvbwBiYXI=\r\n")
	if code, _, _ := r.reply(5 * time.Second); code/100 != 5 {
		t.Errorf("AUTH answered %d", code)
	}
}

func TestDefaults(t *testing.T) {
	s, err := New(Options{}, &fakeRecipients{}, &recorder{})
	if err != nil {
		t.Fatal(err)
	}
	o := s.o
	if o.MaxMessageBytes != 25<<20 || o.MaxRecipients != 50 || o.MaxLineLength != 1000 ||
		o.CommandTimeout != 5*time.Minute || o.MaxConnections != 1000 || o.MaxConnectionsPerIP <= 0 ||
		o.Addr != "127.0.0.1:2525" || o.MaxHeaderBytes != 1<<20 {
		t.Fatalf("defaults: %+v", o)
	}
	// Every go-smtp limit is set (go-smtp's own defaults are unlimited).
	g := s.srv
	if g.MaxMessageBytes != o.MaxMessageBytes || g.MaxRecipients != 50 || g.MaxLineLength != 1000 ||
		g.ReadTimeout != o.CommandTimeout || g.WriteTimeout != o.CommandTimeout || !g.EnableSMTPUTF8 ||
		g.TLSConfig != nil {
		t.Fatalf("go-smtp server: %+v", g)
	}
	s2, _ := New(Options{MaxMessageBytes: -1, MaxConnections: -1}, &fakeRecipients{}, &recorder{})
	if s2.srv.MaxMessageBytes != 0 || s2.o.MaxConnections != 0 {
		t.Fatal("negative limit should mean none")
	}
	if _, err := New(Options{}, nil, &recorder{}); err == nil {
		t.Fatal("nil Recipients accepted")
	}
	if _, err := New(Options{Hostname: "a b"}, &fakeRecipients{}, &recorder{}); err == nil {
		t.Fatal("bad hostname accepted")
	}
	if _, err := New(Options{SpoolDir: "/does/not/exist"}, &fakeRecipients{}, &recorder{}); err == nil {
		t.Fatal("missing spool dir accepted")
	}
}

func TestDeliveryFields(t *testing.T) {
	ts := startServer(t, Options{})
	c := ts.client(t)
	body := "Subject: x\r\n\r\n.leading dot\r\n..two dots\r\nend\r\n"
	err := send(c, senderAddr, []string{"ACME-7F3K2Q9X@Relay.Test", otherAddr, inboundAddr}, body)
	if err != nil {
		t.Fatal(err)
	}
	calls := ts.del.all()
	if len(calls) != 1 {
		t.Fatalf("%d deliveries", len(calls))
	}
	d := calls[0]
	if string(d.body) != body {
		t.Errorf("body %q, want %q", d.body, body)
	}
	if got := strings.Join(d.d.Rcpts, ","); got != inboundAddr+","+otherAddr {
		t.Errorf("Rcpts %q (want lowercased, deduplicated)", got)
	}
	if got := strings.Join(d.d.Tenants, ","); got != "acme,globex" {
		t.Errorf("Tenants %q", got)
	}
	if d.d.MailFrom != senderAddr || d.d.Helo != "client.test" || d.d.TLS || d.d.SessionID == "" ||
		d.d.Remote == nil || time.Since(d.d.Received) > time.Minute || d.d.Message == nil {
		t.Errorf("delivery %+v", d.d)
	}
	if d.d.Message.Size() != int64(len(body)) {
		t.Errorf("Size %d", d.d.Message.Size())
	}
	if ts.rcpts.lookup[0] != inboundAddr {
		t.Errorf("lookup of %q, want lowercase", ts.rcpts.lookup[0])
	}
	// The reply is ours, not go-smtp's "queued".
	r := ts.inData(t, inboundAddr)
	r.send(".\r\n") // an empty message
	if txt := r.expect(250); txt != "2.0.0 OK" {
		t.Errorf("reply %q", txt)
	}
	if calls := ts.del.all(); len(calls) != 2 || len(calls[1].body) != 0 {
		t.Errorf("empty message: %+v", calls)
	}
}

func TestRecipients(t *testing.T) {
	ts := startServer(t, Options{MaxRecipients: 3})
	c := ts.client(t)
	if err := c.Mail(senderAddr, nil); err != nil {
		t.Fatal(err)
	}
	err := c.Rcpt("nobody@relay.test", nil)
	if code, ec, msg := smtpCode(t, err); code != 550 || ec != (smtp.EnhancedCode{5, 1, 1}) || msg != "No such recipient here" {
		t.Errorf("unknown rcpt: %d %v %q", code, ec, msg)
	}
	if err := c.Rcpt(inboundAddr, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(otherAddr, nil); err != nil {
		t.Fatal(err)
	}
	// The 4th RCPT of the transaction, accepted or not, is one too many:
	// rejected probes count too.
	err = c.Rcpt("more@relay.test", nil)
	if code, ec, _ := smtpCode(t, err); code != 452 || ec != (smtp.EnhancedCode{4, 5, 3}) {
		t.Errorf("too many: %d %v", code, ec)
	}
	// Lookup failure: 451 4.3.0 without the internal text.
	c.Reset()
	ts.rcpts.mu.Lock()
	ts.rcpts.err = errors.New("bolt: database locked at /srv/data")
	ts.rcpts.mu.Unlock()
	c.Mail(senderAddr, nil)
	err = c.Rcpt(inboundAddr, nil)
	code, ec, msg := smtpCode(t, err)
	if code != 451 || ec != (smtp.EnhancedCode{4, 3, 0}) || msg != "Temporary local problem, try again later" {
		t.Errorf("lookup error: %d %v %q", code, ec, msg)
	}
	if !strings.Contains(ts.logs.String(), "database locked") {
		t.Error("internal error not logged")
	}
	// A panic in the lookup is a 451 too, and the session lives on.
	ts.rcpts.mu.Lock()
	ts.rcpts.err, ts.rcpts.panic = nil, true
	ts.rcpts.mu.Unlock()
	err = c.Rcpt(inboundAddr, nil)
	if code, _, _ := smtpCode(t, err); code != 451 {
		t.Errorf("lookup panic: %d", code)
	}
	if err := c.Noop(); err != nil {
		t.Fatal(err)
	}
	// The lookup's context is the transaction's: canceled once it ends.
	c.Reset()
	waitFor(t, "rcpt ctx canceled after RSET", func() bool { return ts.rcpts.ctxs[0].Err() != nil })
}

func TestSMTPUTF8(t *testing.T) {
	ts := startServer(t, Options{})
	c := ts.client(t)
	if err := c.Mail("jöe@exämple.test", &smtp.MailOptions{UTF8: true}); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt(inboundAddr, nil); err != nil {
		t.Fatal(err)
	}
	w, _ := c.Data()
	io.WriteString(w, "Subject: =?utf-8?q?h=C3=A9?=\r\n\r\nnaïve 8-bit body\r\n")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if d := ts.del.all(); len(d) != 1 || d[0].d.MailFrom != "jöe@exämple.test" {
		t.Fatalf("%+v", d)
	}
}

func TestOversize(t *testing.T) {
	ts := startServer(t, Options{MaxMessageBytes: 1000})
	c := ts.client(t)
	err := send(c, senderAddr, []string{inboundAddr}, strings.Repeat("0123456789abcdefghi\r\n", 100))
	if code, ec, _ := smtpCode(t, err); code != 552 || ec != (smtp.EnhancedCode{5, 3, 4}) {
		t.Fatalf("oversize: %d %v", code, ec)
	}
	// Still in step: the next message on the same connection goes through.
	if err := send(c, senderAddr, []string{inboundAddr}, simpleBody); err != nil {
		t.Fatal(err)
	}
	// SIZE= in MAIL is checked up front.
	err = c.Mail(senderAddr, &smtp.MailOptions{Size: 5000})
	if code, ec, _ := smtpCode(t, err); code != 552 || ec != (smtp.EnhancedCode{5, 3, 4}) {
		t.Fatalf("SIZE=: %d %v", code, ec)
	}
	if n := len(ts.del.all()); n != 1 {
		t.Fatalf("%d deliveries", n)
	}
	// BDAT over the limit.
	r := ts.ehlod(t)
	r.envelope(inboundAddr)
	// (short lines: go-smtp discards a refused chunk under the line limit)
	r.send("BDAT 1002 LAST\r\n" + strings.Repeat("x\r\n", 334))
	r.expect(552)
	r.send("QUIT\r\n")
	r.expect(221)
}

// Bare CR and bare LF are rejected (550 5.6.0) after the whole message has
// been read; then the connection is closed.
func TestBareLineEndingsDATA(t *testing.T) {
	ts := startServer(t, Options{})
	for _, body := range []string{
		"Subject: x\r\n\r\nbare\nLF\r\n",
		"Subject: x\r\n\r\nbare\rCR\r\n",
		"Subject: x\n\r\nheader bare LF\r\n",
		"Subject: x\r\n\r\nCR at end of line\r\r\n",
		"Subject: x\r\n\r\n\n\r\n",
	} {
		r := ts.inData(t, inboundAddr)
		r.send(body + ".\r\n")
		if txt := r.expect(550); txt != "5.6.0 Bare CR or LF not allowed (reason=bare_eol)" {
			t.Errorf("%q: reply %q", body, txt)
		}
		r.expectClosed()
	}
	// Good mail still flows.
	r := ts.inData(t, inboundAddr)
	r.send(simpleBody + ".\r\n")
	r.expect(250)
	r.send("QUIT\r\n")
	r.expect(221)
	if d := ts.del.all(); len(d) != 1 || string(d[0].body) != simpleBody {
		t.Errorf("deliveries %+v", d)
	}
}

// SMTP smuggling: a body that contains a "fake" end of data followed by a
// smuggled transaction. It must be read as one message, answered with one
// 5xx, and neither it nor the smuggled message may be delivered.
func TestSmuggling(t *testing.T) {
	smuggled := "MAIL FROM:<ceo@acme.test>\r\nRCPT TO:<" + inboundAddr + ">\r\nDATA\r\n" +
		"From: ceo@acme.test\r\nSubject: smuggled\r\n\r\nwire the money\r\n"
	for name, fake := range map[string]string{
		`\n.\n`:       "\n.\n",
		`\n.\r\n`:     "\n.\r\n",
		`\r.\r`:       "\r.\r",
		`\r\n.\r`:     "\r\n.\r",
		`\r\n.\n`:     "\r\n.\n",
		`\r.\r\n`:     "\r.\r\n",
		`\r\r\n.\r\n`: "\r\r\n.\r\n", // ends the message early; still one reply
		`bare \r`:     "\r",
		`bare \n`:     "\n",
	} {
		t.Run(name, func(t *testing.T) {
			ts := startServer(t, Options{})
			r := ts.inData(t, inboundAddr)
			r.send("Subject: hi\r\n\r\nhello" + fake + smuggled + ".\r\n")
			code, text, ok := r.reply(5 * time.Second)
			if !ok || code/100 != 5 {
				t.Fatalf("DATA answered %d %q, want a 5xx", code, text)
			}
			// Exactly one reply: nothing more is said (no reply to a
			// smuggled command), and the connection is closed.
			r.expectClosed()
			if calls := ts.del.all(); len(calls) != 0 {
				t.Fatalf("Deliverer called %d times: %q", len(calls), calls[0].body)
			}
		})
	}
}

// "\r\r\n.\r\n" contains a literal CRLF.CRLF: by RFC 5321 framing the
// message ends there and is answered at once, without waiting for more;
// since it had a bare CR, whatever follows is never read as commands (the
// sending MTA may well have thought the message went on).
func TestEarlyTerminatorClosesConnection(t *testing.T) {
	ts := startServer(t, Options{})
	r := ts.inData(t, inboundAddr)
	r.send("Subject: hi\r\n\r\nhello\r\r\n.\r\n")
	r.expect(550)
	r.expectClosed()
}

func TestBDAT(t *testing.T) {
	ts := startServer(t, Options{})
	r := ts.raw(t)
	if !strings.Contains(r.ehlo(), "CHUNKING") {
		t.Fatal("go-smtp no longer advertises CHUNKING: drop the BDAT tests")
	}
	// Bare LF in a single LAST chunk.
	bad := "Subject: x\r\n\r\nbare\nLF\r\n"
	r.envelope(inboundAddr)
	r.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(bad), bad))
	if txt := r.expect(550); txt != "5.6.0 Bare CR or LF not allowed (reason=bare_eol)" {
		t.Fatalf("reply %q", txt)
	}
	// Bare CR in the first of two chunks: the first gets "continue", the
	// LAST the single 5xx.
	r.envelope(inboundAddr)
	c1, c2 := "Subject: x\r\n\r\nbare\rCR", "\r\nmore\r\n"
	r.send(fmt.Sprintf("BDAT %d\r\n%s", len(c1), c1))
	r.expect(250)
	r.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(c2), c2))
	r.expect(550)
	// A CRLF split across chunks is fine.
	r.envelope(inboundAddr)
	c1, c2 = "Subject: ok\r\n\r\nhello\r", "\nworld\r\n"
	r.send(fmt.Sprintf("BDAT %d\r\n%s", len(c1), c1))
	r.expect(250)
	r.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(c2), c2))
	r.expect(250)
	// A message ending in a lone CR.
	r.envelope(inboundAddr)
	r.send("BDAT 4 LAST\r\nab\r\n")
	r.expect(250)
	r.envelope(inboundAddr)
	r.send("BDAT 3 LAST\r\nab\r")
	r.expect(550)
	// A BDAT body containing CRLF.CRLF and a smuggled transaction is just
	// content (BDAT has no terminator), and delivered as such.
	r.envelope(inboundAddr)
	body := "Subject: y\r\n\r\nx\r\n.\r\nMAIL FROM:<a@b>\r\n"
	r.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(body), body))
	r.expect(250)
	r.send("QUIT\r\n")
	r.expect(221)
	calls := ts.del.all()
	if len(calls) != 3 || string(calls[0].body) != c1+c2 || string(calls[1].body) != "ab\r\n" || string(calls[2].body) != body {
		t.Fatalf("deliveries: %d %+v", len(calls), calls)
	}
}

func TestLongLine(t *testing.T) {
	ts := startServer(t, Options{MaxLineLength: 100})
	r := ts.inData(t, inboundAddr)
	r.send("Subject: x\r\n\r\n" + strings.Repeat("y", 200) + "\r\n.\r\n")
	r.expect(554)
	// Then the connection closes, with no second reply (go-smtp's line
	// reader stays in error; see TestLongLineOneReply).
	r.expectClosed()
	// A line of exactly the limit (CRLF included) is fine.
	r = ts.raw(t)
	r.ehlo()
	r.envelope(inboundAddr)
	r.send("DATA\r\n")
	r.expect(354)
	r.send("Subject: x\r\n\r\n" + strings.Repeat("y", 98) + "\r\n.\r\n")
	r.expect(250)
	if len(ts.del.all()) != 1 {
		t.Fatal("not delivered")
	}
}

func TestDelivererReplies(t *testing.T) {
	ts := startServer(t, Options{})
	c := ts.client(t)
	for _, tc := range []struct {
		name string
		ret  func() error
		code int
		ec   smtp.EnhancedCode
		msg  string
	}{
		{"nil", func() error { return nil }, 250, smtp.EnhancedCode{2, 0, 0}, "OK"},
		{"internal", func() error { return errors.New("fsync /srv/data/raw/ab: no space left on device") },
			451, smtp.EnhancedCode{4, 3, 0}, "Temporary local problem, try again later"},
		{"reject", func() error {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "DKIM signature required"}
		}, 550, smtp.EnhancedCode{5, 7, 1}, "DKIM signature required"},
		{"dns tempfail", func() error {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 4, 3}, Message: "DNS temporary failure"}
		}, 451, smtp.EnhancedCode{4, 4, 3}, "DNS temporary failure"},
		{"250 custom", func() error {
			return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Accepted for review"}
		}, 250, smtp.EnhancedCode{2, 0, 0}, "Accepted for review"},
		{"wrapped SMTPError is internal", func() error {
			return fmt.Errorf("router: %w", &smtp.SMTPError{Code: 550, Message: "remote said no"})
		}, 451, smtp.EnhancedCode{4, 3, 0}, "Temporary local problem, try again later"},
		{"bad code", func() error { return &smtp.SMTPError{Code: 999, Message: "?"} },
			451, smtp.EnhancedCode{4, 3, 0}, "Temporary local problem, try again later"},
		{"mismatched enhanced code", func() error {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{4, 1, 1}, Message: "no\r\x00pe"}
		}, 550, smtp.EnhancedCode{5, 0, 0}, "nope"},
		{"panic", func() error { panic("deliverer exploded") }, 451, smtp.EnhancedCode{4, 3, 0},
			"Temporary local problem, try again later"},
	} {
		ts.del.setFn(func(context.Context, *Delivery) error { return tc.ret() })
		if err := c.Mail(senderAddr, nil); err != nil {
			t.Fatal(tc.name, err)
		}
		c.Rcpt(inboundAddr, nil)
		w, err := c.Data()
		if err != nil {
			t.Fatal(tc.name, err)
		}
		io.WriteString(w, simpleBody)
		resp, err := w.CloseWithResponse()
		var code int
		var ec smtp.EnhancedCode
		var msg string
		if err == nil {
			code, ec, msg = 250, smtp.EnhancedCode{2, 0, 0}, strings.TrimPrefix(resp.StatusText, "2.0.0 ")
		} else {
			code, ec, msg = smtpCode(t, err)
		}
		if code != tc.code || ec != tc.ec || msg != tc.msg {
			t.Errorf("%s: got %d %v %q, want %d %v %q", tc.name, code, ec, msg, tc.code, tc.ec, tc.msg)
		}
	}
	logs := ts.logs.String()
	for _, want := range []string{"no space left on device", "deliverer exploded", "goroutine"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q", want)
		}
	}
	// The daemon is still serving after the panic.
	ts.del.setFn(nil)
	c2 := ts.client(t)
	if err := send(c2, senderAddr, []string{inboundAddr}, simpleBody); err != nil {
		t.Fatal(err)
	}
}

// Every log line of a connection has its session id; no line carries an
// address, a subject or a body.
func TestLogging(t *testing.T) {
	ts := startServer(t, Options{MaxConnectionsPerIP: 2})
	ts.del.setFn(func(ctx context.Context, d *Delivery) error {
		d.LogArgs = append(d.LogArgs, "decision", "test-decision")
		return nil
	})
	c := ts.client(t)
	if err := send(c, senderAddr, []string{inboundAddr}, simpleBody); err != nil {
		t.Fatal(err)
	}
	c.Mail(senderAddr, nil)
	c.Rcpt("someone-unknown@relay.test", nil)
	c.Quit()
	waitFor(t, "first connection released", func() bool {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return len(ts.conns) == 0
	})
	r := ts.ehlod(t)
	ts.raw(t)
	if c, err := net.Dial("tcp", ts.addr); err == nil { // refused: over the per-IP cap
		io.ReadAll(c)
		c.Close()
	}
	r.envelope(inboundAddr)
	r.send("DATA\r\nnaked\nLF\r\n.\r\n")
	r.expect(354)
	r.expect(550)
	r.expectClosed()
	waitFor(t, "connection closed log", func() bool {
		return strings.Count(ts.logs.String(), "connection closed") >= 2
	})

	recs := ts.logs.records(t)
	sessions := map[string]bool{}
	var sawMessage, sawRefused bool
	for _, rec := range recs {
		id, _ := rec["session"].(string)
		if id == "" {
			t.Errorf("log line without session: %v", rec)
		}
		sessions[id] = true
		switch rec["msg"] {
		case "message":
			// The deliverer's decision rides on the message line.
			sawMessage = sawMessage || rec["decision"] == "test-decision"
		case "connection refused":
			sawRefused = true
		}
	}
	if len(sessions) < 3 || !sawMessage || !sawRefused {
		t.Errorf("sessions %d, message %v, refused %v", len(sessions), sawMessage, sawRefused)
	}
	logs := strings.ToLower(ts.logs.String())
	for _, secret := range []string{senderAddr, inboundAddr, "someone-unknown", "secret-subject", "hello there", "naked"} {
		if strings.Contains(logs, secret) {
			t.Errorf("log contains %q", secret)
		}
	}
}

func TestConnectionCap(t *testing.T) {
	ts := startServer(t, Options{MaxConnections: 2})
	a := ts.raw(t)
	ts.raw(t)
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "421 4.7.0 Too many connections, try again later\r\n" {
		t.Fatalf("third connection got %q", got)
	}
	// A freed slot is reusable.
	a.send("QUIT\r\n")
	a.expect(221)
	a.expectClosed()
	waitFor(t, "slot freed", func() bool {
		ts.mu.Lock()
		defer ts.mu.Unlock()
		return len(ts.conns) == 1
	})
	ts.raw(t).ehlo()
}

func TestPerIPCap(t *testing.T) {
	ts := startServer(t, Options{MaxConnections: 10, MaxConnectionsPerIP: 1})
	ts.raw(t)
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	got, _ := io.ReadAll(c)
	c.Close()
	if string(got) != "421 4.7.0 Too many connections, try again later\r\n" {
		t.Fatalf("second connection from the IP got %q", got)
	}
	// Another loopback address is another IP (Linux routes all of
	// 127.0.0.0/8 to lo).
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)}, Timeout: 2 * time.Second}
	c2, err := d.Dial("tcp", ts.addr)
	if err != nil {
		t.Skipf("cannot dial from 127.0.0.2: %v", err)
	}
	defer c2.Close()
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	line := make([]byte, 3)
	io.ReadFull(c2, line)
	if string(line) != "220" {
		t.Fatalf("other IP got %q", line)
	}
}

func TestIPKey(t *testing.T) {
	for addr, want := range map[string]string{
		"192.0.2.1:25":                "192.0.2.1",
		"[2001:db8:1:2:3:4:5:6]:25":   "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:2525": "2001:db8:1:2::/64",
		"[::ffff:192.0.2.7]:25":       "192.0.2.7",
	} {
		ta, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := ipKey(ta); got != want {
			t.Errorf("ipKey(%s) = %s, want %s", addr, got, want)
		}
	}
}

func TestIdleTimeout(t *testing.T) {
	t.Parallel() // its own server; it waits for the idle timeout
	ts := startServer(t, Options{CommandTimeout: 200 * time.Millisecond})
	r := ts.ehlod(t)
	start := time.Now()
	code, text, _ := r.reply(3 * time.Second)
	if code != 421 {
		t.Fatalf("got %d %q, want 421", code, text)
	}
	r.expectClosed()
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("closed after %v", el)
	}
}

// A stalled DATA times out, and the connection is closed rather than the
// rest of the body being read as commands.
func TestDataTimeout(t *testing.T) {
	t.Parallel() // its own server; it waits for the data timeout
	ts := startServer(t, Options{DataTimeout: 200 * time.Millisecond, CommandTimeout: 5 * time.Second})
	r := ts.inData(t, inboundAddr)
	r.send("Subject: x\r\n\r\npart one\r\n")
	time.Sleep(100 * time.Millisecond)
	r.send("still coming\r\n") // re-arms the timer
	code, text, _ := r.reply(3 * time.Second)
	if code != 421 {
		t.Fatalf("got %d %q", code, text)
	}
	// Whatever the client sends now is never taken as a command.
	r.c.Write([]byte("MAIL FROM:<a@b>\r\n"))
	for {
		code, _, ok := r.reply(3 * time.Second)
		if !ok {
			break
		}
		if code != 421 {
			t.Fatalf("got reply %d after the data timeout", code)
		}
	}
	if len(ts.del.all()) != 0 {
		t.Fatal("delivered")
	}
}

func TestSTARTTLS(t *testing.T) {
	cert1, pool1 := selfSigned(t, "mx.relay.test")
	ts := startServer(t, Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert1}}})
	if ok, _ := ts.client(t).Extension("STARTTLS"); !ok {
		t.Fatal("STARTTLS not advertised")
	}
	c, err := ts.tlsClient(t, &tls.Config{RootCAs: pool1, ServerName: "mx.relay.test"})
	if err != nil {
		t.Fatal(err)
	}
	if st, ok := c.TLSConnectionState(); !ok || !st.HandshakeComplete {
		t.Fatal("no TLS")
	}
	if ok, _ := c.Extension("STARTTLS"); ok {
		t.Error("STARTTLS advertised inside TLS")
	}
	if ok, _ := c.Extension("AUTH"); ok {
		t.Error("AUTH advertised inside TLS")
	}
	// Smuggling checks apply inside TLS too (raw bytes over the TLS conn).
	if err := send(c, senderAddr, []string{inboundAddr}, simpleBody); err != nil {
		t.Fatal(err)
	}
	d := ts.del.all()
	if len(d) != 1 || !d[0].d.TLS || string(d[0].body) != simpleBody {
		t.Fatalf("%+v", d)
	}

	// Certificate reload: new handshakes see the new certificate, the
	// established session is unaffected.
	cert2, pool2 := selfSigned(t, "mx.relay.test")
	ts.SetTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert2}})
	if _, err := ts.tlsClient(t, &tls.Config{RootCAs: pool1, ServerName: "mx.relay.test"}); err == nil {
		t.Fatal("old certificate still served after reload")
	}
	if _, err := ts.tlsClient(t, &tls.Config{RootCAs: pool2, ServerName: "mx.relay.test"}); err != nil {
		t.Fatal(err)
	}
	if err := send(c, senderAddr, []string{inboundAddr}, simpleBody); err != nil {
		t.Fatal("old session after reload:", err)
	}
}

func TestSmugglingInsideTLS(t *testing.T) {
	cert, pool := selfSigned(t, "mx.relay.test")
	ts := startServer(t, Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	r := ts.ehlod(t)
	r.send("STARTTLS\r\n")
	r.expect(220)
	tc := tls.Client(r.c, &tls.Config{RootCAs: pool, ServerName: "mx.relay.test"})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	r.c = tc
	r.r.Reset(tc)
	r.ehlo()
	r.envelope(inboundAddr)
	r.send("DATA\r\n")
	r.expect(354)
	r.send("Subject: x\r\n\r\nhello\r\n.\rMAIL FROM:<a@b>\r\n.\r\n")
	r.expect(550)
	r.expectClosed()
	if len(ts.del.all()) != 0 {
		t.Fatal("delivered")
	}
}

func TestSetTLSConfigWithoutTLS(t *testing.T) {
	ts := startServer(t, Options{})
	cert, _ := selfSigned(t, "mx.relay.test")
	ts.SetTLSConfig(&tls.Config{Certificates: []tls.Certificate{cert}})
	if ok, _ := ts.client(t).Extension("STARTTLS"); ok {
		t.Fatal("STARTTLS turned on at run time")
	}
	if !strings.Contains(ts.logs.String(), "SetTLSConfig ignored") {
		t.Fatal("not logged")
	}
}

func selfSigned(t testing.TB, host string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: host},
		DNSNames:              []string{host},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, pool
}

func TestShutdown(t *testing.T) {
	ts := startServer(t, Options{})
	// A: mid-DATA. B: idle after EHLO. C: between RCPT and DATA.
	a := ts.raw(t)
	a.ehlo()
	a.envelope(inboundAddr)
	a.send("DATA\r\n")
	a.expect(354)
	a.send("Subject: x\r\n\r\nfirst half\r\n")
	b := ts.raw(t)
	b.ehlo()
	c := ts.raw(t)
	c.ehlo()
	c.envelope(inboundAddr)

	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- ts.Shutdown(ctx)
	}()

	// The sessions outside a message are ended at once.
	for name, r := range map[string]*raw{"idle": b, "between RCPT and DATA": c} {
		code, text, _ := r.reply(3 * time.Second)
		if code != 421 || !strings.HasPrefix(text, "4.3.2 ") {
			t.Fatalf("%s session got %d %q", name, code, text)
		}
		r.expectClosed()
	}
	// New connections are refused.
	if nc, err := net.DialTimeout("tcp", ts.addr, time.Second); err == nil {
		nc.SetReadDeadline(time.Now().Add(3 * time.Second))
		got, _ := io.ReadAll(nc)
		nc.Close()
		if len(got) > 0 && !strings.HasPrefix(string(got), "421") {
			t.Fatalf("new connection during shutdown got %q", got)
		}
	}
	// Shutdown waits for the sessions in flight.
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned %v with sessions in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	// A finishes its message and gets its reply, then is closed.
	a.send("second half\r\n.\r\n")
	a.expect(250)
	if txt := a.expect(421); !strings.HasPrefix(txt, "4.3.2 ") {
		t.Fatalf("after the transaction: 421 %q", txt)
	}
	a.expectClosed()

	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	if n := len(ts.del.all()); n != 1 {
		t.Fatalf("%d deliveries", n)
	}
}

// At the Shutdown deadline the remaining connections are closed and the
// Deliverer's context is canceled.
func TestShutdownDeadline(t *testing.T) {
	t.Parallel() // its own server; it waits for the shutdown deadline
	ts := startServer(t, Options{})
	r := ts.cutWhileCommitting(t)
	calls := ts.del.all()
	if calls[0].ctx.Err() == nil {
		t.Fatal("Deliverer context not canceled")
	}
	r.expectClosed()
}

// The transaction context is canceled once the transaction is over.
func TestTransactionContext(t *testing.T) {
	ts := startServer(t, Options{})
	ts.del.setFn(func(ctx context.Context, d *Delivery) error {
		if ctx.Err() != nil {
			return errors.New("context already canceled")
		}
		return nil
	})
	c := ts.client(t)
	if err := send(c, senderAddr, []string{inboundAddr}, simpleBody); err != nil {
		t.Fatal(err)
	}
	ctx := ts.del.all()[0].ctx
	waitFor(t, "context canceled", func() bool { return ctx.Err() != nil })
}

func TestNestedMail(t *testing.T) {
	ts := startServer(t, Options{})
	r := ts.ehlod(t)
	r.envelope(inboundAddr)
	r.send("MAIL FROM:<x@y.test>\r\n")
	r.expect(503)
	r.send("DATA\r\n")
	r.expect(354)
	r.send(simpleBody + ".\r\n")
	r.expect(250)
	if d := ts.del.all(); len(d) != 1 || d[0].d.MailFrom != senderAddr {
		t.Fatalf("%+v", d)
	}
}

func TestMapErrorStages(t *testing.T) {
	log := discardLogger()
	ok := &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "fine"}
	if r := mapError(log, stageRcpt, ok); replyCode(r) != 451 {
		t.Errorf("2xx from RCPT stage: %v", r)
	}
	if r := mapError(log, stageData, ok); replyCode(r) != 250 {
		t.Errorf("2xx from DATA stage: %v", r)
	}
	if mapError(log, stageMail, nil) != nil {
		t.Error("nil")
	}
	r := mapError(log, stageData, &smtp.SMTPError{Code: 550, EnhancedCode: smtp.NoEnhancedCode, Message: ""})
	if se := r.(*smtp.SMTPError); se.EnhancedCode != smtp.EnhancedCodeNotSet || se.Message != "Rejected" {
		t.Errorf("%+v", se)
	}
}

// A 25 MB message over a real connection, spooled to disk: the whole
// exchange (client and server in this process) allocates well under the
// 16 MiB the issue allows.
func TestLargeMessageMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("25 MB transfer")
	}
	const size = 25_000_000
	var gotSum [32]byte
	var gotSize int64
	s2, err := New(Options{SpoolDir: t.TempDir()}, &fakeRecipients{}, DelivererFunc(func(ctx context.Context, d *Delivery) error {
		h := sha256.New()
		n, err := io.Copy(h, d.Message.Open())
		copy(gotSum[:], h.Sum(nil))
		gotSize = n
		return err
	}))
	if err != nil {
		t.Fatal(err)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	go s2.Serve(l)
	defer s2.Shutdown(context.Background())

	want := sha256.New()
	io.Copy(want, &lines{n: size})

	c, err := smtp.Dial(l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Hello("client.test")
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	c.Mail(senderAddr, nil)
	c.Rcpt(inboundAddr, nil)
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyBuffer(w, &lines{n: size}, make([]byte, 32<<10)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if gotSize != size || gotSum != [32]byte(want.Sum(nil)) {
		t.Fatalf("got %d bytes, content differs or truncated", gotSize)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d KiB for a 25 MB message", alloc>>10)
	if alloc > 16<<20 {
		t.Fatalf("allocated %d bytes for a 25 MB message (> 16 MiB)", alloc)
	}
}

// DelivererFunc adapts a function (tests only).
type DelivererFunc func(ctx context.Context, d *Delivery) error

func (f DelivererFunc) Deliver(ctx context.Context, d *Delivery) error { return f(ctx, d) }

// lines is a stream of n bytes of 78-byte CRLF lines, some starting with a
// dot (exercising dot-stuffing both ways).
type lines struct{ n, i int64 }

func (l *lines) Read(b []byte) (int, error) {
	if l.i >= l.n {
		return 0, io.EOF
	}
	k := 0
	for k < len(b) && l.i < l.n {
		col := l.i % 78
		switch {
		case l.i == l.n-2 || col == 76:
			b[k] = '\r'
		case l.i == l.n-1 || col == 77:
			b[k] = '\n'
		case col == 0 && (l.i/78)%5 == 0:
			b[k] = '.'
		default:
			b[k] = byte('a' + (l.i*7+l.i/91)%26)
		}
		k++
		l.i++
	}
	return k, nil
}

// BenchmarkDeliver4K sends 4 KiB messages over one reused connection to a
// Deliverer that returns nil.
func BenchmarkDeliver4K(b *testing.B) {
	s, err := New(Options{SpoolDir: b.TempDir()}, &fakeRecipients{}, DelivererFunc(func(context.Context, *Delivery) error { return nil }))
	if err != nil {
		b.Fatal(err)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	go s.Serve(l)
	defer s.Shutdown(context.Background())
	c, err := smtp.Dial(l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	c.Hello("bench.test")
	var sb strings.Builder
	sb.WriteString("Subject: bench\r\n\r\n")
	for sb.Len() < 4096-80 {
		sb.WriteString(strings.Repeat("x", 76) + "\r\n")
	}
	msg := sb.String()
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := send(c, senderAddr, []string{inboundAddr}, msg); err != nil {
			b.Fatal(err)
		}
	}
}
