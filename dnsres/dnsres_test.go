package dnsres_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"syncrelay/dnsres"
	"syncrelay/internal/dnstest"
)

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newCache(t *testing.T, srv *dnstest.Server, clock *fakeClock, mod func(*dnsres.Options)) *dnsres.Cache {
	t.Helper()
	o := dnsres.Options{Server: srv.Addr(), Timeout: 2 * time.Second, TTL: time.Hour, NegativeTTL: time.Minute}
	if clock != nil {
		o.Now = clock.Now
	}
	if mod != nil {
		mod(&o)
	}
	c, err := dnsres.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLookupAndCache(t *testing.T) {
	srv := dnstest.Start(t)
	srv.SetTXT("sel._domainkey.example.com", "v=DKIM1; k=rsa; p=AAAA", `odd "quoted" \ value`)
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	c := newCache(t, srv, clock, nil)
	ctx := context.Background()

	got, err := c.LookupTXT(ctx, "SEL._domainkey.Example.COM.")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"v=DKIM1; k=rsa; p=AAAA", `odd "quoted" \ value`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("got %q, want %q", got, want)
	}
	got[0] = "mutated" // the cache must hand out copies
	for i := 0; i < 3; i++ {
		got, err = c.LookupTXT(ctx, "sel._domainkey.example.com")
		if err != nil || got[0] != want[0] {
			t.Fatalf("cached lookup: %q %v", got, err)
		}
	}
	if q := srv.Queries(); q != 1 {
		t.Fatalf("queries = %d, want 1 (cached)", q)
	}
	// Record TTL is 300 s (< TTL option): expires after that.
	clock.Add(301 * time.Second)
	if _, err := c.LookupTXT(ctx, "sel._domainkey.example.com"); err != nil {
		t.Fatal(err)
	}
	if q := srv.Queries(); q != 2 {
		t.Fatalf("queries = %d, want 2 after expiry", q)
	}
	hits, queries := c.Stats()
	if hits != 3 || queries != 2 {
		t.Fatalf("stats = %d hits %d queries", hits, queries)
	}
}

func TestNXDOMAINIsPermanentAndNegativelyCached(t *testing.T) {
	srv := dnstest.Start(t)
	clock := &fakeClock{t: time.Unix(1e9, 0)}
	c := newCache(t, srv, clock, nil)
	ctx := context.Background()
	for i := 0; i < 2; i++ {
		_, err := c.LookupTXT(ctx, "missing._domainkey.example.com")
		if !dnsres.IsNotFound(err) || dnsres.IsTemporary(err) {
			t.Fatalf("err = %v, want permanent not-found", err)
		}
		var ne net.Error
		if !errors.As(err, &ne) || ne.Temporary() || ne.Timeout() {
			t.Fatalf("net.Error Temporary()/Timeout() must be false: %#v", err)
		}
	}
	if q := srv.Queries(); q != 1 {
		t.Fatalf("queries = %d, want 1 (negative cache)", q)
	}
	srv.SetTXT("missing._domainkey.example.com", "now here")
	clock.Add(61 * time.Second)
	got, err := c.LookupTXT(ctx, "missing._domainkey.example.com")
	if err != nil || got[0] != "now here" {
		t.Fatalf("after negative TTL: %q %v", got, err)
	}
}

func TestNODATAIsNotFound(t *testing.T) {
	srv := dnstest.Start(t)
	srv.SetNoData("empty.example.com")
	c := newCache(t, srv, nil, nil)
	_, err := c.LookupTXT(context.Background(), "empty.example.com")
	if !dnsres.IsNotFound(err) || dnsres.IsTemporary(err) || !strings.Contains(err.Error(), "NODATA") {
		t.Fatalf("NODATA: %v", err)
	}
}

func TestInvalidNameIsPermanentWithoutQuery(t *testing.T) {
	srv := dnstest.Start(t)
	c := newCache(t, srv, nil, nil)
	for _, name := range []string{"bad name!._domainkey.example.com", "a..b", "", strings.Repeat("a", 64) + ".com"} {
		_, err := c.LookupTXT(context.Background(), name)
		if !dnsres.IsNotFound(err) || dnsres.IsTemporary(err) {
			t.Fatalf("invalid name %q: %v", name, err)
		}
	}
	if srv.Queries() != 0 {
		t.Fatal("an invalid name must not be sent")
	}
}

func TestServfailIsTemporaryAndNotCached(t *testing.T) {
	srv := dnstest.Start(t)
	srv.SetServfail("sel._domainkey.broken.example")
	c := newCache(t, srv, nil, nil)
	ctx := context.Background()
	for i := 1; i <= 2; i++ {
		_, err := c.LookupTXT(ctx, "sel._domainkey.broken.example")
		if !dnsres.IsTemporary(err) || dnsres.IsNotFound(err) {
			t.Fatalf("err = %v, want temporary", err)
		}
		// go-msgauth does a plain type assertion: the error itself must be a net.Error.
		ne, ok := err.(net.Error)
		if !ok || !ne.Temporary() || ne.Timeout() {
			t.Fatalf("want net.Error with Temporary() && !Timeout(): %#v", err)
		}
		if !strings.Contains(err.Error(), "SERVFAIL") {
			t.Fatalf("error should name SERVFAIL: %v", err)
		}
		if q := srv.Queries(); q != i {
			t.Fatalf("queries = %d, want %d (temporary errors are not cached)", q, i)
		}
	}
	srv.SetTXT("sel._domainkey.broken.example", "ok")
	if got, err := c.LookupTXT(ctx, "sel._domainkey.broken.example"); err != nil || got[0] != "ok" {
		t.Fatalf("after recovery: %q %v", got, err)
	}
}

func TestTimeoutIsTemporaryTimeout(t *testing.T) {
	t.Parallel() // its own server; it waits for the 200 ms timeout
	srv := dnstest.Start(t)
	srv.SetTXT("slow.example.com", "v")
	srv.SetDelay(2 * time.Second)
	c := newCache(t, srv, nil, func(o *dnsres.Options) { o.Timeout = 200 * time.Millisecond })
	start := time.Now()
	_, err := c.LookupTXT(context.Background(), "slow.example.com")
	if el := time.Since(start); el > 1500*time.Millisecond {
		t.Fatalf("lookup took %v, want ~200ms", el)
	}
	ne, ok := err.(net.Error)
	if !ok || !ne.Timeout() || !ne.Temporary() {
		t.Fatalf("want net.Error timeout: %#v", err)
	}
	if !dnsres.IsTemporary(err) {
		t.Fatal("IsTemporary")
	}
}

func TestCallerContextCancelled(t *testing.T) {
	t.Parallel() // its own server; it waits for the caller's 50 ms
	srv := dnstest.Start(t)
	srv.SetTXT("slow.example.com", "v")
	srv.SetDelay(300 * time.Millisecond)
	c := newCache(t, srv, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.LookupTXT(ctx, "slow.example.com")
	if ne, ok := err.(net.Error); !ok || !ne.Timeout() || !ne.Temporary() {
		t.Fatalf("want temporary timeout, got %#v", err)
	}
	// The detached query still completes and fills the cache. SetDelay(0)
	// sends the answer the delay holds now, rather than in 250 ms.
	srv.SetDelay(0)
	for deadline := time.Now().Add(10 * time.Second); c.Len() == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the detached query never filled the cache")
		}
	}
	if got, err := c.LookupTXT(context.Background(), "slow.example.com"); err != nil || got[0] != "v" {
		t.Fatalf("%q %v", got, err)
	}
	if q := srv.Queries(); q != 1 {
		t.Fatalf("queries = %d, want 1", q)
	}
}

func TestNetworkErrorIsTemporary(t *testing.T) {
	// A UDP port nobody listens on: ICMP port unreachable -> connection refused.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	c, err := dnsres.New(dnsres.Options{Server: addr, Timeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.LookupTXT(context.Background(), "x.example.com")
	if ne, ok := err.(net.Error); !ok || !ne.Temporary() || dnsres.IsNotFound(err) {
		t.Fatalf("want temporary net.Error, got %#v", err)
	}
}

func TestSingleflight(t *testing.T) {
	t.Parallel() // its own server; it waits for the 200 ms delay
	srv := dnstest.Start(t)
	srv.SetTXT("sel._domainkey.example.com", "v=DKIM1; p=x")
	srv.SetDelay(200 * time.Millisecond)
	c := newCache(t, srv, nil, nil)
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got, err := c.LookupTXT(context.Background(), "sel._domainkey.example.com")
			if err == nil && (len(got) != 1 || got[0] != "v=DKIM1; p=x") {
				err = errors.New("wrong answer " + strings.Join(got, ","))
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if q := srv.Queries(); q != 1 {
		t.Fatalf("queries = %d, want 1 shared query", q)
	}
}

func TestTruncatedAnswerRetriedOverTCP(t *testing.T) {
	srv := dnstest.Start(t)
	big := strings.Repeat("abcdefghij", 300) // 3000 bytes > 1232 EDNS size
	srv.SetTXT("big.example.com", big)
	c := newCache(t, srv, nil, nil)
	got, err := c.LookupTXT(context.Background(), "big.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != big {
		t.Fatalf("got %d records, len %d", len(got), len(got[0]))
	}
	if q := srv.Queries(); q != 2 {
		t.Fatalf("queries = %d, want 2 (UDP truncated + TCP)", q)
	}
}

func TestBoundedCache(t *testing.T) {
	srv := dnstest.Start(t)
	c := newCache(t, srv, nil, func(o *dnsres.Options) { o.MaxEntries = 10 })
	for i := 0; i < 30; i++ {
		name := "n" + string(rune('a'+i%26)) + string(rune('a'+i/26)) + ".example.com"
		srv.SetTXT(name, "v")
		if _, err := c.LookupTXT(context.Background(), name); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.Len(); n != 10 {
		t.Fatalf("cache holds %d entries, want 10", n)
	}
}

func TestSystemResolverConfig(t *testing.T) {
	// Only construction: no query is sent off loopback in tests.
	if _, err := dnsres.New(dnsres.Options{}); err != nil {
		if _, statErr := os.Stat("/etc/resolv.conf"); statErr == nil {
			t.Logf("system resolver config: %v", err)
		}
	}
	if _, err := dnsres.New(dnsres.Options{Server: "no-port"}); err == nil {
		t.Fatal("want error for server without port")
	}
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "zone.txt")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestZoneFile(t *testing.T) {
	p := writeFile(t, `# test zone
; another comment

sel._domainkey.example.com TXT "v=DKIM1; k=rsa; " "p=ABC"   # trailing comment
Sel2._domainkey.Example.com. 300 IN TXT "v=DKIM1; k=ed25519; p=\"q\"\\"
multi.example.com TXT "one"
multi.example.com	txt	"two"
paren.example.com IN TXT ( "v=DKIM1; "
    "p=LONG" ; comment inside
  )
`)
	z, err := dnsres.LoadZone(p)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cases := map[string][]string{
		"sel._domainkey.example.com":  {"v=DKIM1; k=rsa; p=ABC"},
		"sel2._domainkey.example.com": {`v=DKIM1; k=ed25519; p="q"\`},
		"MULTI.example.com.":          {"one", "two"},
		"paren.example.com":           {"v=DKIM1; p=LONG"},
	}
	for name, want := range cases {
		got, err := z.LookupTXT(ctx, name)
		if err != nil || strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("%s: got %q %v, want %q", name, got, err, want)
		}
	}
	_, err = z.LookupTXT(ctx, "nope.example.com")
	if !dnsres.IsNotFound(err) || dnsres.IsTemporary(err) {
		t.Fatalf("missing name: %v", err)
	}

	// Through New: answers only from the zone.
	c, err := dnsres.New(dnsres.Options{ZoneFile: p, Server: "192.0.2.1:53"})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.LookupTXT(ctx, "sel._domainkey.example.com"); err != nil || got[0] != "v=DKIM1; k=rsa; p=ABC" {
		t.Fatalf("%q %v", got, err)
	}
	if _, err := c.LookupTXT(ctx, "other.example.com"); !dnsres.IsNotFound(err) {
		t.Fatalf("zone mode must not fall back to DNS: %v", err)
	}
}

func TestZoneFileErrors(t *testing.T) {
	cases := map[string]string{
		"ok.example.com TXT \"a\"\nbad.example.com A 1.2.3.4\n":    ":2: unsupported record type",
		"x.example.com TXT v=DKIM1\n":                              ":1: TXT value must be quoted",
		"\n\nx.example.com TXT \"unterminated\n":                   ":3: unterminated",
		"x.example.com\n":                                          ":1: missing record type",
		"x.example.com TXT\n":                                      ":1: TXT record for",
		"bad name.example.com TXT \"v\"\n":                         ":1: ",
		"x.example.com TXT ( \"a\"\n\"b\"\n":                       ":1: unclosed",
		"\"q\" TXT \"a\"\n":                                        ":1: expected a name",
		"x.example.com TXT \"a\" )\n":                              ":1: unbalanced",
		"under_score.example.com TXT \"a\"\nbad..name TXT \"a\"\n": ":2: invalid name",
	}
	for content, want := range cases {
		p := writeFile(t, content)
		_, err := dnsres.LoadZone(p)
		if err == nil || !strings.Contains(err.Error(), p+want) {
			t.Errorf("%q: err = %v, want containing %q", content, err, p+want)
		}
	}
	if _, err := dnsres.LoadZone(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("missing file must fail")
	}
	if _, err := dnsres.New(dnsres.Options{ZoneFile: filepath.Join(t.TempDir(), "missing")}); err == nil {
		t.Fatal("New with missing zone file must fail")
	}
}
