package dnsres

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// Zone is a static set of TXT records loaded from a file. It implements
// Resolver: names it does not hold answer a permanent not-found error.
type Zone struct {
	path    string
	records map[string][]string
}

// LoadZone reads a zone file for tests and offline QA. The format is one
// record per line:
//
//	name [ttl] [IN] TXT "string" ["string" ...]
//
// Several quoted strings on a line are concatenated into one record (as DNS
// does for the character-strings of one TXT record); a name given on several
// lines has several records. Inside quotes \" and \\ are escapes. Text after
// '#' or ';' outside quotes is a comment; blank lines are ignored. A record
// may continue over several lines inside ( ), as in BIND zone files. Names
// are case-insensitive and may end with a dot. Errors name file:line.
func LoadZone(path string) (*Zone, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("dnsres: zone file: %w", err)
	}
	defer f.Close()
	z := &Zone{path: path, records: make(map[string][]string)}

	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	var (
		toks      []token
		startLine int
		depth     int
		lineNo    int
	)
	errorf := func(line int, format string, args ...any) error {
		return fmt.Errorf("%s:%d: %s", path, line, fmt.Sprintf(format, args...))
	}
	for sc.Scan() {
		lineNo++
		lt, d, err := tokenizeZoneLine(sc.Text(), depth)
		if err != nil {
			return nil, errorf(lineNo, "%v", err)
		}
		if depth == 0 {
			startLine = lineNo
		}
		toks = append(toks, lt...)
		depth = d
		if depth > 0 {
			continue
		}
		if len(toks) == 0 {
			continue
		}
		if err := z.addRecord(toks); err != nil {
			return nil, errorf(startLine, "%v", err)
		}
		toks = toks[:0]
	}
	if err := sc.Err(); err != nil {
		return nil, errorf(lineNo+1, "%v", err)
	}
	if depth > 0 {
		return nil, errorf(startLine, "unclosed '('")
	}
	return z, nil
}

type token struct {
	text   string
	quoted bool
}

// tokenizeZoneLine splits one line into tokens, tracking ( ) depth across
// lines. Parentheses are dropped from the token stream.
func tokenizeZoneLine(line string, depth int) ([]token, int, error) {
	var toks []token
	for i := 0; i < len(line); {
		c := line[i]
		switch {
		case c == ' ' || c == '\t' || c == '\r':
			i++
		case c == '#' || c == ';':
			return toks, depth, nil
		case c == '(':
			depth++
			i++
		case c == ')':
			if depth == 0 {
				return nil, 0, fmt.Errorf("unbalanced ')'")
			}
			depth--
			i++
		case c == '"':
			var b strings.Builder
			i++
			closed := false
			for i < len(line) {
				if line[i] == '\\' && i+1 < len(line) {
					b.WriteByte(line[i+1])
					i += 2
					continue
				}
				if line[i] == '"' {
					closed = true
					i++
					break
				}
				b.WriteByte(line[i])
				i++
			}
			if !closed {
				return nil, 0, fmt.Errorf("unterminated quoted string")
			}
			toks = append(toks, token{text: b.String(), quoted: true})
		default:
			j := i
			for j < len(line) && !strings.ContainsRune(" \t\r#;()\"", rune(line[j])) {
				j++
			}
			toks = append(toks, token{text: line[i:j]})
			i = j
		}
	}
	return toks, depth, nil
}

func (z *Zone) addRecord(toks []token) error {
	if toks[0].quoted {
		return fmt.Errorf("expected a name, got a quoted string")
	}
	name, err := normalizeName(toks[0].text)
	if err != nil {
		return fmt.Errorf("invalid name %q", toks[0].text)
	}
	i := 1
	// Optional TTL and class, in either order, as in RFC 1035 master files.
	for ; i < len(toks) && !toks[i].quoted; i++ {
		t := toks[i].text
		if _, err := strconv.ParseUint(t, 10, 32); err == nil {
			continue
		}
		if strings.EqualFold(t, "IN") {
			continue
		}
		break
	}
	if i >= len(toks) || toks[i].quoted {
		return fmt.Errorf("missing record type after %q (want TXT)", toks[0].text)
	}
	if !strings.EqualFold(toks[i].text, "TXT") {
		return fmt.Errorf("unsupported record type %q (only TXT)", toks[i].text)
	}
	i++
	if i >= len(toks) {
		return fmt.Errorf("TXT record for %q has no value", name)
	}
	var b strings.Builder
	for ; i < len(toks); i++ {
		if !toks[i].quoted {
			return fmt.Errorf("TXT value must be quoted: %q", toks[i].text)
		}
		b.WriteString(toks[i].text)
	}
	z.records[name] = append(z.records[name], b.String())
	return nil
}

// LookupTXT implements Resolver.
func (z *Zone) LookupTXT(_ context.Context, name string) ([]string, error) {
	key, err := normalizeName(name)
	if err != nil {
		return nil, err
	}
	txts, ok := z.records[key]
	if !ok {
		return nil, notFound(key, "no such host in zone file "+z.path, "")
	}
	return cloneStrings(txts), nil
}

// Len is the number of names in the zone.
func (z *Zone) Len() int { return len(z.records) }
