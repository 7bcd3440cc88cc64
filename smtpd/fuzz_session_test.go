package smtpd

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"syncrelay/internal/testutil"
)

// The whole-session fuzz target keeps its own fixtures (not harness_test.go's)
// so that it only depends on the package's exported surface: New, Serve,
// Shutdown and the two interfaces.

const fuzzInbound = "acme-fuzz7q2k@relay.test"

// fuzzRecipients knows one inbound address; "fail@" addresses fail the
// lookup (a store error must become a 4xx, not a hang or a panic).
type fuzzRecipients struct{}

func (fuzzRecipients) InboundTenant(_ context.Context, addr string) (string, bool, error) {
	switch {
	case addr == fuzzInbound:
		return "acme", true, nil
	case strings.HasPrefix(addr, "fail@"):
		return "", false, errors.New("store unavailable")
	}
	return "", false, nil
}

// fuzzDeliverer reads the whole message, as the router does, and accepts it.
type fuzzDeliverer struct{}

func (fuzzDeliverer) Deliver(_ context.Context, d *Delivery) error {
	_, err := io.Copy(io.Discard, d.Message.Open())
	return err
}

// fuzzTLS is a self-signed certificate for STARTTLS (generated once per
// process: fuzzed bytes after STARTTLS are a failed handshake, which must
// end the session cleanly too).
var fuzzTLS = sync.OnceValues(func() (*tls.Config, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mx.relay.test"},
		DNSNames: []string{"mx.relay.test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, nil
})

// replyLineRE is one SMTP reply line (RFC 5321 §4.2): three digits, then a
// space or a hyphen, then text.
var replyLineRE = regexp.MustCompile(`^[2-5][0-5][0-9]([ -].*)?$`)

// fuzzSessionSeeds are whole client streams: ordinary sessions, pipelining,
// BDAT, dot-stuffing, bare line endings, limits and nonsense.
var fuzzSessionSeeds = []string{
	"EHLO client.test\r\nMAIL FROM:<carl@cand.test>\r\nRCPT TO:<" + fuzzInbound + ">\r\nDATA\r\n" +
		"From: carl@cand.test\r\nSubject: hi\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n",
	"HELO client.test\r\nMAIL FROM:<>\r\nRCPT TO:<" + fuzzInbound + ">\r\nRCPT TO:<nobody@relay.test>\r\nRCPT TO:<fail@relay.test>\r\nDATA\r\nx\r\n.\r\n",
	"EHLO c\r\nMAIL FROM:<a@b> BODY=BINARYMIME SIZE=20\r\nRCPT TO:<" + fuzzInbound + ">\r\nBDAT 5\r\nab\r\ncBDAT 3 LAST\r\nd\r\n",
	"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<" + fuzzInbound + ">\r\nDATA\r\nbare\nLF\r\nand\rCR\r\n.\r\nRSET\r\nNOOP\r\nQUIT\r\n",
	"EHLO c\r\nSTARTTLS\r\n\x16\x03\x01\x00\x05hello",
	"EHLO c\r\nAUTH PLAIN AGFiAGM=\r\nVRFY x\r\nEXPN y\r\nHELP\r\nTURN\r\n",
	"MAIL FROM:<a@b>\r\nDATA\r\nEHLO c\r\nEHLO c\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\n",
	"EHLO c\r\nMAIL FROM:<a@b> SMTPUTF8\r\nRCPT TO:<ü@relay.test>\r\n" + strings.Repeat("x", 1100) + "\r\n",
	"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<" + fuzzInbound + ">\r\nDATA\r\nx\r\n", // EOF inside DATA
	"\x00\xff\r\n\r\n \r\nehlo\r\n",
	// Over the size limit (64 KiB here): SIZE=, a first chunk and a later
	// one (go-smtp patches 5 and 6), the client gone in the discarded chunk.
	"EHLO c\r\nMAIL FROM:<a@b> SIZE=70000\r\nMAIL FROM:<a@b>\r\nRCPT TO:<" + fuzzInbound + ">\r\nBDAT 70000 LAST\r\nshort",
	"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<" + fuzzInbound + ">\r\nBDAT 10\r\n0123456789BDAT 65530\r\nxBDAT 3 LAST\r\nabc",
}

// FuzzSession feeds an arbitrary client byte stream into a real server over
// loopback TCP and checks that it greets, answers only well-formed replies,
// never panics and closes the session within a bounded time once the client
// has nothing more to say.
func FuzzSession(f *testing.F) {
	for _, s := range fuzzSessionSeeds {
		f.Add([]byte(s))
	}
	cfg, err := fuzzTLS()
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		logs := &testutil.SyncBuf{}
		addr := startFuzzServer(t, cfg, logs)
		out := runFuzzSession(t, addr, in)
		checkFuzzReplies(t, in, out)
		// A recovered panic is logged with a "panic" attribute (ours) or as
		// go-smtp's "panic serving ..." line; JSON quoting keeps client
		// text from forging either.
		if l := logs.String(); strings.Contains(l, `"panic":`) || strings.Contains(l, `"msg":"panic`) {
			t.Fatalf("input %q: the server panicked:\n%s", in, logs)
		}
	})
}

// startFuzzServer serves on a fresh loopback listener with short timeouts,
// so that no input can hold a session for long; it is shut down (and must
// stop) when the input is done.
func startFuzzServer(t *testing.T, cfg *tls.Config, logs io.Writer) string {
	t.Helper()
	s, err := New(Options{
		Hostname: "mx.relay.test", TLS: cfg, SpoolDir: t.TempDir(),
		MaxMessageBytes: 64 << 10, MaxRecipients: 5, MaxLineLength: 1000,
		CommandTimeout: 2 * time.Second, DataTimeout: 2 * time.Second,
		Logger: slog.New(slog.NewJSONHandler(logs, nil)),
	}, fuzzRecipients{}, fuzzDeliverer{})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return l.Addr().String()
}

// runFuzzSession reads the greeting, writes in, half-closes and reads every
// reply until the server closes the connection (at most 10 s).
func runFuzzSession(t *testing.T, addr string, in []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	greeting, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(greeting, "220 ") {
		t.Fatalf("no greeting: %q %v", greeting, err)
	}
	// Write while reading: the server may answer (or hang up) before it
	// has read everything, and must not deadlock on a full socket.
	go func() {
		c.Write(in)
		c.(*net.TCPConn).CloseWrite()
	}()
	out, err := io.ReadAll(br)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("input %q: the session did not end within 10 s; replies so far:\n%s", in, out)
	}
	// A reset after the server hung up on unread input loses nothing we check.
	return append([]byte(greeting), out...)
}

// checkFuzzReplies: every line the server wrote in clear text is an SMTP
// reply. After a successful STARTTLS the rest is TLS, not checked.
func checkFuzzReplies(t *testing.T, in, out []byte) {
	t.Helper()
	for _, line := range strings.SplitAfter(string(out), "\n") {
		if line == "" {
			continue
		}
		if !strings.HasSuffix(line, "\r\n") {
			t.Fatalf("input %q: reply %q not terminated by CRLF in:\n%s", in, line, out)
		}
		if !replyLineRE.MatchString(strings.TrimSuffix(line, "\r\n")) {
			t.Fatalf("input %q: malformed reply %q in:\n%s", in, line, out)
		}
		if strings.HasPrefix(line, "220 2.0.0 Ready to start TLS") {
			return // the TLS handshake follows
		}
	}
}
