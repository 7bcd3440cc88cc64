package mailhdr

import (
	"bufio"
	"encoding/base64"
	"errors"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"

	"github.com/emersion/go-message/textproto"
)

var (
	// ErrTooDeep is returned when MIME nesting exceeds the given limit.
	ErrTooDeep = errors.New("mailhdr: MIME nesting too deep")
	// ErrTooLarge is returned by ParseDSN when it would have to read more
	// than maxBytes of the body.
	ErrTooLarge = errors.New("mailhdr: message body exceeds byte limit")
)

const (
	// DefaultMaxDepth is used when a depth limit below 1 is given.
	DefaultMaxDepth = 20
	// HardMaxDepth caps any depth limit: every level holds a 4 KiB buffer
	// and adds a layer every byte passes through.
	HardMaxDepth = 100
	// DefaultMaxBytes is used by ParseDSN when maxBytes <= 0.
	DefaultMaxBytes = 25 << 20
)

func clampDepth(limit int) int {
	if limit < 1 {
		return DefaultMaxDepth
	}
	if limit > HardMaxDepth {
		return HardMaxDepth
	}
	return limit
}

// contentType returns the lowercased media type and parameters of h's
// Content-Type, defaulting to text/plain (RFC 2045) when absent or
// unparsable.
func contentType(h *textproto.Header) (string, map[string]string) {
	v := h.Get("Content-Type")
	if v == "" {
		return "text/plain", nil
	}
	mt, params, err := mime.ParseMediaType(v)
	if mt == "" || (err != nil && !errors.Is(err, mime.ErrInvalidMediaParameter)) {
		return "text/plain", nil
	}
	return mt, params
}

// isEncapsulated reports whether mt is a whole message inside a part.
func isEncapsulated(mt string) bool {
	return mt == "message/rfc822" || mt == "message/global"
}

// decodeCTE undoes base64 / quoted-printable Content-Transfer-Encoding;
// anything else is passed through.
func decodeCTE(h *textproto.Header, r io.Reader) io.Reader {
	switch strings.ToLower(strings.TrimSpace(h.Get("Content-Transfer-Encoding"))) {
	case "base64":
		return base64.NewDecoder(base64.StdEncoding, r)
	case "quoted-printable":
		return quotedprintable.NewReader(r)
	}
	return r
}

// readHeaderLenient reads a header block from r, keeping the fields read
// before any syntax error. A blank line is appended to the input so that a
// header-only part (text/rfc822-headers) whose last field has no line end
// keeps that field.
func readHeaderLenient(r io.Reader) (textproto.Header, *bufio.Reader) {
	br := bufio.NewReader(io.MultiReader(r, strings.NewReader("\r\n\r\n")))
	h, _ := textproto.ReadHeader(br)
	return h, br
}

// countingReader wraps the caller's body: it records the first error that is
// not io.EOF and, when max >= 0, refuses to read past max bytes, noting
// whether more input existed.
type countingReader struct {
	r        io.Reader
	max      int64 // < 0: unlimited
	n        int64
	exceeded bool
	err      error // sticky; io.EOF, ErrTooLarge or the reader's error
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	if c.max >= 0 {
		left := c.max - c.n
		if left <= 0 {
			var one [1]byte
			n, err := c.r.Read(one[:])
			switch {
			case n > 0:
				c.exceeded = true
				c.err = ErrTooLarge
			case err != nil:
				c.err = err
			default:
				return 0, nil
			}
			return 0, c.err
		}
		if int64(len(p)) > left {
			p = p[:left]
		}
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil {
		c.err = err
	}
	return n, err
}

// failure returns the error worth reporting to the caller, if any.
func (c *countingReader) failure() error {
	switch {
	case c.exceeded:
		return ErrTooLarge
	case c.err == nil || c.err == io.EOF:
		return nil
	}
	return c.err
}

// MIMEDepth returns the maximum nesting depth of a message given its header
// and body: the number of nested containers (multipart/* entities and
// encapsulated message/rfc822 or message/global parts, whose bodies are
// parsed too) on the deepest path. A single-part message has depth 0, a
// multipart/alternative 1, a multipart/mixed holding a multipart/alternative
// 2. Once the depth exceeds limit the walk stops and MIMEDepth returns
// limit+1 and ErrTooDeep. A limit below 1 means DefaultMaxDepth; limits above
// HardMaxDepth are treated as HardMaxDepth.
//
// Malformed MIME is not an error: a container whose structure cannot be
// parsed simply ends there. Errors from reading body are returned.
func MIMEDepth(h textproto.Header, body io.Reader, limit int) (depth int, err error) {
	limit = clampDepth(limit)
	cr := &countingReader{r: body, max: -1}
	depth, err = walkDepth(&h, cr, 0, limit)
	if err == nil {
		err = cr.failure()
	}
	return depth, err
}

// walkDepth returns the deepest nesting found in the entity (h, r), which
// sits below `above` containers.
func walkDepth(h *textproto.Header, r io.Reader, above, limit int) (int, error) {
	mt, params := contentType(h)
	multipart := strings.HasPrefix(mt, "multipart/") && params["boundary"] != ""
	if !multipart && !isEncapsulated(mt) {
		return above, nil
	}
	d := above + 1
	if d > limit {
		return d, ErrTooDeep
	}
	deepest := d
	r = decodeCTE(h, r)
	if multipart {
		mr := textproto.NewMultipartReader(r, params["boundary"])
		for {
			p, err := mr.NextPart()
			if err != nil {
				break // io.EOF or malformed: this container ends here
			}
			cd, err := walkDepth(&p.Header, p, d, limit)
			deepest = max(deepest, cd)
			if err != nil {
				return deepest, err
			}
		}
		return deepest, nil
	}
	ih, br := readHeaderLenient(r)
	cd, err := walkDepth(&ih, br, d, limit)
	return max(deepest, cd), err
}
