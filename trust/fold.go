package trust

import (
	"fmt"
	"strings"
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

// unfoldForMsgauth returns the fields as go-msgauth must get them, and for
// each of sigs (the DKIM-Signature fields go-msgauth will verify, in header
// order) whether it is a simple signature covering an unfolded field.
// fields itself is returned when no field is over the limit (the usual
// case: no allocation).
func unfoldForMsgauth(fields, sigs []string) ([]string, []bool) {
	var out []string
	var folded map[string]bool // lower-case names of the unfolded fields
	for i, f := range fields {
		if foldedLines(f) <= MaxFoldedLines {
			continue
		}
		if out == nil {
			out = append(make([]string, 0, len(fields)), fields...)
			folded = map[string]bool{}
		}
		out[i] = unfold(f)
		folded[strings.ToLower(fieldName(f))] = true
	}
	if out == nil {
		return fields, make([]bool, len(sigs))
	}
	tooFolded := make([]bool, len(sigs))
	for i, sig := range sigs {
		tags, err := parseTags(rawValue(sig))
		if err != nil {
			continue // go-msgauth fails it before hashing any header
		}
		headerRelaxed, _, err := parseCanon(tags["c"])
		if err != nil || headerRelaxed {
			continue
		}
		if foldedLines(sig) > MaxFoldedLines {
			tooFolded[i] = true
			continue
		}
		for _, name := range splitColonList(tags["h"]) {
			if folded[strings.ToLower(name)] {
				tooFolded[i] = true
				break
			}
		}
	}
	return out, tooFolded
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
