package mailtext

import (
	"strconv"
	"strings"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// HTMLToText renders an HTML mail body as readable plain text: blocks and
// <br> become line breaks, lists get "- " or "1. " markers, <blockquote>
// lines get "> ", links keep their target as "text (url)" when it differs
// from the text, images show their alt text, <pre> keeps its spacing, and
// scripts, styles and the head are dropped. It streams tokens (no tree), so
// deeply nested or malformed markup costs linear time and no recursion.
func HTMLToText(src string) string {
	z := html.NewTokenizer(strings.NewReader(src))
	r := &renderer{}
	for {
		tt := z.Next()
		switch tt {
		case html.ErrorToken:
			return normalize(r.b.String())
		case html.TextToken:
			if r.skip == 0 {
				r.text(string(z.Text()))
			}
		case html.StartTagToken, html.SelfClosingTagToken:
			name, hasAttr := z.TagName()
			a := atom.Lookup(name)
			var attrs map[string]string
			if hasAttr && (a == atom.A || a == atom.Img || a == atom.Ol) {
				attrs = map[string]string{}
				for {
					k, v, more := z.TagAttr()
					attrs[string(k)] = string(v)
					if !more {
						break
					}
				}
			}
			r.start(a, attrs, tt == html.SelfClosingTagToken)
		case html.EndTagToken:
			name, _ := z.TagName()
			r.end(atom.Lookup(name))
		}
	}
}

type listState struct {
	ordered bool
	n       int
}

type link struct {
	href  string
	start int
}

type renderer struct {
	b       strings.Builder
	skip    int // inside script/style/head/title...
	pre     int
	quote   int
	lists   []listState
	links   []link
	cell    int  // cells seen in the current table row
	bol     bool // at the beginning of a line (prefix not yet written)
	started bool // something was written
	space   bool // a collapsed space is pending
}

func (r *renderer) newline(n int) {
	if !r.started {
		return
	}
	r.space = false
	s := r.b.String()
	have := len(s) - len(strings.TrimRight(s, "\n"))
	for ; have < n; have++ {
		r.b.WriteByte('\n')
	}
	r.bol = true
}

func (r *renderer) prefix() {
	if r.bol {
		r.b.WriteString(strings.Repeat("> ", r.quote))
		r.b.WriteString(strings.Repeat("  ", max(len(r.lists)-1, 0)))
		r.bol = false
	}
}

func (r *renderer) raw(s string) {
	r.prefix()
	r.b.WriteString(s)
	r.started = true
}

func (r *renderer) text(s string) {
	s = strings.ReplaceAll(s, "\u00a0", " ")
	if r.pre > 0 {
		lines := strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n")
		for i, l := range lines {
			if i > 0 {
				r.b.WriteByte('\n')
				r.bol = true
			}
			if l != "" {
				r.raw(l)
			}
		}
		return
	}
	words := strings.Fields(s)
	if len(words) == 0 {
		if s != "" && r.started && !r.bol {
			r.space = true
		}
		return
	}
	if (r.space || startsSpace(s)) && r.started && !r.bol {
		r.raw(" ")
	}
	r.raw(strings.Join(words, " "))
	r.space = endsSpace(s)
}

func startsSpace(s string) bool { return s != "" && strings.TrimLeft(s, " \t\r\n\f") != s }
func endsSpace(s string) bool   { return s != "" && strings.TrimRight(s, " \t\r\n\f") != s }

func (r *renderer) start(a atom.Atom, attrs map[string]string, selfClosing bool) {
	switch a {
	case atom.Script, atom.Style, atom.Head, atom.Title, atom.Template, atom.Noscript, atom.Object, atom.Svg:
		if !selfClosing {
			r.skip++
		}
		return
	}
	if r.skip > 0 {
		return
	}
	switch a {
	case atom.Br:
		r.b.WriteByte('\n')
		r.bol, r.space = true, false
		r.started = true
	case atom.P, atom.H1, atom.H2, atom.H3, atom.H4, atom.H5, atom.H6, atom.Table, atom.Dl, atom.Figure:
		r.newline(2)
	case atom.Div, atom.Section, atom.Article, atom.Header, atom.Footer, atom.Address, atom.Center,
		atom.Form, atom.Dt, atom.Dd, atom.Caption, atom.Tbody, atom.Thead, atom.Tfoot, atom.Main, atom.Nav, atom.Aside:
		r.newline(1)
	case atom.Tr:
		r.newline(1)
		r.cell = 0
	case atom.Td, atom.Th:
		if r.cell > 0 {
			r.raw("  ")
		}
		r.cell++
		r.space = false
	case atom.Pre:
		r.newline(2)
		r.pre++
	case atom.Blockquote:
		r.newline(1)
		r.quote++
		r.bol = true
	case atom.Ul:
		r.newline(1)
		r.lists = append(r.lists, listState{})
	case atom.Ol:
		r.newline(1)
		n := 0
		if v, err := strconv.Atoi(attrs["start"]); err == nil {
			n = v - 1
		}
		r.lists = append(r.lists, listState{ordered: true, n: n})
	case atom.Li:
		r.newline(1)
		if len(r.lists) == 0 {
			r.raw("- ")
			break
		}
		l := &r.lists[len(r.lists)-1]
		if l.ordered {
			l.n++
			r.raw(strconv.Itoa(l.n) + ". ")
		} else {
			r.raw("- ")
		}
		r.space = false
	case atom.Hr:
		r.newline(1)
		r.raw("----")
		r.newline(1)
	case atom.Img:
		if alt := strings.TrimSpace(attrs["alt"]); alt != "" {
			r.text(" [" + alt + "] ")
		}
	case atom.A:
		if !selfClosing {
			r.links = append(r.links, link{href: strings.TrimSpace(attrs["href"]), start: r.b.Len()})
		}
	}
}

func (r *renderer) end(a atom.Atom) {
	switch a {
	case atom.Script, atom.Style, atom.Head, atom.Title, atom.Template, atom.Noscript, atom.Object, atom.Svg:
		if r.skip > 0 {
			r.skip--
		}
		return
	}
	if r.skip > 0 {
		return
	}
	switch a {
	case atom.P, atom.H1, atom.H2, atom.H3, atom.H4, atom.H5, atom.H6, atom.Table, atom.Dl, atom.Figure:
		r.newline(2)
	case atom.Div, atom.Section, atom.Article, atom.Header, atom.Footer, atom.Address, atom.Center,
		atom.Form, atom.Dt, atom.Dd, atom.Caption, atom.Tr, atom.Li, atom.Main, atom.Nav, atom.Aside:
		r.newline(1)
	case atom.Pre:
		if r.pre > 0 {
			r.pre--
		}
		r.newline(2)
	case atom.Blockquote:
		if r.quote > 0 {
			r.quote--
		}
		r.newline(1)
	case atom.Ul, atom.Ol:
		if len(r.lists) > 0 {
			r.lists = r.lists[:len(r.lists)-1]
		}
		r.newline(1)
	case atom.A:
		if len(r.links) == 0 {
			return
		}
		l := r.links[len(r.links)-1]
		r.links = r.links[:len(r.links)-1]
		if !showHref(l.href) {
			return
		}
		text := strings.TrimSpace(r.b.String()[min(l.start, r.b.Len()):])
		target := strings.TrimPrefix(l.href, "mailto:")
		if text == "" {
			r.text(target)
		} else if text != target && text != l.href {
			r.raw(" (" + target + ")")
		}
	}
}

func showHref(h string) bool {
	lh := strings.ToLower(h)
	return strings.HasPrefix(lh, "http://") || strings.HasPrefix(lh, "https://") || strings.HasPrefix(lh, "mailto:")
}
