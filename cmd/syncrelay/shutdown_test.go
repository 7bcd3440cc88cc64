package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"syncrelay/store"
)

// smtpLine is a hand-driven SMTP client: it can stop anywhere in a
// session, which go-smtp's client cannot.
type smtpLine struct {
	t *testing.T
	c net.Conn
	r *bufio.Reader
}

func dialSMTP(t *testing.T, addr string) *smtpLine {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	must(t, err)
	t.Cleanup(func() { c.Close() })
	s := &smtpLine{t: t, c: c, r: bufio.NewReader(c)}
	s.expect("220")
	return s
}

// reply reads one reply (its last line) within d; "" on EOF or timeout.
func (s *smtpLine) reply(d time.Duration) string {
	s.c.SetReadDeadline(time.Now().Add(d))
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			return ""
		}
		if len(line) < 4 || line[3] != '-' {
			return strings.TrimRight(line, "\r\n")
		}
	}
}

func (s *smtpLine) expect(prefix string) {
	s.t.Helper()
	if got := s.reply(5 * time.Second); !strings.HasPrefix(got, prefix) {
		s.t.Fatalf("want %s, got %q", prefix, got)
	}
}

func (s *smtpLine) cmd(line, prefix string) {
	s.t.Helper()
	_, err := io.WriteString(s.c, line+"\r\n")
	must(s.t, err)
	s.expect(prefix)
}

func (s *smtpLine) startTLS() {
	s.t.Helper()
	s.cmd("STARTTLS", "220")
	tc := tls.Client(s.c, &tls.Config{InsecureSkipVerify: true, ServerName: "relay.test"})
	must(s.t, tc.Handshake())
	s.c, s.r = tc, bufio.NewReader(tc)
	s.cmd("EHLO client.test", "250")
}

// closedAfter421 checks that the session gets "421 4.3.2" within d and
// then the end of the stream.
func (s *smtpLine) closedAfter421(name string, d time.Duration) {
	s.t.Helper()
	if got := s.reply(d); !strings.HasPrefix(got, "421 4.3.2 ") {
		s.t.Errorf("%s: got %q, want 421 4.3.2 at once", name, got)
		return
	}
	s.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if rest, err := io.ReadAll(s.r); err != nil || len(rest) > 0 {
		s.t.Errorf("%s: after the 421: %q, %v (want the end of the stream)", name, rest, err)
	}
}

// TestSIGTERMEndsSessionsOutsideMessages (SPEC §12): on SIGTERM every
// session that is not inside DATA/BDAT gets "421 4.3.2" at once and is
// closed, over TLS too, and does not hold the daemon; a session in the
// middle of a message finishes it, then gets the same 421.
func TestSIGTERMEndsSessionsOutsideMessages(t *testing.T) {
	e := newOpsEnv(t, store.PolicyOff)
	now := time.Now()
	cert, key, _ := genCert(t, e.dir, "relay", []string{"relay.test"}, now.Add(-time.Hour), now.Add(30*24*time.Hour))
	cfg := e.config(t, "drain.toml", fmt.Sprintf("tls_cert_file = %q\ntls_key_file = %q", cert, key), "")
	b, _ := os.ReadFile(cfg)
	b = bytes.Replace(b, []byte(`shutdown_timeout = "10s"`), []byte(`shutdown_timeout = "30s"`), 1)
	must(t, os.WriteFile(cfg, b, 0o600))
	d := startDaemon(t, e.dir, "-config", cfg)

	envelope := func(s *smtpLine) {
		s.cmd("MAIL FROM:<fwd@acme.test>", "250")
		s.cmd("RCPT TO:<"+e.inbound+">", "250")
	}
	outside := map[string]*smtpLine{}
	for _, tc := range []struct {
		name      string
		tls, txn  bool
		helloOnly bool
	}{
		{name: "greeted only", helloOnly: true},
		{name: "idle"},
		{name: "after RCPT", txn: true},
		{name: "TLS idle", tls: true},
		{name: "TLS after RCPT", tls: true, txn: true},
	} {
		s := dialSMTP(t, d.SMTP)
		if !tc.helloOnly {
			s.cmd("EHLO client.test", "250")
		}
		if tc.tls {
			s.startTLS()
		}
		if tc.txn {
			envelope(s)
		}
		outside[tc.name] = s
	}
	inside := dialSMTP(t, d.SMTP)
	inside.cmd("EHLO client.test", "250")
	envelope(inside)
	inside.cmd("DATA", "354")
	io.WriteString(inside.c, "From: someone@elsewhere.test\r\nSubject: in flight\r\n\r\n")

	start := time.Now()
	must(t, d.Signal(syscall.SIGTERM))
	for name, s := range outside {
		s.closedAfter421(name, 3*time.Second)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("sessions outside a message were ended after %v", took)
	}
	io.WriteString(inside.c, "body\r\n.\r\n")
	inside.expect("250 ")
	inside.closedAfter421("inside DATA", 3*time.Second)

	if code := d.Wait(t); code != 0 {
		t.Fatalf("exit %d:\n%s", code, d.Logs)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("shutdown took %v (smtp.shutdown_timeout 30s): a session outside a message held it", took)
	}
}
