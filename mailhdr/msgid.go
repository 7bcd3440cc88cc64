// Package mailhdr reads, leniently and within fixed bounds, the few header
// and MIME facts the syncrelay router decides on: the msg-ids in References
// and In-Reply-To, whether a message is an automatic reply, RFC 3464
// delivery status notifications, and MIME nesting depth.
package mailhdr

import (
	"strings"
	"unicode/utf8"
)

// MaxMsgIDLen is the longest id (without angle brackets) that is kept.
const MaxMsgIDLen = 998

// MsgIDs parses a References / In-Reply-To value leniently: it keeps every
// well-formed <left@right>, skips malformed entries (SPEC §3: a malformed
// entry is skipped, not fatal), handles folding white space, comments
// "(...)", quoted phrases, and comma- or space-separated lists, and
// lowercases the domain part (ASCII only). Ids are returned in order,
// WITHOUT angle brackets, duplicates kept. If the value contains no '<' at
// all, bare words of the form left@right are accepted too (some mailers drop
// the brackets). Every id is returned however many there are (SPEC §3: the
// newest References entries are at the end; the header size limit bounds
// v), ids longer than MaxMsgIDLen bytes are ignored, and the work is linear
// in len(v).
func MsgIDs(v string) []string {
	var out []string
	bare := indexByte(v, '<') < 0
	noQuotes, noComments := false, false // set once an unterminated one was seen
	i := 0
	for i < len(v) {
		c := v[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == ',' || c == ';':
			i++
		case c == '(' && !noComments:
			end := skipComment(v, i)
			if end < 0 {
				noComments = true
				i++
				continue
			}
			i = end
		case c == '"' && !noQuotes:
			end := skipQuoted(v, i)
			if end < 0 {
				noQuotes = true
				i++
				continue
			}
			i = end
		case c == '<':
			// The id ends at the next '>'; a second '<' first means this
			// entry is malformed, and scanning restarts at that '<'.
			j := i + 1
			for j < len(v) && v[j] != '>' && v[j] != '<' {
				j++
			}
			if j >= len(v) {
				return out // unterminated: nothing more to find
			}
			if v[j] == '<' {
				i = j
				continue
			}
			if id, ok := normID(v[i+1 : j]); ok {
				out = append(out, id)
			}
			i = j + 1
		default:
			// A bare word: up to the next separator.
			j := i
			for j < len(v) && !isWordEnd(v[j]) {
				j++
			}
			if j == i { // a lone '>', ')' or an ignored '(' / '"'
				j++
			}
			if bare {
				if id, ok := normID(v[i:j]); ok {
					out = append(out, id)
				}
			}
			i = j
		}
	}
	return out
}

func isWordEnd(c byte) bool {
	switch c {
	case ' ', '\t', '\r', '\n', ',', ';', '<', '>', '(', ')', '"':
		return true
	}
	return false
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// skipComment returns the index just after the comment starting at v[i]
// ('('), honouring nesting and quoted-pairs, or -1 if it is unterminated.
func skipComment(v string, i int) int {
	depth := 0
	for ; i < len(v); i++ {
		switch v[i] {
		case '\\':
			i++
		case '(':
			depth++
		case ')':
			depth--
			if depth == 0 {
				return i + 1
			}
		}
	}
	return -1
}

// skipQuoted returns the index just after the quoted string starting at v[i]
// ('"'), or -1 if it is unterminated.
func skipQuoted(v string, i int) int {
	for i++; i < len(v); i++ {
		switch v[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return -1
}

// NormalizeMsgID normalizes one msg-id, given with or without angle
// brackets and surrounding white space: folding white space and comments
// outside quoted strings are removed, the domain is lowercased (ASCII), and
// the result is returned without brackets. ok is false if s is not a single
// well-formed left@right id of at most MaxMsgIDLen bytes.
func NormalizeMsgID(s string) (string, bool) {
	s = trimWSP(s)
	if len(s) >= 2 && s[0] == '<' && s[len(s)-1] == '>' {
		s = s[1 : len(s)-1]
	} else if len(s) > 0 && (s[0] == '<' || s[len(s)-1] == '>') {
		return "", false
	}
	return normID(s)
}

func trimWSP(s string) string {
	for len(s) > 0 && isWSP(s[0]) {
		s = s[1:]
	}
	for len(s) > 0 && isWSP(s[len(s)-1]) {
		s = s[:len(s)-1]
	}
	return s
}

func isWSP(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// normID validates and normalizes the inside of <...>.
func normID(s string) (string, bool) {
	if id, ok, decided := plainID(s); decided {
		return id, ok
	}
	return fullNormID(s)
}

// plainID decides the ids almost all mail carries, one left@right of
// printable ASCII without quotes, brackets, comments, backslashes or
// white space, in one pass (fullNormID makes five: 2 to 3 % of the
// discard path's CPU); decided is false for anything else. Such an id
// needs no stripping; its left part is valid as it is, and its right part
// is a dot-atom or invalid. FuzzPlainID checks it against fullNormID.
func plainID(s string) (id string, ok, decided bool) {
	if len(s) == 0 || len(s) > MaxMsgIDLen {
		return "", false, false
	}
	at, upper := -1, false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c <= ' ' || c >= 0x7f || c == '"' || c == '(' || c == ')' || c == '[' || c == ']' ||
			c == '<' || c == '>' || c == '\\':
			return "", false, false
		case c == '@':
			if at >= 0 {
				return "", false, false // a second '@': fullNormID decides
			}
			at = i
		case at >= 0 && 'A' <= c && c <= 'Z':
			upper = true
		}
	}
	if at <= 0 || at == len(s)-1 {
		return "", false, true
	}
	right := s[at+1:]
	if right[0] == '.' || right[len(right)-1] == '.' || strings.Contains(right, "..") ||
		strings.ContainsAny(right, ":;,") {
		return "", false, true
	}
	if !upper {
		return s, true, true
	}
	return s[:at+1] + strings.ToLower(right), true, true
}

// fullNormID is normID for any id: quoted parts, domain literals, comments
// and folding white space.
func fullNormID(s string) (string, bool) {
	if len(s) == 0 {
		return "", false
	}
	// Strip white space and comments outside quoted strings and domain
	// literals (obsolete syntax allows CFWS around the parts).
	buf := make([]byte, 0, len(s))
	inQuote, inLiteral := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQuote:
			if c == '\\' && i+1 < len(s) {
				if e := s[i+1]; e < 0x20 || e == 0x7f || e == '<' || e == '>' {
					return "", false
				}
				buf = append(buf, c, s[i+1])
				i++
				continue
			}
			if c == '"' {
				inQuote = false
			}
		case inLiteral:
			if c == ']' {
				inLiteral = false
			}
		case c == '"':
			inQuote = true
		case c == '[':
			inLiteral = true
		case isWSP(c):
			continue
		case c == '(':
			end := skipComment(s, i)
			if end < 0 {
				return "", false
			}
			i = end - 1
			continue
		}
		if c < 0x20 || c == 0x7f || c == '<' || c == '>' {
			return "", false
		}
		if (c == ' ' || c == '\t') && !inQuote {
			return "", false
		}
		buf = append(buf, c)
	}
	if inQuote || inLiteral || len(buf) == 0 || len(buf) > MaxMsgIDLen {
		return "", false
	}

	// Split at the '@' that starts the domain: the last '@' outside a
	// quoted local part and outside a domain literal.
	at := -1
	inQuote, inLiteral = false, false
	for i := 0; i < len(buf); i++ {
		switch c := buf[i]; {
		case inQuote:
			if c == '\\' {
				i++
			} else if c == '"' {
				inQuote = false
			}
		case inLiteral:
			if c == ']' {
				inLiteral = false
			}
		case c == '"':
			inQuote = true
		case c == '[':
			inLiteral = true
		case c == '@':
			at = i
		}
	}
	if at <= 0 || at == len(buf)-1 {
		return "", false
	}
	if !validLeft(buf[:at]) || !validRight(buf[at+1:]) || !utf8.Valid(buf) {
		return "", false
	}
	for i := at + 1; i < len(buf); i++ {
		if c := buf[i]; c >= 'A' && c <= 'Z' {
			buf[i] = c + 'a' - 'A'
		}
	}
	return string(buf), true
}

// specials that may not appear unquoted in an id (RFC 5322 specials minus
// '.', '@' handled by the caller; '[' ']' only in domain literals).
func isIDSpecial(c byte) bool {
	switch c {
	case '(', ')', '<', '>', '[', ']', ':', ';', '@', '\\', ',', '"':
		return true
	}
	return false
}

// validLeft accepts any local part without unquoted '<', '>', '@', white
// space or control characters: provider-assigned ids are not always RFC 5322
// dot-atoms, and a lenient left side cannot cause a false match.
func validLeft(b []byte) bool {
	inQuote := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case c < ' ' || c == 0x7f:
			return false
		case inQuote:
			if c == '\\' {
				i++
			} else if c == '"' {
				inQuote = false
			}
		case c == '"':
			inQuote = true
		case c == '<' || c == '>' || c == '@' || c == ' ':
			return false
		}
	}
	return !inQuote
}

func validRight(b []byte) bool {
	if b[0] == '[' {
		if b[len(b)-1] != ']' || len(b) < 3 {
			return false
		}
		for _, c := range b[1 : len(b)-1] {
			if c == '[' || c == ']' || c == '\\' || c == '<' || c == '>' || c <= ' ' || c == 0x7f {
				return false
			}
		}
		return true
	}
	if b[0] == '.' || b[len(b)-1] == '.' {
		return false
	}
	for i, c := range b {
		if isIDSpecial(c) || c <= ' ' || c == 0x7f {
			return false
		}
		if c == '.' && i > 0 && b[i-1] == '.' {
			return false
		}
	}
	return true
}
