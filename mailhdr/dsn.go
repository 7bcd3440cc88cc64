package mailhdr

import (
	"bytes"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/emersion/go-message/textproto"
)

// DSN is what syncrelay needs from an RFC 3464 delivery status notification.
type DSN struct {
	// OriginalMessageIDs are the msg-ids (without brackets, domain
	// lowercased, duplicates removed) that identify the bounced message, in
	// this order: the returned message's Message-ID, Gmail's
	// X-Original-Message-ID, the returned message's In-Reply-To and
	// References. Only when none of those exist are the DSN's own
	// In-Reply-To and References used (Gmail and Exchange set them to the
	// bounced message). At most MaxDSNIDs: the bounced message is one
	// syncrelay sent, whose References it keeps short, and each id costs
	// the router a lookup before any authentication.
	OriginalMessageIDs []string
	// MessageID is the bounced message's own Message-ID (from the returned
	// message or headers, else X-Original-Message-ID), or "".
	MessageID string
	// Status is the enhanced status code of the chosen recipient, e.g.
	// "5.1.1" (taken from Diagnostic-Code when Status is missing or
	// unreadable).
	Status string
	// Action is the chosen recipient's Action, lowercased: "failed",
	// "delayed", "delivered", "relayed" or "expanded". Only "failed" is a
	// bounce.
	Action string
	// Diagnostic is the chosen recipient's Diagnostic-Code without its type
	// ("smtp;"), unfolded, at most MaxDiagnosticLen bytes.
	Diagnostic string
	// Recipient is the chosen recipient's Final-Recipient (else
	// Original-Recipient) address, without its type ("rfc822;").
	Recipient string
}

const (
	// MaxDiagnosticLen bounds DSN.Diagnostic.
	MaxDiagnosticLen = 1000
	// maxStatusPart bounds the delivery-status part that is read.
	maxStatusPart = 256 << 10
	// maxReturnedHeader bounds the returned header block that is read.
	maxReturnedHeader = 1 << 20
	// maxRecipients bounds the per-recipient blocks examined.
	maxRecipients = 1000
)

// ParseDSN reads a message (header already read, body reader) and, if it is
// an RFC 3464 delivery status notification — Content-Type multipart/report
// with report-type=delivery-status, or a multipart/report without
// report-type that holds a message/delivery-status part — returns ok=true
// and what it says about the first failed recipient (or, if no recipient
// failed, the first recipient; check Action) together with the ids of the
// bounced message found in the returned message/rfc822 (message/global) or
// text/rfc822-headers (message/global-headers) part. Other report types
// (read receipts, ARF feedback) and non-reports give ok=false.
//
// Parts nested in further multiparts inside the report are searched too
// (Gmail nests the human-readable part). Nesting deeper than maxDepth
// (top-level multipart/report = 1; < 1 means DefaultMaxDepth) stops the walk
// with ErrTooDeep, and reading more than maxBytes of body (<= 0 means
// DefaultMaxBytes) stops it with ErrTooLarge; in both cases whatever was
// found so far is returned with ok set accordingly. Reading stops as soon as
// both the delivery status and the returned headers are found, so the
// returned message body is never read. Malformed MIME is not an error; read
// errors from body are returned.
func ParseDSN(h textproto.Header, body io.Reader, maxDepth int, maxBytes int64) (d DSN, ok bool, err error) {
	mt, params := contentType(&h)
	if mt != "multipart/report" {
		return DSN{}, false, nil
	}
	rt := strings.ToLower(strings.TrimSpace(params["report-type"]))
	if rt != "" && rt != "delivery-status" && rt != "global-delivery-status" {
		return DSN{}, false, nil
	}
	declared := rt != ""
	if maxBytes <= 0 {
		maxBytes = DefaultMaxBytes
	}
	p := &dsnParser{maxDepth: clampDepth(maxDepth)}
	cr := &countingReader{r: body, max: maxBytes}
	if b := params["boundary"]; b != "" {
		err = p.walk(decodeCTE(&h, cr), b, 1)
	}
	if err == nil {
		err = cr.failure()
	}
	ok = declared || p.status != nil
	if !ok {
		return DSN{}, false, err
	}
	return p.result(&h), true, err
}

type dsnParser struct {
	maxDepth int
	status   *statusReport
	returned *textproto.Header
}

func (p *dsnParser) done() bool { return p.status != nil && p.returned != nil }

// walk iterates the parts of one multipart body at nesting level depth.
func (p *dsnParser) walk(r io.Reader, boundary string, depth int) error {
	if depth > p.maxDepth {
		return ErrTooDeep
	}
	mr := textproto.NewMultipartReader(r, boundary)
	for !p.done() {
		part, err := mr.NextPart()
		if err != nil {
			return nil // io.EOF or malformed: the container ends here
		}
		mt, params := contentType(&part.Header)
		switch {
		case mt == "message/delivery-status" || mt == "message/global-delivery-status":
			if p.status == nil {
				data, _ := io.ReadAll(io.LimitReader(decodeCTE(&part.Header, part), maxStatusPart))
				p.status = parseStatus(data)
			}
		case isEncapsulated(mt) || mt == "text/rfc822-headers" || mt == "message/global-headers":
			if p.returned == nil {
				rh, _ := readHeaderLenient(io.LimitReader(decodeCTE(&part.Header, part), maxReturnedHeader))
				p.returned = &rh
			}
		case strings.HasPrefix(mt, "multipart/") && params["boundary"] != "":
			if err := p.walk(decodeCTE(&part.Header, part), params["boundary"], depth+1); err != nil {
				return err
			}
		}
	}
	return nil
}

// MaxDSNIDs bounds DSN.OriginalMessageIDs.
const MaxDSNIDs = 1000

func (p *dsnParser) result(outer *textproto.Header) DSN {
	var d DSN
	seen := map[string]bool{}
	add := func(ids ...string) {
		for _, id := range ids {
			if len(d.OriginalMessageIDs) >= MaxDSNIDs {
				return
			}
			if !seen[id] {
				seen[id] = true
				d.OriginalMessageIDs = append(d.OriginalMessageIDs, id)
			}
		}
	}
	if p.returned != nil {
		if ids := MsgIDs(p.returned.Get("Message-Id")); len(ids) > 0 {
			d.MessageID = ids[0]
			add(ids[0])
		}
	}
	if p.status != nil {
		if ids := MsgIDs(p.status.originalMessageID()); len(ids) > 0 {
			if d.MessageID == "" {
				d.MessageID = ids[0]
			}
			add(ids[0])
		}
	}
	if p.returned != nil {
		add(MsgIDs(p.returned.Get("In-Reply-To"))...)
		add(MsgIDs(p.returned.Get("References"))...)
	}
	if len(d.OriginalMessageIDs) == 0 {
		add(MsgIDs(outer.Get("In-Reply-To"))...)
		add(MsgIDs(outer.Get("References"))...)
	}
	if p.status == nil {
		return d
	}
	rcpt := p.status.pick()
	if rcpt == nil {
		return d
	}
	d.Action = keyword(rcpt.get("action"))
	d.Status = statusCode(rcpt.get("status"))
	diag := rcpt.get("diagnostic-code")
	if d.Status == "" {
		d.Status = statusCode(diag)
	}
	d.Diagnostic = clean(stripType(diag), MaxDiagnosticLen)
	r := rcpt.get("final-recipient")
	if stripType(r) == "" {
		r = rcpt.get("original-recipient")
	}
	d.Recipient = clean(strings.Trim(stripType(r), "<> "), MaxMsgIDLen)
	return d
}

// fields is one block of a delivery-status body: lowercased names, first
// value wins, continuation lines unfolded.
type fields map[string]string

func (f fields) get(k string) string { return f[k] }

type statusReport struct {
	perMessage fields
	recipients []fields
}

// originalMessageID returns Gmail's X-Original-Message-ID, normally a
// per-message field but taken from a recipient block too.
func (s *statusReport) originalMessageID() string {
	if v := s.perMessage.get("x-original-message-id"); v != "" {
		return v
	}
	for _, r := range s.recipients {
		if v := r.get("x-original-message-id"); v != "" {
			return v
		}
	}
	return ""
}

// pick returns the first recipient whose Action is failed (or, lacking an
// Action, whose Status is 5.x.x), else the first recipient.
func (s *statusReport) pick() fields {
	for _, r := range s.recipients {
		a := keyword(r.get("action"))
		if a == "failed" || a == "" && strings.HasPrefix(statusCode(r.get("status")), "5.") {
			return r
		}
	}
	if len(s.recipients) > 0 {
		return s.recipients[0]
	}
	return nil
}

// parseStatus parses a message/delivery-status body: blocks of
// "Name: value" lines separated by blank lines. Blocks naming a recipient
// (Final-Recipient, Original-Recipient or Action) are per-recipient; the
// others are merged into the per-message fields.
func parseStatus(data []byte) *statusReport {
	s := &statusReport{perMessage: fields{}}
	cur := fields{}
	var last string
	flush := func() {
		if len(cur) == 0 {
			return
		}
		_, fr := cur["final-recipient"]
		_, or := cur["original-recipient"]
		_, ac := cur["action"]
		if fr || or || ac {
			if len(s.recipients) < maxRecipients {
				s.recipients = append(s.recipients, cur)
			}
		} else {
			for k, v := range cur {
				if _, dup := s.perMessage[k]; !dup {
					s.perMessage[k] = v
				}
			}
		}
		cur, last = fields{}, ""
	}
	for len(data) > 0 {
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		line = bytes.TrimRight(line, "\r")
		if len(bytes.TrimSpace(line)) == 0 {
			flush()
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last != "" {
				cur[last] += " " + string(bytes.TrimSpace(line))
			}
			continue
		}
		i := bytes.IndexByte(line, ':')
		if i <= 0 {
			last = ""
			continue
		}
		name := strings.ToLower(string(bytes.TrimSpace(line[:i])))
		if _, dup := cur[name]; dup {
			last = ""
			continue
		}
		cur[name] = string(bytes.TrimSpace(line[i+1:]))
		last = name
	}
	flush()
	return s
}

// statusCode returns the first RFC 3463 enhanced status code
// (class.subject.detail, class 2, 4 or 5, 1-3 digit parts) in v, or "".
func statusCode(v string) string {
	for i := 0; i < len(v); i++ {
		c := v[i]
		if c != '2' && c != '4' && c != '5' || i > 0 && isDigitOrDot(v[i-1]) {
			continue
		}
		j := i + 1
		ok := true
		for part := 0; part < 2 && ok; part++ {
			if j >= len(v) || v[j] != '.' {
				ok = false
				break
			}
			j++
			k := j
			for j < len(v) && j-k < 3 && v[j] >= '0' && v[j] <= '9' {
				j++
			}
			if j == k {
				ok = false
			}
		}
		if ok && (j == len(v) || !isDigitOrDot(v[j])) {
			return v[i:j]
		}
	}
	return ""
}

func isDigitOrDot(c byte) bool { return c >= '0' && c <= '9' || c == '.' }

// stripType removes an RFC 3464 address-type or diagnostic-type prefix
// ("rfc822;", "smtp;", "X-Postfix;") and surrounding white space.
func stripType(v string) string {
	v = strings.TrimSpace(v)
	if i := strings.IndexByte(v, ';'); i > 0 && i <= 32 {
		typ := v[:i]
		isAtom := true
		for j := 0; j < len(typ); j++ {
			c := typ[j]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
				isAtom = false
				break
			}
		}
		if isAtom {
			v = strings.TrimSpace(v[i+1:])
		}
	}
	return v
}

// clean replaces control characters and invalid UTF-8 with spaces,
// collapses runs of white space and truncates to at most n bytes on a rune
// boundary.
func clean(v string, n int) string {
	var b strings.Builder
	space := false
	for _, r := range v {
		if r == utf8.RuneError || r < 0x20 || r == 0x7f || r == ' ' {
			space = b.Len() > 0
			continue
		}
		if space {
			if b.Len()+1 > n {
				break
			}
			b.WriteByte(' ')
			space = false
		}
		if b.Len()+utf8.RuneLen(r) > n {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}
