package smtpd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"syncrelay/internal/testenv"
)

func TestMain(m *testing.M) {
	// The tests that wait for a timeout, and the two nested go test runs,
	// run in parallel: go's default -parallel (GOMAXPROCS, 2 here) would
	// let the nested runs hold both slots. Eight, not four: the dozen
	// parallel tests and subtests all sleep (0.2-1 s timeouts), so with
	// four the last ones waited for slots about 0.3 s.
	testenv.DefaultParallel(8)
	os.Exit(m.Run())
}

// Addresses used by the tests. inboundAddr is a tenant's inbound address.
const (
	inboundAddr = "acme-7f3k2q9x@relay.test"
	otherAddr   = "globex-zz81m0p4@relay.test"
	senderAddr  = "carl.candidate@cand.test"
)

type fakeRecipients struct {
	mu     sync.Mutex
	err    error
	panic  bool
	lookup []string
	ctxs   []context.Context
}

func (f *fakeRecipients) InboundTenant(ctx context.Context, addr string) (string, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lookup = append(f.lookup, addr)
	f.ctxs = append(f.ctxs, ctx)
	if f.panic {
		panic("recipients exploded")
	}
	if f.err != nil {
		return "", false, f.err
	}
	switch addr {
	case inboundAddr:
		return "acme", true, nil
	case otherAddr:
		return "globex", true, nil
	}
	return "", false, nil
}

type delivered struct {
	d    Delivery
	body []byte
	ctx  context.Context
}

// recorder is a Deliverer that records every call; fn, if set, decides the
// result (after the body has been read).
type recorder struct {
	mu    sync.Mutex
	calls []delivered
	fn    func(ctx context.Context, d *Delivery) error
	// custom: fn answered with an *smtp.SMTPError of its own, whose code
	// need not be one of ReplyCodes.
	custom bool
}

func (r *recorder) Deliver(ctx context.Context, d *Delivery) error {
	body, err := io.ReadAll(d.Message.Open())
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.calls = append(r.calls, delivered{d: *d, body: body, ctx: ctx})
	fn := r.fn
	r.mu.Unlock()
	if fn != nil {
		err := fn(ctx, d)
		if _, ok := err.(*smtp.SMTPError); ok {
			r.mu.Lock()
			r.custom = true
			r.mu.Unlock()
		}
		return err
	}
	return nil
}

func (r *recorder) all() []delivered {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]delivered(nil), r.calls...)
}

func (r *recorder) setFn(fn func(ctx context.Context, d *Delivery) error) {
	r.mu.Lock()
	r.fn = fn
	r.mu.Unlock()
}

// logBuf collects JSON log lines.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuf) records(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(l.String()), "\n") {
		if line == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("bad log line %q: %v", line, err)
		}
		out = append(out, m)
	}
	return out
}

type testServer struct {
	*Server
	addr  string
	rcpts *fakeRecipients
	del   *recorder
	logs  *logBuf
}

func startServer(t testing.TB, o Options) *testServer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return startServerOn(t, o, l)
}

// startServerOn serves on l (a wrapped listener, for tests that watch the
// connection itself).
func startServerOn(t testing.TB, o Options, l net.Listener) *testServer {
	t.Helper()
	ts := &testServer{rcpts: &fakeRecipients{}, del: &recorder{}, logs: &logBuf{}}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewJSONHandler(ts.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	if o.Hostname == "" {
		o.Hostname = "mx.relay.test"
	}
	if o.SpoolDir == "" {
		o.SpoolDir = t.TempDir()
	}
	// Every reply code any test sees must be one ReplyCodes lists (they
	// exist at 0 in syncrelay_smtp_replies_total from start).
	known := &knownCodesObserver{Observer: o.Observer}
	if known.Observer == nil {
		known.Observer = nopObserver{}
	}
	o.Observer = known
	t.Cleanup(func() {
		ts.del.mu.Lock()
		custom := ts.del.custom
		ts.del.mu.Unlock()
		for _, u := range known.unknownCodes() {
			if custom && strings.HasPrefix(u, stageData+" ") {
				continue // the test's Deliverer chose it
			}
			t.Errorf("reply %s is not in ReplyCodes", u)
		}
	})
	s, err := New(o, ts.rcpts, ts.del)
	if err != nil {
		t.Fatal(err)
	}
	ts.Server, ts.addr = s, l.Addr().String()
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve returned %v after Shutdown", err)
			}
		case <-time.After(2 * time.Second):
			t.Error("Serve did not return after Shutdown")
		}
	})
	return ts
}

// client dials with go-smtp's client and says EHLO.
func (ts *testServer) client(t testing.TB) *smtp.Client {
	t.Helper()
	c, err := smtp.Dial(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	return c
}

// tlsClient dials, says EHLO, does STARTTLS and says EHLO again.
func (ts *testServer) tlsClient(t testing.TB, cfg *tls.Config) (*smtp.Client, error) {
	t.Helper()
	c, err := smtp.DialStartTLS(ts.addr, cfg)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Close() })
	if err := c.Hello("client.test"); err != nil { // the handshake happens here
		return nil, err
	}
	return c, nil
}

// send runs one transaction with go-smtp's client.
func send(c *smtp.Client, from string, to []string, body string) error {
	if err := c.Mail(from, nil); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r, nil); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, body); err != nil {
		return err
	}
	return w.Close()
}

// raw is a hand-driven SMTP connection, for what a real client would
// refuse to send.
type raw struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

func (ts *testServer) raw(t testing.TB) *raw {
	t.Helper()
	c, err := net.Dial("tcp", ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	r := &raw{t: t, c: c, r: bufio.NewReader(c)}
	r.expect(220)
	return r
}

// Layered session helpers, as in go-smtp's own tests: each step is the
// one before plus one command, its reply checked.

// greeted dials and reads the 220 greeting.
func (ts *testServer) greeted(t testing.TB) *raw { return ts.raw(t) }

// ehlod is greeted, then EHLO.
func (ts *testServer) ehlod(t testing.TB) *raw {
	t.Helper()
	r := ts.greeted(t)
	r.ehlo()
	return r
}

// inData is ehlod, then MAIL, RCPT TO:<to> and DATA, answered 354: what is
// sent next is the message.
func (ts *testServer) inData(t testing.TB, to string) *raw {
	t.Helper()
	r := ts.ehlod(t)
	r.envelope(to)
	r.send("DATA\r\n")
	r.expect(354)
	return r
}

func (r *raw) send(s string) {
	r.t.Helper()
	r.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(r.c, s); err != nil {
		r.t.Fatalf("write: %v", err)
	}
}

// reply reads one (possibly multi-line) reply; ok is false on EOF/timeout.
func (r *raw) reply(timeout time.Duration) (code int, text string, ok bool) {
	r.c.SetReadDeadline(time.Now().Add(timeout))
	var lines []string
	for {
		line, err := r.r.ReadString('\n')
		if err != nil {
			return 0, strings.Join(lines, "\n"), false
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 {
			r.t.Fatalf("short reply line %q", line)
		}
		lines = append(lines, line[4:])
		if line[3] == ' ' {
			code, _ = strconv.Atoi(line[:3])
			return code, strings.Join(lines, "\n"), true
		}
	}
}

// expect reads a reply and fails unless it has the code; it returns the text.
func (r *raw) expect(code int) string {
	r.t.Helper()
	got, text, ok := r.reply(5 * time.Second)
	if !ok {
		r.t.Fatalf("want %d, got no reply (%q)", code, text)
	}
	if got != code {
		r.t.Fatalf("want %d, got %d %s", code, got, text)
	}
	return text
}

// expectClosed reads until EOF, failing on any further reply.
func (r *raw) expectClosed() {
	r.t.Helper()
	r.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	rest, err := io.ReadAll(r.r)
	if err != nil {
		r.t.Fatalf("connection not closed: %v (read %q)", err, rest)
	}
	if len(rest) > 0 {
		r.t.Fatalf("unexpected data before close: %q", rest)
	}
}

func (r *raw) ehlo() string {
	r.t.Helper()
	r.send("EHLO client.test\r\n")
	return r.expect(250)
}

// envelope sends EHLO (if asked), MAIL and RCPT and checks their replies.
func (r *raw) envelope(to string) {
	r.t.Helper()
	r.send(fmt.Sprintf("MAIL FROM:<%s>\r\n", senderAddr))
	r.expect(250)
	r.send(fmt.Sprintf("RCPT TO:<%s>\r\n", to))
	r.expect(250)
}

func smtpCode(t testing.TB, err error) (int, smtp.EnhancedCode, string) {
	t.Helper()
	se, ok := err.(*smtp.SMTPError)
	if !ok {
		t.Fatalf("want *smtp.SMTPError, got %T %v", err, err)
	}
	return se.Code, se.EnhancedCode, se.Message
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

const simpleBody = "From: <carl.candidate@cand.test>\r\nSubject: Interview secret-subject\r\n\r\nHello there\r\n"

// knownCodesObserver passes events on and notes reply codes that
// ReplyCodes does not list for their stage.
type knownCodesObserver struct {
	Observer
	mu      sync.Mutex
	unknown []string
}

func (o *knownCodesObserver) Reply(stage string, code int) {
	o.Observer.Reply(stage, code)
	if slices.Contains(ReplyCodes()[stage], code) {
		return
	}
	o.mu.Lock()
	o.unknown = append(o.unknown, fmt.Sprintf("%s %d", stage, code))
	o.mu.Unlock()
}

func (o *knownCodesObserver) unknownCodes() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.unknown...)
}

// cutWhileCommitting makes ts's Deliverer block until its context ends,
// sends a message into it, and shuts ts down with a 300 ms deadline, which
// must be reached: the session is cut mid-commit. It returns the session's
// connection.
func (ts *testServer) cutWhileCommitting(t testing.TB) *raw {
	t.Helper()
	started := make(chan struct{})
	ts.del.setFn(func(ctx context.Context, d *Delivery) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	})
	r := ts.inData(t, inboundAddr)
	r.send(simpleBody + ".\r\n")
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := ts.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown = %v", err)
	}
	return r
}
