package smtpd

import (
	"bytes"
	"errors"
	"io"
	"net"
	"sync"

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
// DATA is decoded by go-smtp (dot-unstuffing, the CRLF.CRLF terminator).
// The build uses a patched copy of go-smtp (third_party/go-smtp, see its
// README): upstream's decoder drops the CR of a line that starts with ".\r"
// not followed by "\n", which would hide that bare CR — one of the SMTP
// smuggling patterns — and its Read blocks until the caller's buffer is
// full, which would hold a message that ends at a fake terminator until the
// data timeout. With both fixed, what Session.Data reads is exactly the
// message, as it arrives; gosmtp_test.go checks each assumption this
// package makes about go-smtp.
//
// The decoder consumes a "." that starts a line, so a fake terminator at a
// line start (".\n", ".\rX") reaches us as a bare LF or CR at a line start:
// the checker takes any such byte for a fake end. That also stops at a
// plain "\r\n\n", a little earlier than a lenient sender would; the
// message is refused for its bare LF either way.
//
// go-smtp enforces MaxMessageBytes itself: past it, its DATA reader
// returns ErrDataTooLarge (552) and, after Data returns, drains the rest of
// the message with the same decoder, so the session stays in step. That
// rest is not checked for bare CR or LF. On BDAT (its patch 5) the chunk
// that takes the message over the limit is read and discarded and the
// pipe returns ErrDataTooLarge; later chunks already pipelined are
// discarded by go-smtp with a 502 (no transaction). Either way the reply
// is ours: 552 5.3.4 with the reason token.

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
	// crAtStart: the last byte was a CR at the start of a line.
	crAtStart bool

	bareEOL bool
	// fakeEnd: a "." line ended by a bare CR or LF, or after one, or a
	// bare CR or LF at a line start (where the decoder removed a "."):
	// where a sender that takes a lone CR or LF for a line ending may
	// think the message ended (DATA stops reading there; see readBody).
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
		b.afterBare, b.dotAfterBare, b.crAtStart = false, false, false
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
		if b.lineStartBare(c) {
			b.fakeEnd = true
		}
		b.crAtStart = c == '\r' && !b.midLine
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

// lineStartBare reports whether c makes a bare LF at a line start, or
// follows a CR at a line start that is therefore bare.
func (b *bodyChecker) lineStartBare(c byte) bool {
	if c == '\n' {
		return !b.prevCR && !b.midLine
	}
	return b.crAtStart
}

// end is called after the last byte of the message. It returns the reply
// error for a failed message (errors other than SMTP replies are internal).
func (b *bodyChecker) end() error {
	if b.prevCR { // a final CR with nothing after it
		b.bareEOL = true
	}
	switch {
	case b.tooBig:
		return refusal(reasonMessageTooLarge)
	case b.bareEOL:
		return refusal(reasonBareEOL)
	case b.longLine:
		return refusal(reasonLineTooLong)
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
		// go-smtp's own size limit (ErrDataTooLarge): answered as ours,
		// with the reason token.
		return refusal(reasonMessageTooLarge)
	case errors.Is(err, smtp.ErrTooLongLine):
		return refusal(reasonLineTooLong)
	case errors.As(err, &ne) && ne.Timeout():
		return reply(replyDataTimeout)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, smtp.ErrDataReset), errors.Is(err, net.ErrClosed):
		// The client went away or reset the BDAT transfer: nobody will
		// read this reply (go-smtp does not even write it after a BDAT
		// reset: see session.Data).
		return reply(replyAborted)
	}
	return err
}

// readErrorKind says what a read error in the middle of a message means
// for the "message" log line: the reason of a refusal (go-smtp's size or
// line limit), and why the connection ends.
func readErrorKind(err error) (refusal, close string) {
	var ne interface{ Timeout() bool }
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &se):
		return reasonMessageTooLarge, closeNone // go-smtp drains the rest
	case errors.Is(err, smtp.ErrTooLongLine):
		return reasonLineTooLong, closeLineTooLong
	case errors.As(err, &ne) && ne.Timeout():
		return "", closeDataTimeout
	}
	return "", closeClientGone
}

// readBufSize is the size of readDecoded's buffer.
const readBufSize = 8 << 10

// readBufs pools readDecoded's buffers: one per message otherwise, a
// quarter of what the discard path allocated per message. Kept per
// Server, not per session, so an idle connection holds none.
type readBufs struct{ p sync.Pool }

func (rb *readBufs) get() *[]byte {
	if b, ok := rb.p.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, readBufSize)
	return &b
}

func (rb *readBufs) put(b *[]byte) { rb.p.Put(b) }

// readDecoded reads a message body from r (go-smtp's decoded DATA, or a
// BDAT pipe) and feeds it to b. It returns nil at the end of the message,
// or for DATA (stopAtFake) at a fake terminator (b.fakeEnd), or the read
// error. arm is called before each read (to extend the data timeout).
// buf is the read buffer (readBufSize bytes: go-smtp's DATA reader returns
// at most what its 4 KiB buffer holds).
func readDecoded(r io.Reader, b *bodyChecker, buf []byte, stopAtFake bool, arm func()) error {
	for {
		arm()
		n, err := r.Read(buf)
		b.feed(buf[:n])
		if stopAtFake && b.fakeEnd {
			return nil
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// CheckMessage runs the checks a session makes on a message as it arrives
// (size, line length, bare CR or LF) over msg, as a session receives it
// (dot-unstuffed), with limits as in Options (0: the default, negative:
// none). It returns the Verdict a session refuses it with, or nil; replay
// uses it so that in-process replay decides what the daemon decides.
func CheckMessage(msg io.Reader, maxMessageBytes int64, maxLineLength int) *Verdict {
	b := &bodyChecker{dst: io.Discard,
		max:     orDefault(maxMessageBytes, DefaultMaxMessageBytes),
		maxLine: orDefault(maxLineLength, DefaultMaxLineLength)}
	if err := readDecoded(msg, b, make([]byte, readBufSize), false, func() {}); err != nil {
		return nil // a reader's error is not the message's
	}
	v, _ := b.end().(*Verdict)
	return v
}
