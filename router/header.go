package router

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
)

// Most forwarded mail is discarded, and what decides that is a handful of
// header fields. parse reads the header block with scanHeader, which keeps
// only those fields (narrowKeys) in a narrowHeader; a message that matches
// a thread, or is a report, is read again in full (wholeHeader) before
// anything else looks at its header. scanHeader is textproto.ReadHeader's
// loop with the same reads of the same reader, so it refuses what
// readHeader refuses (header_too_large, malformed_header) and finds the
// same length; it allocates nothing for the fields it does not keep (a
// DKIM-Signature is most of a header), and builds no textproto.Header (its
// map and per-field strings were 4 % of the discard path).
// FuzzScanHeader checks it against readHeader.

// header is what matching reads of a header: a narrowHeader, or a whole
// *textproto.Header.
type header interface {
	Get(key string) string
	Values(key string) []string
}

// narrowHeader holds the fields of narrowKeys, raw (folded lines
// included), in their order.
type narrowHeader struct{ fields [][]byte }

// Get is textproto.Header.Get: the first field's value.
func (h *narrowHeader) Get(key string) string {
	checkNarrow(key)
	for _, kv := range h.fields {
		if k, v := splitField(kv); asciiEqualFold(k, key) {
			return trimAroundNewlines(v)
		}
	}
	return ""
}

// Values is textproto.Header.Values: every value, in order; nil for none.
func (h *narrowHeader) Values(key string) []string {
	checkNarrow(key)
	var vs []string
	for _, kv := range h.fields {
		if k, v := splitField(kv); asciiEqualFold(k, key) {
			vs = append(vs, trimAroundNewlines(v))
		}
	}
	return vs
}

// checkNarrow panics for a field scanHeader did not keep: reading it from
// a narrowHeader would find nothing where the message may have it.
func checkNarrow(key string) {
	if !isNarrowKey([]byte(key)) {
		panic("router: " + key + " read from a narrow header (add it to narrowKeys)")
	}
}

// splitField is a field's key (trimmed) and raw value.
func splitField(kv []byte) (key, value []byte) {
	i := bytes.IndexByte(kv, ':')
	return trim(kv[:i]), kv[i+1:]
}

// trimAroundNewlines is go-message's: the value without its line breaks
// and the spaces around them, continuation lines joined by one space.
func trimAroundNewlines(v []byte) string {
	var b strings.Builder
	b.Grow(len(v))
	for {
		i := bytes.IndexByte(v, '\n')
		if i < 0 {
			writeContinued(&b, v)
			break
		}
		writeContinued(&b, v[:i])
		v = v[i+1:]
	}
	return b.String()
}

func writeContinued(b *strings.Builder, l []byte) {
	if len(l) > 0 && l[len(l)-1] == '\r' {
		l = l[:len(l)-1]
	}
	l = trim(l)
	if len(l) == 0 {
		return
	}
	if b.Len() > 0 {
		b.WriteByte(' ')
	}
	b.Write(l)
}

// narrowKeys are the fields matchThread, the probe check and the discard's
// log line read, as textproto canonicalises them.
var narrowKeys = [...]string{
	"Message-Id", "From", "In-Reply-To", "References", "Thread-Index",
	"Content-Type", "X-Syncrelay-Thread", HeaderProbe,
}

// errMalformedHeader is scanHeader's error for what textproto.ReadHeader
// calls a malformed header (the text differs; parse only tells errors
// apart from header_too_large).
var errMalformedHeader = errors.New("router: malformed header")

// scanHeader is readHeader keeping only narrowKeys' fields.
func (r *Router) scanHeader(b Body) (*narrowHeader, int64, error) {
	var kept [][]byte
	n, err := r.headerBlock(b, func(br *bufio.Reader) (err error) {
		kept, err = scanFields(br)
		return err
	})
	if errors.As(err, new(*headerTooLarge)) {
		return nil, n, err
	}
	return &narrowHeader{fields: kept}, n, err
}

// scanFields is textproto.ReadHeader (go-message v0.18) over br, returning
// a copy of each field in narrowKeys (raw, folded lines included).
func scanFields(br *bufio.Reader) (kept [][]byte, err error) {
	// The copies share one buffer; a field copied before it grew stays
	// where it was, unchanged.
	var copies []byte
	// The first line cannot start with a leading space.
	if buf, err := br.Peek(1); err == nil && isSpace(buf[0]) {
		if _, err := readLineSlice(br, nil); err != nil {
			return nil, err
		}
		return nil, errMalformedHeader
	}
	var line []byte // reused: only kept fields are copied
	for {
		kv, err := readContinuedLineSlice(br, line[:0])
		if len(kv) == 0 {
			return kept, err
		}
		line = kv
		// Key ends at first colon; trailing spaces are removed.
		i := bytes.IndexByte(kv, ':')
		if i < 0 {
			return kept, errMalformedHeader
		}
		key := trim(kv[:i])
		for _, c := range key {
			if c < 33 || c > 126 || c == ':' {
				return kept, errMalformedHeader
			}
		}
		if len(key) > 0 && isNarrowKey(key) {
			if copies == nil {
				copies = make([]byte, 0, 512)
			}
			copies = append(copies, kv...)
			kept = append(kept, copies[len(copies)-len(kv):len(copies):len(copies)])
		}
		if err != nil {
			return kept, err
		}
	}
}

// isNarrowKey reports whether key (printable ASCII) canonicalises to one
// of narrowKeys: those are tokens, so a key does exactly when it equals
// one but for the case of its letters.
func isNarrowKey(key []byte) bool {
	for _, k := range narrowKeys {
		if asciiEqualFold(key, k) {
			return true
		}
	}
	return false
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' }

// trim returns s without leading and trailing spaces and tabs.
func trim(s []byte) []byte {
	i, n := 0, len(s)
	for i < n && isSpace(s[i]) {
		i++
	}
	for n > i && isSpace(s[n-1]) {
		n--
	}
	return s[i:n]
}

// readLineSlice, hasContinuationLine and readContinuedLineSlice are
// go-message's, the last one appending to line instead of a new slice.
func readLineSlice(r *bufio.Reader, line []byte) ([]byte, error) {
	for {
		l, more, err := r.ReadLine()
		line = append(line, l...)
		if err != nil {
			return line, err
		}
		if !more {
			return line, nil
		}
	}
}

func hasContinuationLine(r *bufio.Reader) bool {
	c, err := r.ReadByte()
	if err != nil {
		return false // bufio will keep err until next read.
	}
	r.UnreadByte()
	return isSpace(c)
}

func readContinuedLineSlice(r *bufio.Reader, line []byte) ([]byte, error) {
	line, err := readLineSlice(r, line)
	if err == io.EOF && len(line) == 0 {
		return nil, nil // a header without a body
	} else if err != nil {
		return nil, err
	}
	if len(line) == 0 { // blank line: the end of the header
		return line, nil
	}
	line = append(line, '\r', '\n')
	for hasContinuationLine(r) {
		line, err = readLineSlice(r, line)
		if err != nil {
			break // bufio will keep err until next read.
		}
		line = append(line, '\r', '\n')
	}
	return line, nil
}

// plainAddress is net/mail's address for the two forms almost every From
// takes, "local@domain" and "Display Name <local@domain>" (ASCII words,
// dot-atoms), found without its parser (2.5 % of the discard path); ok is
// false for anything else, which net/mail parses. FuzzPlainAddress checks
// it against net/mail.
func plainAddress(v string) (addr string, ok bool) {
	v = strings.Trim(v, " \t")
	if i := strings.IndexByte(v, '<'); i >= 0 {
		if !plainPhrase(v[:i]) || !strings.HasSuffix(v, ">") {
			return "", false
		}
		v = v[i+1 : len(v)-1]
	}
	at := strings.IndexByte(v, '@')
	if at < 0 || !dotAtom(v[:at]) || !dotAtom(v[at+1:]) {
		return "", false
	}
	return v, true
}

// plainPhrase: words of ASCII letters and digits between spaces, or nothing.
func plainPhrase(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c == ' ' || c == '\t' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// dotAtom: atext runs separated by single dots, none at either end.
func dotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0) {
			return false
		}
	}
	return true
}
