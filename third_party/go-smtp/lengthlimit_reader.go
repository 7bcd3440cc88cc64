package smtp

import (
	"bytes"
	"errors"
	"io"
)

var ErrTooLongLine = errors.New("smtp: too long a line in input stream")

// lineLimitReader reads from the underlying Reader but restricts
// line length of lines in input stream to a certain length.
//
// If line length exceeds the limit - Read returns ErrTooLongLine
type lineLimitReader struct {
	R         io.Reader
	LineLimit int

	curLineLength int
	// pending (syncrelay patch 7) holds what a Read got from the start of
	// a line over the limit that started in that Read: it may be a BDAT
	// chunk behind its command, which is read without the limit. The next
	// Read returns it, checked only if the limit still holds then.
	pending []byte
}

func (r *lineLimitReader) Read(b []byte) (int, error) {
	if r.curLineLength > r.LineLimit && r.LineLimit > 0 {
		return 0, ErrTooLongLine
	}

	var n int
	if len(r.pending) > 0 {
		n = copy(b, r.pending)
		r.pending = r.pending[n:]
	} else {
		var err error
		n, err = r.R.Read(b)
		if err != nil {
			return n, err
		}
	}

	if r.LineLimit == 0 {
		return n, nil
	}

	if i, over := r.scan(b[:n]); over {
		// syncrelay patch 7: a line that started in this Read, after
		// a line the caller may act on first (a BDAT command), is
		// kept for the next Read with the rest; upstream dropped the
		// whole Read. Only whole lines are returned: a reader such as
		// bufio.Reader.ReadLine takes buffered bytes followed by an
		// error for a line.
		j := bytes.LastIndexByte(b[:i], '\n')
		if j < 0 {
			return 0, ErrTooLongLine
		}
		r.curLineLength = 0
		r.pending = append(append([]byte(nil), b[j+1:n]...), r.pending...)
		return j + 1, nil
	}

	return n, nil
}

// scan (syncrelay patch 8) counts the line lengths of p as upstream's
// loop did byte by byte (a '\n' counts as the first byte of the line it
// starts), a line at a time with bytes.IndexByte: the byte loop was a
// seventh of syncrelay's CPU on its discard path. It returns the index of
// the byte that took the line over the limit, or over false.
func (r *lineLimitReader) scan(p []byte) (i int, over bool) {
	for off := 0; ; {
		end := len(p)
		if k := bytes.IndexByte(p[off:], '\n'); k >= 0 {
			end = off + k
		}
		// The bytes p[off:end] each add one to the line; the one that
		// makes it LineLimit+1 is over.
		room := r.LineLimit - r.curLineLength
		if room < 0 {
			room = 0
		}
		if end-off > room {
			r.curLineLength = r.LineLimit + 1
			return off + room, true
		}
		r.curLineLength += end - off
		if end == len(p) {
			return 0, false
		}
		r.curLineLength = 1 // the '\n' itself, as upstream counts it
		if r.curLineLength > r.LineLimit {
			return end, true // LineLimit < 0
		}
		off = end + 1
	}
}

// syncrelay patch 7: startLine says that the next byte starts a line (a
// command after a BDAT chunk, read without the limit).
func (r *lineLimitReader) startLine() {
	r.curLineLength = 0
}
