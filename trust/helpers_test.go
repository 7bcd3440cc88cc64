//go:debug rsa1024min=0

package trust

// Test-only signers: DKIM signatures go-msgauth refuses to produce (rsa-sha1,
// l=) and ARC sets (RFC 8617), built with real keys. The header/seal digests
// come from the package (headerDigest, sealDigest) whose header handling is
// cross-checked against go-msgauth's signer in canon_test.go.

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"syncrelay/dnsres"
	"syncrelay/internal/dkimtest"
	"syncrelay/internal/dnstest"
)

// Keys are made once per test binary (RSA generation is slow under -race):
// the RSA-2048 ones are fixed keys (dkimtest), the others generated.
type testKey struct {
	signer crypto.Signer
	record string
}

var (
	keyMu    sync.Mutex
	keyCache = map[string]testKey{}
)

func rsaKey(t testing.TB, name string, bits int) testKey {
	t.Helper()
	keyMu.Lock()
	defer keyMu.Unlock()
	id := fmt.Sprintf("rsa-%s-%d", name, bits)
	if k, ok := keyCache[id]; ok {
		return k
	}
	var k testKey
	if i, ok := fixedRSA[name]; ok && bits == 2048 {
		k.signer, k.record = dkimtest.RSA(t, i)
	} else {
		k.signer, k.record = dnstest.GenRSA(t, bits)
	}
	keyCache[id] = k
	return k
}

// fixedRSA gives the names the tests use an RSA-2048 key of
// internal/dkimtest's each: generating one costs 50-500 ms of CPU.
var fixedRSA = map[string]int{"acme": 0, "canon": 1, "evil": 2, "google": 3}

func edKey(t testing.TB, name string) testKey {
	t.Helper()
	keyMu.Lock()
	defer keyMu.Unlock()
	id := "ed-" + name
	if k, ok := keyCache[id]; ok {
		return k
	}
	priv, rec := dnstest.GenEd25519(t)
	k := testKey{priv, rec}
	keyCache[id] = k
	return k
}

// env is a real DNS server on loopback plus a caching resolver and verifier.
type env struct {
	srv *dnstest.Server
	res *dnsres.Cache
	v   *Verifier
}

func newEnv(t testing.TB) *env {
	t.Helper()
	srv := dnstest.Start(t)
	res, err := dnsres.New(dnsres.Options{Server: srv.Addr(), Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return &env{srv: srv, res: res, v: &Verifier{Resolver: res}}
}

func (e *env) publish(selector, domain string, k testKey) {
	e.srv.SetTXT(selector+"._domainkey."+domain, k.record)
}

func (e *env) verify(t testing.TB, msg []byte) Verdict {
	t.Helper()
	v, err := e.v.Verify(context.Background(), bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return v
}

// message builds a plain message (CRLF line ends).
func message(from, subject, body string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: Someone <%s>\r\n", from)
	b.WriteString("To: rec@acme.test\r\n")
	fmt.Fprintf(&b, "Subject: %s\r\n", subject)
	b.WriteString("Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n")
	b.WriteString("Message-ID: <abc123@cand.test>\r\n")
	b.WriteString("MIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: text/plain; charset=utf-8\r\n")
	b.WriteString("\r\n")
	b.WriteString(body)
	return b.Bytes()
}

var signedHeaders = []string{"From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"}

// dkimSign signs msg with go-msgauth.
func dkimSign(t testing.TB, msg []byte, domain, selector string, k testKey, mod func(*dkim.SignOptions)) []byte {
	t.Helper()
	opts := &dkim.SignOptions{
		Domain:                 domain,
		Selector:               selector,
		Signer:                 k.signer,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             signedHeaders,
	}
	if mod != nil {
		mod(opts)
	}
	var out bytes.Buffer
	if err := dkim.Sign(&out, bytes.NewReader(msg), opts); err != nil {
		t.Fatalf("dkim.Sign: %v", err)
	}
	return out.Bytes()
}

func splitMessage(t testing.TB, msg []byte) ([]string, []byte) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(msg))
	fields, err := readHeader(br, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	var body bytes.Buffer
	body.ReadFrom(br)
	return fields, body.Bytes()
}

func joinMessage(fields []string, body []byte) []byte {
	var b bytes.Buffer
	for _, f := range fields {
		b.WriteString(f)
	}
	b.WriteString(crlf)
	b.Write(body)
	return b.Bytes()
}

// sigSpec describes a DKIM-style signature to compute by hand.
type sigSpec struct {
	name       string      // DKIM-Signature or ARC-Message-Signature
	tags       [][2]string // in order; bh and b are added
	headerKeys []string
	relaxed    bool // header and body canonicalisation relaxed (else simple)
	hash       crypto.Hash
	bodyLimit  int // >= 0: hash only that many canonical body bytes (l=)
}

func digestOf(h crypto.Hash) hash.Hash {
	if h == crypto.SHA1 {
		return sha1.New()
	}
	return sha256.New()
}

func signWith(t testing.TB, k crypto.Signer, h crypto.Hash, digest []byte) string {
	t.Helper()
	opts := crypto.SignerOpts(h)
	if _, ok := k.(ed25519.PrivateKey); ok {
		opts = crypto.Hash(0)
	}
	sig, err := k.Sign(rand.Reader, digest, opts)
	if err != nil {
		t.Fatalf("sign: %v", err)
	}
	return base64.StdEncoding.EncodeToString(sig)
}

// signField computes a signature header field over msg and returns it
// (name, tags folded over lines, b= last, final CRLF).
func signField(t testing.TB, msg []byte, k crypto.Signer, s sigSpec) string {
	t.Helper()
	fields, body := splitMessage(t, msg)
	if s.hash == 0 {
		s.hash = crypto.SHA256
	}
	var canon bytes.Buffer
	bc := newBodyCanonicalizer(&canon, s.relaxed)
	bc.Write(body)
	bc.Close()
	cb := canon.Bytes()
	if s.bodyLimit >= 0 && s.bodyLimit < len(cb) {
		cb = cb[:s.bodyLimit]
	}
	bh := digestOf(s.hash)
	bh.Write(cb)

	var f strings.Builder
	f.WriteString(s.name + ":")
	for i, tv := range s.tags {
		if i > 0 {
			f.WriteString("\r\n\t")
		}
		fmt.Fprintf(&f, " %s=%s;", tv[0], tv[1])
	}
	fmt.Fprintf(&f, "\r\n\th=%s;", strings.Join(s.headerKeys, ":"))
	fmt.Fprintf(&f, "\r\n\tbh=%s;", base64.StdEncoding.EncodeToString(bh.Sum(nil)))
	f.WriteString("\r\n\tb=")
	unsigned := f.String() + crlf

	// Header hash: same as headerDigest, with the requested hash function.
	hh := digestOf(s.hash)
	picker := newHeaderPicker(fields)
	for _, name := range s.headerKeys {
		if hf, ok := picker.pick(name); ok {
			hh.Write([]byte(canonHeader(hf, s.relaxed)))
		}
	}
	hh.Write([]byte(strings.TrimRight(canonHeader(unsigned, s.relaxed), crlf)))
	return f.String() + signWith(t, k, s.hash, hh.Sum(nil)) + crlf
}

// prepend adds header fields on top of msg.
func prepend(msg []byte, fields ...string) []byte {
	var b bytes.Buffer
	for _, f := range fields {
		b.WriteString(f)
	}
	b.Write(msg)
	return b.Bytes()
}

// seal is what an ARC sealer adds.
type seal struct {
	domain, selector string
	key              testKey
	authservID       string
	results          string // AAR results, e.g. "dkim=pass header.d=acme.test"
	cv               string // "" = none for i=1, pass otherwise
	algo             string // "" = from the key
}

var arcInstanceRE = regexp.MustCompile(`(?i)^\s*i\s*=\s*([0-9]+)`)

// SealForTest adds a real ARC set (AAR, AMS, AS) to msg, as a forwarder
// would after modifying it.
func SealForTest(t testing.TB, msg []byte, s seal) []byte {
	t.Helper()
	fields, _ := splitMessage(t, msg)
	type set struct{ aar, ams, as string }
	existing := map[int]*set{}
	n := 0
	for _, f := range fields {
		name := strings.ToLower(fieldName(f))
		var inst int
		switch name {
		case "arc-authentication-results":
			m := arcInstanceRE.FindStringSubmatch(rawValue(f))
			if m == nil {
				t.Fatalf("bad AAR %q", f)
			}
			inst, _ = strconv.Atoi(m[1])
		case "arc-message-signature", "arc-seal":
			tags, err := parseTags(rawValue(f))
			if err != nil {
				t.Fatal(err)
			}
			inst, _ = strconv.Atoi(stripWS(tags["i"]))
		default:
			continue
		}
		if existing[inst] == nil {
			existing[inst] = &set{}
		}
		switch name {
		case "arc-authentication-results":
			existing[inst].aar = f
		case "arc-message-signature":
			existing[inst].ams = f
		default:
			existing[inst].as = f
		}
		n = max(n, inst)
	}
	i := n + 1
	algo := s.algo
	if algo == "" {
		algo = "rsa-sha256"
		if _, ok := s.key.signer.(ed25519.PrivateKey); ok {
			algo = "ed25519-sha256"
		}
	}
	cv := s.cv
	if cv == "" {
		cv = "pass"
		if i == 1 {
			cv = "none"
		}
	}
	authserv := s.authservID
	if authserv == "" {
		authserv = "mx." + s.domain
	}
	aar := fmt.Sprintf("ARC-Authentication-Results: i=%d; %s;\r\n\t%s\r\n", i, authserv, s.results)

	// AMS over the message as it leaves the sealer (ARC fields not signed).
	var hk []string
	for _, f := range fields {
		name := fieldName(f)
		l := strings.ToLower(name)
		if strings.HasPrefix(l, "arc-") || l == "dkim-signature" || l == "authentication-results" {
			continue
		}
		hk = append(hk, name)
	}
	sort.Strings(hk)
	hk = dedupFold(hk)
	ams := signField(t, msg, s.key.signer, sigSpec{
		name: "ARC-Message-Signature",
		tags: [][2]string{
			{"i", strconv.Itoa(i)}, {"a", algo}, {"c", "relaxed/relaxed"},
			{"d", s.domain}, {"s", s.selector}, {"t", "1700000000"},
		},
		headerKeys: hk,
		relaxed:    true,
		bodyLimit:  -1,
	})

	// AS over all sets.
	asUnsigned := fmt.Sprintf("ARC-Seal: i=%d; a=%s; t=1700000000; cv=%s;\r\n\td=%s; s=%s;\r\n\tb=", i, algo, cv, s.domain, s.selector)
	var sets []arcSet
	for j := 1; j < i; j++ {
		e := existing[j]
		if e == nil {
			t.Fatalf("SealForTest: existing chain lacks i=%d", j)
		}
		sets = append(sets, arcSet{aar: e.aar, ams: e.ams, as: e.as})
	}
	sets = append(sets, arcSet{aar: aar, ams: ams, as: asUnsigned + crlf})
	as := asUnsigned + signWith(t, s.key.signer, crypto.SHA256, sealDigest(sets, i)) + crlf
	return prepend(msg, as, ams, aar)
}

func dedupFold(s []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, x := range s {
		if !seen[strings.ToLower(x)] {
			seen[strings.ToLower(x)] = true
			out = append(out, x)
		}
	}
	return out
}

// forward emulates a forwarder that edits the subject (breaking the
// original DKIM signature) the way list managers and gateways do.
func forward(msg []byte) []byte {
	return bytes.Replace(msg, []byte("\r\nSubject: "), []byte("\r\nSubject: [EXT] "), 1)
}

func writeZone(t testing.TB, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "zone.txt")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// zoneLine renders a key record as a zone file line, split into two quoted
// strings to exercise concatenation.
func zoneLine(name, record string) string {
	half := len(record) / 2
	return fmt.Sprintf("%s TXT %q %q", name, record[:half], record[half:])
}
