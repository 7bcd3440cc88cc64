// Package trust verifies DKIM signatures and ARC chains of an inbound message
// and applies the tenant's DKIM policy (SPEC §5).
//
// Verify reads the message once, streaming: only the header block is kept in
// memory; the body is hashed on the fly by go-msgauth (for DKIM) and by the
// ARC code (for the latest ARC-Message-Signature) from one pass over it.
//
// Usage in the daemon:
//
//	v, err := verifier.Verify(ctx, data)   // err: I/O error or header too large
//	pass, reason := trust.DecideFor(v, owner, trustedSealers) // reason: for the log
//	switch {
//	case pass:        // keep; prepend "Authentication-Results: " + trust.AuthResults(host, v)
//	case v.Temporary: // 451 4.4.3: a key could not be fetched, the sender retries
//	default:          // 550 5.7.1 trust.ReplyReason(v, trustedSealers) (or quarantine, per dkim_policy)
//	}
package trust

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/mail"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"syncrelay/dnsres"
)

// Result values of Result.Result.
const (
	ResultPass      = "pass"
	ResultFail      = "fail"      // the signature does not verify (tampered, wrong key)
	ResultNeutral   = "neutral"   // not produced by Verify; possible in OriginalDKIM
	ResultTempError = "temperror" // key lookup failed temporarily
	ResultPermError = "permerror" // no key, malformed signature or key, expired
	ResultPolicy    = "policy"    // verifiable maybe, but not acceptable: rsa-sha1, RSA < 1024 bits, l=
)

// Result is the outcome of one DKIM signature.
type Result struct {
	Domain     string // d= (SDID), lower case
	Selector   string // s=
	Identifier string // i= (AUID), when given
	Result     string // pass|fail|neutral|temperror|permerror|policy
	Reason     string // why it did not pass
	Algorithm  string // a=
}

// ARCResult is the outcome of ARC chain validation.
type ARCResult struct {
	Result       string   // none|pass|fail|temperror
	Sealer       string   // d= of the last ARC-Seal (set whenever the chain is structurally complete)
	Instances    int      // number of ARC sets
	OriginalDKIM []Result // dkim results from the last instance's ARC-Authentication-Results, when the chain passes
	Reason       string   // why it did not pass
}

// Verdict is everything Verify learned about a message.
type Verdict struct {
	DKIM       []Result
	ARC        ARCResult
	FromDomain string // domain of the single From address; "" when absent, ambiguous or unparsable
	// Pass and PassReason are the tenant-independent view: some DKIM
	// signature aligned with FromDomain passed. Decide has the final word.
	Pass       bool
	PassReason string
	// Temporary: a DKIM key or ARC key lookup failed temporarily and no
	// DKIM signature aligned with From passed, so the answer may differ on
	// retry. When Decide fails and Temporary is set, answer 451 4.4.3.
	Temporary bool
	// SkippedSignatures is the number of DKIM-Signature fields beyond
	// MaxSignatures that were ignored (not verified, not in DKIM).
	SkippedSignatures int
}

// Verifier verifies messages. The zero value is not usable: Resolver is
// required. A Verifier is safe for concurrent use.
type Verifier struct {
	Resolver      dnsres.Resolver
	MaxSignatures int              // DKIM signatures verified per message; default 5
	Now           func() time.Time // clock for x= (expiry) checks; default time.Now
	// MaxHeaderBytes bounds the header block held in memory; default 2 MiB
	// (SMTP already limits it to 1 MiB by default).
	MaxHeaderBytes int
}

const (
	defaultMaxSignatures  = 5
	defaultMaxHeaderBytes = 2 << 20
)

// ErrHeaderTooLarge is returned by Verify for a header block over
// MaxHeaderBytes.
var ErrHeaderTooLarge = errHeaderTooLarge

// Verify reads the message (the untouched DATA bytes) from r to EOF, once,
// and verifies its DKIM signatures and ARC chain. The error is non-nil only
// when r fails or the header exceeds MaxHeaderBytes; every problem with the
// message itself is reported in the Verdict.
func (v *Verifier) Verify(ctx context.Context, r io.Reader) (Verdict, error) {
	if v.Resolver == nil {
		return Verdict{}, errors.New("trust: Verifier.Resolver is nil")
	}
	maxSigs := v.MaxSignatures
	if maxSigs <= 0 {
		maxSigs = defaultMaxSignatures
	}
	maxHeader := v.MaxHeaderBytes
	if maxHeader <= 0 {
		maxHeader = defaultMaxHeaderBytes
	}
	now := v.Now
	if now == nil {
		now = time.Now
	}

	vb := verifyPool.Get().(*verifyBufs)
	defer vb.release()
	br := vb.br
	br.Reset(r)
	fields, scratch, err := readHeaderInto(br, maxHeader, vb.fields[:0], vb.scratch)
	vb.scratch = scratch
	if err != nil {
		return Verdict{}, fmt.Errorf("trust: reading header: %w", err)
	}
	vb.fields = fields
	var verdict Verdict
	verdict.FromDomain = fromDomain(fields)

	keys := newKeyFetcher(v.Resolver)
	arc := newARCState(fields)
	var body bodyReader = br
	if w := arc.bodyWriter(); w != nil {
		vb.tee = teeBody{r: br, w: w}
		body = &vb.tee
	}

	// DKIM, through go-msgauth. It gets the header re-serialised (identical
	// bytes for anything DKIM hashes: fields are kept raw, line ends CRLF)
	// followed by the body stream.
	var sigFields []string
	for _, f := range fields {
		if strings.EqualFold(fieldName(f), "DKIM-Signature") {
			sigFields = append(sigFields, f)
		}
	}
	if len(sigFields) > 0 {
		dkimFields, policy := msgauthView(fields, sigFields[:min(len(sigFields), maxSigs)])
		vb.msg = msgReader{fields: dkimFields, body: body}
		// go-msgauth wraps its input in bufio.NewReader, which hands back a
		// *bufio.Reader of at least 4 KiB as is: this one is pooled.
		vb.dr.Reset(&vb.msg)
		opts := &dkim.VerifyOptions{
			LookupTXT:        func(name string) ([]string, error) { return keys.lookupTXT(ctx, name) },
			MaxVerifications: maxSigs,
		}
		verifs, err := dkim.VerifyWithOptions(vb.dr, opts)
		if err != nil && !errors.Is(err, dkim.ErrTooManySignatures) {
			return Verdict{}, fmt.Errorf("trust: reading message: %w", err)
		}
		if len(sigFields) > maxSigs {
			verdict.SkippedSignatures = len(sigFields) - maxSigs
		}
		for i, vf := range verifs {
			if vf == nil || i >= len(sigFields) {
				continue
			}
			r := dkimResult(sigFields[i], vf, keys, now())
			if policy[i] != "" && r.Result != ResultPolicy {
				// go-msgauth saw it neutralised or a field unfolded: its
				// "fail" means nothing.
				r.Result, r.Reason = ResultPolicy, policy[i]
			}
			verdict.DKIM = append(verdict.DKIM, r)
		}
	}
	// Whatever go-msgauth left unread: the ARC body hash needs it, and the
	// caller may be teeing r to storage.
	if _, err := io.Copy(io.Discard, body); err != nil {
		return Verdict{}, fmt.Errorf("trust: reading message: %w", err)
	}

	verdict.ARC = arc.finish(ctx, keys)

	temp := verdict.ARC.Result == ARCTempError
	for _, r := range verdict.DKIM {
		if r.Result == ResultTempError {
			temp = true
		}
		if r.Result == ResultPass && !verdict.Pass && aligned(r.Domain, verdict.FromDomain) {
			verdict.Pass = true
			verdict.PassReason = "dkim=pass d=" + r.Domain + " aligned with From " + verdict.FromDomain
		}
	}
	verdict.Temporary = temp && !verdict.Pass
	return verdict, nil
}

// dkimResult turns a go-msgauth verification into a Result, applying the
// SPEC §5 policy: rsa-sha1, RSA keys under 1024 bits and l= never pass.
func dkimResult(field string, vf *dkim.Verification, keys *keyFetcher, now time.Time) Result {
	tags, _ := parseTags(rawValue(field))
	r := Result{
		Domain:     strings.ToLower(stripWS(tags["d"])),
		Selector:   stripWS(tags["s"]),
		Identifier: stripWS(tags["i"]),
		Algorithm:  strings.ToLower(stripWS(tags["a"])),
	}
	if vf.Domain != "" {
		r.Domain = strings.ToLower(vf.Domain)
	}
	if vf.Err == nil && !vf.Expiration.IsZero() && now.After(vf.Expiration) {
		r.Result, r.Reason = ResultPermError, "signature has expired"
		return r
	}
	if vf.Err == nil {
		r.Result = ResultPass
		return r
	}
	// Policy refusals first: they are final whatever DNS says.
	if _, hasL := tags["l"]; hasL {
		r.Result, r.Reason = ResultPolicy, "l= body length limit is not accepted (part of the body may be unsigned)"
		return r
	}
	if r.Algorithm == "rsa-sha1" {
		r.Result, r.Reason = ResultPolicy, "rsa-sha1 is not accepted (RFC 8301)"
		return r
	}
	if r.Selector != "" && r.Domain != "" {
		if txts, ok := keys.recorded(r.Selector + "._domainkey." + r.Domain); ok && len(txts) == 1 {
			if k, err := cachedKeyRecord(txts[0]); err == nil && k.algo == "rsa" && k.bits < minRSABits {
				r.Result = ResultPolicy
				r.Reason = fmt.Sprintf("RSA key of %d bits is under the %d-bit minimum (RFC 8301)", k.bits, minRSABits)
				return r
			}
		}
	}
	r.Reason = strings.TrimPrefix(vf.Err.Error(), "dkim: ")
	switch {
	case dkim.IsTempFail(vf.Err):
		r.Result = ResultTempError
	case dkim.IsPermFail(vf.Err):
		r.Result = ResultPermError
	default:
		r.Result = ResultFail
	}
	return r
}

// fromParser is shared (it is read-only, so safe for concurrent use) to
// save allocating it per message.
var fromParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	// Display names in unknown charsets must not make the address
	// unparsable: only the address matters here.
	CharsetReader: func(_ string, input io.Reader) (io.Reader, error) { return input, nil },
}}

// fromDomain returns the lower-case domain of the message's author: there
// must be exactly one From field; if it lists several addresses they must
// share one domain. Anything else gives "" (no alignment possible), so a
// second, unsigned From cannot borrow another signature's alignment.
func fromDomain(fields []string) string {
	var from string
	n := 0
	for _, f := range fields {
		if strings.EqualFold(fieldName(f), "From") {
			from = f
			n++
		}
	}
	if n != 1 {
		return ""
	}
	addrs, err := fromParser.ParseList(fieldValue(from))
	if err != nil || len(addrs) == 0 {
		return ""
	}
	domain := ""
	for _, a := range addrs {
		at := strings.LastIndexByte(a.Address, '@')
		if at < 0 {
			return ""
		}
		d := strings.ToLower(strings.TrimSuffix(a.Address[at+1:], "."))
		if domain != "" && d != domain {
			return ""
		}
		domain = d
	}
	return domain
}

// verifyBufs is the per-call working space of Verify, pooled because it was
// most of what a Verify allocated (the 64 KiB read buffer alone was half).
// release drops every reference to the caller's reader and to the message's
// fields; what stays is stale bytes in the buffers, which the next call
// overwrites before reading. Nothing Verify returns points into them:
// readHeaderInto copies each field into a string of its own.
type verifyBufs struct {
	br      *bufio.Reader // over the caller's reader
	dr      *bufio.Reader // what go-msgauth reads: msg
	msg     msgReader
	tee     teeBody
	fields  []string // readHeader's result; the strings are not reused
	scratch []byte   // readHeader's working space
}

var verifyPool = sync.Pool{New: func() any {
	return &verifyBufs{
		br: bufio.NewReaderSize(nil, 64<<10),
		// bufio.NewReader's default size: go-msgauth reuses a *bufio.Reader
		// only when it is at least that large.
		dr: bufio.NewReaderSize(nil, 4096),
	}
}}

// Working space grown beyond these (a huge header) is dropped rather than
// pooled, so one odd message does not pin memory forever.
const (
	maxPooledFields  = 256
	maxPooledScratch = 64 << 10
)

func (vb *verifyBufs) release() {
	vb.br.Reset(nil)
	vb.dr.Reset(nil)
	vb.msg = msgReader{}
	vb.tee = teeBody{}
	if cap(vb.fields) > maxPooledFields {
		vb.fields = nil
	} else {
		clear(vb.fields[:cap(vb.fields)])
	}
	if cap(vb.scratch) > maxPooledScratch {
		vb.scratch = nil
	}
	verifyPool.Put(vb)
}

// bodyReader is the message body after the header: Verify's *bufio.Reader,
// or a teeBody over it. Both have WriteTo, so io.Copy never allocates its
// 32 KiB buffer for them.
type bodyReader interface {
	io.Reader
	io.WriterTo
}

// msgReader is the message as go-msgauth must see it: the header fields,
// the empty line, then the body. It replaces io.MultiReader, whose WriteTo
// allocates a 32 KiB buffer per call; its own WriteTo hands over to the
// body's.
type msgReader struct {
	fields []string
	i, off int // next header byte: fields[i][off], or the separator's when i == len(fields)
	body   bodyReader
}

func (m *msgReader) headerDone() bool { return m.i > len(m.fields) }

// next returns the unread rest of the current header piece.
func (m *msgReader) next() string {
	if m.i < len(m.fields) {
		return m.fields[m.i][m.off:]
	}
	return crlf[m.off:]
}

func (m *msgReader) Read(p []byte) (int, error) {
	n := 0
	for !m.headerDone() && n < len(p) {
		piece := m.next()
		c := copy(p[n:], piece)
		n += c
		if c == len(piece) {
			m.i++
			m.off = 0
		} else {
			m.off += c
		}
	}
	if n > 0 {
		return n, nil
	}
	return m.body.Read(p)
}

func (m *msgReader) WriteTo(w io.Writer) (int64, error) {
	var written int64
	for !m.headerDone() {
		piece := m.next()
		n, err := io.WriteString(w, piece)
		written += int64(n)
		m.off += n
		if err == nil && n < len(piece) {
			err = io.ErrShortWrite
		}
		if err != nil {
			return written, err
		}
		m.i++
		m.off = 0
	}
	n, err := m.body.WriteTo(w)
	return written + n, err
}

// teeBody is io.TeeReader(r, w) plus a WriteTo: what is read from r is
// written to w (the ARC body hash) before the reader sees it.
type teeBody struct {
	r   *bufio.Reader
	w   io.Writer
	dst io.Writer // WriteTo's destination, while it runs
}

func (t *teeBody) Read(p []byte) (int, error) {
	n, err := t.r.Read(p)
	if n > 0 {
		if n, err := t.w.Write(p[:n]); err != nil {
			return n, err
		}
	}
	return n, err
}

func (t *teeBody) WriteTo(dst io.Writer) (int64, error) {
	t.dst = dst
	defer func() { t.dst = nil }()
	return t.r.WriteTo(teeSink{t})
}

// teeSink is teeBody's Writer side during WriteTo (a one-pointer struct, so
// passing it as an io.Writer does not allocate).
type teeSink struct{ t *teeBody }

func (s teeSink) Write(p []byte) (int, error) {
	if n, err := s.t.w.Write(p); err != nil {
		return n, err
	}
	return s.t.dst.Write(p)
}
