// Package dnsres is the caching TXT resolver used to fetch DKIM and ARC
// public keys (SPEC §5).
//
// Error contract. Every error returned by a Resolver in this package is a
// *net.DNSError, so it satisfies net.Error directly (no wrapping). This matters:
// go-msgauth's dkim package turns a key lookup error into a DKIM "temperror"
// only when `err.(net.Error)` holds and Temporary() is true (a plain type
// assertion, not errors.As), and into a "permerror" otherwise.
//
//   - NXDOMAIN, an answer without TXT records (NODATA) and syntactically invalid
//     names are permanent: IsNotFound is true, Temporary() is false. They are
//     cached for Options.NegativeTTL.
//   - SERVFAIL (and any other non-success rcode), timeouts, network errors and
//     malformed answers are temporary: IsTemporary (and IsTimeout for
//     timeouts) is set, Temporary() is true. They are never cached, so the
//     forwarding server's retry (after our 451) asks again.
package dnsres

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
)

// Resolver looks up TXT records. Each returned string is one TXT record, the
// character-strings of a record concatenated (as net.LookupTXT does).
type Resolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// Options configures New. Zero values select the defaults noted per field.
type Options struct {
	// Server is the recursive resolver to ask, as host:port. Empty means the
	// nameservers of /etc/resolv.conf (127.0.0.1:53 and [::1]:53 when that
	// file does not exist, like the Go standard library).
	Server string
	// ZoneFile, when set, makes the cache answer only from that file (see
	// LoadZone); no query leaves the process. For tests and offline QA.
	ZoneFile string
	// Timeout bounds one lookup, all servers and the TCP retry included.
	// Default 5s.
	Timeout time.Duration
	// TTL is the longest time a positive answer is cached; a record with a
	// shorter DNS TTL is cached for that shorter time. Default 1h.
	TTL time.Duration
	// NegativeTTL is how long NXDOMAIN/NODATA answers are cached. Default 5m.
	NegativeTTL time.Duration
	// Now is the clock used for cache expiry. Default time.Now.
	Now func() time.Time
	// MaxEntries bounds the cache (least recently used entries are evicted).
	// Default 10000.
	MaxEntries int
}

const (
	defaultTimeout     = 5 * time.Second
	defaultTTL         = time.Hour
	defaultNegativeTTL = 5 * time.Minute
	defaultMaxEntries  = 10000
)

// Cache is a caching Resolver. It is safe for concurrent use. Concurrent
// lookups of the same name share one upstream query.
type Cache struct {
	opts     Options
	zone     *Zone
	upstream *client

	mu       sync.Mutex
	entries  map[string]*list.Element // of *entry
	lru      *list.List               // front = most recently used
	inflight map[string]*call

	queries atomic.Int64 // upstream lookups started (not cache hits)
	hits    atomic.Int64
}

type entry struct {
	name    string
	txts    []string
	err     error // permanent not-found error, or nil
	expires time.Time
}

type call struct {
	done chan struct{}
	txts []string
	err  error
}

// New returns a caching resolver. With o.ZoneFile set it answers only from
// the zone file; otherwise it queries o.Server (or the system's nameservers).
func New(o Options) (*Cache, error) {
	if o.Timeout <= 0 {
		o.Timeout = defaultTimeout
	}
	if o.TTL <= 0 {
		o.TTL = defaultTTL
	}
	if o.NegativeTTL <= 0 {
		o.NegativeTTL = defaultNegativeTTL
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxEntries <= 0 {
		o.MaxEntries = defaultMaxEntries
	}
	c := &Cache{
		opts:     o,
		entries:  make(map[string]*list.Element),
		lru:      list.New(),
		inflight: make(map[string]*call),
	}
	if o.ZoneFile != "" {
		z, err := LoadZone(o.ZoneFile)
		if err != nil {
			return nil, err
		}
		c.zone = z
		return c, nil
	}
	servers, err := serversFor(o.Server)
	if err != nil {
		return nil, err
	}
	c.upstream = newClient(servers, o.Timeout)
	return c, nil
}

func serversFor(server string) ([]string, error) {
	if server != "" {
		if _, _, err := net.SplitHostPort(server); err != nil {
			return nil, fmt.Errorf("dnsres: server %q: want host:port: %v", server, err)
		}
		return []string{server}, nil
	}
	const resolvConf = "/etc/resolv.conf"
	cfg, err := dns.ClientConfigFromFile(resolvConf)
	if errors.Is(err, os.ErrNotExist) {
		return []string{"127.0.0.1:53", "[::1]:53"}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("dnsres: reading %s: %v", resolvConf, err)
	}
	var servers []string
	for _, s := range cfg.Servers {
		servers = append(servers, net.JoinHostPort(s, cfg.Port))
	}
	if len(servers) == 0 {
		return nil, fmt.Errorf("dnsres: no nameserver in %s", resolvConf)
	}
	return servers, nil
}

// Stats reports how many lookups were answered from the cache and how many
// went upstream. With a zone file every lookup counts as a hit.
func (c *Cache) Stats() (hits, queries int64) {
	return c.hits.Load(), c.queries.Load()
}

// LookupTXT implements Resolver.
func (c *Cache) LookupTXT(ctx context.Context, name string) ([]string, error) {
	key, err := normalizeName(name)
	if err != nil {
		return nil, err
	}
	if c.zone != nil {
		c.hits.Add(1)
		return c.zone.LookupTXT(ctx, key)
	}

	c.mu.Lock()
	if el, ok := c.entries[key]; ok {
		e := el.Value.(*entry)
		if c.opts.Now().Before(e.expires) {
			c.lru.MoveToFront(el)
			txts, err := e.txts, e.err
			c.mu.Unlock()
			c.hits.Add(1)
			return cloneStrings(txts), err
		}
		c.lru.Remove(el)
		delete(c.entries, key)
	}
	cl, ok := c.inflight[key]
	if !ok {
		cl = &call{done: make(chan struct{})}
		c.inflight[key] = cl
		c.queries.Add(1)
		// The query runs detached from ctx: a caller that gives up must not
		// fail the lookup for the others waiting on it (or poison nothing:
		// temporary errors are not cached anyway). It is bounded by Timeout.
		go c.run(context.WithoutCancel(ctx), key, cl)
	}
	c.mu.Unlock()

	select {
	case <-cl.done:
		return cloneStrings(cl.txts), cl.err
	case <-ctx.Done():
		return nil, contextError(key, ctx.Err())
	}
}

func (c *Cache) run(ctx context.Context, key string, cl *call) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	txts, ttl, err := c.upstream.lookup(ctx, key)

	c.mu.Lock()
	defer c.mu.Unlock()
	cl.txts, cl.err = txts, err
	delete(c.inflight, key)
	close(cl.done)

	var life time.Duration
	switch {
	case err == nil:
		life = min(c.opts.TTL, time.Duration(ttl)*time.Second)
	case IsNotFound(err):
		life = c.opts.NegativeTTL
	default:
		return // temporary: never cached
	}
	if life <= 0 {
		return
	}
	e := &entry{name: key, txts: txts, err: err, expires: c.opts.Now().Add(life)}
	if el, ok := c.entries[key]; ok {
		c.lru.Remove(el)
	}
	c.entries[key] = c.lru.PushFront(e)
	for c.lru.Len() > c.opts.MaxEntries {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.entries, old.Value.(*entry).name)
	}
}

// Len is the number of cached entries (expired ones included until touched).
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

func cloneStrings(s []string) []string {
	if s == nil {
		return nil
	}
	return append([]string(nil), s...)
}

// IsTemporary reports whether err is a temporary lookup failure (SERVFAIL,
// timeout, network error, cancelled context): the answer may differ later.
func IsTemporary(err error) bool {
	if err == nil {
		return false
	}
	var de *net.DNSError
	if errors.As(err, &de) {
		return de.IsTemporary || de.IsTimeout
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return ne.Timeout() || ne.Temporary() //nolint:staticcheck // Temporary is what go-msgauth checks
	}
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}

// IsNotFound reports whether err is a permanent "no such TXT record" answer
// (NXDOMAIN, NODATA or an invalid name).
func IsNotFound(err error) bool {
	var de *net.DNSError
	return errors.As(err, &de) && de.IsNotFound
}

func notFound(name, msg, server string) error {
	return &net.DNSError{Err: msg, Name: name, Server: server, IsNotFound: true}
}

func temporary(name, msg, server string, cause error) error {
	e := &net.DNSError{Err: msg, Name: name, Server: server, IsTemporary: true, UnwrapErr: cause}
	var ne net.Error
	if errors.Is(cause, context.DeadlineExceeded) || errors.Is(cause, os.ErrDeadlineExceeded) ||
		(errors.As(cause, &ne) && ne.Timeout()) {
		e.IsTimeout = true
	}
	return e
}

func contextError(name string, err error) error {
	msg := "lookup cancelled"
	if errors.Is(err, context.DeadlineExceeded) {
		msg = "lookup timed out"
	}
	return temporary(name, msg, "", err)
}

// normalizeName lowercases name, strips one trailing dot and checks that it
// is a plausible host name for a DKIM key (letters, digits, '-', '_'; labels
// of 1..63 bytes; at most 253 bytes). Names come from untrusted message
// headers: an invalid one is a permanent not-found, never a temporary error.
func normalizeName(name string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(name, "."))
	if n == "" || len(n) > 253 {
		return "", notFound(name, "invalid domain name", "")
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" || len(label) > 63 {
			return "", notFound(name, "invalid domain name", "")
		}
		for i := 0; i < len(label); i++ {
			ch := label[i]
			if !(ch >= 'a' && ch <= 'z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_') {
				return "", notFound(name, "invalid domain name", "")
			}
		}
	}
	return n, nil
}
