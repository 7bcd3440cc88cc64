package smtp

// syncrelay: the reproductions of the patches to data.go and conn.go (see
// SYNCRELAY.md). syncrelay's smtpd tests run them against the pristine
// upstream module too (TestUpstreamGoSMTPStillNeedsPatches): a patch whose
// test passes there is no longer needed.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// decode reads all of in through the DATA decoder.
func decode(in string) (string, error) {
	r := &dataReader{r: bufio.NewReader(strings.NewReader(in))}
	b, err := io.ReadAll(r)
	return string(b), err
}

// Patch 1: a line starting ".\r" not followed by "\n" keeps its CR (the
// dot is dot-stuffing). Upstream drops the CR: "a\r\n.\rb" reads "a\r\nb",
// hiding a bare CR (an SMTP smuggling pattern) from the backend.
func TestSyncrelayPatch1DotCRKept(t *testing.T) {
	got, err := decode("a\r\n.\rb\r\n.\r\n")
	if err != nil || got != "a\r\n\rb\r\n" {
		t.Fatalf("got %q, %v; want %q", got, err, "a\r\n\rb\r\n")
	}
}

// Patch 2: Read returns what it has decoded once nothing more is buffered,
// instead of blocking until b is full. Upstream blocks, so a backend cannot
// answer a message whose sender stops after a fake terminator until the
// read times out. The source stands for a connection that has sent
// "partial line" and nothing more: a second read from it is where a
// connection blocks, so it fails at once instead (no timeout to wait out).
func TestSyncrelayPatch2ReadReturnsWhatArrived(t *testing.T) {
	src := &arrivedSource{data: "partial line"}
	r := &dataReader{r: bufio.NewReader(src)}
	b := make([]byte, 4096)
	n, err := r.Read(b)
	if err != nil || string(b[:n]) != "partial line" {
		t.Fatalf("got %q, %v after %d reads of the connection; want %q without a second read (it would block)", b[:n], err, src.reads, "partial line")
	}
}

// arrivedSource returns data to its first Read and errWouldBlock to the
// next ones.
type arrivedSource struct {
	data  string
	reads int
}

var errWouldBlock = errors.New("read again with nothing more sent: a connection blocks here")

func (s *arrivedSource) Read(p []byte) (int, error) {
	s.reads++
	if s.reads == 1 {
		return copy(p, s.data), nil
	}
	return 0, errWouldBlock
}

// Patch 3: "\r\r\n" ends a line (after a bare CR), so "\r\r\n.\r\n" holds
// the CRLF.CRLF terminator as RFC 5321 §4.1.1.4 frames it. Upstream reads
// on past it.
func TestSyncrelayPatch3CRCRLFEndsLine(t *testing.T) {
	got, err := decode("a\r\r\n.\r\nMAIL FROM:<x>\r\n")
	if err != nil || got != "a\r\r\n" {
		t.Fatalf("got %q, %v; want %q", got, err, "a\r\r\n")
	}
}

// Patch 4: the decoder copies the middle of a line in bulk. Upstream reads
// and switches on one byte at a time, more than ten times as slow as
// reading the same body line by line with bufio (ReadSlice, the least a
// decoder must do), where the bulk decoder is about as fast. Both are
// timed here, best of several runs, so the load of the machine cancels out.
func TestSyncrelayPatch4BulkDecoder(t *testing.T) {
	line := []byte("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod te\r\n")
	msg := append(bytes.Repeat(line, (1<<20)/len(line)), ".\r\n"...)
	buf := make([]byte, 8<<10)
	best := func(read func(*bufio.Reader) error) time.Duration {
		var min time.Duration
		for i := 0; i < 7; i++ {
			br := bufio.NewReader(bytes.NewReader(msg))
			start := time.Now()
			if err := read(br); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); i == 0 || d < min {
				min = d
			}
		}
		return min
	}
	decoder := best(func(br *bufio.Reader) error {
		r := &dataReader{r: br}
		for {
			if _, err := r.Read(buf); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
		}
	})
	lines := best(func(br *bufio.Reader) error {
		for {
			l, err := br.ReadSlice('\n')
			copy(buf, l)
			if len(l) == 3 && l[0] == '.' {
				return nil
			}
			if err != nil {
				return err
			}
		}
	})
	ratio := float64(decoder) / float64(lines)
	t.Logf("1 MiB: decoder %v, ReadSlice lines %v: %.1fx", decoder, lines, ratio)
	if ratio > 5 {
		t.Fatalf("the DATA decoder takes %.1fx the time of reading the same lines with ReadSlice (%v against %v): it decodes byte by byte", ratio, decoder, lines)
	}
}

// Patch 8: lineLimitReader counts line lengths a line at a time.
// Upstream's loop visits every byte read from the connection (a 4 KiB
// message is 4 KiB of it), several times as slow as reading the same
// bytes line by line with bufio (ReadSlice, which finds each line end with
// bytes.IndexByte). Both are timed here, best of several runs, so the
// load of the machine cancels out.
func TestSyncrelayPatch8BulkLineLimit(t *testing.T) {
	line := []byte("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod te\r\n")
	msg := bytes.Repeat(line, (1<<20)/len(line))
	buf := make([]byte, 4<<10)
	best := func(read func() error) time.Duration {
		var min time.Duration
		for i := 0; i < 7; i++ {
			start := time.Now()
			if err := read(); err != nil {
				t.Fatal(err)
			}
			if d := time.Since(start); i == 0 || d < min {
				min = d
			}
		}
		return min
	}
	limited := best(func() error {
		r := &lineLimitReader{R: bytes.NewReader(msg), LineLimit: 2000}
		for {
			if _, err := r.Read(buf); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
		}
	})
	lines := best(func() error {
		br := bufio.NewReader(bytes.NewReader(msg))
		for {
			l, err := br.ReadSlice('\n')
			copy(buf, l)
			if err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
		}
	})
	ratio := float64(limited) / float64(lines)
	t.Logf("1 MiB: lineLimitReader %v, ReadSlice lines %v: %.1fx", limited, lines, ratio)
	if ratio > 3 { // 0.9x here, 10.8x upstream
		t.Fatalf("lineLimitReader takes %.1fx the time of reading the same lines with ReadSlice (%v against %v): it counts byte by byte", ratio, limited, lines)
	}
}

// syncrelayBackend records what go-smtp asks of its sessions, for the
// reproductions of patches 5 and 6, which run a server over loopback TCP.
type syncrelayBackend struct {
	mu     sync.Mutex
	events []string
	// acceptSize: Mail accepts any SIZE= (patch 6's backstop); otherwise
	// it refuses one over the server's limit with its own reply.
	acceptSize bool
}

func (b *syncrelayBackend) add(ev string) {
	b.mu.Lock()
	b.events = append(b.events, ev)
	b.mu.Unlock()
}

func (b *syncrelayBackend) log() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return strings.Join(b.events, ", ")
}

func (b *syncrelayBackend) NewSession(*Conn) (Session, error) { return &syncrelaySession{b}, nil }

type syncrelaySession struct{ b *syncrelayBackend }

// refusedBySession is the session's own reply to a message over the limit.
var refusedBySession = &SMTPError{Code: 552, EnhancedCode: EnhancedCode{5, 3, 4}, Message: "Too big, says the session"}

func (s *syncrelaySession) Mail(from string, opts *MailOptions) error {
	s.b.add(fmt.Sprintf("mail SIZE=%d", opts.Size))
	if !s.b.acceptSize && opts.Size > syncrelayMax {
		return refusedBySession
	}
	return nil
}

func (s *syncrelaySession) Rcpt(string, *RcptOptions) error { return nil }

func (s *syncrelaySession) Data(r io.Reader) error {
	n, err := io.Copy(io.Discard, r)
	s.b.add(fmt.Sprintf("data %d %v", n, err))
	if errors.Is(err, ErrDataTooLarge) {
		return refusedBySession
	}
	return err
}

func (s *syncrelaySession) Reset()        { s.b.add("reset") }
func (s *syncrelaySession) Logout() error { return nil }

// syncrelayConn is a raw client of a server with a 100-byte message limit
// and a 50-byte line limit.
type syncrelayConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

// syncrelayMax is the message size limit of syncrelayServe's server.
const syncrelayMax = 100

func syncrelayServe(t *testing.T, be Backend) *syncrelayConn {
	t.Helper()
	s := NewServer(be)
	s.Domain = "localhost"
	s.MaxMessageBytes = syncrelayMax
	s.MaxLineLength = 50
	s.ReadTimeout, s.WriteTimeout = 5*time.Second, 5*time.Second
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(l)
	t.Cleanup(func() { s.Close() })
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	sc := &syncrelayConn{t: t, c: c, br: bufio.NewReader(c)}
	sc.expect("220")
	sc.send("EHLO client\r\n")
	sc.expect("250")
	return sc
}

func (sc *syncrelayConn) send(s string) {
	sc.t.Helper()
	if _, err := io.WriteString(sc.c, s); err != nil {
		sc.t.Fatal(err)
	}
}

// expect reads one reply and fails unless it starts with prefix.
func (sc *syncrelayConn) expect(prefix string) string {
	sc.t.Helper()
	sc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		line, err := sc.br.ReadString('\n')
		if err != nil {
			sc.t.Fatalf("want %q, got %q, %v", prefix, line, err)
		}
		if len(line) > 3 && line[3] == '-' {
			continue
		}
		if !strings.HasPrefix(line, prefix) {
			sc.t.Fatalf("want %q, got %q", prefix, line)
		}
		return strings.TrimSpace(line)
	}
}

// lateBackend's first Data, that of a BDAT transfer reset by RSET,
// returns only once the next transfer's Data has read its message, and
// that one waits until the first has sent its result (patch 5).
type lateBackend struct {
	mu      sync.Mutex
	conn    *Conn
	calls   int
	first   chan error // the result channel of the first transfer
	release chan struct{}
}

func (b *lateBackend) NewSession(c *Conn) (Session, error) {
	b.mu.Lock()
	b.conn = c
	b.mu.Unlock()
	return &lateSession{b}, nil
}

type lateSession struct{ b *lateBackend }

func (s *lateSession) Mail(string, *MailOptions) error { return nil }
func (s *lateSession) Rcpt(string, *RcptOptions) error { return nil }
func (s *lateSession) Reset()                          {}
func (s *lateSession) Logout() error                   { return nil }

func (s *lateSession) Data(r io.Reader) error {
	b := s.b
	b.mu.Lock()
	b.calls++
	first := b.calls == 1
	ch := b.conn.dataResult // this transfer's, set before Data was started
	if first {
		b.first = ch
	}
	b.mu.Unlock()
	io.Copy(io.Discard, r)
	if first {
		<-b.release
		return &SMTPError{Code: 451, EnhancedCode: EnhancedCode{4, 0, 0}, Message: "Late result of the reset transfer"}
	}
	close(b.release)
	for deadline := time.Now().Add(5 * time.Second); len(ch) == 0 && len(b.first) == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	return nil
}

// Patch 5: a BDAT message over MaxMessageBytes is refused by Session.Data,
// as a DATA message is: its reader returns ErrDataTooLarge and its answer
// is the reply, on the first chunk or a later one. Upstream answers "552
// Max message size exceeded" itself (not calling Data at all when the
// first chunk is over) and then aborts Data with ErrDataReset, so the
// session, which logs and counts its replies, never sees the refusal the
// client got. A refused chunk is discarded whole, long lines included:
// upstream discards it under the line limit and reads the rest of the
// chunk as commands.
//
// And the goroutine running Session.Data for BDAT sends its result on its
// own transfer's channel: upstream sends it on c.dataResult as it is when
// Data returns, so a transfer reset by RSET whose Data returns after the
// next BDAT transfer began answers that next transfer with its result.
func TestSyncrelayPatch5BDAT(t *testing.T) {
	t.Run("Data returning after RSET", func(t *testing.T) {
		sc := syncrelayServe(t, &lateBackend{release: make(chan struct{})})
		sc.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 5\r\nhelloRSET\r\n")
		for i := 0; i < 4; i++ {
			sc.expect("250")
		}
		sc.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 5 LAST\r\nhello")
		sc.expect("250")
		sc.expect("250")
		sc.expect("250") // not the reset transfer's 451
	})
	t.Run("client gone in a chunk over the limit", func(t *testing.T) {
		// No refusal for nobody: the transfer is reset.
		be := &syncrelayBackend{}
		sc := syncrelayServe(t, be)
		sc.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 60\r\n" + strings.Repeat("0123456789\r\n", 5) + "BDAT 200\r\nabc")
		sc.expect("250")
		sc.expect("250")
		sc.expect("250")
		sc.c.Close()
		for deadline := time.Now().Add(5 * time.Second); !strings.Contains(be.log(), "data ") && time.Now().Before(deadline); {
			time.Sleep(time.Millisecond)
		}
		if got, want := be.log(), "data 60 "+ErrDataReset.Error(); !strings.Contains(got, want) {
			t.Errorf("session saw %q, want %q", got, want)
		}
	})

	short := strings.Repeat("0123456789\r\n", 5) // 60 bytes, short lines
	// A line over the line limit, after more than the 4 KiB that go-smtp's
	// bufio.Reader may have read with the command (under the limit: see
	// SYNCRELAY.md).
	long := strings.Repeat("0123456789\r\n", 417) + strings.Repeat("x", 70) + "\r\n"
	for _, tc := range []struct {
		name, chunks string
		replies      []string
		events       string
	}{
		{"later chunk", "BDAT 60\r\n" + short + "BDAT 60\r\n" + short,
			[]string{"250", "552 5.3.4 Too big, says the session"}, "mail SIZE=0, data 60 " + ErrDataTooLarge.Error() + ", reset"},
		{"later chunk LAST", "BDAT 60\r\n" + short + "BDAT 60 LAST\r\n" + short,
			[]string{"250", "552 5.3.4 Too big, says the session"}, "mail SIZE=0, data 60 " + ErrDataTooLarge.Error() + ", reset"},
		{"first chunk", "BDAT 120 LAST\r\n" + short + short,
			[]string{"552 5.3.4 Too big, says the session"}, "mail SIZE=0, data 0 " + ErrDataTooLarge.Error() + ", reset"},
		{"long line in a refused chunk", fmt.Sprintf("BDAT %d LAST\r\n%s", len(long), long),
			[]string{"552 5.3.4 Too big, says the session"}, "mail SIZE=0, data 0 " + ErrDataTooLarge.Error() + ", reset"},
		{"long line in a chunk after the refusal", "BDAT 120\r\n" + short + short + fmt.Sprintf("BDAT %d LAST\r\n%s", len(long), long),
			[]string{"552 5.3.4 Too big, says the session", "502 5.5.1"}, "mail SIZE=0, data 0 " + ErrDataTooLarge.Error() + ", reset"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			be := &syncrelayBackend{}
			sc := syncrelayServe(t, be)
			sc.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\n" + tc.chunks + "NOOP\r\n")
			sc.expect("250")
			sc.expect("250")
			for _, want := range tc.replies {
				sc.expect(want)
			}
			sc.expect("250") // NOOP: in step
			if got := be.log(); got != tc.events {
				t.Errorf("session saw %q, want %q", got, tc.events)
			}
		})
	}
}

// Patch 6: MAIL's SIZE= over MaxMessageBytes is put to Session.Mail
// first, so that the session answers (and counts) that refusal like its
// others; if it accepts, go-smtp refuses anyway and resets it. Upstream
// answers 552 itself and the session never hears of it.
func TestSyncrelayPatch6MailSizeToSession(t *testing.T) {
	be := &syncrelayBackend{}
	sc := syncrelayServe(t, be)
	sc.send("MAIL FROM:<a@x> SIZE=1000\r\n")
	sc.expect("552 5.3.4 Too big, says the session")
	if got, want := be.log(), "mail SIZE=1000"; got != want {
		t.Errorf("session saw %q, want %q", got, want)
	}

	be = &syncrelayBackend{acceptSize: true}
	sc = syncrelayServe(t, be)
	sc.send("MAIL FROM:<a@x> SIZE=1000\r\nRCPT TO:<b@y>\r\n")
	sc.expect("552 5.3.4")
	sc.expect("502 5.5.1") // no transaction
	if got, want := be.log(), "mail SIZE=1000, reset"; got != want {
		t.Errorf("session saw %q, want %q", got, want)
	}
}

// Patch 7: a BDAT chunk that arrives in the same read as its command is
// not held to the line limit (a chunk is octets, not lines). Upstream
// checks every byte it reads from the socket while a command is read, so
// a chunk with a line over MaxLineLength sent right behind its BDAT
// command gets "500 Too long line, closing connection" and is lost; and
// the end of a chunk read with its command counts towards the length of
// the command after it. A command line over the limit is still refused.
func TestSyncrelayPatch7ChunkBehindCommand(t *testing.T) {
	be := &syncrelayBackend{}
	sc := syncrelayServe(t, be)
	line := strings.Repeat("x", 70) + "\r\n" // over the 50-byte line limit
	sc.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 72 LAST\r\n" + line + "NOOP\r\n")
	sc.expect("250")
	sc.expect("250")
	sc.expect("250") // the message
	sc.expect("250") // NOOP: in step
	if got, want := be.log(), "mail SIZE=0, data 72 <nil>, reset"; got != want {
		t.Errorf("session saw %q, want %q", got, want)
	}

	// The command after a chunk starts a line: the end of a chunk that
	// was read with its command (45 bytes without a line ending) does not
	// count towards it.
	sc.send("MAIL FROM:<a@x>\r\nRCPT TO:<b@y>\r\nBDAT 45 LAST\r\n" + strings.Repeat("z", 45))
	sc.expect("250")
	sc.expect("250")
	sc.expect("250") // the message
	sc.send("MAIL FROM:<a@x>\r\n")
	sc.expect("250")

	// Still refused: a command line over the limit.
	sc.send("RSET\r\nMAIL FROM:<" + strings.Repeat("a", 60) + "@x>\r\n")
	sc.expect("250")
	sc.expect("500 5.4.0")
}
