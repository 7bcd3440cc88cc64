package config

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"time"

	toml "github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// Error is one problem found in a configuration. Load, Parse and Validate
// return one *Error per problem, joined with errors.Join.
type Error struct {
	File string // config file name as given; "" when not from a file
	Line int    // 1-based line in File; 0 when unknown
	Key  string // dotted key ("smtp.listen") or environment variable; "" if none
	Msg  string // what is wrong and what to do

	keyInMsg bool // Msg already names Key
}

// Error formats the problem as "file:line: key: message".
func (e *Error) Error() string {
	var b strings.Builder
	if e.File != "" {
		b.WriteString(e.File)
		if e.Line > 0 {
			fmt.Fprintf(&b, ":%d", e.Line)
		}
		b.WriteString(": ")
	}
	if e.Key != "" && !e.keyInMsg {
		b.WriteString(e.Key)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// source records where a Config came from.
type source struct {
	name  string         // file name as given, for messages
	dir   string         // absolute directory of the file, for relative paths
	lines map[string]int // dotted key (or section) -> line where it is set
}

func newSource(name string) *source {
	dir := filepath.Dir(name)
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	return &source{name: name, dir: dir, lines: map[string]int{}}
}

// abs resolves p relative to the config file's directory.
func (s *source) abs(p string) string {
	if s == nil || p == "" || filepath.IsAbs(p) {
		return p
	}
	return filepath.Join(s.dir, p)
}

// errAt builds an Error for key, with the file and the line of key when c
// was parsed from a file that sets it.
func (c *Config) errAt(key, format string, args ...any) *Error {
	e := &Error{Key: key, Msg: fmt.Sprintf(format, args...)}
	if c.src != nil {
		e.File = c.src.name
		e.Line = c.src.lines[key]
	}
	return e
}

// ---- schema ----

type fieldKind int

const (
	kTable fieldKind = iota
	kString
	kInt
	kDuration
)

// field is one node of the key schema derived from the Config struct.
type field struct {
	path     string // dotted
	name     string // last part
	kind     fieldKind
	children map[string]*field
}

var durationType = reflect.TypeOf(Duration{})

var schema = sync.OnceValue(func() *field {
	root := buildSchema(reflect.TypeOf(Config{}), "", "")
	// The tenant exists only for Microsoft.
	delete(root.children["providers"].children["google"].children, "tenant")
	return root
})

func buildSchema(t reflect.Type, path, name string) *field {
	f := &field{path: path, name: name}
	switch {
	case t == durationType:
		f.kind = kDuration
	case t.Kind() == reflect.String:
		f.kind = kString
	case t.Kind() == reflect.Int || t.Kind() == reflect.Int64:
		f.kind = kInt
	case t.Kind() == reflect.Struct:
		f.kind = kTable
		f.children = map[string]*field{}
		for i := 0; i < t.NumField(); i++ {
			sf := t.Field(i)
			tag, _, _ := strings.Cut(sf.Tag.Get("toml"), ",")
			if !sf.IsExported() || tag == "" || tag == "-" {
				continue
			}
			f.children[tag] = buildSchema(sf.Type, joinKey(path, tag), tag)
		}
	default:
		panic("config: no schema kind for " + t.String())
	}
	return f
}

func joinKey(prefix, name string) string {
	if prefix == "" {
		return name
	}
	return prefix + "." + name
}

// Keys returns every dotted key the config file accepts, sorted.
func Keys() []string {
	var keys []string
	var walk func(f *field)
	walk = func(f *field) {
		for _, c := range f.children {
			if c.kind == kTable {
				walk(c)
			} else {
				keys = append(keys, c.path)
			}
		}
	}
	walk(schema())
	sort.Strings(keys)
	return keys
}

// ---- decoding ----

// decode checks data against the schema (reporting every unknown key and
// every value of the wrong type with its line), then decodes it into c.
func decode(data []byte, src *source, c *Config) error {
	ch := &checker{src: src}
	ch.p.Reset(data)
	ch.run()
	if perr := ch.p.Error(); perr != nil {
		// A syntax error: let the decoder describe it with its position.
		var m map[string]any
		if err := toml.Unmarshal(data, &m); err != nil {
			return src.decodeError(err)
		}
		return &Error{File: src.name, Msg: perr.Error()}
	}
	if len(ch.errs) > 0 {
		return errors.Join(ch.errs...)
	}
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return src.decodeError(err)
	}
	return nil
}

// decodeError turns a go-toml error into Errors naming file, line and key.
func (s *source) decodeError(err error) error {
	var sme *toml.StrictMissingError
	if errors.As(err, &sme) {
		errs := make([]error, 0, len(sme.Errors))
		for i := range sme.Errors {
			e := &sme.Errors[i]
			line, _ := e.Position()
			key := strings.Join(e.Key(), ".")
			errs = append(errs, &Error{File: s.name, Line: line, Key: key,
				Msg: fmt.Sprintf("unknown key %q", key), keyInMsg: true})
		}
		return errors.Join(errs...)
	}
	var de *toml.DecodeError
	if errors.As(err, &de) {
		line, _ := de.Position()
		return &Error{File: s.name, Line: line, Key: strings.Join(de.Key(), "."),
			Msg: strings.TrimPrefix(de.Error(), "toml: ")}
	}
	return &Error{File: s.name, Msg: strings.TrimPrefix(err.Error(), "toml: ")}
}

// checker walks the document's syntax tree against the schema.
type checker struct {
	p    unstable.Parser
	src  *source
	errs []error
}

func (ch *checker) errorf(line int, key string, keyInMsg bool, format string, args ...any) {
	ch.errs = append(ch.errs, &Error{File: ch.src.name, Line: line, Key: key,
		Msg: fmt.Sprintf(format, args...), keyInMsg: keyInMsg})
}

func (ch *checker) record(key string, line int) {
	if _, ok := ch.src.lines[key]; !ok {
		ch.src.lines[key] = line
	}
}

// keyOf returns the parts of a Table, ArrayTable or KeyValue key and the
// line where the key starts.
func (ch *checker) keyOf(n *unstable.Node) (parts []string, line int) {
	it := n.Key()
	line = 1
	for it.Next() {
		k := it.Node()
		if parts == nil {
			line = ch.p.Shape(k.Raw).Start.Line
		}
		parts = append(parts, string(k.Data))
	}
	return parts, line
}

func (ch *checker) run() {
	root := schema()
	cur := root
	for ch.p.NextExpression() {
		e := ch.p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			parts, line := ch.keyOf(e)
			cur = ch.table(root, parts, line, e.Kind == unstable.ArrayTable)
		case unstable.KeyValue:
			if cur != nil { // nil: inside an unknown section, already reported
				ch.keyValue(cur, e)
			}
		}
	}
}

// table resolves a [section] header; nil if it is not a known section.
func (ch *checker) table(root *field, parts []string, line int, array bool) *field {
	f := root
	for _, part := range parts {
		c := f.children[part]
		if c == nil {
			name := joinKey(f.path, part)
			msg := fmt.Sprintf("unknown section \"[%s]\"", name)
			if s := suggest(f, part, true); s != "" {
				msg += fmt.Sprintf(" (did you mean \"[%s]\"?)", s)
			}
			ch.errorf(line, name, true, "%s", msg)
			return nil
		}
		if c.kind != kTable {
			ch.errorf(line, c.path, false, "is a value, not a section: write %s = ... inside [%s]", c.name, f.path)
			return nil
		}
		ch.record(c.path, line)
		f = c
	}
	if array {
		ch.errorf(line, f.path, false, "is a section, not an array of tables: write [%s], not [[%s]]", f.path, f.path)
		return nil
	}
	return f
}

// keyValue checks one key = value inside table tbl.
func (ch *checker) keyValue(tbl *field, n *unstable.Node) {
	parts, line := ch.keyOf(n)
	f := tbl
	for i, part := range parts {
		c := f.children[part]
		if c == nil {
			name := joinKey(f.path, part)
			msg := fmt.Sprintf("unknown key %q", name)
			if s := suggest(f, part, false); s != "" {
				msg += fmt.Sprintf(" (did you mean %q?)", s)
			}
			ch.errorf(line, name, true, "%s", msg)
			return
		}
		ch.record(c.path, line)
		if i < len(parts)-1 {
			if c.kind != kTable {
				ch.errorf(line, c.path, false, "is a value, not a section")
				return
			}
			f = c
			continue
		}
		v := n.Value()
		if c.kind == kTable {
			if v.Kind != unstable.InlineTable {
				ch.errorf(line, c.path, false, "expected a table (a [%s] section), got %s", c.path, kindName(v.Kind))
				return
			}
			it := v.Children()
			for it.Next() {
				if kv := it.Node(); kv.Kind == unstable.KeyValue {
					ch.keyValue(c, kv)
				}
			}
			return
		}
		ch.value(c, v, line)
	}
}

// value checks the type of a leaf value. Values of secret keys are never
// printed.
func (ch *checker) value(f *field, v *unstable.Node, line int) {
	switch f.kind {
	case kString:
		if v.Kind != unstable.String {
			ch.errorf(line, f.path, false, "expected a string in quotes, got %s", kindName(v.Kind))
		}
	case kInt:
		if v.Kind == unstable.Integer {
			return
		}
		what := "an integer"
		if strings.HasSuffix(f.name, "_bytes") {
			what = "a plain integer number of bytes (e.g. 26214400 for 25 MiB)"
		}
		hint := ""
		if v.Kind == unstable.String {
			hint = "; write it without quotes"
		}
		ch.errorf(line, f.path, false, "expected %s, got %s%s", what, kindName(v.Kind), hint)
	case kDuration:
		if v.Kind != unstable.String {
			ch.errorf(line, f.path, false, "expected a Go duration string in quotes (e.g. \"5m\", \"30s\", \"1h30m\"), got %s", kindName(v.Kind))
			return
		}
		if _, err := time.ParseDuration(string(v.Data)); err != nil {
			ch.errorf(line, f.path, false, "%q is not a Go duration (e.g. \"5m\")", v.Data)
		}
	}
}

func kindName(k unstable.Kind) string {
	switch k {
	case unstable.String:
		return "a string"
	case unstable.Integer:
		return "an integer"
	case unstable.Float:
		return "a float"
	case unstable.Bool:
		return "a boolean"
	case unstable.Array:
		return "an array"
	case unstable.InlineTable:
		return "an inline table"
	case unstable.DateTime, unstable.LocalDate, unstable.LocalDateTime, unstable.LocalTime:
		return "a date/time"
	}
	return "a " + k.String()
}

// suggest proposes the key the user probably meant: a close spelling in the
// same table, or the same name in exactly one other table.
func suggest(tbl *field, part string, sections bool) string {
	best, bestDist := "", 0
	for name, c := range tbl.children {
		if sections && c.kind != kTable {
			continue
		}
		d := levenshtein(strings.ToLower(part), name)
		if d <= 2 || d <= len(name)/3 {
			if best == "" || d < bestDist || (d == bestDist && c.path < best) {
				best, bestDist = c.path, d
			}
		}
	}
	if best != "" {
		return best
	}
	var found []string
	var walk func(f *field)
	walk = func(f *field) {
		for name, c := range f.children {
			if name == part && f != tbl && (!sections || c.kind == kTable) {
				found = append(found, c.path)
			}
			if c.kind == kTable {
				walk(c)
			}
		}
	}
	walk(schema())
	if len(found) == 1 {
		return found[0]
	}
	return ""
}

func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
