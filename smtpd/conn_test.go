package smtpd

import (
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingListener hands out connections that count their write calls,
// and their read calls that returned bytes.
type countingListener struct {
	net.Listener
	writes    atomic.Int64
	reads     atomic.Int64
	deadlines atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, n: &l.writes, r: &l.reads, d: &l.deadlines}, nil
}

type countingConn struct {
	net.Conn
	n, r, d *atomic.Int64
}

func (c *countingConn) SetDeadline(t time.Time) error {
	c.d.Add(1)
	return c.Conn.SetDeadline(t)
}

func (c *countingConn) SetReadDeadline(t time.Time) error {
	c.d.Add(1)
	return c.Conn.SetReadDeadline(t)
}

func (c *countingConn) SetWriteDeadline(t time.Time) error {
	c.d.Add(1)
	return c.Conn.SetWriteDeadline(t)
}

func (c *countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.r.Add(1)
	}
	return n, err
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.n.Add(1)
	return c.Conn.Write(p)
}

// TestRepliesCoalesced: the replies to a pipelined group leave in one
// write, and a reply the client waits for is never held back.
func TestRepliesCoalesced(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &countingListener{Listener: inner}
	ts := startServerOn(t, Options{}, l)
	r := ts.raw(t) // reads the greeting
	if n := l.writes.Load(); n != 1 {
		t.Fatalf("greeting took %d writes, want 1", n)
	}

	step := func(what string, want int64, do func()) {
		t.Helper()
		before := l.writes.Load()
		do()
		if got := l.writes.Load() - before; got != want {
			t.Errorf("%s: %d writes, want %d", what, got, want)
		}
	}
	step("multi-line EHLO reply", 1, func() { r.ehlo() })
	step("pipelined MAIL, RCPT, DATA", 1, func() {
		r.send(fmt.Sprintf("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n", senderAddr, inboundAddr))
		r.expect(250)
		r.expect(250)
		r.expect(354)
	})
	step("end of data", 1, func() {
		r.send(simpleBody + ".\r\n")
		r.expect(250)
	})
	step("QUIT", 1, func() {
		r.send("QUIT\r\n")
		r.expect(221)
		r.expectClosed()
	})
	if got := len(ts.del.all()); got != 1 {
		t.Errorf("%d deliveries, want 1", got)
	}
}

// TestBodyReadAhead: a DATA body of a few KiB sent in one write is taken
// from the socket in one read, not in go-smtp's 4 KiB pieces, and arrives
// whole.
func TestBodyReadAhead(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &countingListener{Listener: inner}
	ts := startServerOn(t, Options{}, l)
	r := ts.raw(t)
	r.ehlo()
	body := simpleBody + strings.Repeat(strings.Repeat("y", 76)+"\r\n", 80) // 6.4 KiB
	for i := 0; i < 2; i++ {
		r.send(fmt.Sprintf("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n", senderAddr, inboundAddr))
		r.expect(250)
		r.expect(250)
		r.expect(354)
		before := l.reads.Load()
		r.send(body + ".\r\n")
		r.expect(250)
		if got := l.reads.Load() - before; got != 1 {
			t.Errorf("message %d: the body took %d reads, want 1", i, got)
		}
	}
	d := ts.del.all()
	if len(d) != 2 || string(d[0].body) != body || string(d[1].body) != body {
		t.Fatalf("%d deliveries, bodies not as sent", len(d))
	}
}

// TestDeadlinesCoalesced: go-smtp moves the read or write deadline before
// every command and reply; the socket's is moved only when that takes it
// later by a sixteenth of the timeout or more, so a busy session's
// messages set none (here well under one each, not the eight go-smtp asks
// for), and a timeout still ends an idle session.
func TestDeadlinesCoalesced(t *testing.T) {
	t.Parallel() // its own server; it waits for the idle timeout
	// 1 s: the four messages below share a deadline as long as they take
	// less than a few sixteenths of it (62 ms each; they take a few ms),
	// and the test waits for it once.
	const timeout = time.Second
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &countingListener{Listener: inner}
	ts := startServerOn(t, Options{CommandTimeout: timeout, DataTimeout: timeout}, l)
	r := ts.raw(t)
	r.ehlo()
	send := func() {
		r.send(fmt.Sprintf("MAIL FROM:<%s>\r\nRCPT TO:<%s>\r\nDATA\r\n", senderAddr, inboundAddr))
		r.expect(250)
		r.expect(250)
		r.expect(354)
		r.send(simpleBody + ".\r\n")
		r.expect(250)
	}
	send()
	before := l.deadlines.Load()
	for i := 0; i < 4; i++ {
		send()
	}
	if got := l.deadlines.Load() - before; got >= 4 {
		t.Errorf("4 messages set the socket's deadlines %d times, want fewer than one each", got)
	}
	start := time.Now()
	r.expect(421) // the idle timeout, close to timeout
	if d := time.Since(start); d < timeout*15/16-100*time.Millisecond || d > timeout+time.Second {
		t.Errorf("idle timeout after %v, want between 15/16 of %v and %v", d, timeout, timeout)
	}
}

// slowCloseListener hands out connections whose Close waits a little
// before closing, as a loaded machine may: whatever the server still
// writes meanwhile reaches the client unless it is held back.
type slowCloseListener struct{ net.Listener }

func (l slowCloseListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &slowCloseConn{Conn: c}, nil
}

type slowCloseConn struct {
	net.Conn
	once sync.Once
}

func (c *slowCloseConn) Close() error {
	c.once.Do(func() { time.Sleep(200 * time.Millisecond) })
	return c.Conn.Close()
}

// A message cut by Shutdown's deadline gets no reply at all, as its
// "message" line (code 0) and the metrics (nothing counted) say: not the
// 451 the session returns to go-smtp, nor the 421 that follows it, even
// when they are written before the socket is closed.
func TestShutdownDeadlineWritesNothing(t *testing.T) {
	t.Parallel() // its own server; it waits for the shutdown deadline
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := startServerOn(t, Options{}, slowCloseListener{inner})
	r := ts.cutWhileCommitting(t)
	r.expectClosed()
}

// TestDeadlineNeverEarly: the socket's deadline, kept or set, is never
// before the one go-smtp asked for (RFC 5321's minimum timeouts), and is
// at most a sixteenth of the timeout after it.
func TestDeadlineNeverEarly(t *testing.T) {
	const timeout = 5 * time.Minute
	// Simulated sessions: a command every 7 s. sock is the socket's
	// deadline on the simulated clock; at step it is sock-step on the real
	// one, where go-smtp asks for now+timeout.
	var sock time.Time
	sets := 0
	for step := time.Duration(0); step < 3*timeout; step += 7 * time.Second {
		asked := time.Now().Add(timeout)
		cur := time.Time{}
		if !sock.IsZero() {
			cur = sock.Add(-step)
		}
		if !keepDeadline(cur, asked) {
			cur = withSlack(asked)
			sock = cur.Add(step)
			sets++
		}
		if cur.Before(asked) {
			t.Fatalf("at +%v the socket's deadline is %v before the one asked for", step, asked.Sub(cur))
		}
		if late := cur.Sub(asked); late > timeout/16+time.Second {
			t.Fatalf("at +%v the socket's deadline is %v late, more than a sixteenth of %v", step, late, timeout)
		}
	}
	if sets > 3*16+2 { // 128 commands, 48 sixteenths
		t.Errorf("the deadline was set %d times in %v of commands every 7 s, want about one per sixteenth", sets, 3*timeout)
	}
	// An earlier deadline (the command timeout after the longer data
	// timeout), none, and a past one (a kick) are set as asked.
	later := time.Now().Add(10 * time.Minute)
	for _, tc := range []struct {
		cur, t time.Time
	}{
		{withSlack(later), time.Now().Add(5 * time.Minute)},
		{withSlack(later), time.Time{}},
		{withSlack(later), time.Unix(1, 0)},
	} {
		if keepDeadline(tc.cur, tc.t) {
			t.Errorf("kept %v when %v was asked for", tc.cur, tc.t)
		}
	}
}
