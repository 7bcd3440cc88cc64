package dkim

import (
	"io"
	"strings"
)

// Canonicalization is a canonicalization algorithm.
type Canonicalization string

const (
	CanonicalizationSimple  Canonicalization = "simple"
	CanonicalizationRelaxed                  = "relaxed"
)

type canonicalizer interface {
	CanonicalizeHeader(s string) string
	CanonicalizeBody(w io.Writer) io.WriteCloser
}

var canonicalizers = map[Canonicalization]canonicalizer{
	CanonicalizationSimple:  new(simpleCanonicalizer),
	CanonicalizationRelaxed: new(relaxedCanonicalizer),
}

// crlfFixer fixes any lone LF without a preceding CR.
type crlfFixer struct {
	cr bool
}

func (cf *crlfFixer) Fix(b []byte) []byte {
	res := make([]byte, 0, len(b))
	for _, ch := range b {
		prevCR := cf.cr
		cf.cr = false
		switch ch {
		case '\r':
			cf.cr = true
		case '\n':
			if !prevCR {
				res = append(res, '\r')
			}
		}
		res = append(res, ch)
	}
	return res
}

type simpleCanonicalizer struct{}

func (c *simpleCanonicalizer) CanonicalizeHeader(s string) string {
	return s
}

type simpleBodyCanonicalizer struct {
	w         io.Writer
	crlfBuf   []byte
	crlfFixer crlfFixer
}

func (c *simpleBodyCanonicalizer) Write(b []byte) (int, error) {
	written := len(b)
	b = append(c.crlfBuf, b...)

	b = c.crlfFixer.Fix(b)

	end := len(b)
	// If it ends with \r, maybe the next write will begin with \n
	if end > 0 && b[end-1] == '\r' {
		end--
	}
	// Keep all \r\n sequences
	for end >= 2 {
		prev := b[end-2]
		cur := b[end-1]
		if prev != '\r' || cur != '\n' {
			break
		}
		end -= 2
	}

	c.crlfBuf = b[end:]

	var err error
	if end > 0 {
		_, err = c.w.Write(b[:end])
	}
	return written, err
}

func (c *simpleBodyCanonicalizer) Close() error {
	// Flush crlfBuf if it ends with a single \r (without a matching \n)
	if len(c.crlfBuf) > 0 && c.crlfBuf[len(c.crlfBuf)-1] == '\r' {
		if _, err := c.w.Write(c.crlfBuf); err != nil {
			return err
		}
	}
	c.crlfBuf = nil

	if _, err := c.w.Write([]byte(crlf)); err != nil {
		return err
	}
	return nil
}

func (c *simpleCanonicalizer) CanonicalizeBody(w io.Writer) io.WriteCloser {
	return &simpleBodyCanonicalizer{w: w}
}

type relaxedCanonicalizer struct{}

func (c *relaxedCanonicalizer) CanonicalizeHeader(s string) string {
	k, v, ok := strings.Cut(s, ":")
	if !ok {
		return strings.TrimSpace(strings.ToLower(s)) + ":" + crlf
	}

	// syncrelay patch 3: what follows is, in one string,
	//
	//	k = strings.TrimSpace(strings.ToLower(k))
	//	v = strings.Join(strings.FieldsFunc(v, isRelaxedSpace), " ")
	//	return k + ":" + v + crlf
	//
	// (the separators are ASCII, so working on bytes splits the same way).
	var b strings.Builder
	b.Grow(len(k) + 1 + len(v) + len(crlf))
	if isASCII(k) {
		// For ASCII, TrimSpace then lower case is ToLower then TrimSpace.
		k = strings.TrimSpace(k)
		for i := 0; i < len(k); i++ {
			ch := k[i]
			if 'A' <= ch && ch <= 'Z' {
				ch += 'a' - 'A'
			}
			b.WriteByte(ch)
		}
	} else {
		b.WriteString(strings.TrimSpace(strings.ToLower(k)))
	}
	b.WriteByte(':')
	first := true
	for i := 0; i < len(v); {
		for i < len(v) && isRelaxedSpace(v[i]) {
			i++
		}
		if i == len(v) {
			break
		}
		j := i + 1
		for j < len(v) && !isRelaxedSpace(v[j]) {
			j++
		}
		if !first {
			b.WriteByte(' ')
		}
		b.WriteString(v[i:j])
		first = false
		i = j
	}
	b.WriteString(crlf)
	return b.String()
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

type relaxedBodyCanonicalizer struct {
	w         io.Writer
	crlfBuf   []byte
	wsp       bool
	written   bool
	crlfFixer crlfFixer
	// syncrelay patch 1: the canonical bytes are collected here and handed
	// to w whenever it is full, instead of in two new slices of len(b) per
	// Write (the lone-LF fix, then the canonical form).
	buf [1024]byte
}

func (c *relaxedBodyCanonicalizer) Write(b []byte) (int, error) {
	written := len(b)

	// syncrelay patch 1: the same two passes (crlfFixer.Fix, then the
	// canonicaliser), fused into one over b, writing through c.buf; a run
	// of bytes that are neither whitespace nor line ends is copied at once.
	out := c.buf[:0]
	for i := 0; i < len(b); i++ {
		ch := b[i]
		// crlfFixer.Fix: a lone LF gets a CR before it.
		prevCR := c.crlfFixer.cr
		c.crlfFixer.cr = ch == '\r'
		if ch == '\n' && !prevCR {
			c.wsp = false
			c.crlfBuf = append(c.crlfBuf, '\r')
		}

		if ch == ' ' || ch == '\t' {
			c.wsp = true
		} else if ch == '\r' || ch == '\n' {
			c.wsp = false
			c.crlfBuf = append(c.crlfBuf, ch)
		} else {
			// b[i:j] is kept as is; crlfFixer.cr stays false over it.
			j := i + 1
			for j < len(b) && !isRelaxedSpace(b[j]) {
				j++
			}
			run := b[i:j]
			i = j - 1

			if len(out)+len(c.crlfBuf)+1 > cap(out) {
				if _, err := c.w.Write(out); err != nil {
					return written, err
				}
				out = out[:0]
				if len(c.crlfBuf)+1 > cap(out) {
					if _, err := c.w.Write(c.crlfBuf); err != nil {
						return written, err
					}
					c.crlfBuf = c.crlfBuf[:0]
				}
			}
			if len(c.crlfBuf) > 0 {
				out = append(out, c.crlfBuf...)
				c.crlfBuf = c.crlfBuf[:0]
			}
			if c.wsp {
				out = append(out, ' ')
				c.wsp = false
			}

			if len(out)+len(run) > cap(out) {
				if _, err := c.w.Write(out); err != nil {
					return written, err
				}
				out = out[:0]
				if len(run) > cap(out) {
					if _, err := c.w.Write(run); err != nil {
						return written, err
					}
					run = nil
				}
			}
			out = append(out, run...)
			c.written = true
		}
	}

	_, err := c.w.Write(out)
	return written, err
}

// isRelaxedSpace reports the bytes relaxed body canonicalisation acts on.
func isRelaxedSpace(ch byte) bool {
	return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n'
}

func (c *relaxedBodyCanonicalizer) Close() error {
	if c.written {
		if _, err := c.w.Write([]byte(crlf)); err != nil {
			return err
		}
	}
	return nil
}

func (c *relaxedCanonicalizer) CanonicalizeBody(w io.Writer) io.WriteCloser {
	return &relaxedBodyCanonicalizer{w: w}
}

type limitedWriter struct {
	W io.Writer
	N int64
}

func (w *limitedWriter) Write(b []byte) (int, error) {
	if w.N <= 0 {
		return len(b), nil
	}

	skipped := 0
	if int64(len(b)) > w.N {
		b = b[:w.N]
		skipped = int(int64(len(b)) - w.N)
	}

	n, err := w.W.Write(b)
	w.N -= int64(n)
	return n + skipped, err
}
