package smtp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
)

type EnhancedCode [3]int

// SMTPError specifies the error code, enhanced error code (if any) and
// message returned by the server.
type SMTPError struct {
	Code         int
	EnhancedCode EnhancedCode
	Message      string
}

// NoEnhancedCode is used to indicate that enhanced error code should not be
// included in response.
//
// Note that RFC 2034 requires an enhanced code to be included in all 2xx, 4xx
// and 5xx responses. This constant is exported for use by extensions, you
// should probably use EnhancedCodeNotSet instead.
var NoEnhancedCode = EnhancedCode{-1, -1, -1}

// EnhancedCodeNotSet is a nil value of EnhancedCode field in SMTPError, used
// to indicate that backend failed to provide enhanced status code. X.0.0 will
// be used (X is derived from error code).
var EnhancedCodeNotSet = EnhancedCode{0, 0, 0}

func (err *SMTPError) Error() string {
	s := fmt.Sprintf("SMTP error %03d", err.Code)
	if err.Message != "" {
		s += ": " + err.Message
	}
	return s
}

func (err *SMTPError) Temporary() bool {
	return err.Code/100 == 4
}

var ErrDataTooLarge = &SMTPError{
	Code:         552,
	EnhancedCode: EnhancedCode{5, 3, 4},
	Message:      "Maximum message size exceeded",
}

type dataReader struct {
	r     *bufio.Reader
	state int

	limited bool
	n       int64 // Maximum bytes remaining
}

func newDataReader(c *Conn) *dataReader {
	dr := &dataReader{
		r: c.text.R,
	}

	if c.server.MaxMessageBytes > 0 {
		dr.limited = true
		dr.n = int64(c.server.MaxMessageBytes)
	}

	return dr
}

// The decoder's states.
const (
	stateBeginLine = iota // beginning of line; initial state; must be zero
	stateDot              // read . at beginning of line
	stateDotCR            // read .\r at beginning of line
	stateCR               // read \r (possibly at end of line)
	stateData             // reading data in middle of line
	stateEOF              // reached .\r\n end marker line
)

func (r *dataReader) Read(b []byte) (n int, err error) {
	if r.limited {
		if r.n <= 0 {
			return 0, ErrDataTooLarge
		}
		if int64(len(b)) > r.n {
			b = b[0:r.n]
		}
	}

	// The state machine is net/textproto's (elide leading dots, detect the
	// End-of-Data <CR><LF>.<CR><LF> line), without its CRLF -> LF rewrite.
	//
	// syncrelay patch 4: it runs over the bytes the bufio.Reader already
	// holds (Peek), and copies the middle of a line up to its next CR in
	// one copy, instead of one ReadByte and one state switch per byte:
	// that was about a tenth of the daemon's CPU for 4 KiB messages.
	for n < len(b) && r.state != stateEOF {
		if r.r.Buffered() == 0 {
			// syncrelay patch 2: return what has been decoded once
			// nothing more is buffered, rather than block for a full b
			// (as bufio.Reader.Read does), so a caller sees data as it
			// arrives.
			if n > 0 {
				break
			}
			if _, err = r.r.Peek(1); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				break
			}
		}
		src, _ := r.r.Peek(r.r.Buffered())
		used, wrote := r.decode(b[n:], src)
		r.r.Discard(used)
		n += wrote
	}
	if err == nil && r.state == stateEOF {
		err = io.EOF
	}

	if r.limited {
		r.n -= int64(n)
	}
	return
}

// decode runs the state machine over src, writing the decoded bytes to
// dst, until src is used up, dst is full or the end marker is read. It
// returns how many bytes of src it used and of dst it wrote.
func (r *dataReader) decode(dst, src []byte) (used, n int) {
	for used < len(src) && n < len(dst) && r.state != stateEOF {
		if r.state == stateData {
			// In the middle of a line only a CR changes the state:
			// copy up to and including the next one.
			chunk := src[used:]
			if len(chunk) > len(dst)-n {
				chunk = chunk[:len(dst)-n]
			}
			if i := bytes.IndexByte(chunk, '\r'); i >= 0 {
				chunk = chunk[:i+1]
				r.state = stateCR
			}
			n += copy(dst[n:], chunk)
			used += len(chunk)
			continue
		}
		c := src[used]
		used++
		switch r.state {
		case stateBeginLine:
			if c == '.' {
				r.state = stateDot
				continue
			}
			if c == '\r' {
				r.state = stateCR
				break
			}
			r.state = stateData
		case stateDot:
			if c == '\r' {
				r.state = stateDotCR
				continue
			}
			r.state = stateData
		case stateDotCR:
			if c == '\n' {
				r.state = stateEOF
				continue
			}
			// syncrelay patch 1: not part of .\r\n: the leading dot is
			// consumed, and the saved \r is emitted (as net/textproto
			// does), not dropped; c is read again.
			used--
			c = '\r'
			r.state = stateData
		case stateCR:
			if c == '\n' {
				r.state = stateBeginLine
				break
			}
			if c == '\r' {
				// syncrelay patch 3: this \r may start a CRLF too
				// (net/textproto sees "\r\r\n" end a line as well).
				break
			}
			r.state = stateData
		}
		dst[n] = c
		n++
	}
	return used, n
}
