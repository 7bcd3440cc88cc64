package trust

// ARC (RFC 8617) chain validation. go-msgauth has no ARC, so it is done here
// with the DKIM primitives of canon.go.
//
// Why not rewrite the AMS as a DKIM-Signature and hand it to go-msgauth: the
// AMS signature covers the AMS header field itself, *name included*
// ("arc-message-signature:" under relaxed canonicalisation), so a renamed
// copy no longer verifies; and the AMS has i= (instance) where DKIM has the
// AUID and lacks v=. The AMS and AS checks are therefore implemented here
// (relaxed/simple canonicalisation, rsa-sha256 and ed25519-sha256).
//
// Validation follows RFC 8617 §5.2:
//  1. no ARC header field at all: "none";
//  2. instances 1..N (N <= 50) each have exactly one ARC-Seal (AS),
//     ARC-Message-Signature (AMS) and ARC-Authentication-Results (AAR);
//     AS(1) has cv=none, every later AS cv=pass; any cv=fail fails the chain;
//  3. the latest AMS (instance N) verifies against the message as received
//     (body hash and header signature); older AMS are not required to;
//  4. every AS(k), k = N..1, verifies over AAR(1), AMS(1), AS(1), ...,
//     AAR(k), AMS(k), AS(k) with AS(k)'s b= emptied, relaxed header
//     canonicalisation, in that order.
// When the chain passes, the dkim results of AAR(N) (the sealer's own
// authentication results for the message it received) are returned.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-msgauth/authres"
)

// Result values of ARCResult.Result.
const (
	ARCNone      = "none"
	ARCPass      = "pass"
	ARCFail      = "fail"
	ARCTempError = "temperror" // a key lookup failed temporarily; retry later
)

const maxARCInstances = 50

type arcSet struct {
	aar, ams, as          string // raw fields
	amsTags, asTags       map[string]string
	hasAAR, hasAMS, hasAS bool
}

// arcState is built from the header before the body is read (to know how to
// hash the body for AMS(N)) and finished after.
type arcState struct {
	res    ARCResult
	fields []string
	sets   []arcSet // index i-1 for instance i
	body   *bodyHasher
	done   bool // res is final (none or an early failure)
}

// aarInstance matches the instance tag that starts an
// ARC-Authentication-Results value, as the regular expression
// `^\s*i\s*=\s*([0-9]+)\s*;` would (hand-written: it runs for every ARC
// field of every message). It returns the digits and what follows the ';'.
func aarInstance(s string) (digits, rest string, ok bool) {
	i := skipSpace(s, 0)
	if i == len(s) || s[i] != 'i' {
		return "", "", false
	}
	i = skipSpace(s, i+1)
	if i == len(s) || s[i] != '=' {
		return "", "", false
	}
	i = skipSpace(s, i+1)
	start := i
	for i < len(s) && '0' <= s[i] && s[i] <= '9' {
		i++
	}
	if i == start {
		return "", "", false
	}
	digits = s[start:i]
	i = skipSpace(s, i)
	if i == len(s) || s[i] != ';' {
		return "", "", false
	}
	return digits, s[i+1:], true
}

// skipSpace skips RE2's \s ([\t\n\f\r ]) from s[i].
func skipSpace(s string, i int) int {
	for i < len(s) && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\f' || s[i] == '\r') {
		i++
	}
	return i
}

// equalLower reports whether strings.ToLower(s) == lower, for an ASCII
// lower-case lower, without allocating when s is ASCII (the usual case).
func equalLower(s, lower string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			// Non-ASCII letters may lower-case to ASCII ones (U+0130 to 'i',
			// U+212A to 'k'): let strings.ToLower decide exactly.
			return strings.ToLower(s) == lower
		}
	}
	if len(s) != len(lower) {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

func newARCState(fields []string) *arcState {
	st := &arcState{fields: fields}
	fail := func(format string, args ...any) *arcState {
		st.res.Result = ARCFail
		st.res.Reason = fmt.Sprintf(format, args...)
		st.done = true
		return st
	}
	byInstance := map[int]*arcSet{}
	maxI := 0
	seen := false
	for _, f := range fields {
		var name string
		switch fn := fieldName(f); {
		case equalLower(fn, "arc-seal"):
			name = "arc-seal"
		case equalLower(fn, "arc-message-signature"):
			name = "arc-message-signature"
		case equalLower(fn, "arc-authentication-results"):
			name = "arc-authentication-results"
		default:
			continue
		}
		seen = true
		var (
			inst int
			tags map[string]string
			err  error
		)
		if name == "arc-authentication-results" {
			digits, _, ok := aarInstance(rawValue(f))
			if !ok {
				return fail("malformed ARC-Authentication-Results: no i= instance")
			}
			inst, err = strconv.Atoi(digits)
		} else {
			tags, err = parseTags(rawValue(f))
			if err != nil {
				return fail("malformed %s: %v", fieldName(f), err)
			}
			inst, err = strconv.Atoi(stripWS(tags["i"]))
		}
		if err != nil || inst < 1 || inst > maxARCInstances {
			return fail("%s has an invalid instance number", fieldName(f))
		}
		set := byInstance[inst]
		if set == nil {
			set = &arcSet{}
			byInstance[inst] = set
		}
		switch name {
		case "arc-seal":
			if set.hasAS {
				return fail("two ARC-Seal fields with i=%d", inst)
			}
			set.as, set.asTags, set.hasAS = f, tags, true
		case "arc-message-signature":
			if set.hasAMS {
				return fail("two ARC-Message-Signature fields with i=%d", inst)
			}
			set.ams, set.amsTags, set.hasAMS = f, tags, true
		default:
			if set.hasAAR {
				return fail("two ARC-Authentication-Results fields with i=%d", inst)
			}
			set.aar, set.hasAAR = f, true
		}
		maxI = max(maxI, inst)
	}
	if !seen {
		st.res.Result = ARCNone
		st.done = true
		return st
	}
	st.res.Instances = maxI
	for i := 1; i <= maxI; i++ {
		set := byInstance[i]
		if set == nil || !set.hasAS || !set.hasAMS || !set.hasAAR {
			return fail("ARC set i=%d is incomplete", i)
		}
		st.sets = append(st.sets, *set)
	}
	if len(byInstance) != maxI {
		return fail("ARC instances are not contiguous")
	}
	last := st.sets[maxI-1]
	st.res.Sealer = strings.ToLower(stripWS(last.asTags["d"]))
	for i, set := range st.sets {
		cv := strings.ToLower(stripWS(set.asTags["cv"]))
		if cv == "fail" {
			return fail("ARC-Seal i=%d reports cv=fail", i+1)
		}
		want := "pass"
		if i == 0 {
			want = "none"
		}
		if cv != want {
			return fail("ARC-Seal i=%d has cv=%q, want %q", i+1, cv, want)
		}
	}
	// Prepare hashing the body for AMS(N).
	tags := last.amsTags
	for _, t := range []string{"a", "b", "bh", "d", "h", "s"} {
		if _, ok := tags[t]; !ok {
			return fail("ARC-Message-Signature i=%d lacks %s=", maxI, t)
		}
	}
	if _, ok := tags["l"]; ok {
		return fail("ARC-Message-Signature i=%d has an l= body length limit", maxI)
	}
	_, bodyRelaxed, err := parseCanon(tags["c"])
	if err != nil {
		return fail("ARC-Message-Signature i=%d: %v", maxI, err)
	}
	st.body = newBodyHasher(bodyRelaxed)
	return st
}

// bodyWriter returns where the body must be written, or nil when the result
// does not depend on the body.
func (st *arcState) bodyWriter() *bodyHasher {
	if st.done {
		return nil
	}
	return st.body
}

// finish completes validation once the whole body went through bodyWriter.
func (st *arcState) finish(ctx context.Context, keys *keyFetcher) ARCResult {
	if st.done {
		return st.res
	}
	n := len(st.sets)
	fail := func(format string, args ...any) ARCResult {
		st.res.Result = ARCFail
		st.res.Reason = fmt.Sprintf(format, args...)
		return st.res
	}

	// Fetch every key the chain needs concurrently (a long chain must not
	// cost N sequential lookup timeouts); the checks below hit the memo.
	names := []string{keyName(st.sets[n-1].amsTags)}
	for _, s := range st.sets {
		names = append(names, keyName(s.asTags))
	}
	keys.prefetch(ctx, names)

	// AMS(N).
	last := st.sets[n-1]
	if err := st.verifyAMS(ctx, keys, last); err != nil {
		if err.temporary {
			st.res.Result = ARCTempError
			st.res.Reason = fmt.Sprintf("ARC-Message-Signature i=%d: %v", n, err)
			return st.res
		}
		return fail("ARC-Message-Signature i=%d: %v", n, err)
	}
	// AS(N) .. AS(1).
	for k := n; k >= 1; k-- {
		if err := st.verifySeal(ctx, keys, k); err != nil {
			if err.temporary {
				st.res.Result = ARCTempError
				st.res.Reason = fmt.Sprintf("ARC-Seal i=%d: %v", k, err)
				return st.res
			}
			return fail("ARC-Seal i=%d: %v", k, err)
		}
	}

	st.res.Result = ARCPass
	st.res.Reason = ""
	st.res.OriginalDKIM = parseAARDKIM(last.aar)
	return st.res
}

type verifyError struct {
	msg       string
	temporary bool
}

func (e *verifyError) Error() string { return e.msg }

func verrf(format string, args ...any) *verifyError {
	return &verifyError{msg: fmt.Sprintf(format, args...)}
}

func keyName(tags map[string]string) string {
	return stripWS(tags["s"]) + "._domainkey." + stripWS(tags["d"])
}

func (st *arcState) fetchKey(ctx context.Context, keys *keyFetcher, tags map[string]string) (*publicKey, *verifyError) {
	if stripWS(tags["s"]) == "" || stripWS(tags["d"]) == "" {
		return nil, verrf("missing d= or s=")
	}
	k, err, temp := keys.key(ctx, keyName(tags))
	if err != nil {
		return nil, &verifyError{msg: "key " + keyName(tags) + ": " + err.Error(), temporary: temp}
	}
	return k, nil
}

func (st *arcState) verifyAMS(ctx context.Context, keys *keyFetcher, set arcSet) *verifyError {
	tags := set.amsTags
	headerRelaxed, _, err := parseCanon(tags["c"])
	if err != nil {
		return verrf("%v", err)
	}
	wantBH, err := decodeB64(tags["bh"])
	if err != nil {
		return verrf("malformed bh=")
	}
	if subtle.ConstantTimeCompare(st.body.Sum(), wantBH) != 1 {
		return verrf("body hash did not verify")
	}
	sig, err := decodeB64(tags["b"])
	if err != nil {
		return verrf("malformed b=")
	}
	key, verr := st.fetchKey(ctx, keys, tags)
	if verr != nil {
		return verr
	}
	digest := headerDigest(st.fields, set.ams, splitColonList(tags["h"]), headerRelaxed)
	if err := checkSignature(tags["a"], key, digest, sig); err != nil {
		return verrf("%v", err)
	}
	return nil
}

// headerDigest is the SHA-256 of the header part of a DKIM-style signature
// (DKIM-Signature or ARC-Message-Signature, RFC 6376 §3.7): the fields named
// in h=, picked bottom-up, then the signature field itself with b= emptied
// and no final CRLF.
func headerDigest(fields []string, sigField string, headerKeys []string, relaxed bool) []byte {
	h := sha256.New()
	var buf []byte
	picker := newHeaderPicker(fields)
	for _, name := range headerKeys {
		if f, ok := picker.pick(name); ok {
			buf = appendCanonHeader(buf[:0], f, relaxed)
			h.Write(buf)
		}
	}
	buf = appendCanonHeader(buf[:0], removeBValue(sigField), relaxed)
	h.Write(bytes.TrimRight(buf, crlf))
	return h.Sum(nil)
}

func (st *arcState) verifySeal(ctx context.Context, keys *keyFetcher, k int) *verifyError {
	tags := st.sets[k-1].asTags
	for _, t := range []string{"a", "b", "cv", "d", "s"} {
		if _, ok := tags[t]; !ok {
			return verrf("lacks %s=", t)
		}
	}
	if _, ok := tags["h"]; ok {
		return verrf("h= is not allowed in an ARC-Seal")
	}
	sig, err := decodeB64(tags["b"])
	if err != nil {
		return verrf("malformed b=")
	}
	key, verr := st.fetchKey(ctx, keys, tags)
	if verr != nil {
		return verr
	}
	if err := checkSignature(tags["a"], key, sealDigest(st.sets, k), sig); err != nil {
		return verrf("%v", err)
	}
	return nil
}

// sealDigest is the SHA-256 an ARC-Seal of instance k signs (RFC 8617
// §5.1.1): AAR(i), AMS(i), AS(i) for i = 1..k, relaxed, with AS(k)'s b=
// emptied and no final CRLF.
func sealDigest(sets []arcSet, k int) []byte {
	h := sha256.New()
	var buf []byte
	for i := 1; i <= k; i++ {
		s := sets[i-1]
		buf = appendCanonHeader(buf[:0], s.aar, true)
		buf = appendCanonHeader(buf, s.ams, true)
		if i < k {
			buf = appendCanonHeader(buf, s.as, true)
		} else {
			buf = bytes.TrimRight(appendCanonHeader(buf, removeBValue(s.as), true), crlf)
		}
		h.Write(buf)
	}
	return h.Sum(nil)
}

// parseAARDKIM extracts the dkim results of an ARC-Authentication-Results
// field. Each result is parsed on its own (after dropping RFC 5322 comments,
// which authres.Parse does not understand) so one odd entry does not hide
// the others.
func parseAARDKIM(aar string) []Result {
	v := fieldValue(aar)
	if _, rest, ok := aarInstance(v); ok {
		v = rest
	}
	v = stripComments(v)
	parts := strings.Split(v, ";")
	if len(parts) < 2 {
		return nil
	}
	authserv := strings.TrimSpace(parts[0])
	var out []Result
	for _, p := range parts[1:] {
		if strings.TrimSpace(p) == "" {
			continue
		}
		_, results, err := authres.Parse(authserv + "; " + p)
		if err != nil {
			continue
		}
		for _, r := range results {
			d, ok := r.(*authres.DKIMResult)
			if !ok {
				continue
			}
			res := Result{
				Result:     string(d.Value),
				Reason:     d.Reason,
				Identifier: d.Identifier,
				// Every trailing dot: "d=.." must not leave "." behind (the
				// fuzzer's find); a real domain has at most the root's one.
				Domain: strings.ToLower(strings.TrimRight(d.Domain, ".")),
			}
			if res.Domain == "" {
				if at := strings.LastIndexByte(d.Identifier, '@'); at >= 0 {
					res.Domain = strings.ToLower(strings.TrimRight(d.Identifier[at+1:], "."))
				}
			}
			out = append(out, res)
		}
	}
	return out
}

// stripComments removes (possibly nested) parenthesised comments outside
// quoted strings.
func stripComments(s string) string {
	var b strings.Builder
	depth := 0
	quoted := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s) && (quoted || depth > 0):
			if depth == 0 {
				b.WriteByte(c)
				b.WriteByte(s[i+1])
			}
			i++
		case c == '"' && depth == 0:
			quoted = !quoted
			b.WriteByte(c)
		case c == '(' && !quoted:
			depth++
		case c == ')' && !quoted && depth > 0:
			depth--
			if depth == 0 {
				b.WriteByte(' ')
			}
		default:
			if depth == 0 {
				b.WriteByte(c)
			}
		}
	}
	return b.String()
}
