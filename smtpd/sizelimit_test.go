package smtpd

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// A message over MaxMessageBytes gets one 552 5.3.4 with the reason token
// message_too_large however it comes: DATA, BDAT over the limit on its
// first chunk or a later one, LAST or not, pipelined or not, or MAIL's
// SIZE= over the limit. The refusal is logged and counted once (the
// "message" line or, for SIZE=, the "mail" line; Observer.Reply and
// Observer.Decision), and the session stays in step: a chunk is read to
// its last octet (RFC 3030), so the next message on the connection goes
// through. go-smtp's patches 5 and 6 (third_party/go-smtp/SYNCRELAY.md)
// route its own size refusals through the session for this.

// padding is chunk content that would run commands if the session fell out
// of step and read it as such.
func padding(n int) string {
	const line = "RSET\r\nMAIL FROM:<evil@smuggler.test>\r\n"
	s := strings.Repeat(line, n/len(line)+1)
	return s[:n-2] + "\r\n"
}

func chunk(body string, last bool) string {
	if last {
		return fmt.Sprintf("BDAT %d LAST\r\n%s", len(body), body)
	}
	return fmt.Sprintf("BDAT %d\r\n%s", len(body), body)
}

func TestBDATOversize(t *testing.T) {
	const max = 1000
	small, big := padding(600), padding(1200)
	// A line over MaxLineLength (1000) after the first 4 KiB of the chunk:
	// the refused chunk is discarded whole, without go-smtp's line limit.
	longLines := padding(5000) + strings.Repeat("y", 1500) + "\r\n"
	for _, tc := range []struct {
		name string
		// sent after MAIL and RCPT, in one write; replies are the codes
		// expected for them, the 552 last.
		chunks  string
		replies []int
	}{
		{"first chunk LAST", chunk(big, true), []int{552}},
		{"first chunk", chunk(big, false), []int{552}},
		{"later chunk", chunk(small, false) + chunk(small, false), []int{250, 552}},
		{"later chunk LAST", chunk(small, false) + chunk(small, true), []int{250, 552}},
		{"third chunk", chunk(padding(400), false) + chunk(padding(400), false) + chunk(padding(400), true), []int{250, 250, 552}},
		{"long lines in the refused chunk", chunk(small, false) + chunk(longLines, true), []int{250, 552}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obs := &countingObserver{}
			ts := startServer(t, Options{MaxMessageBytes: max, Observer: obs})
			r := ts.ehlod(t)
			r.envelope(inboundAddr)
			r.send(tc.chunks)
			var text string
			for _, code := range tc.replies {
				text = r.expect(code)
			}
			checkTooBig(t, text)
			// In step: the next message on the same connection is
			// delivered as sent.
			r.envelope(inboundAddr)
			r.send(chunk(simpleBody, true))
			r.expect(250)
			checkOneRefusal(t, ts, obs, true)
		})
	}
}

// Pipelined (RFC 2920): the whole transaction and the next one in one
// write. A chunk pipelined after the refused one is read and discarded
// (RFC 3030 §4: the server must accept and discard the chunks already in
// the pipeline), so the next transaction is read as sent.
func TestBDATOversizePipelined(t *testing.T) {
	for _, tc := range []struct {
		name    string
		chunks  string
		replies []int
	}{
		{"later chunk, then LAST", chunk(padding(600), false) + chunk(padding(600), false) + chunk(padding(300), true),
			[]int{250, 552, 502}},
		{"first chunk, then two", chunk(padding(1200), false) + chunk(padding(300), false) +
			chunk(padding(5000)+strings.Repeat("z", 1500)+"\r\n", true),
			[]int{552, 502, 502}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obs := &countingObserver{}
			ts := startServer(t, Options{MaxMessageBytes: 1000, Observer: obs})
			r := ts.ehlod(t)
			r.send(fmt.Sprintf("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\n", senderAddr, inboundAddr) + tc.chunks +
				fmt.Sprintf("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\n", senderAddr, inboundAddr) + chunk(simpleBody, true))
			r.expect(250)
			r.expect(250)
			for _, code := range tc.replies {
				if text := r.expect(code); code == 552 {
					checkTooBig(t, text)
				}
			}
			r.expect(250)
			r.expect(250)
			r.expect(250)
			checkOneRefusal(t, ts, obs, true)
		})
	}
}

// DATA over the limit, for comparison: the same reply, line and counts.
func TestDATAOversizeCountedOnce(t *testing.T) {
	obs := &countingObserver{}
	ts := startServer(t, Options{MaxMessageBytes: 1000, Observer: obs})
	r := ts.inData(t, inboundAddr)
	r.send("Subject: x\r\n\r\n" + strings.Repeat("0123456789\r\n", 100) + ".\r\n")
	checkTooBig(t, r.expect(552))
	r.envelope(inboundAddr)
	r.send(chunk(simpleBody, true))
	r.expect(250)
	checkOneRefusal(t, ts, obs, false)
}

// MAIL's SIZE= over the limit is refused by the session (go-smtp patch 6)
// with the same 552 and reason, counted once as a reply to MAIL and once
// as a message refused for its size, and logged.
func TestMailSizeOverLimit(t *testing.T) {
	obs := &countingObserver{}
	ts := startServer(t, Options{MaxMessageBytes: 1000, Observer: obs})
	r := ts.ehlod(t)
	r.send(fmt.Sprintf("MAIL FROM:<%s> SIZE=1001\r\n", senderAddr))
	checkTooBig(t, r.expect(552))
	// No transaction was begun.
	r.send(fmt.Sprintf("RCPT TO:<%s>\r\n", inboundAddr))
	r.expect(502)
	// At the limit is fine, and the session goes on.
	r.send(fmt.Sprintf("MAIL FROM:<%s> SIZE=1000\r\n", senderAddr))
	r.expect(250)
	r.send(fmt.Sprintf("RCPT TO:<%s>\r\n", inboundAddr))
	r.expect(250)
	r.send(chunk(simpleBody, true))
	r.expect(250)

	waitFor(t, "the message line", func() bool { return len(messageLines(t, ts)) == 1 })
	var mailLines []map[string]any
	for _, rec := range ts.logs.records(t) {
		if rec["msg"] == "mail" && rec["decision"] != nil {
			mailLines = append(mailLines, rec)
		}
	}
	if len(mailLines) != 1 {
		t.Fatalf("%d mail lines with a decision, want 1:\n%s", len(mailLines), ts.logs)
	}
	checkFields(t, mailLines[0], map[string]any{"level": "INFO", "code": float64(552), "decision": "rejected",
		"reason": reasonMessageTooLarge, "size": float64(1001)})
	got := obs.String()
	for _, want := range []string{"mail 552=1", "mail 250=1", "decision rejected/message_too_large=1", "data 250=1"} {
		if !strings.Contains(got, want) {
			t.Errorf("events %s lack %q", got, want)
		}
	}
	if len(ts.del.all()) != 1 {
		t.Fatalf("%d deliveries, want 1", len(ts.del.all()))
	}
}

// checkTooBig checks the text of a 552 reply: 5.3.4 and the reason token.
func checkTooBig(t *testing.T, text string) {
	t.Helper()
	if !strings.HasPrefix(text, "5.3.4 ") || ReasonOf(text) != reasonMessageTooLarge {
		t.Errorf("552 %q, want 5.3.4 with reason %s", text, reasonMessageTooLarge)
	}
}

// checkOneRefusal checks that one message was refused for its size and
// one delivered (simpleBody), each with one "message" line, and that the
// refusal was counted once: no other reply to DATA/BDAT was logged or
// counted (no unseen 451 for an aborted transfer).
func checkOneRefusal(t *testing.T, ts *testServer, obs *countingObserver, bdat bool) {
	t.Helper()
	var lines []map[string]any
	waitFor(t, "two message lines", func() bool {
		lines = messageLines(t, ts)
		return len(lines) >= 2
	})
	time.Sleep(20 * time.Millisecond) // a late third line would show here
	if lines = messageLines(t, ts); len(lines) != 2 {
		t.Fatalf("%d message lines, want 2:\n%s", len(lines), ts.logs)
	}
	checkFields(t, lines[0], map[string]any{"code": float64(552), "decision": "rejected",
		"reason": reasonMessageTooLarge, "close": closeNone, "bdat": bdat})
	checkFields(t, lines[1], map[string]any{"code": float64(250), "close": closeNone, "bdat": true})
	got := obs.String()
	for _, want := range []string{"data 552=1", "data 250=1", "decision rejected/message_too_large=1"} {
		if !strings.Contains(got, want) {
			t.Errorf("events %s lack %q", got, want)
		}
	}
	obs.mu.Lock()
	for k := range obs.n {
		if strings.HasPrefix(k, "data ") && k != "data 552" && k != "data 250" {
			t.Errorf("reply %q counted (events %s)", k, got)
		}
	}
	obs.mu.Unlock()
	if d := ts.del.all(); len(d) != 1 || string(d[0].body) != simpleBody {
		t.Fatalf("deliveries %+v, want the one valid message", d)
	}
}

// A BDAT transfer that go-smtp aborts (RSET between chunks, the client
// gone, even in a chunk over the limit, a timeout) gets no reply to its
// message from go-smtp: the
// "message" line says code 0 and nothing is counted, but for a timeout,
// whose 421 this package writes and counts (not the 451 nobody saw).
func TestBDATAbortedNotCountedAsUnseen451(t *testing.T) {
	t.Parallel() // its own servers; one case waits for a timeout
	for _, tc := range []struct {
		name  string
		opts  Options
		run   func(r *raw)
		code  int
		close string
	}{
		{"RSET between chunks", Options{}, func(r *raw) {
			r.send(chunk("Subject: x\r\n", false))
			r.expect(250)
			r.send("RSET\r\n")
			r.expect(250)
			r.envelope(inboundAddr)
			r.send(chunk(simpleBody, true))
			r.expect(250)
		}, 0, closeNone},
		{"client gone in a chunk", Options{}, func(r *raw) {
			r.send("BDAT 100\r\nSubject: x\r\n")
			r.c.Close()
		}, 0, closeClientGone},
		{"client gone in a chunk over the limit", Options{MaxMessageBytes: 1000}, func(r *raw) {
			r.send(chunk("Subject: x\r\n", false))
			r.expect(250)
			r.send("BDAT 2000\r\nSubject: x\r\n")
			r.c.Close()
		}, 0, closeClientGone},
		{"timeout between chunks", Options{CommandTimeout: 300 * time.Millisecond}, func(r *raw) {
			r.send(chunk("Subject: x\r\n", false))
			r.expect(250)
			r.expect(421)
			r.expectClosed()
		}, 421, closeDataTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obs := &countingObserver{}
			tc.opts.Observer = obs
			ts := startServer(t, tc.opts)
			r := ts.ehlod(t)
			r.envelope(inboundAddr)
			tc.run(r)
			// The aborted message's line (its 12 bytes), whenever it comes:
			// the next transaction does not wait for it.
			var line map[string]any
			waitFor(t, "the message line", func() bool {
				for _, rec := range messageLines(t, ts) {
					if rec["bytes"] == float64(12) {
						line = rec
						return true
					}
				}
				return false
			})
			checkFields(t, line, map[string]any{"code": float64(tc.code), "close": tc.close, "bdat": true})
			obs.mu.Lock()
			defer obs.mu.Unlock()
			for k := range obs.n {
				if strings.HasPrefix(k, "data ") && k != "data 250" && k != fmt.Sprintf("data %d", tc.code) {
					t.Errorf("reply %q counted", k)
				}
			}
		})
	}
}

// A BDAT chunk with a line over MaxLineLength sent right behind its
// command (in one write) is read whole and refused by the session's own
// check, 554 5.6.0 with its reason, counted once; the session goes on.
// go-smtp held the bytes it read with the command to its line limit and
// answered "500 Too long line" and closed, unlogged (its patch 7).
func TestBDATLongLineBehindCommand(t *testing.T) {
	obs := &countingObserver{}
	ts := startServer(t, Options{Observer: obs})
	r := ts.ehlod(t)
	r.envelope(inboundAddr)
	r.send(chunk("Subject: x\r\n\r\n"+strings.Repeat("y", 1500)+"\r\n", true))
	if text := r.expect(554); ReasonOf(text) != reasonLineTooLong {
		t.Errorf("554 %q, want reason %s", text, reasonLineTooLong)
	}
	r.envelope(inboundAddr)
	r.send(chunk(simpleBody, true))
	r.expect(250)
	var lines []map[string]any
	waitFor(t, "two message lines", func() bool {
		lines = messageLines(t, ts)
		return len(lines) == 2
	})
	checkFields(t, lines[0], map[string]any{"code": float64(554), "decision": "rejected",
		"reason": reasonLineTooLong, "close": closeNone, "bdat": true})
	got := obs.String()
	for _, want := range []string{"data 554=1", "data 250=1", "decision rejected/line_too_long=1"} {
		if !strings.Contains(got, want) {
			t.Errorf("events %s lack %q", got, want)
		}
	}
}

// A client that goes away right after a BDAT command, in a chunk over the
// limit or not, ends its session cleanly. go-smtp's goroutine for
// Session.Data could start after the connection had closed and panic on
// the missing session (its patch 5 hands it the session); this happened
// in about a third of such sessions.
func TestBDATClientGoneAtOnce(t *testing.T) {
	ts := startServer(t, Options{MaxMessageBytes: 1000})
	for i := 0; i < 20; i++ {
		r := ts.ehlod(t)
		r.envelope(inboundAddr)
		size := 500
		if i%2 == 0 {
			size = 5000
		}
		r.send(fmt.Sprintf("BDAT %d LAST\r\nshort", size))
		r.c.Close()
	}
	waitFor(t, "20 message lines", func() bool { return len(messageLines(t, ts)) == 20 })
	if l := ts.logs.String(); strings.Contains(l, "panic") {
		t.Fatalf("a session panicked:\n%s", l)
	}
}
