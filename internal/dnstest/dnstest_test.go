package dnstest

import (
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

func ask(t *testing.T, s *Server, net, name string) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), dns.TypeTXT)
	c := &dns.Client{Net: net, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, s.Addr())
	if err != nil {
		t.Fatalf("%s query: %v", net, err)
	}
	return r
}

func TestServer(t *testing.T) {
	s := Start(t)
	if !strings.HasPrefix(s.Addr(), "127.0.0.1:") {
		t.Fatalf("addr %s", s.Addr())
	}
	long := strings.Repeat("x", 300) + `"\`
	s.SetTXT("A.example.com", "one", long)

	r := ask(t, s, "udp", "a.EXAMPLE.com")
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 2 {
		t.Fatalf("%v", r)
	}
	if got := r.Answer[0].(*dns.TXT).Txt; len(got) != 1 || got[0] != "one" {
		t.Fatalf("%q", got)
	}
	if got := r.Answer[1].(*dns.TXT).Txt; len(got) != 2 || len(got[0]) != 255 {
		t.Fatalf("long value not split in 255-byte strings: %d strings", len(got))
	}

	if r := ask(t, s, "udp", "missing.example.com"); r.Rcode != dns.RcodeNameError {
		t.Fatalf("want NXDOMAIN, got %v", dns.RcodeToString[r.Rcode])
	}
	s.SetServfail("a.example.com")
	if r := ask(t, s, "tcp", "a.example.com"); r.Rcode != dns.RcodeServerFailure {
		t.Fatalf("want SERVFAIL over TCP, got %v", dns.RcodeToString[r.Rcode])
	}
	s.SetNoData("a.example.com")
	if r := ask(t, s, "udp", "a.example.com"); r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Fatalf("want NODATA, got %v", r)
	}
	s.SetTXT("a.example.com")
	if r := ask(t, s, "udp", "a.example.com"); r.Rcode != dns.RcodeNameError {
		t.Fatal("SetTXT with no values must remove the name")
	}

	// Big answer over UDP without EDNS0: truncated.
	s.SetTXT("big.example.com", strings.Repeat("y", 1000))
	if r := ask(t, s, "udp", "big.example.com"); !r.Truncated {
		t.Fatal("want TC bit")
	}
	if r := ask(t, s, "tcp", "big.example.com"); r.Truncated || len(r.Answer) != 1 {
		t.Fatal("TCP answer must be complete")
	}
	if q := s.Queries(); q != 7 {
		t.Fatalf("Queries = %d, want 7", q)
	}

	s.SetDelay(150 * time.Millisecond)
	start := time.Now()
	ask(t, s, "udp", "big.example.com")
	if time.Since(start) < 150*time.Millisecond {
		t.Fatal("SetDelay not applied")
	}

	// Answers held by a delay go out as soon as the delay changes.
	s.SetDelay(time.Minute)
	answered := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		m := new(dns.Msg)
		m.SetQuestion(dns.Fqdn("big.example.com"), dns.TypeTXT)
		(&dns.Client{Net: "tcp", Timeout: 10 * time.Second}).Exchange(m, s.Addr())
		answered <- time.Since(start)
	}()
	for s.Queries() < 9 {
		time.Sleep(time.Millisecond)
	}
	s.SetDelay(0)
	if d := <-answered; d > 5*time.Second {
		t.Fatalf("the held answer came after %v, not when the delay was lifted", d)
	}
}

func TestKeys(t *testing.T) {
	priv, rec := GenRSA(t, 2048)
	p := strings.TrimPrefix(rec, "v=DKIM1; k=rsa; p=")
	der, err := base64.StdEncoding.DecodeString(p)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil || !pub.(*rsa.PublicKey).Equal(&priv.PublicKey) {
		t.Fatalf("RSA record does not match the key: %v", err)
	}

	ed, rec := GenEd25519(t)
	p = strings.TrimPrefix(rec, "v=DKIM1; k=ed25519; p=")
	raw, err := base64.StdEncoding.DecodeString(p)
	if err != nil || !ed25519.PublicKey(raw).Equal(ed.Public()) {
		t.Fatalf("Ed25519 record does not match the key: %v", err)
	}
}
