package trust

import (
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// go-msgauth's header reader (dkim.readHeader, v0.7.0) builds each field by
// appending every continuation line to the field's string, which copies the
// whole field each time: quadratic in the number of lines. One 1 MiB
// References folded over 17,000 short lines cost 7 s of CPU per Verify; any
// candidate holding one thread token could send such a message, and every
// DKIM-Signature field, valid or not, makes Verify run go-msgauth.
//
// So Verify hands go-msgauth every field folded over more than
// MaxFoldedLines lines unfolded (each CRLF inside the field removed, the
// whitespace after it kept). Under relaxed header canonicalisation that is
// the same field: relaxed unfolds and turns each run of whitespace (CR and
// LF included) into one space. Under simple canonicalisation it is not, so
// a simple signature covering such a field (named in its h=, or the
// signature field itself) is not verified: its result is "policy" with
// tooFoldedReason. References grows one line per message of the thread,
// so only a thread of over 30 messages signed with simple header
// canonicalisation (the large providers sign relaxed) loses its
// verification. What stays with go-msgauth, fields of at most
// MaxFoldedLines lines, costs at most MaxFoldedLines/2 copies of the
// header: a 1 MiB header made of 32-line fields verifies in 2-3x the time
// of the same bytes unfolded (50 lines: 5-10x; 100 lines: 11x).
//
// A field whose name is folded is unfolded whole: its name, trimmed, still
// holds whitespace, which no name of an h= list does (go-msgauth strips it),
// so no signature can cover it and it cannot be a DKIM-Signature; its bytes
// matter to no hash.

// MaxFoldedLines is the number of lines (continuation lines included) a
// header field may have and still reach go-msgauth as received.
const MaxFoldedLines = 32

var tooFoldedReason = fmt.Sprintf("simple header canonicalization of a field folded over more than %d lines is not verified", MaxFoldedLines)

// foldedLines is the number of lines of a raw field (CRLF-terminated lines,
// as readHeaderInto makes them).
func foldedLines(f string) int { return strings.Count(f, crlf) }

// MaxSignedFields is the most h= entries a DKIM-Signature may list and
// still be verified. go-msgauth's picker scans the whole header for each
// entry (quadratic: an h= naming one field 8,000 times over 8,000 such
// fields took 0.5 s, and a 1 MiB header holds 100,000 of them); real
// signatures list 5 to 40, oversigning included. One listing more gets
// "policy" (tooManySignedReason) and go-msgauth never hashes for it.
const MaxSignedFields = 100

var tooManySignedReason = fmt.Sprintf("h= lists more than %d header fields", MaxSignedFields)

// neutralSignature replaces, in go-msgauth's view, a DKIM-Signature it
// must not verify: v=0 makes it fail at once, before any hashing.
const neutralSignature = "DKIM-Signature: v=0; h=from\r\n"

// msgauthView returns the header as go-msgauth must get it to verify sigs
// (the first DKIM-Signature fields, at most MaxSignatures of them, in
// header order), and for each of sigs the reason it gets "policy" instead
// of go-msgauth's result ("" for none). go-msgauth's cost is the number
// of h= entries times the number of fields (see MaxSignedFields) plus, per
// field, its number of lines times its size (see MaxFoldedLines); the view
// bounds both without changing any result:
//   - it holds those signature fields, and of every other field only the
//     instances some signature can pick: for a name listed k times in an
//     h=, the k bottom-most instances (RFC 6376 §5.4.2 picks bottom-up);
//     the others can contribute to no hash;
//   - a signature listing over MaxSignedFields names is neutralised
//     (neutralSignature);
//   - a field of over MaxFoldedLines lines is unfolded, and a simple
//     signature covering it is not verified.
//
// The view is fields itself when nothing is to drop or change.
func msgauthView(fields []string, sigs []string) ([]string, []string) {
	policy := make([]string, len(sigs))
	need := map[string]int{} // foldKey(name) -> instances some signature may pick
	simpleSig := make([]bool, len(sigs))
	for i, sig := range sigs {
		keys, c, ok := msgauthTags(sig)
		if !ok {
			continue // go-msgauth fails it before hashing any header
		}
		if len(keys) > MaxSignedFields {
			policy[i] = tooManySignedReason
			continue
		}
		headerRelaxed, _, err := parseCanon(c)
		simpleSig[i] = err == nil && !headerRelaxed
		count := map[string]int{}
		for _, k := range keys {
			count[foldKey(k)]++
		}
		for k, n := range count {
			need[k] = max(need[k], n)
		}
	}

	view := make([]string, 0, min(len(fields), 64))
	unfolded := map[string]bool{}
	changed := false
	seen := map[string]int{} // instances met so far, bottom-up
	sigAt := map[int]int{}   // index in fields -> index in sigs
	for i, n := 0, 0; i < len(fields) && n < len(sigs); i++ {
		if equalLower(fieldName(fields[i]), "dkim-signature") {
			sigAt[i] = n
			n++
		}
	}
	// Bottom-up, then reversed.
	for i := len(fields) - 1; i >= 0; i-- {
		f := fields[i]
		k := foldKey(fieldName(f))
		pickable := seen[k] < need[k]
		seen[k]++
		si, isSig := sigAt[i]
		if !pickable && !isSig {
			changed = true
			continue
		}
		if isSig && policy[si] != "" {
			f = neutralSignature
		} else if foldedLines(f) > MaxFoldedLines {
			f = unfold(f)
			unfolded[k] = true
			if isSig && simpleSig[si] {
				policy[si] = tooFoldedReason
			}
		}
		changed = changed || f != fields[i]
		view = append(view, f)
	}
	if !changed {
		return fields, policy
	}
	slices.Reverse(view)
	if len(unfolded) > 0 {
		for i, sig := range sigs {
			if !simpleSig[i] || policy[i] != "" {
				continue
			}
			keys, _, _ := msgauthTags(sig)
			for _, name := range keys {
				if unfolded[foldKey(name)] {
					policy[i] = tooFoldedReason
					break
				}
			}
		}
	}
	return view, policy
}

// msgauthTags returns the h= names and the c= value of a DKIM-Signature as
// go-msgauth parses them (v0.7.0: parseHeaderParams, parseTagList), or
// false when go-msgauth refuses its tag-list (and so hashes nothing).
// It runs for every verified signature, so it makes only the names' slice
// (and their strings when they hold whitespace); FuzzMsgauthTags checks
// it against the map-and-strings.Map version it replaced.
func msgauthTags(sig string) (keys []string, c string, ok bool) {
	_, v, _ := strings.Cut(sig, ":")
	var seen tagSet
	var h string
	for rest, more := strings.TrimSpace(v), true; more; {
		var spec string
		spec, rest, more = strings.Cut(rest, ";")
		k, val, ok := strings.Cut(spec, "=")
		if !ok {
			if strings.TrimSpace(spec) == "" {
				continue
			}
			return nil, "", false
		}
		k = strings.TrimSpace(k)
		if !seen.add(k) {
			return nil, "", false
		}
		switch k {
		case "h":
			h = strings.TrimSpace(val)
		case "c":
			c = strings.TrimSpace(val)
		}
	}
	keys = make([]string, 0, strings.Count(h, ":")+1)
	for rest, more := h, true; more; {
		var name string
		name, rest, more = strings.Cut(rest, ":")
		keys = append(keys, stripSpace(name))
	}
	return keys, c, true
}

// tagSet is a set of tag names: a few in a slice (a signature has about
// ten tags), a map once there are more.
type tagSet struct {
	few  [16]string
	n    int
	many map[string]bool
}

// add adds k and reports whether it was new.
func (s *tagSet) add(k string) bool {
	if s.many != nil {
		if s.many[k] {
			return false
		}
		s.many[k] = true
		return true
	}
	if slices.Contains(s.few[:s.n], k) {
		return false
	}
	if s.n < len(s.few) {
		s.few[s.n] = k
		s.n++
		return true
	}
	s.many = make(map[string]bool, 2*len(s.few))
	for _, f := range s.few {
		s.many[f] = true
	}
	s.many[k] = true
	return true
}

// stripSpace is s without the runes unicode.IsSpace reports, as
// go-msgauth's stripWhitespace (strings.Map) makes it: s itself when
// there are none; strings.Map for non-ASCII s (other spaces, and invalid
// UTF-8 becomes U+FFFD).
func stripSpace(s string) string {
	spaces := 0
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= utf8.RuneSelf:
			return strings.Map(func(r rune) rune {
				if unicode.IsSpace(r) {
					return -1
				}
				return r
			}, s)
		case c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r':
			spaces++
		}
	}
	if spaces == 0 {
		return s
	}
	b := make([]byte, 0, len(s)-spaces)
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r') {
			b = append(b, c)
		}
	}
	return string(b)
}

// unfold removes the line ends inside a raw field, keeping its final CRLF.
// The whitespace that began each continuation line stays, so the words of
// the value, and thus its relaxed canonical form, are unchanged (when the
// name is not folded; see above for when it is).
func unfold(f string) string {
	body := strings.TrimSuffix(f, crlf)
	var b strings.Builder
	b.Grow(len(body) + len(crlf))
	for {
		i := strings.Index(body, crlf)
		if i < 0 {
			break
		}
		b.WriteString(body[:i])
		body = body[i+len(crlf):]
	}
	b.WriteString(body)
	b.WriteString(crlf)
	return b.String()
}
