package smtpd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"
)

// How connections end: shutdown, timeouts, a client that goes away, and
// the final reply over TLS (SPEC §12).

// startTLS upgrades r with STARTTLS and says EHLO again over TLS.
func (r *raw) startTLS(pool *x509.CertPool) {
	r.t.Helper()
	r.send("STARTTLS\r\n")
	r.expect(220)
	tc := tls.Client(r.c, &tls.Config{RootCAs: pool, ServerName: "mx.relay.test"})
	if err := tc.Handshake(); err != nil {
		r.t.Fatal(err)
	}
	r.c = tc
	r.r.Reset(tc)
}

// shutdownAsync starts Shutdown with a generous deadline and returns its
// result channel.
func shutdownAsync(ts *testServer) <-chan error {
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		done <- ts.Shutdown(ctx)
	}()
	return done
}

func waitShutdown(t *testing.T, done <-chan error, within time.Duration) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(within):
		t.Fatalf("Shutdown still waiting after %v", within)
	}
}

// Every session that is not inside DATA/BDAT (idle, or between commands
// of a transaction) gets "421 4.3.2" at once and is closed, over TLS too,
// and Shutdown does not wait for any of them.
func TestShutdownEndsSessionsOutsideMessages(t *testing.T) {
	cert, pool := selfSigned(t, "mx.relay.test")
	for _, tc := range []struct {
		name  string
		tls   bool
		setup func(r *raw)
	}{
		{"greeted", false, func(r *raw) {}},
		{"after EHLO", false, func(r *raw) { r.ehlo() }},
		{"after MAIL", false, func(r *raw) {
			r.ehlo()
			r.send("MAIL FROM:<" + senderAddr + ">\r\n")
			r.expect(250)
		}},
		{"after RCPT", false, func(r *raw) { r.ehlo(); r.envelope(inboundAddr) }},
		{"TLS after EHLO", true, func(r *raw) { r.ehlo() }},
		{"TLS after RCPT", true, func(r *raw) { r.ehlo(); r.envelope(inboundAddr) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ts := startServer(t, Options{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
			r := ts.raw(t)
			if tc.tls {
				r.ehlo()
				r.startTLS(pool)
			}
			tc.setup(r)
			done := shutdownAsync(ts)
			code, text, ok := r.reply(2 * time.Second)
			if !ok || code != 421 || !strings.HasPrefix(text, "4.3.2 ") {
				t.Fatalf("got %d %q (reply %v), want 421 4.3.2", code, text, ok)
			}
			r.expectClosed()
			waitShutdown(t, done, 2*time.Second)
		})
	}
}

// A session whose commands are still in go-smtp's buffer when shutdown
// starts (here: the next transaction pipelined behind a message being
// committed) gets its reply to the message and then one 421, nothing else.
func TestShutdownPipelinedAfterCommit(t *testing.T) {
	ts := startServer(t, Options{})
	committing, release := make(chan struct{}), make(chan struct{})
	ts.del.setFn(func(ctx context.Context, d *Delivery) error {
		close(committing)
		<-release
		return nil
	})
	r := ts.inData(t, inboundAddr)
	r.send(simpleBody + ".\r\nMAIL FROM:<" + senderAddr + ">\r\nRCPT TO:<" + inboundAddr + ">\r\nDATA\r\n")
	<-committing
	done := shutdownAsync(ts)
	waitFor(t, "draining", func() bool { ts.mu.Lock(); defer ts.mu.Unlock(); return ts.draining })
	close(release)
	r.expect(250)
	if txt := r.expect(421); !strings.HasPrefix(txt, "4.3.2 ") {
		t.Fatalf("421 %q", txt)
	}
	r.expectClosed()
	waitShutdown(t, done, 2*time.Second)
	if n := len(ts.del.all()); n != 1 {
		t.Fatalf("%d deliveries", n)
	}
}

// A session between BDAT chunks is inside a message: it may finish it.
func TestShutdownGraceBetweenBDATChunks(t *testing.T) {
	t.Parallel() // its own server; it waits to see no reply
	ts := startServer(t, Options{})
	r := ts.ehlod(t)
	r.envelope(inboundAddr)
	c1 := "Subject: x\r\n\r\n"
	r.send(fmt.Sprintf("BDAT %d\r\n%s", len(c1), c1))
	r.expect(250)
	done := shutdownAsync(ts)
	if code, text, ok := r.reply(300 * time.Millisecond); ok {
		t.Fatalf("mid-BDAT session got %d %q", code, text)
	}
	c2 := "body\r\n"
	r.send(fmt.Sprintf("BDAT %d LAST\r\n%s", len(c2), c2))
	r.expect(250)
	if txt := r.expect(421); !strings.HasPrefix(txt, "4.3.2 ") {
		t.Fatalf("421 %q", txt)
	}
	r.expectClosed()
	waitShutdown(t, done, 2*time.Second)
	if d := ts.del.all(); len(d) != 1 || string(d[0].body) != c1+c2 {
		t.Fatalf("deliveries %+v", d)
	}
}

// Over TLS the last reply is sent before the connection is closed.
func TestFinalReplyOverTLS(t *testing.T) {
	t.Parallel() // its own server; it waits for the idle timeout
	cert, pool := selfSigned(t, "mx.relay.test")
	ts := startServer(t, Options{
		TLS:            &tls.Config{Certificates: []tls.Certificate{cert}},
		CommandTimeout: 300 * time.Millisecond,
	})
	r := ts.ehlod(t)
	r.startTLS(pool)
	r.ehlo()
	r.send("QUIT\r\n")
	r.expect(221)
	r.expectClosed()

	// The idle timeout's 421 too.
	r = ts.raw(t)
	r.ehlo()
	r.startTLS(pool)
	r.ehlo()
	if code, text, ok := r.reply(3 * time.Second); !ok || code != 421 {
		t.Fatalf("idle TLS session got %d %q (reply %v)", code, text, ok)
	}
	r.expectClosed()
}

// A BDAT chunk checks its bytes whatever lines they hold: a read may end
// in CRLF and still hold a bare LF.
func TestBDATChunkLineEndings(t *testing.T) {
	for _, chunks := range [][]string{
		{"Subject: x\r\n\r\n", "bare\nLF\r\n"},
		{"Subject: x\n\nbody\r\n"},
		{"Subject: x\r\n\r\n", "a\nb\nc\r\n"},
	} {
		ts := startServer(t, Options{})
		r := ts.ehlod(t)
		r.envelope(inboundAddr)
		for i, c := range chunks {
			last := ""
			if i == len(chunks)-1 {
				last = " LAST"
			}
			r.send(fmt.Sprintf("BDAT %d%s\r\n%s", len(c), last, c))
			if last == "" {
				r.expect(250)
			}
		}
		if txt := r.expect(550); txt != "5.6.0 Bare CR or LF not allowed (reason=bare_eol)" {
			t.Errorf("%q: reply %q", chunks, txt)
		}
		if d := ts.del.all(); len(d) != 0 {
			t.Errorf("%q delivered as %q", chunks, d[0].body)
		}
	}
}

// A BDAT chunk that stops arriving, or a client that goes away in the
// middle of one, gets a 4xx or a silent close: never a 5xx, never internal
// text, never a delivery of what arrived.
func TestBDATChunkCutShort(t *testing.T) {
	t.Parallel() // each case its own server; they wait for timeouts
	for _, tc := range []struct {
		name  string
		first string // a complete chunk sent before, "" for none
		send  string // the chunk cut short
		close bool   // the client closes its side, else it stalls
	}{
		{"stalls in the only chunk", "", "BDAT 100 LAST\r\nSubject: x\r\n", false},
		{"stalls in the second chunk", "Subject: x\r\n\r\n", "BDAT 100 LAST\r\nbody\r\n", false},
		{"stalls before the second chunk", "Subject: x\r\n\r\n", "", false},
		{"closes in the only chunk", "", "BDAT 100 LAST\r\nSubject: x\r\n\r\nbody\r\n", true},
		{"closes right after the command", "", "BDAT 100 LAST\r\n", true},
		{"closes in the second chunk", "Subject: x\r\n\r\n", "BDAT 100 LAST\r\nbody\r\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ts := startServer(t, Options{CommandTimeout: 300 * time.Millisecond})
			r := ts.ehlod(t)
			r.envelope(inboundAddr)
			if tc.first != "" {
				r.send(fmt.Sprintf("BDAT %d\r\n%s", len(tc.first), tc.first))
				r.expect(250)
			}
			r.send(tc.send)
			if tc.close {
				r.c.(*net.TCPConn).CloseWrite()
			}
			for {
				code, text, ok := r.reply(3 * time.Second)
				if !ok {
					break
				}
				if code/100 != 4 || strings.Contains(text, "timeout:") || strings.Contains(text, "127.0.0.1") || strings.Contains(text, "EOF") {
					t.Fatalf("reply %d %q", code, text)
				}
			}
			r.expectClosed()
			time.Sleep(50 * time.Millisecond) // a delivery would have started by now
			if d := ts.del.all(); len(d) != 0 {
				t.Fatalf("delivered %q", d[0].body)
			}
		})
	}
}

// A bare CR or LF followed by a "." line is where a lenient sender thinks
// the message ends: the message is refused there and then, not after the
// data timeout.
func TestDataFakeTerminatorRefusedAtOnce(t *testing.T) {
	for _, end := range []string{
		"x\n.\r\n", "\r\n.\n.\r\n", "x\n.\n", "x\r.\r", "x\r.\r\n", "x\r\n.\n", "x\r\n.\rY",
	} {
		ts := startServer(t, Options{DataTimeout: 20 * time.Second})
		r := ts.inData(t, inboundAddr)
		r.send("Subject: x\r\n\r\n" + end)
		code, text, ok := r.reply(2 * time.Second)
		if !ok || code != 550 {
			t.Errorf("%q: got %d %q (reply %v), want 550 at once", end, code, text, ok)
			continue
		}
		r.expectClosed()
		if d := ts.del.all(); len(d) != 0 {
			t.Errorf("%q delivered", end)
		}
	}
}
