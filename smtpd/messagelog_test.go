package smtpd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The session's one "message" log line says what happened to the message
// and to the connection: a refusal smtpd makes itself carries a decision
// and reason as the Deliverer's lines do, and "close" names why the
// connection ends after it (issue 16, item 4).

// messageLines returns the "message" log lines written so far.
func messageLines(t *testing.T, ts *testServer) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, rec := range ts.logs.records(t) {
		if rec["msg"] == "message" {
			out = append(out, rec)
		}
	}
	return out
}

// oneMessageLine waits for the single "message" line and returns it.
func oneMessageLine(t *testing.T, ts *testServer) map[string]any {
	t.Helper()
	waitFor(t, "the message log line", func() bool { return strings.Contains(ts.logs.String(), `"msg":"message"`) })
	lines := messageLines(t, ts)
	if len(lines) != 1 {
		t.Fatalf("%d message lines, want 1:\n%s", len(lines), ts.logs)
	}
	return lines[0]
}

func checkFields(t *testing.T, rec map[string]any, want map[string]any) {
	t.Helper()
	for k, v := range want {
		if got := rec[k]; got != v {
			t.Errorf("%s = %v (%T), want %v; line %v", k, got, got, v, rec)
		}
	}
}

// Refusals of the body smtpd decides itself (size, bare CR/LF, line
// length) log decision=rejected and a reason, like the Deliverer's
// refusals, and "close" says whether and why the connection ends.
func TestWireRefusalLogLines(t *testing.T) {
	for _, tc := range []struct {
		name   string
		opts   Options
		body   string
		code   int
		reason string
		close  string
	}{
		{"too big", Options{MaxMessageBytes: 100}, "Subject: x\r\n\r\n" + strings.Repeat("0123456789\r\n", 20), 552, "message_too_large", "none"},
		{"bare LF", Options{}, "Subject: x\r\n\r\nbare\nLF\r\n", 550, "bare_eol", "bare_eol"},
		{"line too long", Options{MaxLineLength: 100}, "Subject: x\r\n\r\n" + strings.Repeat("y", 200) + "\r\n", 554, "line_too_long", "line_too_long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obs := &countingObserver{}
			tc.opts.Observer = obs
			ts := startServer(t, tc.opts)
			r := ts.inData(t, inboundAddr)
			r.send(tc.body + ".\r\n")
			// The reply carries the reason token, as the Deliverer's
			// refusals do, so replay -smtp reads the same reason.
			if txt := r.expect(tc.code); ReasonOf(txt) != tc.reason {
				t.Errorf("reply %d %q carries reason %q, want %q", tc.code, txt, ReasonOf(txt), tc.reason)
			}
			rec := oneMessageLine(t, ts)
			checkFields(t, rec, map[string]any{"code": float64(tc.code), "decision": "rejected", "reason": tc.reason, "close": tc.close})
			// Counted once as a decision (syncrelay_messages_total), and
			// its reply once.
			got := obs.String()
			for _, want := range []string{"decision rejected/" + tc.reason + "=1", fmt.Sprintf("data %d=1", tc.code)} {
				if !strings.Contains(got, want) {
					t.Errorf("events %s lack %q", got, want)
				}
			}
		})
	}
}

// An over-long line in DATA gets exactly one reply: the 554, then the
// connection closes (go-smtp's line reader stays in error, and used to
// follow the 554 with an unsolicited "500 Too long line").
func TestLongLineOneReply(t *testing.T) {
	ts := startServer(t, Options{MaxLineLength: 100})
	r := ts.inData(t, inboundAddr)
	r.send("Subject: x\r\n\r\n" + strings.Repeat("y", 200) + "\r\n.\r\n")
	r.expect(554)
	r.expectClosed()
	if len(ts.del.all()) != 0 {
		t.Fatal("delivered")
	}
}

// A message line for a message that gets its reply on a session that
// goes on says close=none; a Deliverer's decision is not overwritten.
func TestMessageLineCloseNone(t *testing.T) {
	ts := startServer(t, Options{})
	ts.del.setFn(func(ctx context.Context, d *Delivery) error {
		d.LogArgs = append(d.LogArgs, "decision", "discarded", "reason", "no_match")
		return &Verdict{Decision: "discarded", Reason: "no_match"}
	})
	r := ts.inData(t, inboundAddr)
	r.send(simpleBody + ".\r\n")
	r.expect(250)
	rec := oneMessageLine(t, ts)
	checkFields(t, rec, map[string]any{"code": float64(250), "decision": "discarded", "reason": "no_match", "close": "none"})
	if strings.Count(ts.logs.String(), `"decision"`) != 1 {
		t.Fatalf("decision logged twice:\n%s", ts.logs)
	}
}

// A session cut at the shutdown deadline in the middle of DATA, or while
// its message is being committed, is logged as cut (code 0: no reply was
// sent, close=shutdown_deadline), not as a 451 it never got, and not as
// an internal error; the reply is not counted either.
func TestShutdownDeadlineLogLine(t *testing.T) {
	t.Parallel() // each case its own server; they wait for the shutdown deadline
	for _, tc := range []struct {
		name       string
		committing bool
	}{
		{"receiving DATA", false},
		{"committing", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			obs := &countingObserver{}
			ts := startServer(t, Options{Observer: obs})
			started := make(chan struct{})
			ts.del.setFn(func(ctx context.Context, d *Delivery) error {
				close(started)
				<-ctx.Done()
				return ctx.Err()
			})
			r := ts.inData(t, inboundAddr)
			if tc.committing {
				r.send(simpleBody + ".\r\n")
				<-started
			} else {
				r.send("Subject: never finished\r\n\r\n")
				time.Sleep(50 * time.Millisecond) // the body is being read
			}
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			if err := ts.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Shutdown = %v", err)
			}
			// Already written when Shutdown returns: the daemon exits
			// right after it, and a line written later is lost.
			if !strings.Contains(ts.logs.String(), `"msg":"message"`) {
				t.Errorf("Shutdown returned before the cut session logged its line:\n%s", ts.logs)
			}
			r.expectClosed()
			rec := oneMessageLine(t, ts)
			checkFields(t, rec, map[string]any{"code": float64(0), "close": "shutdown_deadline"})
			if strings.Contains(ts.logs.String(), "answering 451") {
				t.Errorf("logged as a 451:\n%s", ts.logs)
			}
			if s := obs.String(); strings.Contains(s, "data ") {
				t.Errorf("a reply that was never sent was counted: %s", s)
			}
		})
	}
}

// A STARTTLS session is counted once, by its final state: TLS.
func TestSTARTTLSSessionCountedOnce(t *testing.T) {
	cert, pool := selfSigned(t, "mx.relay.test")
	obs := &countingObserver{}
	ts := startServer(t, Options{Observer: obs, TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	c, err := ts.tlsClient(t, &tls.Config{RootCAs: pool, ServerName: "mx.relay.test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := send(c, senderAddr, []string{inboundAddr}, simpleBody); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	plain := ts.client(t)
	plain.Quit()
	// A connection that never says EHLO is no session.
	r := ts.raw(t)
	r.send("QUIT\r\n")
	r.expect(221)
	waitFor(t, "three connections closed", func() bool {
		obs.mu.Lock()
		defer obs.mu.Unlock()
		return obs.n["closed"] == 3
	})
	got := obs.String()
	for _, want := range []string{"session tls=true=1", "session tls=false=1"} {
		if !strings.Contains(got, want) {
			t.Errorf("events %s lack %q", got, want)
		}
	}
}

// A spool that cannot be written (here: its directory is gone when a
// message spills to disk) is smtpd's own tempfail: 451, logged and
// counted as tempfail/local_error like the router's local errors, and
// the Deliverer never sees the message.
func TestSpoolFailureIsTempfail(t *testing.T) {
	obs := &countingObserver{}
	spoolDir := filepath.Join(t.TempDir(), "spool")
	if err := os.Mkdir(spoolDir, 0o700); err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, Options{Observer: obs, SpoolDir: spoolDir})
	if err := os.Remove(spoolDir); err != nil {
		t.Fatal(err)
	}
	r := ts.inData(t, inboundAddr)
	r.send("Subject: x\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n", 6000) + ".\r\n")
	r.expect(451)
	rec := oneMessageLine(t, ts)
	checkFields(t, rec, map[string]any{"code": float64(451), "decision": "tempfail", "reason": "local_error", "close": "none"})
	if got := obs.String(); !strings.Contains(got, "decision tempfail/local_error=1") {
		t.Errorf("events %s lack the tempfail", got)
	}
	if len(ts.del.all()) != 0 {
		t.Fatal("delivered")
	}
}
