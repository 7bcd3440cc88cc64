// Package mailtext extracts what a person reads from a stored raw message:
// its text (text/plain preferred, HTML converted to readable text when the
// message has no plain text, every charset decoded to UTF-8) and the list of
// its attachments, each downloadable by its MIME part number.
//
// It never fails on malformed mail: whatever cannot be parsed is left out,
// and Parse returns what it could read.
package mailtext

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"mime"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/charset"
	htmlcharset "golang.org/x/net/html/charset"
)

// Defaults for zero Options fields.
const (
	DefaultMaxTextBytes = 1 << 20
	DefaultMaxDepth     = 20
	DefaultMaxParts     = 1000
)

// Options bound the work done on one message.
type Options struct {
	MaxTextBytes int // longer text is cut (on a rune boundary) and Truncated set
	MaxDepth     int // multipart nesting followed
	MaxParts     int // MIME parts looked at
}

func (o *Options) defaults() {
	if o.MaxTextBytes <= 0 {
		o.MaxTextBytes = DefaultMaxTextBytes
	}
	if o.MaxDepth <= 0 {
		o.MaxDepth = DefaultMaxDepth
	}
	if o.MaxParts <= 0 {
		o.MaxParts = DefaultMaxParts
	}
}

// Attachment is one attached file.
type Attachment struct {
	// Part is the MIME part number (IMAP section numbering: "1", "2.1" ...);
	// it names the attachment for download.
	Part        string `json:"id"`
	Filename    string `json:"filename"`
	ContentType string `json:"content_type"`
	Size        int64  `json:"size"` // decoded bytes
	Inline      bool   `json:"inline"`
	ContentID   string `json:"content_id,omitempty"`
}

// Extract is the readable content of a message.
type Extract struct {
	Text        string
	FromHTML    bool // Text was converted from HTML
	Truncated   bool
	Attachments []Attachment
}

// Size approximates the memory an Extract holds (for caches).
func (e *Extract) Size() int {
	n := len(e.Text) + 64
	for _, a := range e.Attachments {
		n += len(a.Part) + len(a.Filename) + len(a.ContentType) + len(a.ContentID) + 48
	}
	return n
}

// ErrNoPart is returned by OpenPart when the message has no such attachment.
var ErrNoPart = errors.New("mailtext: no such attachment")

// Parse reads a whole message and extracts its text and attachments.
func Parse(r io.Reader, o Options) (*Extract, error) {
	o.defaults()
	w := &walker{o: o}
	e, err := message.Read(bufio.NewReader(r))
	if e == nil {
		return &Extract{}, fmt.Errorf("mailtext: %w", err)
	}
	res := w.walk(e, "", 0, false)
	out := &Extract{Text: res.text, FromHTML: res.fromHTML && !res.plain, Attachments: res.atts}
	out.Text = normalize(out.Text)
	if len(out.Text) > o.MaxTextBytes {
		cut := o.MaxTextBytes
		for cut > 0 && !utf8.RuneStart(out.Text[cut]) {
			cut--
		}
		out.Text, out.Truncated = out.Text[:cut], true
	}
	if out.Attachments == nil {
		out.Attachments = []Attachment{}
	}
	return out, nil
}

// OpenPart finds the leaf part numbered part and calls fn with its header
// information and decoded body. Only parts that Parse lists as attachments
// are served.
func OpenPart(r io.Reader, part string, o Options, fn func(a Attachment, body io.Reader) error) error {
	o.defaults()
	if part == "" || len(part) > 64 {
		return ErrNoPart
	}
	w := &walker{o: o, want: part, serve: fn}
	e, _ := message.Read(bufio.NewReader(r))
	if e == nil {
		return ErrNoPart
	}
	w.walk(e, "", 0, false)
	if w.serveErr != nil {
		return w.serveErr
	}
	if !w.served {
		return ErrNoPart
	}
	return nil
}

type walker struct {
	o     Options
	parts int
	// download mode
	want     string
	serve    func(Attachment, io.Reader) error
	served   bool
	serveErr error
}

// result is what a subtree contributes.
type result struct {
	text     string
	plain    bool // text came from text/plain
	fromHTML bool
	atts     []Attachment
}

func childPath(parent string, i int) string {
	if parent == "" {
		return strconv.Itoa(i)
	}
	return parent + "." + strconv.Itoa(i)
}

// walk visits one entity. path is its part number ("" for the top level,
// whose leaf body is part "1" as in IMAP).
func (w *walker) walk(e *message.Entity, path string, depth int, inAlternativeOrRelated bool) result {
	w.parts++
	if w.parts > w.o.MaxParts || w.served {
		return result{}
	}
	mt, params, _ := e.Header.ContentType()
	if mt == "" {
		mt = "text/plain"
	}
	if strings.HasPrefix(mt, "multipart/") {
		if depth >= w.o.MaxDepth {
			return result{}
		}
		mr := e.MultipartReader()
		if mr == nil {
			return result{}
		}
		var kids []result
		for i := 1; ; i++ {
			p, err := mr.NextPart()
			if err != nil && p == nil {
				break
			}
			sub := mt == "multipart/alternative" || mt == "multipart/related"
			kids = append(kids, w.walk(p, childPath(path, i), depth+1, sub))
			if w.served || w.parts > w.o.MaxParts {
				break
			}
		}
		switch mt {
		case "multipart/alternative":
			return chooseAlternative(kids)
		case "multipart/related":
			return related(kids)
		default:
			return mixed(kids)
		}
	}

	leaf := path
	if leaf == "" {
		leaf = "1"
	}
	disp, dparams, _ := e.Header.ContentDisposition()
	filename := decodeWords(firstNonEmpty(dparams["filename"], params["name"]))
	isAttachment := strings.EqualFold(disp, "attachment") ||
		(filename != "" && !(inAlternativeOrRelated && strings.HasPrefix(mt, "text/"))) ||
		!(mt == "text/plain" || mt == "text/html")
	if isAttachment {
		a := Attachment{Part: leaf, Filename: sanitizeFilename(filename), ContentType: mt,
			Inline:    strings.EqualFold(disp, "inline") || e.Header.Get("Content-Id") != "",
			ContentID: strings.Trim(strings.TrimSpace(e.Header.Get("Content-Id")), "<>")}
		if a.Filename == "" {
			a.Filename = defaultName(leaf, mt)
		}
		if w.want != "" {
			if leaf == w.want {
				w.served = true
				w.serveErr = w.serve(a, e.Body)
			}
			return result{}
		}
		n, _ := io.Copy(io.Discard, e.Body)
		a.Size = n
		return result{atts: []Attachment{a}}
	}
	if w.want != "" {
		return result{}
	}
	body, _ := io.ReadAll(io.LimitReader(e.Body, int64(w.o.MaxTextBytes)*4+1))
	_, hasCharset := params["charset"]
	if mt == "text/html" {
		return result{text: HTMLToText(decodeFallback(body, hasCharset, true)), fromHTML: true}
	}
	return result{text: decodeFallback(body, hasCharset, false), plain: true}
}

// chooseAlternative keeps the best alternative: the first with plain text,
// else the first with any text, else the last one (RFC 2046: the last is
// the richest).
func chooseAlternative(kids []result) result {
	for _, k := range kids {
		if k.plain && strings.TrimSpace(k.text) != "" {
			return k
		}
	}
	for _, k := range kids {
		if strings.TrimSpace(k.text) != "" {
			return k
		}
	}
	if len(kids) > 0 {
		return kids[len(kids)-1]
	}
	return result{}
}

// related: the root (first part) carries the text; the rest are resources
// (inline images ...), listed as attachments.
func related(kids []result) result {
	if len(kids) == 0 {
		return result{}
	}
	out := kids[0]
	for _, k := range kids[1:] {
		out.atts = append(out.atts, k.atts...)
	}
	return out
}

// mixed concatenates the texts of its parts and lists every attachment.
func mixed(kids []result) result {
	var out result
	var texts []string
	for _, k := range kids {
		if t := strings.TrimSpace(k.text); t != "" {
			texts = append(texts, strings.TrimRight(k.text, "\r\n \t"))
			out.plain = out.plain || k.plain
			out.fromHTML = out.fromHTML || k.fromHTML
		}
		out.atts = append(out.atts, k.atts...)
	}
	out.text = strings.Join(texts, "\n\n")
	return out
}

// decodeFallback turns a text body into valid UTF-8. go-message has already
// converted it when the part named its charset; without one, valid UTF-8 is
// kept, an HTML body's <meta> charset is honoured, and anything else is read
// as windows-1252 (the usual unlabelled legacy charset).
func decodeFallback(b []byte, labelled, isHTML bool) string {
	if utf8.Valid(b) {
		return string(b)
	}
	if !labelled {
		cs := "windows-1252"
		if isHTML {
			if _, name, _ := htmlcharset.DetermineEncoding(b, "text/html"); name != "" && name != "utf-8" {
				cs = name
			}
		}
		if r, err := charset.Reader(cs, strings.NewReader(string(b))); err == nil {
			if d, err := io.ReadAll(r); err == nil && utf8.Valid(d) {
				return string(d)
			}
		}
	}
	return strings.ToValidUTF8(string(b), "\uFFFD")
}

var wordDecoder = &mime.WordDecoder{CharsetReader: charset.Reader}

func decodeWords(s string) string {
	if s == "" {
		return ""
	}
	if d, err := wordDecoder.DecodeHeader(s); err == nil {
		s = d
	}
	return strings.ToValidUTF8(s, "\uFFFD")
}

func firstNonEmpty(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}

// sanitizeFilename keeps a file name safe to offer for download: no
// directories, no control characters, at most 255 bytes.
func sanitizeFilename(name string) string {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		name = name[i+1:]
	}
	name = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || r == '"' {
			return -1
		}
		return r
	}, name)
	name = strings.TrimSpace(name)
	if name == "." || name == ".." {
		name = ""
	}
	for len(name) > 255 {
		_, size := utf8.DecodeLastRuneInString(name)
		name = name[:len(name)-size]
	}
	return name
}

func defaultName(part, mt string) string {
	ext := ".bin"
	switch {
	case mt == "message/rfc822" || mt == "message/global":
		ext = ".eml"
	case strings.HasPrefix(mt, "text/") || mt == "message/delivery-status" || mt == "message/global-delivery-status":
		ext = ".txt"
	default:
		if exts, _ := mime.ExtensionsByType(mt); len(exts) > 0 {
			ext = exts[0]
		}
	}
	return "part-" + strings.ReplaceAll(part, ".", "-") + ext
}

// normalize uses LF line ends, drops trailing spaces, collapses runs of
// blank lines to one and trims blank lines at both ends.
func normalize(s string) string {
	s = strings.ReplaceAll(s, "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	lines := strings.Split(s, "\n")
	out := make([]string, 0, len(lines))
	blank := 0
	for _, l := range lines {
		l = strings.TrimRight(l, " \t\u00a0")
		if l == "" {
			blank++
			if blank > 1 {
				continue
			}
		} else {
			blank = 0
		}
		out = append(out, l)
	}
	return strings.Trim(strings.Join(out, "\n"), "\n")
}
