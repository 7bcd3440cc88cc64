// Package dnstest runs a real authoritative-style DNS server on loopback
// (UDP and TCP on the same 127.0.0.1 port) for tests, and generates DKIM keys
// with their TXT records.
package dnstest

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// Server is a DNS server answering TXT queries from an in-memory table.
// Unknown names get NXDOMAIN. UDP answers larger than the client's
// advertised size (512 without EDNS0) are truncated, so clients must retry
// over TCP. All methods are safe for concurrent use.
type Server struct {
	addr    string
	udp     *dns.Server
	tcp     *dns.Server
	stop    chan struct{}
	queries atomic.Int64

	mu       sync.Mutex
	txt      map[string][]string
	servfail map[string]bool
	delay    time.Duration
	delayed  chan struct{} // closed when the delay changes
	ttl      uint32
}

// Start starts a server on 127.0.0.1 (random port) and stops it when the test
// ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{
		stop:     make(chan struct{}),
		txt:      make(map[string][]string),
		servfail: make(map[string]bool),
		delayed:  make(chan struct{}),
		ttl:      300,
	}
	var (
		pc  net.PacketConn
		ln  net.Listener
		err error
	)
	// UDP and TCP must share the port (clients retry truncated answers over
	// TCP to the same address); the random UDP port may be taken for TCP.
	for try := 0; try < 20; try++ {
		pc, err = net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("dnstest: listen udp: %v", err)
		}
		ln, err = net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			break
		}
		pc.Close()
	}
	if err != nil {
		t.Fatalf("dnstest: listen tcp: %v", err)
	}
	s.addr = pc.LocalAddr().String()
	h := dns.HandlerFunc(s.serve)

	udpUp, tcpUp := make(chan struct{}), make(chan struct{})
	s.udp = &dns.Server{PacketConn: pc, Handler: h, NotifyStartedFunc: func() { close(udpUp) }}
	s.tcp = &dns.Server{Listener: ln, Handler: h, NotifyStartedFunc: func() { close(tcpUp) }}
	go s.udp.ActivateAndServe()
	go s.tcp.ActivateAndServe()
	<-udpUp
	<-tcpUp
	t.Cleanup(s.Close)
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// Close stops the server. Called automatically at the end of the test.
func (s *Server) Close() {
	select {
	case <-s.stop:
		return
	default:
	}
	close(s.stop)
	s.udp.Shutdown()
	s.tcp.Shutdown()
}

// SetTXT sets the TXT records of name, one record per value (a value longer
// than 255 bytes is split into several character-strings of the record, as
// DNS requires). No values removes the name (NXDOMAIN). It also clears a
// SetServfail for the name.
func (s *Server) SetTXT(name string, values ...string) {
	key := canon(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.servfail, key)
	if len(values) == 0 {
		delete(s.txt, key)
		return
	}
	s.txt[key] = append([]string(nil), values...)
}

// SetServfail makes queries for name answer SERVFAIL.
func (s *Server) SetServfail(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.servfail[canon(name)] = true
}

// SetDelay delays every answer by d (0 for none). Answers still held by
// the delay before go out at once: a test that ends a fault need not wait
// for the answers its clients already gave up on.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
	close(s.delayed)
	s.delayed = make(chan struct{})
}

// SetTTL sets the TTL of answers (default 300 s).
func (s *Server) SetTTL(seconds uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ttl = seconds
}

// Queries is the number of queries received so far (UDP and TCP).
func (s *Server) Queries() int { return int(s.queries.Load()) }

func canon(name string) string { return strings.ToLower(dns.Fqdn(name)) }

func (s *Server) serve(w dns.ResponseWriter, req *dns.Msg) {
	s.queries.Add(1)
	s.mu.Lock()
	delay, changed := s.delay, s.delayed
	s.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-changed:
		case <-s.stop:
			return
		}
	}

	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	key := strings.ToLower(q.Name)

	s.mu.Lock()
	servfail := s.servfail[key]
	values, ok := s.txt[key]
	ttl := s.ttl
	s.mu.Unlock()

	switch {
	case servfail:
		m.Rcode = dns.RcodeServerFailure
	case !ok:
		m.Rcode = dns.RcodeNameError
	case q.Qtype == dns.TypeTXT || q.Qtype == dns.TypeANY:
		for _, v := range values {
			m.Answer = append(m.Answer, &dns.TXT{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: ttl},
				Txt: splitTXT(v),
			})
		}
	default:
		// NODATA: the name exists, no record of that type.
	}

	if opt := req.IsEdns0(); opt != nil {
		m.SetEdns0(opt.UDPSize(), false)
	}
	if _, isUDP := w.RemoteAddr().(*net.UDPAddr); isUDP {
		size := dns.MinMsgSize
		if opt := req.IsEdns0(); opt != nil && int(opt.UDPSize()) > size {
			size = int(opt.UDPSize())
		}
		m.Truncate(size)
	}
	w.WriteMsg(m)
}

// splitTXT splits v into <=255-byte character-strings in miekg/dns's
// presentation (escaped) form.
func splitTXT(v string) []string {
	var out []string
	for {
		n := min(len(v), 255)
		out = append(out, escapeTXT(v[:n]))
		v = v[n:]
		if v == "" {
			return out
		}
	}
}

func escapeTXT(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < ' ' || c > '~':
			b.WriteByte('\\')
			b.WriteByte('0' + c/100)
			b.WriteByte('0' + c/10%10)
			b.WriteByte('0' + c%10)
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}

// GenRSA generates an RSA key of the given size and its DKIM key record
// ("v=DKIM1; k=rsa; p=<base64 SubjectPublicKeyInfo>"). Keys under 1024 bits
// need GODEBUG=rsa1024min=0 (a `//go:debug rsa1024min=0` line in a _test.go
// file of the test binary).
func GenRSA(t testing.TB, bits int) (*rsa.PrivateKey, string) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		t.Fatalf("dnstest: generating %d-bit RSA key: %v", bits, err)
	}
	der, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatalf("dnstest: %v", err)
	}
	return key, "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
}

// GenEd25519 generates an Ed25519 key and its DKIM key record (RFC 8463:
// "v=DKIM1; k=ed25519; p=<base64 raw 32-byte public key>").
func GenEd25519(t testing.TB) (ed25519.PrivateKey, string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("dnstest: generating Ed25519 key: %v", err)
	}
	return priv, "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(pub)
}

// SetNoData makes name exist without TXT records: queries get NOERROR with an
// empty answer (NODATA).
func (s *Server) SetNoData(name string) {
	key := canon(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.servfail, key)
	s.txt[key] = []string{}
}
