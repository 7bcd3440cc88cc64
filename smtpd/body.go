package smtpd

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"reflect"
	"sync/atomic"
	"unsafe"

	"github.com/emersion/go-smtp"
)

// Reading a message body.
//
// Both DATA and BDAT bodies go through bodyChecker, which rejects a bare CR
// (a CR not followed by LF) or a bare LF (an LF not preceded by CR) anywhere
// in the message, enforces the size and line limits, and writes the message
// to the spool. It checks bytes however they are split into reads: a BDAT
// read may hold many lines, or part of one. After a violation it keeps
// reading to the end of the message (DATA's CRLF.CRLF, BDAT's LAST chunk),
// writing nothing more, so that the session stays in step with the client
// and gets exactly one reply. One exception: a DATA body with a bare CR or
// LF ends at the first "." line that a sender taking a lone CR or LF for a
// line ending would end it with ("x\n.\r\n"); it is refused there and the
// connection closed, rather than held until the data timeout.
//
// DATA needs more than a check of what go-smtp's dot-decoder hands to
// Session.Data: in go-smtp v0.25.1 that decoder drops the CR of a line that
// starts with ".\r" not followed by "\n" (net/textproto, from which it was
// copied, puts it back with UnreadByte; go-smtp lost that line). So
// "\r\n.\rMAIL FROM:..." reaches Data as "\r\nMAIL FROM:...", and the bare CR
// — one of the SMTP smuggling patterns — would be invisible. We therefore
// decode DATA ourselves from go-smtp's buffered connection reader (the
// *bufio.Reader inside the reader given to Data), with the same framing
// rules, and stop just before the final ".\r\n", which we leave for go-smtp's
// decoder: reading three bytes ".\r\n" at the start of a line, it reports
// io.EOF, and its own drain after Data returns finds nothing more to read.
// go-smtp stays the only one deciding where the message ends in the stream
// it reads commands from, and we check that it agrees (dataHandoff).
//
// Finding that *bufio.Reader uses reflection on an unexported field, checked
// by package path, type name, field name and field type; if any of those
// ever changes (a go-smtp upgrade), we fall back to checking go-smtp's
// decoded output, log an error, and count it in fallbackDecodes, which the
// tests assert stays 0, so the upgrade cannot pass CI silently.

// fallbackDecodes counts DATA bodies read without the raw-stream decoder.
var fallbackDecodes atomic.Int64

var bufioReaderType = reflect.TypeFor[*bufio.Reader]()

// rawDataBuffer returns the *bufio.Reader that go-smtp's DATA reader decodes
// from, or nil if r is not that reader (BDAT gives an *io.PipeReader) or its
// layout is not the one this package was written against.
func rawDataBuffer(r io.Reader) *bufio.Reader {
	v := reflect.ValueOf(r)
	if v.Kind() != reflect.Pointer || v.IsNil() {
		return nil
	}
	e := v.Elem()
	t := e.Type()
	if e.Kind() != reflect.Struct || t.PkgPath() != "github.com/emersion/go-smtp" || t.Name() != "dataReader" {
		return nil
	}
	f := e.FieldByName("r")
	if !f.IsValid() || f.Type() != bufioReaderType {
		return nil
	}
	// f is addressable (reached through a pointer) and of type
	// *bufio.Reader, checked above: reading it through NewAt is type-safe.
	br, _ := reflect.NewAt(f.Type(), unsafe.Pointer(f.UnsafeAddr())).Elem().Interface().(*bufio.Reader)
	return br
}

// bodyChecker checks and stores a message body as it streams past.
type bodyChecker struct {
	dst     io.Writer // the spool
	max     int64     // 0: no limit
	maxLine int       // 0: no limit; CRLF included

	n       int64 // message bytes so far (after dot-unstuffing)
	lineLen int   // bytes of the current line so far
	prevCR  bool  // the last byte was CR
	midLine bool  // the bytes so far do not end with CRLF

	// afterBare: the last byte was a bare LF or a CR (a CR followed by a
	// "." is bare). dotAfterBare: the last two were such a byte and ".".
	afterBare, dotAfterBare bool

	bareEOL bool
	// fakeEnd: a "." line ended by a bare CR or LF, or after one: where a
	// sender that takes a lone CR or LF for a line ending thinks the
	// message ended (DATA stops reading there; see readData).
	fakeEnd  bool
	tooBig   bool
	longLine bool
	writeErr error
}

func (b *bodyChecker) failed() bool {
	return b.bareEOL || b.tooBig || b.longLine || b.writeErr != nil
}

// feed checks p, the next bytes of the message however they are split (a
// BDAT read may hold many lines, or part of one), and stores them unless the
// message has already failed.
func (b *bodyChecker) feed(p []byte) {
	for rest := p; len(rest) > 0; {
		i := bytes.IndexByte(rest, '\n') + 1
		if i == 0 {
			i = len(rest)
		}
		b.checkLine(rest[:i])
		rest = rest[i:]
	}
	b.n += int64(len(p))
	if b.max > 0 && b.n > b.max {
		b.tooBig = true
	}
	if b.failed() {
		return
	}
	if _, err := b.dst.Write(p); err != nil {
		b.writeErr = err
	}
}

// checkLine checks p, which holds no LF but possibly its last byte.
func (b *bodyChecker) checkLine(p []byte) {
	// Fast path, almost every line of a message: a whole line ending in
	// CRLF with no other CR, at a line start.
	if n := len(p); n >= 2 && !b.midLine && p[n-1] == '\n' && p[n-2] == '\r' &&
		bytes.IndexByte(p[:n-2], '\r') < 0 {
		if b.maxLine > 0 && n > b.maxLine {
			b.longLine = true
		}
		b.prevCR = false
		b.lineLen = 0
		b.afterBare, b.dotAfterBare = false, false
		return
	}
	b.scan(p)
}

// scan is checkLine's byte-by-byte check, for anything but a whole CRLF line.
func (b *bodyChecker) scan(p []byte) {
	for _, c := range p {
		eol := c == '\r' || c == '\n'
		if b.dotAfterBare && eol {
			b.fakeEnd = true
		}
		b.dotAfterBare = b.afterBare && c == '.'
		b.afterBare = c == '\r' || (c == '\n' && !b.prevCR)
		switch {
		case c == '\n':
			if !b.prevCR {
				b.bareEOL = true
			}
			b.lineLen++
			if b.maxLine > 0 && b.lineLen > b.maxLine {
				b.longLine = true
			}
			b.lineLen = 0
			b.midLine = !b.prevCR
		case b.prevCR:
			b.bareEOL = true
			fallthrough
		default:
			b.lineLen++
			b.midLine = true
		}
		b.prevCR = c == '\r'
	}
	if b.maxLine > 0 && b.lineLen > b.maxLine {
		b.longLine = true
	}
}

// atLineStart reports whether the bytes so far end with CRLF (or there are
// none): only there can a "." start the terminator line or be stuffed. After
// a bare LF it is false, as in go-smtp, so "\n.\r\n" does not end a message.
func (b *bodyChecker) atLineStart() bool { return !b.midLine }

// end is called after the last byte of the message. It returns the reply
// error for a failed message (errors other than SMTP replies are internal).
func (b *bodyChecker) end() error {
	if b.prevCR { // a final CR with nothing after it
		b.bareEOL = true
	}
	switch {
	case b.tooBig:
		return reply(replyTooBig)
	case b.bareEOL:
		return reply(replyBareEOL)
	case b.longLine:
		return reply(replyLineTooLong)
	case b.writeErr != nil:
		return b.writeErr
	}
	return nil
}

// readError maps a read error in the middle of a message to the reply.
// After a read error the connection is closed once the reply is written
// (trackedConn makes read errors sticky), so the client is never left out of
// step with us.
func readError(err error) error {
	var ne interface{ Timeout() bool }
	var se *smtp.SMTPError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &se):
		return se // go-smtp's own size limit in the fallback path
	case errors.Is(err, smtp.ErrTooLongLine):
		return reply(replyLineTooLong)
	case errors.As(err, &ne) && ne.Timeout():
		return reply(replyDataTimeout)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, smtp.ErrDataReset), errors.Is(err, net.ErrClosed):
		// The client went away or reset the BDAT transfer: nobody will
		// read this reply.
		return reply(replyAborted)
	}
	return err
}

// readData reads a DATA body from br, go-smtp's buffered reader positioned
// just after the "354" reply, and feeds it to b. RFC 5321 §4.5.2: a line
// starting with "." has it removed; the message ends at a line that is
// exactly ".". The terminator line is left unread in br. arm is called
// before each read that may block (to extend the data timeout). It returns
// nil at the terminator, or the read error.
//
// It also returns nil, with b.fakeEnd set, at a "." line that a sender
// taking a lone CR or LF for a line ending would end the message with
// ("x\n.\r\n", "\r\n.\n"): that message has a bare CR or LF, so it is
// refused and the connection closed anyway, and waiting for a CRLF.CRLF
// that such a sender never sends would only hold it until the data timeout.
func readData(br *bufio.Reader, b *bodyChecker, arm func()) error {
	for {
		if br.Buffered() < 3 {
			arm() // only a read from the socket (a Peek included) can block
		}
		if b.atLineStart() {
			if end, err := dotLine(br, b); end || err != nil {
				return err
			}
		}
		line, err := nextLine(br)
		if err != nil {
			return err
		}
		b.feed(line)
		br.Discard(len(line))
		if b.fakeEnd {
			return nil
		}
	}
}

// dotLine handles a "." at the start of a CRLF line. It reports whether the
// message ends here: at ".\r\n" (left unread), or at a "." followed by a
// bare CR or LF (b.fakeEnd). Otherwise it drops a leading dot (dot-stuffing).
func dotLine(br *bufio.Reader, b *bodyChecker) (end bool, err error) {
	p, err := br.Peek(1)
	if err != nil || p[0] != '.' {
		return false, err
	}
	if p, err = br.Peek(2); err != nil {
		return false, err
	}
	switch p[1] {
	case '\r':
		if p, err = br.Peek(3); err != nil {
			return false, err
		}
		if p[2] == '\n' {
			return true, nil
		}
	case '\n':
	default:
		br.Discard(1) // dot-stuffing; what follows is content
		return false, nil
	}
	b.bareEOL, b.fakeEnd = true, true
	return true, nil
}

// nextLine returns the buffered bytes up to the first LF, or all of them
// when none is an LF, reading only when nothing is buffered: the part of a
// line that has arrived is checked at once, so a lone CR is seen without
// waiting for an LF that a sender ending lines with CR never sends. The
// bytes stay in br until discarded.
func nextLine(br *bufio.Reader) ([]byte, error) {
	if br.Buffered() == 0 {
		if _, err := br.Peek(1); err != nil {
			return nil, err
		}
	}
	p, _ := br.Peek(br.Buffered())
	if i := bytes.IndexByte(p, '\n'); i >= 0 {
		p = p[:i+1]
	}
	return p, nil
}

// dataHandoff lets go-smtp's own decoder read the terminator readData left
// in the buffer, and checks that it sees exactly the end of the message.
func dataHandoff(dr io.Reader) error {
	var buf [64]byte
	n, err := dr.Read(buf[:])
	if n == 0 && err == io.EOF {
		return nil
	}
	io.Copy(io.Discard, dr)
	return errors.New("smtpd: go-smtp's DATA decoder disagrees on the end of the message")
}

// readDecoded is the fallback for DATA when rawDataBuffer fails, and the
// reader for BDAT: it checks r's output as is (BDAT bodies are not
// dot-stuffed). It reads r to its end.
func readDecoded(r io.Reader, b *bodyChecker, arm func()) error {
	buf := make([]byte, 32<<10)
	for {
		arm()
		n, err := r.Read(buf)
		b.feed(buf[:n])
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
