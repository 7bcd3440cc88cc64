package trust

// DKIM primitives that go-msgauth keeps unexported and that ARC (RFC 8617)
// needs: tag-list parsing, header field splitting and picking, relaxed/simple
// canonicalisation, public key records and signature checks. They follow
// RFC 6376 and behave like go-msgauth's own (the tests cross-check them
// against go-msgauth's signer and verifier).

import (
	"bufio"
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"hash"
	"io"
	"strings"
	"unicode"
	"unicode/utf8"
)

const crlf = "\r\n"

// errHeaderTooLarge is returned by Verify when the header block exceeds
// Verifier.MaxHeaderBytes.
var errHeaderTooLarge = errors.New("trust: message header too large")

// readHeader reads the header block (up to and including the empty line) from
// br and returns its fields, each "Name: value" with continuation lines kept
// and every line ending normalised to CRLF (as go-msgauth's reader does). A
// message without a body separator has an empty body.
func readHeader(br *bufio.Reader, limit int) ([]string, error) {
	fields, _, err := readHeaderInto(br, limit, nil, nil)
	return fields, err
}

// readHeaderInto is readHeader appending to fields and using scratch (both
// may be nil) as working space, so Verify can reuse them across calls. It
// returns the grown scratch. Each field is copied into its own string once
// complete: nothing returned aliases br's buffer or scratch.
func readHeaderInto(br *bufio.Reader, limit int, fields []string, scratch []byte) ([]string, []byte, error) {
	total := 0
	cur := scratch[:0] // the field being assembled, line ends already CRLF
	for {
		start := len(cur)
		for {
			chunk, err := br.ReadSlice('\n')
			total += len(chunk)
			if total > limit {
				return nil, cur, errHeaderTooLarge
			}
			cur = append(cur, chunk...)
			if err == bufio.ErrBufferFull {
				continue
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, cur, err
			}
			break
		}
		line := cur[start:]
		eof := len(line) == 0 || line[len(line)-1] != '\n'
		n := len(line)
		if n > 0 && line[n-1] == '\n' {
			n--
		}
		if n > 0 && line[n-1] == '\r' {
			n--
		}
		if n == 0 {
			cur = cur[:start]
			break
		}
		if start > 0 && line[0] != ' ' && line[0] != '\t' {
			// A new field: the pending one is complete.
			fields = append(fields, string(cur[:start]))
			copy(cur, line[:n])
			start = 0
		}
		cur = append(cur[:start+n], crlf...)
		if eof {
			break
		}
	}
	if len(cur) > 0 {
		fields = append(fields, string(cur))
	}
	return fields, cur, nil
}

// fieldName returns the trimmed name of a raw header field (the whole field
// when it has no colon, as go-msgauth does).
func fieldName(f string) string {
	k, _, _ := strings.Cut(f, ":")
	return strings.TrimSpace(k)
}

// fieldValue returns the unfolded, trimmed value of a raw header field.
func fieldValue(f string) string {
	_, v, _ := strings.Cut(f, ":")
	v = strings.ReplaceAll(v, "\r\n", "")
	v = strings.ReplaceAll(v, "\n", "")
	return strings.TrimSpace(v)
}

// rawValue returns the value of a raw header field, as is.
func rawValue(f string) string {
	_, v, _ := strings.Cut(f, ":")
	return v
}

// parseTags parses a DKIM tag-list (RFC 6376 §3.2). Values are trimmed of
// surrounding folding whitespace; duplicate tags are an error.
func parseTags(s string) (map[string]string, error) {
	// Sized up front: a DKIM-Signature has about ten tags, and growing the
	// map past its first group costs several allocations per message.
	tags := make(map[string]string, min(strings.Count(s, ";")+1, 32))
	for rest, more := s, true; more; {
		var spec string
		spec, rest, more = strings.Cut(rest, ";")
		k, v, ok := strings.Cut(spec, "=")
		if !ok {
			if strings.TrimSpace(spec) == "" {
				continue
			}
			return nil, fmt.Errorf("malformed tag-list near %q", truncate(strings.TrimSpace(spec), 20))
		}
		k = strings.TrimSpace(k)
		if k == "" {
			return nil, errors.New("malformed tag-list: empty tag name")
		}
		if _, dup := tags[k]; dup {
			return nil, fmt.Errorf("duplicate tag %q", k)
		}
		tags[k] = strings.TrimSpace(v)
	}
	return tags, nil
}

func stripWS(s string) string {
	return strings.Map(func(r rune) rune {
		if r == ' ' || r == '\t' || r == '\r' || r == '\n' {
			return -1
		}
		return r
	}, s)
}

func splitColonList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ":") {
		if p = stripWS(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// removeBValue empties the value of the b= tag of a raw signature field,
// surrounding whitespace included (RFC 6376 §3.7): everything between "b="
// and the next ';' (or the end of the field) goes.
func removeBValue(field string) string {
	colon := strings.IndexByte(field, ':')
	if colon < 0 {
		return field
	}
	start := colon + 1
	for start <= len(field) {
		end := strings.IndexByte(field[start:], ';')
		if end < 0 {
			end = len(field)
		} else {
			end += start
		}
		spec := field[start:end]
		if eq := strings.IndexByte(spec, '='); eq >= 0 && strings.TrimSpace(spec[:eq]) == "b" {
			return field[:start+eq+1] + field[end:]
		}
		start = end + 1
	}
	return field
}

// canonHeader canonicalises one raw header field (RFC 6376 §3.4.1/§3.4.2).
func canonHeader(f string, relaxed bool) string {
	if !relaxed {
		return f
	}
	return string(appendCanonHeader(nil, f, true))
}

// appendCanonHeader appends canonHeader(f, relaxed) to dst. The digests
// hash every field through one reused buffer this way, instead of building
// three or four strings per field.
func appendCanonHeader(dst []byte, f string, relaxed bool) []byte {
	if !relaxed {
		return append(dst, f...)
	}
	k, v, ok := strings.Cut(f, ":")
	if !ok {
		dst = appendLowerTrimmed(dst, f)
		return append(dst, ":"+crlf...)
	}
	dst = appendLowerTrimmed(dst, k)
	dst = append(dst, ':')
	// The words of v (split at SP, HTAB, CR, LF) joined by single spaces.
	// Byte-wise is rune-wise here: those are ASCII, and UTF-8 sequences
	// contain no ASCII bytes.
	first := true
	for i := 0; i < len(v); {
		for i < len(v) && isFoldingWS(v[i]) {
			i++
		}
		start := i
		for i < len(v) && !isFoldingWS(v[i]) {
			i++
		}
		if i > start {
			if !first {
				dst = append(dst, ' ')
			}
			dst = append(dst, v[start:i]...)
			first = false
		}
	}
	return append(dst, crlf...)
}

func isFoldingWS(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// appendLowerTrimmed appends strings.ToLower(strings.TrimSpace(s)),
// without allocating when s is ASCII.
func appendLowerTrimmed(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return append(dst, strings.ToLower(strings.TrimSpace(s))...)
		}
	}
	s = strings.TrimSpace(s)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

// headerPicker returns, for each name asked, the next instance of that field
// from the bottom of the header up (RFC 6376 §5.4.2). It indexes the fields
// by name once, so a signature whose h= lists a name thousands of times, or
// thousands of absent names, costs one pass over the header rather than one
// per name (an h= of 8,000 names over 8,000 fields took 0.4 s that way).
type headerPicker struct {
	fields []string
	byName map[string][]int // foldKey(name) -> field indexes, bottom-up; built on the first pick
	used   map[string]int
}

func newHeaderPicker(fields []string) *headerPicker {
	return &headerPicker{fields: fields}
}

func (p *headerPicker) pick(name string) (string, bool) {
	if p.byName == nil {
		p.byName = make(map[string][]int, len(p.fields))
		p.used = make(map[string]int)
		for i := len(p.fields) - 1; i >= 0; i-- {
			k := foldKey(fieldName(p.fields[i]))
			p.byName[k] = append(p.byName[k], i)
		}
	}
	key := foldKey(name)
	idx := p.byName[key]
	n := p.used[key]
	if n >= len(idx) {
		return "", false
	}
	p.used[key] = n + 1
	return p.fields[idx[n]], true
}

// foldKey maps s to a key equal for exactly the strings strings.EqualFold
// finds equal: each rune becomes the smallest of its simple case folding
// orbit (for ASCII letters, the upper case one).
func foldKey(s string) string {
	ascii := true
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii {
		if k, ok := commonFoldKeys[s]; ok {
			return k
		}
		return strings.ToUpper(s)
	}
	return strings.Map(func(r rune) rune {
		m := r
		for f := unicode.SimpleFold(r); f != r; f = unicode.SimpleFold(f) {
			m = min(m, f)
		}
		return m
	}, s)
}

// commonFoldKeys holds foldKey of the field names most messages carry and
// most signatures list, as they are usually spelled: strings.ToUpper
// allocates for each, about ten times per verified message.
var commonFoldKeys = func() map[string]string {
	m := map[string]string{}
	for _, n := range []string{
		"From", "To", "Cc", "Subject", "Date", "Message-ID", "Message-Id", "In-Reply-To", "References",
		"Reply-To", "Sender", "MIME-Version", "Mime-Version", "Content-Type", "Content-Transfer-Encoding",
		"Content-ID", "Content-Description", "Content-Language", "List-Id", "List-Unsubscribe",
		"List-Unsubscribe-Post", "Resent-From", "Resent-To", "Resent-Date", "Resent-Message-ID",
		"Resent-Cc", "Feedback-ID", "DKIM-Signature", "Dkim-Signature", "ARC-Seal", "ARC-Message-Signature",
		"ARC-Authentication-Results", "Authentication-Results", "Received", "Return-Path",
		"Delivered-To", "X-Original-To", "X-Forwarded-To", "Thread-Index", "Thread-Topic",
		"X-Google-DKIM-Signature", "X-Gm-Message-State", "X-Received", "X-Mailer",
		"Autocrypt", "Openpgp", "Precedence", "Auto-Submitted",
	} {
		for _, v := range []string{n, strings.ToLower(n), strings.ToUpper(n)} {
			m[v] = strings.ToUpper(n)
		}
	}
	return m
}()

// bodyCanonicalizer is a streaming RFC 6376 §3.4.3/§3.4.4 body
// canonicaliser. Lone LF counts as a line end (like go-msgauth).
type bodyCanonicalizer struct {
	w        io.Writer
	relaxed  bool
	crlfs    int  // line ends not yet written (they may be trailing empty lines)
	cr       bool // a CR was seen and not yet resolved
	wsp      bool // relaxed: pending whitespace inside a line
	anything bool // relaxed: some content was written
	buf      []byte
}

func newBodyCanonicalizer(w io.Writer, relaxed bool) *bodyCanonicalizer {
	return &bodyCanonicalizer{w: w, relaxed: relaxed, buf: make([]byte, 0, 4096)}
}

func (c *bodyCanonicalizer) content(ch byte) {
	for ; c.crlfs > 0; c.crlfs-- {
		c.buf = append(c.buf, '\r', '\n')
	}
	if c.wsp {
		c.buf = append(c.buf, ' ')
		c.wsp = false
	}
	c.buf = append(c.buf, ch)
	c.anything = true
}

func (c *bodyCanonicalizer) Write(p []byte) (int, error) {
	for _, ch := range p {
		if c.cr {
			c.cr = false
			if ch == '\n' {
				c.eol()
				continue
			}
			c.content('\r') // a lone CR is ordinary content
		}
		switch {
		case ch == '\r':
			c.cr = true
		case ch == '\n':
			c.eol()
		case c.relaxed && (ch == ' ' || ch == '\t'):
			c.wsp = true
		default:
			c.content(ch)
		}
		if len(c.buf) >= 4000 {
			if err := c.flush(); err != nil {
				return 0, err
			}
		}
	}
	return len(p), c.flush()
}

func (c *bodyCanonicalizer) eol() {
	c.wsp = false // relaxed: whitespace at the end of a line is dropped
	c.crlfs++
}

func (c *bodyCanonicalizer) flush() error {
	if len(c.buf) == 0 {
		return nil
	}
	_, err := c.w.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}

// Close writes the final line end: simple always ends with exactly one CRLF
// (an empty body is a single CRLF); relaxed ends with one CRLF unless the
// body is empty.
func (c *bodyCanonicalizer) Close() error {
	if c.cr {
		c.cr = false
		c.content('\r')
	}
	c.wsp = false
	if !c.relaxed || c.anything {
		c.buf = append(c.buf, '\r', '\n')
	}
	c.crlfs = 0
	return c.flush()
}

// bodyHasher hashes a body with the given canonicalisation.
type bodyHasher struct {
	h hash.Hash
	c *bodyCanonicalizer
}

func newBodyHasher(relaxed bool) *bodyHasher {
	h := sha256.New()
	return &bodyHasher{h: h, c: newBodyCanonicalizer(h, relaxed)}
}

func (b *bodyHasher) Write(p []byte) (int, error) { return b.c.Write(p) }

func (b *bodyHasher) Sum() []byte {
	b.c.Close()
	return b.h.Sum(nil)
}

// parseCanon parses a c= value: "header/body", each simple (default) or
// relaxed.
func parseCanon(s string) (headerRelaxed, bodyRelaxed bool, err error) {
	h, b, _ := strings.Cut(stripWS(s), "/")
	parse := func(v string) (bool, error) {
		switch strings.ToLower(v) {
		case "", "simple":
			return false, nil
		case "relaxed":
			return true, nil
		}
		return false, fmt.Errorf("unknown canonicalization %q", v)
	}
	if headerRelaxed, err = parse(h); err != nil {
		return
	}
	bodyRelaxed, err = parse(b)
	return
}

// publicKey is a parsed DKIM key record (RFC 6376 §3.6.1, RFC 8463).
type publicKey struct {
	algo   string // "rsa" or "ed25519"
	rsa    *rsa.PublicKey
	ed     ed25519.PublicKey
	hashes []string // h= (nil: any)
	bits   int
}

func parseKeyRecord(txt string) (*publicKey, error) {
	tags, err := parseTags(txt)
	if err != nil {
		return nil, fmt.Errorf("key record: %v", err)
	}
	if v, ok := tags["v"]; ok && v != "DKIM1" {
		return nil, errors.New("key record: incompatible version")
	}
	p, ok := tags["p"]
	if !ok {
		return nil, errors.New("key record: no p= tag")
	}
	p = stripWS(p)
	if p == "" {
		return nil, errors.New("key revoked (empty p=)")
	}
	der, err := base64.StdEncoding.DecodeString(p)
	if err != nil {
		return nil, fmt.Errorf("key record: bad base64: %v", err)
	}
	k := &publicKey{}
	if h, ok := tags["h"]; ok {
		k.hashes = splitColonList(h)
	}
	if s, ok := tags["s"]; ok {
		svc := splitColonList(s)
		if !contains(svc, "*") && !contains(svc, "email") {
			return nil, errors.New("key record: not for email (s=)")
		}
	}
	switch strings.ToLower(stripWS(tags["k"])) {
	case "", "rsa":
		pub, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			// RFC 6376 erratum 3017: some publish a bare RSAPublicKey.
			if pub, err = x509.ParsePKCS1PublicKey(der); err != nil {
				return nil, fmt.Errorf("key record: %v", err)
			}
		}
		rk, ok := pub.(*rsa.PublicKey)
		if !ok {
			return nil, errors.New("key record: k=rsa but not an RSA key")
		}
		k.algo, k.rsa, k.bits = "rsa", rk, rk.N.BitLen()
	case "ed25519":
		if len(der) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("key record: Ed25519 key of %d bytes", len(der))
		}
		k.algo, k.ed, k.bits = "ed25519", ed25519.PublicKey(der), 256
	default:
		return nil, fmt.Errorf("key record: unsupported key type %q", tags["k"])
	}
	return k, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

// minRSABits is RFC 8301 §3.2's floor.
const minRSABits = 1024

// checkSignature verifies sig over the SHA-256 digest with key, for the
// signature algorithm a= (rsa-sha256 or ed25519-sha256 only: rsa-sha1 is
// refused per RFC 8301).
func checkSignature(a string, key *publicKey, digest, sig []byte) error {
	keyAlgo, hashAlgo, _ := strings.Cut(strings.ToLower(stripWS(a)), "-")
	if hashAlgo != "sha256" {
		return fmt.Errorf("unsupported algorithm %q", a)
	}
	if key.hashes != nil && !contains(key.hashes, "sha256") {
		return errors.New("key does not allow sha256 (h=)")
	}
	if keyAlgo != key.algo {
		return fmt.Errorf("algorithm %q does not match the %s key", a, key.algo)
	}
	switch key.algo {
	case "rsa":
		if key.bits < minRSABits {
			return fmt.Errorf("RSA key of %d bits is under %d", key.bits, minRSABits)
		}
		if err := rsa.VerifyPKCS1v15(key.rsa, crypto.SHA256, digest, sig); err != nil {
			return errors.New("signature did not verify")
		}
	case "ed25519":
		if !ed25519.Verify(key.ed, digest, sig) {
			return errors.New("signature did not verify")
		}
	}
	return nil
}

func decodeB64(s string) ([]byte, error) {
	return base64.StdEncoding.DecodeString(stripWS(s))
}
