package loadgen

import (
	"bufio"
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-msgauth/dkim"
)

// Kind is the kind of a generated message.
type Kind int

// The kinds of messages in a mix.
const (
	// Match is a reply from the candidate that references a minted thread
	// (In-Reply-To/References carry the thread's sr. token): syncrelay
	// verifies its DKIM signature and stores it.
	Match Kind = iota
	// Dup resends a Message-ID that was already answered 250: syncrelay
	// answers "duplicate" (it still verifies DKIM and commits the mailbox).
	Dup
	// Unrelated references nothing syncrelay knows: it is discarded
	// without a DNS query or a commit.
	Unrelated
)

func (k Kind) String() string {
	switch k {
	case Match:
		return "match"
	case Dup:
		return "dup"
	case Unrelated:
		return "unrelated"
	}
	return "kind" + strconv.Itoa(int(k))
}

// Mix weighs the kinds of messages sent.
type Mix struct{ Match, Dup, Unrelated int }

// ParseMix parses "match=80,dup=10,unrelated=10" (weights, any scale).
func ParseMix(s string) (Mix, error) {
	var m Mix
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, v, ok := strings.Cut(part, "=")
		n, err := strconv.Atoi(v)
		if !ok || err != nil || n < 0 {
			return m, fmt.Errorf("mix: %q: want kind=weight", part)
		}
		switch k {
		case "match":
			m.Match = n
		case "dup":
			m.Dup = n
		case "unrelated":
			m.Unrelated = n
		default:
			return m, fmt.Errorf("mix: unknown kind %q (match, dup, unrelated)", k)
		}
	}
	if m.Match+m.Dup+m.Unrelated == 0 {
		return m, errors.New("mix: all weights are zero")
	}
	return m, nil
}

func (m Mix) String() string {
	return fmt.Sprintf("match=%d,dup=%d,unrelated=%d", m.Match, m.Dup, m.Unrelated)
}

// Pick draws a kind with the mix's weights.
func (m Mix) Pick(r *mrand.Rand) Kind {
	n := r.IntN(m.Match + m.Dup + m.Unrelated)
	switch {
	case n < m.Match:
		return Match
	case n < m.Match+m.Dup:
		return Dup
	}
	return Unrelated
}

// template is a DKIM-signed header block. The Message-ID is deliberately
// not among the signed fields, so each message gets a fresh one without a
// fresh RSA signature: signing costs the load tool ~1 ms of CPU per
// message, verifying costs syncrelay the same whatever the signed fields.
type template struct {
	sig    []byte // "DKIM-Signature: ...\r\n"
	hdr    []byte // the signed fields, CRLF terminated, no blank line
	thread uint64
}

// Message is one message ready to send.
type Message struct {
	Kind      Kind
	MessageID string // with <>
	Thread    uint64 // for Match and Dup
	tmpl      *template
	body      []byte
}

// WriteTo writes the message, CRLF line endings, not dot-stuffed (the
// generated body has no line starting with ".") and without the final ".".
func (m *Message) WriteTo(w io.Writer) (int64, error) {
	var n int64
	for _, p := range [][]byte{m.tmpl.sig, []byte("Message-ID: " + m.MessageID + "\r\n"), m.tmpl.hdr, []byte("\r\n"), m.body} {
		k, err := w.Write(p)
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// Bytes returns the whole message.
func (m *Message) Bytes() []byte {
	var b bytes.Buffer
	m.WriteTo(&b)
	return b.Bytes()
}

// GeneratorOptions configure NewGenerator.
type GeneratorOptions struct {
	// Manifest enables Match and Dup messages; without it only Unrelated
	// messages are made, signed with a throwaway key for Domain.
	Manifest *Manifest
	BodySize int    // bytes of body, default 4096
	From     string // header From for Unrelated without a manifest
	To       string // header To for Unrelated without a manifest
	// Unrelated templates to rotate through (default 8).
	Unrelated int
}

// Generator makes messages. It is safe for concurrent use.
type Generator struct {
	run       string
	idDomain  string
	body      []byte
	match     []*template
	unrelated []*template

	seq atomic.Uint64

	mu   sync.Mutex
	sent []sentRef // ring of messages answered 250, for Dup
	next int
	full bool
}

type sentRef struct {
	id     string
	thread int // index in match
}

const sentRing = 4096

// NewGenerator signs the templates (one RSA signature per thread and per
// unrelated template) and builds the shared body.
func NewGenerator(o GeneratorOptions) (*Generator, error) {
	if o.BodySize <= 0 {
		o.BodySize = 4096
	}
	if o.Unrelated <= 0 {
		o.Unrelated = 8
	}
	run := make([]byte, 4)
	rand.Read(run)
	g := &Generator{run: hex.EncodeToString(run), body: Body(o.BodySize), sent: make([]sentRef, sentRing)}

	var signer crypto.Signer
	var domain, selector, from, to string
	if m := o.Manifest; m != nil {
		k, err := m.Signer()
		if err != nil {
			return nil, err
		}
		signer, domain, selector = k, m.SenderDomain, m.Selector
		from, to = "Carl Candidate <"+m.CandidateEmail+">", m.UserEmail
	} else {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return nil, err
		}
		signer, domain, selector = k, "srload.test", "s1"
		from, to = o.From, o.To
		if from == "" {
			from = "load@srload.test"
		}
		if to == "" {
			to = "sink@srload.test"
		}
	}
	g.idDomain = domain
	date := time.Now().UTC().Format(time.RFC1123Z)
	sign := func(hdr string) (*template, error) {
		s, err := dkim.NewSigner(&dkim.SignOptions{
			Domain: domain, Selector: selector, Signer: signer,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
			HeaderKeys: []string{"From", "To", "Subject", "Date", "In-Reply-To", "References", "MIME-Version", "Content-Type"},
		})
		if err != nil {
			return nil, err
		}
		if _, err := io.Copy(s, io.MultiReader(strings.NewReader(hdr+"\r\n"), bytes.NewReader(g.body))); err != nil {
			s.Close()
			return nil, err
		}
		if err := s.Close(); err != nil {
			return nil, err
		}
		return &template{sig: []byte(s.Signature()), hdr: []byte(hdr)}, nil
	}
	if m := o.Manifest; m != nil {
		for _, th := range m.Threads {
			t, err := sign(fmt.Sprintf("From: %s\r\nTo: %s\r\nSubject: Re: Interview\r\nDate: %s\r\nIn-Reply-To: %s\r\nReferences: %s\r\n"+
				"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n", from, to, date, th.MessageID, th.MessageID))
			if err != nil {
				return nil, fmt.Errorf("sign: %w", err)
			}
			t.thread = th.ID
			g.match = append(g.match, t)
		}
	}
	for i := 0; i < o.Unrelated; i++ {
		ref := make([]byte, 8)
		rand.Read(ref)
		t, err := sign(fmt.Sprintf("From: %s\r\nTo: %s\r\nSubject: Re: Lunch on Friday?\r\nDate: %s\r\nIn-Reply-To: <%x@%s>\r\nReferences: <%x@%s>\r\n"+
			"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n", from, to, date, ref, domain, ref, domain))
		if err != nil {
			return nil, fmt.Errorf("sign: %w", err)
		}
		g.unrelated = append(g.unrelated, t)
	}
	return g, nil
}

// CanMatch reports whether the generator has threads to reply to.
func (g *Generator) CanMatch() bool { return len(g.match) > 0 }

// Next makes a message of kind k. A Dup with nothing answered yet becomes a
// Match; a Match without a manifest is an error at the caller (see
// CanMatch).
func (g *Generator) Next(k Kind, r *mrand.Rand) Message {
	if k == Dup {
		g.mu.Lock()
		n := g.next
		if g.full {
			n = sentRing
		}
		if n > 0 {
			s := g.sent[r.IntN(n)]
			g.mu.Unlock()
			t := g.match[s.thread]
			return Message{Kind: Dup, MessageID: s.id, Thread: t.thread, tmpl: t, body: g.body}
		}
		g.mu.Unlock()
		k = Match
	}
	id := fmt.Sprintf("<%s.%d@%s>", g.run, g.seq.Add(1), g.idDomain)
	if k == Match && len(g.match) > 0 {
		t := g.match[r.IntN(len(g.match))]
		return Message{Kind: Match, MessageID: id, Thread: t.thread, tmpl: t, body: g.body}
	}
	t := g.unrelated[r.IntN(len(g.unrelated))]
	return Message{Kind: Unrelated, MessageID: id, tmpl: t, body: g.body}
}

// Accepted records that m got a 250, making it available to Dup.
func (g *Generator) Accepted(m *Message) {
	if m.Kind != Match {
		return
	}
	idx := -1
	for i, t := range g.match {
		if t == m.tmpl {
			idx = i
			break
		}
	}
	if idx < 0 {
		return
	}
	g.mu.Lock()
	g.sent[g.next] = sentRef{id: m.MessageID, thread: idx}
	g.next++
	if g.next == sentRing {
		g.next, g.full = 0, true
	}
	g.mu.Unlock()
}

// Body returns size bytes of plain text in CRLF lines of at most 78 bytes,
// none starting with ".".
func Body(size int) []byte {
	var b bytes.Buffer
	b.Grow(size)
	w := bufio.NewWriter(&b)
	const filler = "Thanks for the call today; I'm happy to continue with the next step. "
	for line := 0; b.Len()+w.Buffered() < size; line++ {
		rest := size - b.Len() - w.Buffered()
		if rest <= 2 {
			w.WriteString("\r\n") // may exceed size by one byte
			break
		}
		l := fmt.Sprintf("%06d %s", line, filler)
		l = l[:min(len(l), 76, rest-2)]
		w.WriteString(l)
		w.WriteString("\r\n")
	}
	w.Flush()
	return b.Bytes()
}
